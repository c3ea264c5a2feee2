import Foundation
import XCTest
@testable import Core

final class ElementwiseKernelTests: XCTestCase {
    func testTransposeEveryEdge() {
        for (rows, cols) in [(1, 1), (3, 7), (16, 16), (17, 16), (16, 33), (27, 64), (64, 27), (100, 45), (5, 40)] {
            let input = (0..<(rows * cols)).map { Float($0) }
            var output = [Float](repeating: -1, count: rows * cols)
            Kernels.transpose(input, rows: rows, cols: cols, into: &output)
            for r in 0..<rows { for c in 0..<cols { XCTAssertEqual(output[c * rows + r], input[r * cols + c], "\(rows)×\(cols)") } }
        }
    }

    func testColumnSumsRaggedWidths() {
        var f = Fixture(7)
        for (rows, cols) in [(1, 1), (3, 5), (32, 16), (32, 27), (7, 33), (5, 64), (9, 100)] {
            let x = f.floats(rows * cols)
            let start = f.floats(cols)
            for accumulate in [false, true] {
                var sums = start
                x.withUnsafeBufferPointer { x in sums.withUnsafeMutableBufferPointer { s in
                    Kernels.columnSums(x.baseAddress!, rows: rows, cols: cols, into: s.baseAddress!, accumulate: accumulate)
                } }
                for j in 0..<cols {
                    var e = accumulate ? Double(start[j]) : 0
                    for i in 0..<rows { e += Double(x[i * cols + j]) }
                    XCTAssertEqual(Double(sums[j]), e, accuracy: 1e-5, "\(rows)×\(cols) acc \(accumulate) column \(j)")
                }
            }
        }
    }

    /// The vector exp (through the in-place array exp, full vectors only) against Double's exp:
    /// relative error ≤ 2 ulp where the result is normal, absolute ≤ 2 ulp of the smallest
    /// normal in the subnormal range, exact 0, +∞ and NaN.
    func testExpAccuracyOverTheWholeRange() {
        var inputs: [Float] = []
        var x: Float = -110
        while x < 90 { inputs.append(x); x += 0.0137 }
        inputs += [-Float.infinity, -1e38, -1000, -103.97, -103, -87.34, -87.33, -1e-30, -0, 0, 1e-30, 1e-7, 0.5, 88.72, 88.73, 89,
                   100, 1e38, .infinity, .nan, -Float.nan]
        var worstRelative = 0.0
        var count = inputs.count
        while count % 16 != 0 { inputs.append(0); count += 1 }
        var outputs = inputs
        Kernels.exp(&outputs, count: count)
        inputs.withUnsafeBufferPointer { buffer in
            var i = 0
            while i < buffer.count {
                for l in 0..<16 {
                    let input = buffer[i + l], got = outputs[i + l]
                    if input.isNaN { XCTAssertTrue(got.isNaN, "exp(NaN)"); continue }
                    let exact = Foundation.exp(Double(input))
                    if exact > Double(Float.greatestFiniteMagnitude) * (1 + 0x1p-24) {
                        XCTAssertEqual(got, .infinity, "exp(\(input))")
                    } else if exact < Double(Float.leastNonzeroMagnitude) / 2 {
                        XCTAssertEqual(got, 0, "exp(\(input))")
                    } else if exact < Double(Float.leastNormalMagnitude) {
                        XCTAssertEqual(Double(got), exact, accuracy: 2 * Double(Float.leastNonzeroMagnitude), "exp(\(input))")
                    } else {
                        let relative = abs(Double(got) - exact) / exact
                        worstRelative = max(worstRelative, relative)
                        XCTAssertLessThanOrEqual(relative, 2 * 0x1p-24, "exp(\(input)) = \(got), exact \(exact)")
                    }
                }
                i += 16
            }
        }
        XCTAssertLessThan(worstRelative, 2 * 0x1p-24)
    }

    func testArrayExpHandlesTails() {
        var values: [Float] = (0..<37).map { Float($0) * 0.5 - 9 }
        let original = values
        Kernels.exp(&values, count: 37)
        for i in 0..<37 { XCTAssertEqual(Double(values[i]), Foundation.exp(Double(original[i])), accuracy: 3e-7 * Foundation.exp(Double(original[i]))) }
    }

    /// Softmax cross-entropy against Double over widths that take every path (below 16, 16,
    /// the shifted-last-vector widths up to 64, wider), with large and very spread logits.
    func testSoftmaxCrossEntropyEveryWidth() {
        var f = Fixture(21)
        for cols in [1, 2, 7, 15, 16, 17, 27, 32, 33, 48, 50, 64, 65, 100] {
            for scale: Float in [1, 30, 1e4] {
                let rows = 5
                let logits = f.floats(rows * cols, scale)
                let targets = (0..<rows).map { Int32($0 * 7 % cols) }
                var p = [Float](repeating: -1, count: rows * cols)
                let total = logits.withUnsafeBufferPointer { x in targets.withUnsafeBufferPointer { t in
                    p.withUnsafeMutableBufferPointer { p in
                        Kernels.softmaxCrossEntropy(x.baseAddress!, rows: rows, cols: cols, targets: t.baseAddress!, into: p.baseAddress!)
                    }
                } }
                var expected = 0.0
                for r in 0..<rows {
                    let row = (0..<cols).map { Double(logits[r * cols + $0]) }
                    let m = row.max()!
                    let z = row.reduce(0) { $0 + Foundation.exp($1 - m) }
                    expected += Foundation.log(z) + m - row[Int(targets[r])]
                    for j in 0..<cols {
                        XCTAssertEqual(Double(p[r * cols + j]), Foundation.exp(row[j] - m) / z, accuracy: 1e-6,
                                       "cols \(cols) scale \(scale) p[\(r),\(j)]")
                    }
                }
                XCTAssertEqual(Double(total), expected, accuracy: 1e-5 * max(1, abs(expected)), "cols \(cols) scale \(scale)")
            }
        }
    }

