import XCTest
@testable import Core

/// The mixture-of-experts block against ``DoubleMixture``: the forward (outputs, aux loss,
/// routing) and every gradient (router, experts, gates, aux, input) by central finite
/// differences, for K = 1 and 2, every expert chosen, capacity drops, and ties.
final class MixtureOfExpertsTests: XCTestCase {
    struct Case {
        var inputs: Int, outputs: Int, rows: Int
        var experts: ExpertsConfig
    }

    /// A block over random parameters and inputs, run forward, and backward from `dy = R`.
    func run(_ c: Case, seed: UInt64, routerScale: Float = 1.5) -> (layer: MixtureOfExperts, p: [Float], xs: [Float], r: [Float],
                                                                   buffer: ParameterBuffer, x: Activation, y: Activation) {
        var f = Fixture(seed)
        let e = c.experts.count
        let count = MixtureOfExperts.parameterCount(inputs: c.inputs, outputs: c.outputs, experts: e)
        let buffer = ParameterBuffer(count: count)
        var p = f.floats(count, 0.5)
        for i in 0..<c.inputs * e { p[i] *= routerScale / 0.5 }
        for i in 0..<count { buffer.value[i] = p[i] }
        let layer = MixtureOfExperts(inputs: c.inputs, outputs: c.outputs, experts: c.experts, rows: c.rows,
                                     parameters: buffer.view(offset: 0, count: count))
        let x = Activation(rows: c.rows, cols: c.inputs), y = Activation(rows: c.rows, cols: c.outputs)
        let xs = f.floats(c.rows * c.inputs)
        for i in 0..<xs.count { x.value[i] = xs[i] }
        layer.forward(x, y)
        let r = f.floats(c.rows * c.outputs)
        for i in 0..<r.count { y.grad[i] = r[i] }
        layer.backward(x, y)
        return (layer, p, xs, r, buffer, x, y)
    }

    func rows(_ v: [Double], _ width: Int) -> [[Double]] { stride(from: 0, to: v.count, by: width).map { Array(v[$0..<$0 + width]) } }

    /// The layer's routing, read back: chosen experts per row and whether each slot was kept.
    func routing(_ layer: MixtureOfExperts, rows: Int) -> DoubleMixture.Routing {
        let k = layer.experts.topK
        return DoubleMixture.Routing(chosen: (0..<rows).map { r in (0..<k).map { Int(layer.choices[r * k + $0]) } },
                                     kept: (0..<rows).map { r in (0..<k).map { layer.positions[r * k + $0] >= 0 } })
    }

    func check(_ c: Case, seed: UInt64, expectDrops: Bool = false) {
        let run = run(c, seed: seed)
        let reference = DoubleMixture(inputs: c.inputs, outputs: c.outputs, experts: c.experts)
        let pd = run.p.map(Double.init), xd = run.xs.map(Double.init), rd = run.r.map(Double.init)
        let label = "E \(c.experts.count) K \(c.experts.topK) C \(c.experts.capacityFactor.map { "\($0)" } ?? "-") rows \(c.rows)"

        // Forward: routing, outputs and aux loss.
        let expected = reference.forward(pd, rows(xd, c.inputs))
        XCTAssertEqual(routing(run.layer, rows: c.rows), expected.routing, label)
        XCTAssertEqual(expected.routing.kept.joined().contains(false), expectDrops, "\(label): drops as intended")
        for r in 0..<c.rows {
            for o in 0..<c.outputs {
                XCTAssertEqual(Double(run.y.value[r * c.outputs + o]), expected.y[r][o], accuracy: 1e-5, "\(label) y[\(r), \(o)]")
            }
        }
        XCTAssertEqual(Double(run.layer.auxiliaryLoss), expected.aux, accuracy: 1e-6 + 1e-5 * expected.aux, label)
        XCTAssertGreaterThan(expected.aux, 0)

        // Backward: L = Σ R ⊙ y + aux, every parameter and every input.
        func loss(_ p: [Double], _ x: [Double]) -> Double {
            let out = reference.forward(p, rows(x, c.inputs))
            var total = out.aux
            for r in 0..<c.rows { for o in 0..<c.outputs { total += rd[r * c.outputs + o] * out.y[r][o] } }
            return total
        }
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
        let dp = numeric(pd) { loss($0, xd) }, dx = numeric(xd) { loss(pd, $0) }
        let analyticP = (0..<pd.count).map { Double(run.buffer.grad[$0]) }
        let analyticX = (0..<xd.count).map { Double(run.x.grad[$0]) }
        let routerFloats = c.inputs * c.experts.count
        let wr = worstRatio(Array(analyticP[..<routerFloats]), Array(dp[..<routerFloats]), rtol: 1e-3, atol: 1e-4)
        let we = worstRatio(Array(analyticP[routerFloats...]), Array(dp[routerFloats...]), rtol: 1e-3, atol: 1e-4)
        let wx = worstRatio(analyticX, dx, rtol: 1e-3, atol: 1e-4)
        XCTAssertLessThanOrEqual(wr.ratio, 1, "\(label): router gradient at \(wr.index)")
        XCTAssertLessThanOrEqual(we.ratio, 1, "\(label): expert gradient at \(we.index)")
        XCTAssertLessThanOrEqual(wx.ratio, 1, "\(label): input gradient at \(wx.index)")
    }

