import XCTest
@testable import Core

/// Analytic gradients (Float, the kernels) against central finite differences of an independent
/// Double implementation.
final class GradientTests: XCTestCase {
    /// Gradient of Σ y ⊙ R for a single Linear, checked per parameter and per input.
    func checkLinear(inputs: Int, outputs: Int, rows: Int, relu: Bool) {
        var f = Fixture(UInt64(inputs * 1000 + outputs * 10 + rows))
        let count = Linear.parameterCount(inputs: inputs, outputs: outputs)
        let buffer = ParameterBuffer(count: count)
        let p = f.floats(count, 0.5)
        for i in 0..<count { buffer.value[i] = p[i] }
        let layer = Linear(inputs: inputs, outputs: outputs, relu: relu, parameters: buffer.view(offset: 0, count: count))
        let x = Activation(rows: rows, cols: inputs), y = Activation(rows: rows, cols: outputs)
        let xs = f.floats(rows * inputs)
        for i in 0..<xs.count { x.value[i] = xs[i] }
        let r = f.floats(rows * outputs)
        layer.forward(x, y)
        for i in 0..<r.count { y.grad[i] = r[i] }
        layer.backward(x, y)

        // Double reference: L(p, x) = Σ r ⊙ act(x·W + b).
        func loss(_ p: [Double], _ x: [Double]) -> Double {
            var total = 0.0
            for b in 0..<rows {
                for o in 0..<outputs {
                    var s = p[inputs * outputs + o]
                    for k in 0..<inputs { s += x[b * inputs + k] * p[k * outputs + o] }
                    if relu { s = max(0, s) }
                    total += Double(r[b * outputs + o]) * s
                }
            }
            return total
        }
        let pd = p.map(Double.init), xd = xs.map(Double.init)
        let h = 1e-6
        func numeric(_ v: [Double], _ eval: ([Double]) -> Double) -> [Double] {
            var q = v
            return (0..<v.count).map { i in
                q[i] = v[i] + h; let up = eval(q)
                q[i] = v[i] - h; let down = eval(q)
                q[i] = v[i]
                return (up - down) / (2 * h)
            }
        }
        let dp = numeric(pd) { loss($0, xd) }
        let dx = numeric(xd) { loss(pd, $0) }
        let analyticP = (0..<count).map { Double(buffer.grad[$0]) }
        let analyticX = (0..<xs.count).map { Double(x.grad[$0]) }
        let wp = worstRatio(analyticP, dp, rtol: 1e-3, atol: 1e-4)
        let wx = worstRatio(analyticX, dx, rtol: 1e-3, atol: 1e-4)
        XCTAssertLessThanOrEqual(wp.ratio, 1, "dW/db \(inputs)×\(outputs) rows \(rows) relu \(relu) at \(wp.index)")
        XCTAssertLessThanOrEqual(wx.ratio, 1, "dX \(inputs)×\(outputs) rows \(rows) relu \(relu) at \(wx.index)")

        // Forward value against the Double reference.
        var forward = 0.0
        for i in 0..<r.count { forward += Double(r[i]) * Double(y.value[i]) }
        XCTAssertEqual(forward, loss(pd, xd), accuracy: 1e-4 * max(1, abs(forward)))
    }

    func testLinearGradients() {
        for (i, o, b) in [(3, 5, 2), (17, 27, 5), (48, 33, 7), (5, 64, 1), (64, 16, 9)] {
            checkLinear(inputs: i, outputs: o, rows: b, relu: false)
            checkLinear(inputs: i, outputs: o, rows: b, relu: true)
        }
    }

    func testLinearAccumulatesParameterGradients() {
        let count = Linear.parameterCount(inputs: 4, outputs: 3)
        let buffer = ParameterBuffer(count: count)
        var f = Fixture(9)
        let p = f.floats(count)
        for i in 0..<count { buffer.value[i] = p[i] }
        let layer = Linear(inputs: 4, outputs: 3, relu: false, parameters: buffer.view(offset: 0, count: count))
        let x = Activation(rows: 2, cols: 4), y = Activation(rows: 2, cols: 3)
        for i in 0..<8 { x.value[i] = Float(i) - 3 }
        for i in 0..<6 { y.grad[i] = 1 }
        layer.backward(x, y)
        let once = (0..<count).map { buffer.grad[$0] }
        for i in 0..<6 { y.grad[i] = 1 }
        layer.backward(x, y)
        for i in 0..<count { XCTAssertEqual(buffer.grad[i], 2 * once[i], accuracy: 1e-5) }
    }