    func testEmbeddingScatterMatchesSequentialAdds() {
        var f = Fixture(31)
        for (vocab, dim, count) in [(27, 16, 512), (5, 3, 37), (27, 16, 15), (11, 20, 64), (3, 16, 100)] {
            let rows = f.floats(count * dim)
            let ids = (0..<count).map { _ in Float(f.rng.below(vocab)) }
            let start = f.floats(vocab * dim)
            var expected = start.map(Double.init)
            for t in 0..<count { for d in 0..<dim { expected[Int(ids[t]) * dim + d] += Double(rows[t * dim + d]) } }
            var table = start
            var scratch = [Float](repeating: 0, count: (Kernels.scatterStreams - 1) * vocab * dim)
            for useScratch in [true, false] {
                table = start
                rows.withUnsafeBufferPointer { r in ids.withUnsafeBufferPointer { i in table.withUnsafeMutableBufferPointer { t in
                    scratch.withUnsafeMutableBufferPointer { s in
                        Kernels.scatterAddRows(r.baseAddress!, dim: dim, ids: i.baseAddress!, count: count, into: t.baseAddress!,
                                               rows: vocab, scratch: useScratch ? s.baseAddress! : nil)
                    }
                } } }
                for i in 0..<(vocab * dim) { XCTAssertEqual(Double(table[i]), expected[i], accuracy: 1e-4, "\(vocab)×\(dim) \(count) scratch \(useScratch)") }
                XCTAssertTrue(scratch.allSatisfy { $0 == 0 }, "scratch left zeroed")
            }
            // Gather: whole rows.
            var out = [Float](repeating: 0, count: count * dim)
            Kernels.gatherRows(start, dim: dim, ids: ids, count: count, into: &out)
            for t in 0..<count { for d in 0..<dim { XCTAssertEqual(out[t * dim + d], start[Int(ids[t]) * dim + d]) } }
        }
    }

    /// Overwriting backward = zeroing the gradients, then the accumulating backward, for both
    /// layers that offer it (stale gradient values must vanish).
    func testBackwardOverwriteEqualsZeroThenAccumulate() {
        var f = Fixture(4)
        // Linear 12 → 20 with ReLU over 9 rows.
        let count = Linear.parameterCount(inputs: 12, outputs: 20)
        let buffer = ParameterBuffer(count: count)
        let p = f.floats(count, 0.5)
        for i in 0..<count { buffer.value[i] = p[i] }
        let linear = Linear(inputs: 12, outputs: 20, relu: true, parameters: buffer.view(offset: 0, count: count))
        let x = Activation(rows: 9, cols: 12), y = Activation(rows: 9, cols: 20)
        let xs = f.floats(9 * 12), dy = f.floats(9 * 20)
        for i in 0..<xs.count { x.value[i] = xs[i] }
        linear.forward(x, y)
        func linearGradients(overwrite: Bool) -> [Float] {
            for i in 0..<dy.count { y.grad[i] = dy[i] }
            if overwrite {
                for i in 0..<count { buffer.grad[i] = 1e3 }
                linear.backward(x, y, accumulate: false)
            } else {
                buffer.zeroGradients()
                linear.backward(x, y)
            }
            return Array(UnsafeBufferPointer(start: buffer.grad, count: count))
        }
        let a = linearGradients(overwrite: true), b = linearGradients(overwrite: false)
        for i in 0..<count { XCTAssertEqual(a[i], b[i], accuracy: 1e-7, "linear parameter \(i)") }

        // Embedding 7 × 4 over 9 rows of 3 tokens (tokens repeat).
        let table = ParameterBuffer(count: 28)
        let embedding = Embedding(vocab: 7, dim: 4, parameters: table.view(offset: 0, count: 28))
        let tokens = Activation(rows: 9, cols: 3), out = Activation(rows: 9, cols: 12)
        for i in 0..<27 { tokens.value[i] = Float(f.rng.below(7)) }
        let dOut = f.floats(9 * 12)
        func tableGradients(overwrite: Bool) -> [Float] {
            for i in 0..<dOut.count { out.grad[i] = dOut[i] }
            if overwrite {
                for i in 0..<28 { table.grad[i] = 1e3 }
                embedding.backward(tokens, out, accumulate: false)
            } else {
                table.zeroGradients()
                embedding.backward(tokens, out)
            }
            return Array(UnsafeBufferPointer(start: table.grad, count: 28))
        }
        let c = tableGradients(overwrite: true), d = tableGradients(overwrite: false)
        for i in 0..<28 { XCTAssertEqual(c[i], d[i], accuracy: 1e-7, "embedding parameter \(i)") }
    }

    func testSGDWithAndWithoutDecayOverTails() {
        for (count, wd) in [(1, Float(0)), (37, 0), (37, 0.1), (64, 0), (100, 0.01)] {
            var f = Fixture(UInt64(count))
            var p = f.floats(count)
            let g = f.floats(count)
            let expected = (0..<count).map { Double(p[$0]) - 0.1 * (Double(g[$0]) + Double(wd) * Double(p[$0])) }
            Kernels.sgd(&p, g, count: count, learningRate: 0.1, weightDecay: wd)
            for i in 0..<count { XCTAssertEqual(Double(p[i]), expected[i], accuracy: 1e-6) }
        }
    }
}