    func testTopOne() {
        check(Case(inputs: 5, outputs: 4, rows: 6, experts: ExpertsConfig(count: 3, topK: 1, auxiliaryLossCoefficient: 0.3)), seed: 1)
    }

    func testTopTwo() {
        check(Case(inputs: 7, outputs: 9, rows: 8, experts: ExpertsConfig(count: 4, topK: 2, auxiliaryLossCoefficient: 0.3)), seed: 2)
        check(Case(inputs: 17, outputs: 33, rows: 5, experts: ExpertsConfig(count: 2, topK: 2, auxiliaryLossCoefficient: 0.01)), seed: 3)
    }

    /// With a capacity factor the overflow is dropped in row order, and the kept gates stay as
    /// they were (the reference does not renormalise them either).
    func testCapacityDrops() {
        check(Case(inputs: 6, outputs: 5, rows: 9, experts: ExpertsConfig(count: 4, topK: 2, capacityFactor: 0.5, auxiliaryLossCoefficient: 0.3)),
              seed: 4, expectDrops: true)
        check(Case(inputs: 6, outputs: 5, rows: 9, experts: ExpertsConfig(count: 3, topK: 1, capacityFactor: 0.7, auxiliaryLossCoefficient: 0.3)),
              seed: 5, expectDrops: true)
    }

    /// A zero router gives every expert the same probability: the ties go to the lowest indices
    /// (experts 0 and 1, gates ½ each), and with capacity 4 (⌈1 · 7 · 2 / 4⌉) rows 4…6 lose both
    /// slots and output zero.
    func testTiesGoToTheLowerIndexAndOverflowDropsInRowOrder() {
        let experts = ExpertsConfig(count: 4, topK: 2, capacityFactor: 1)
        XCTAssertEqual(experts.capacity(rows: 7), 4)
        let c = Case(inputs: 3, outputs: 5, rows: 7, experts: experts)
        let run = run(c, seed: 6, routerScale: 0)
        let r = routing(run.layer, rows: c.rows)
        XCTAssertEqual(r.chosen, Array(repeating: [0, 1], count: 7))
        XCTAssertEqual(r.kept, (0..<7).map { [$0 < 4, $0 < 4] })
        for a in 0..<c.rows * 2 { XCTAssertEqual(run.layer.gates.value[a], 0.5) }
        let expected = DoubleMixture(inputs: c.inputs, outputs: c.outputs, experts: experts)
            .forward(run.p.map(Double.init), rows(run.xs.map(Double.init), c.inputs))
        for row in 0..<7 {
            for o in 0..<c.outputs {
                let y = run.y.value[row * c.outputs + o]
                if row >= 4 { XCTAssertEqual(y, 0) }
                XCTAssertEqual(Double(y), expected.y[row][o], accuracy: 1e-6)
            }
        }
        XCTAssertEqual(run.layer.imbalance, 2, "experts 0 and 1 take 4 each, 2 and 3 none: max 4 over mean 2")
    }