    func testEmbeddingGradientAddsRepeatedTokens() {
        let vocab = 5, dim = 3
        let buffer = ParameterBuffer(count: vocab * dim)
        for i in 0..<vocab * dim { buffer.value[i] = Float(i) }
        let layer = Embedding(vocab: vocab, dim: dim, parameters: buffer.view(offset: 0, count: vocab * dim))
        let tokens = Activation(rows: 2, cols: 2), out = Activation(rows: 2, cols: 2 * dim)
        let ids: [Float] = [1, 4, 1, 0]
        for i in 0..<4 { tokens.value[i] = ids[i] }
        layer.forward(tokens, out)
        for t in 0..<4 { for d in 0..<dim { XCTAssertEqual(out.value[t * dim + d], Float(Int(ids[t]) * dim + d)) } }
        for i in 0..<out.count { out.grad[i] = Float(i + 1) }
        layer.backward(tokens, out)
        // Token 1 appears at positions 0 and 2: its row gets both.
        for d in 0..<dim {
            XCTAssertEqual(buffer.grad[1 * dim + d], Float(d + 1) + Float(2 * dim + d + 1))
            XCTAssertEqual(buffer.grad[4 * dim + d], Float(dim + d + 1))
            XCTAssertEqual(buffer.grad[0 * dim + d], Float(3 * dim + d + 1))
            XCTAssertEqual(buffer.grad[2 * dim + d], 0)
        }
    }

    /// The whole model, every parameter, at --layers 1 and 3.
    func checkModel(layers: Int) {
        let config = ModelConfig(vocab: 7, seqLen: 3, emb: 4, hidden: 10, layers: layers)
        let batch = 5
        let model = Model(config: config, batchSize: batch)
        var p = config.initialParameters(seed: 7)
        var f = Fixture(UInt64(layers))
        // Nudge the parameters so no ReLU input sits at exactly zero.
        for i in 0..<p.count { p[i] += f.rng.symmetric(0.05) }
        model.load(p)
        let tokens = (0..<batch).map { _ in f.ints(config.seqLen, below: config.vocab) }
        let targets = f.ints(batch, below: config.vocab)
        for b in 0..<batch {
            for s in 0..<config.seqLen { model.tokens.value[b * config.seqLen + s] = Float(tokens[b][s]) }
            model.targets[b] = Int32(targets[b])
        }
        let loss = model.forward() / Float(batch)
        model.backward()
        let reference = DoubleModel(config: config)
        let pd = p.map(Double.init)
        XCTAssertEqual(Double(loss), reference.loss(pd, tokens: tokens, targets: targets), accuracy: 1e-5)
        let numeric = reference.numericGradient(pd, tokens: tokens, targets: targets)
        let analytic = (0..<p.count).map { Double(model.parameters.grad[$0]) }
        let worst = worstRatio(analytic, numeric, rtol: 1e-3, atol: 1e-5)
        XCTAssertLessThanOrEqual(worst.ratio, 1, "layers \(layers): parameter \(worst.index) analytic \(analytic[max(0, worst.index)]) numeric \(numeric[max(0, worst.index)])")
    }

    func testModelGradientsOneLayer() { checkModel(layers: 1) }
    func testModelGradientsThreeLayers() { checkModel(layers: 3) }

    /// A split backward (input pass, then weight pass) adds exactly what one backward adds, bit
    /// for bit: the same products, only in another order of calls.
    func testSplitBackwardEqualsBackward() {
        for (inputs, outputs, rows, relu) in [(7, 5, 3, true), (16, 33, 17, false), (1, 27, 40, true)] {
            var f = Fixture(UInt64(inputs * 7 + outputs))
            let count = Linear.parameterCount(inputs: inputs, outputs: outputs)
            let whole = ParameterBuffer(count: count), split = ParameterBuffer(count: count)
            let p = f.floats(count, 0.5), g = f.floats(count, 0.1)
            for i in 0..<count { whole.value[i] = p[i]; split.value[i] = p[i]; whole.grad[i] = g[i]; split.grad[i] = g[i] }
            let a = Linear(inputs: inputs, outputs: outputs, relu: relu, parameters: whole.view(offset: 0, count: count))
            let b = Linear(inputs: inputs, outputs: outputs, relu: relu, parameters: split.view(offset: 0, count: count))
            XCTAssertTrue((b as Layer) is SplitBackward)
            let x = Activation(rows: rows, cols: inputs), ya = Activation(rows: rows, cols: outputs), yb = Activation(rows: rows, cols: outputs)
            let xs = f.floats(rows * inputs), dy = f.floats(rows * outputs)
            for i in 0..<xs.count { x.value[i] = xs[i] }
            a.forward(x, ya)
            b.forward(x, yb)
            for i in 0..<dy.count { ya.grad[i] = dy[i]; yb.grad[i] = dy[i] }
            a.backward(x, ya)
            let dxWhole = Array(UnsafeBufferPointer(start: x.grad, count: rows * inputs))
            for i in 0..<rows * inputs { x.grad[i] = .nan }
            b.backwardInput(x, yb)
            let dxSplit = Array(UnsafeBufferPointer(start: x.grad, count: rows * inputs))
            XCTAssertEqual(Array(UnsafeBufferPointer(start: split.grad, count: count)), g, "the input pass leaves parameter gradients alone")
            b.backwardWeights(x, yb)
            XCTAssertEqual(dxSplit, dxWhole, "input gradient \(inputs)×\(outputs)")
            XCTAssertEqual(Array(UnsafeBufferPointer(start: split.grad, count: count)),
                           Array(UnsafeBufferPointer(start: whole.grad, count: count)), "parameter gradients \(inputs)×\(outputs)")
        }
    }
}