    /// Dropless capacity is the whole batch; a factor caps at ⌈C · B · K / E⌉.
    func testCapacity() {
        XCTAssertEqual(ExpertsConfig(count: 4, topK: 2).capacity(rows: 32), 32)
        XCTAssertEqual(ExpertsConfig(count: 4, topK: 2, capacityFactor: 1.25).capacity(rows: 32), 20)
        XCTAssertEqual(ExpertsConfig(count: 3, topK: 1, capacityFactor: 0.5).capacity(rows: 5), 1)
    }

    /// The whole model with two mixture-of-experts blocks: the loss (cross-entropy + aux) and
    /// every parameter's gradient against the Double model.
    func testModelGradients() {
        let config = ModelConfig(vocab: 7, seqLen: 3, emb: 4, hidden: 6, layers: 2,
                                 experts: ExpertsConfig(count: 3, topK: 2, auxiliaryLossCoefficient: 0.2))
        let batch = 5
        let model = Model(config: config, batchSize: batch)
        var p = config.initialParameters(seed: 7)
        var f = Fixture(11)
        for i in 0..<p.count { p[i] += f.rng.symmetric(0.05) }
        model.load(p)
        let tokens = (0..<batch).map { _ in f.ints(config.seqLen, below: config.vocab) }
        let targets = f.ints(batch, below: config.vocab)
        for b in 0..<batch {
            for s in 0..<config.seqLen { model.tokens.value[b * config.seqLen + s] = Float(tokens[b][s]) }
            model.targets[b] = Int32(targets[b])
        }
        let loss = model.forward() / Float(batch) + model.auxiliaryLoss
        XCTAssertGreaterThan(model.auxiliaryLoss, 0)
        model.backward()
        let reference = DoubleModel(config: config)
        let pd = p.map(Double.init)
        XCTAssertEqual(Double(loss), reference.loss(pd, tokens: tokens, targets: targets), accuracy: 1e-5)
        let numeric = reference.numericGradient(pd, tokens: tokens, targets: targets)
        let analytic = (0..<p.count).map { Double(model.parameters.grad[$0]) }
        let worst = worstRatio(analytic, numeric, rtol: 1e-3, atol: 1e-5)
        XCTAssertLessThanOrEqual(worst.ratio, 1, "parameter \(worst.index) analytic \(analytic[max(0, worst.index)]) numeric \(numeric[max(0, worst.index)])")
    }

    /// The plan's tensors: the router, then each expert's weight and bias, in canonical order.
    func testTensorNamesAndCounts() {
        let config = ModelConfig(vocab: 5, seqLen: 2, emb: 3, hidden: 4, layers: 1, experts: ExpertsConfig(count: 3, topK: 2))
        let plan = config.plan
        XCTAssertEqual(plan[1].kind, .mixtureOfExperts)
        XCTAssertEqual(plan.tensors.map(\.name), ["embedding", "fc1.router.weight",
                                                   "fc1.experts.0.weight", "fc1.experts.0.bias", "fc1.experts.1.weight", "fc1.experts.1.bias",
                                                   "fc1.experts.2.weight", "fc1.experts.2.bias", "head.weight", "head.bias"])
        XCTAssertEqual(plan[1].parameterCount, 6 * 3 + 3 * (6 * 4 + 4))
        var offset = 0
        for tensor in plan.tensors {
            XCTAssertEqual(tensor.offset, offset, tensor.name)
            offset += tensor.count
        }
        XCTAssertEqual(offset, plan.parameterCount)
        XCTAssertEqual(ModelConfig(vocab: 5, seqLen: 2, emb: 3, hidden: 4, layers: 1).plan[1].kind, .dense)
    }
}
