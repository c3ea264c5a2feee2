import Foundation
import XCTest
@testable import Core

/// The kernels against naive Double references, over shapes chosen to hit every code path:
/// every row count 1…6 of a tile and several tiles, 1…4 vectors of columns, columns below 16
/// (lane-by-lane stores), ragged columns ≥ 16 (the shifted last vector), more than 64 columns
/// (several panels), depths of 1, below 16, not a multiple of 16 and above the 128 block,
/// both addressings of A, B as stored, strided (packed) and transposed, and every epilogue.
final class GemmShapeTests: XCTestCase {
    /// `C (+)= a·B` in Double: `a(i,p) = A[i·rs + p·ds]`, `B(p,j) = B[p·ldb + j]` or `B[j·ldb + p]`.
    func reference(m: Int, n: Int, k: Int, a: [Float], rs: Int, ds: Int, b: [Float], ldb: Int, transposedB: Bool,
                   c0: [Float], ldc: Int, bias: [Float]?, accumulate: Bool, relu: Bool) -> [Double] {
        var c = c0.map(Double.init)
        for i in 0..<m {
            for j in 0..<n {
                var s = accumulate ? Double(c0[i * ldc + j]) : 0
                if let bias { s += Double(bias[j]) }
                for p in 0..<k {
                    let bv = transposedB ? b[j * ldb + p] : b[p * ldb + j]
                    s += Double(a[i * rs + p * ds]) * Double(bv)
                }
                if relu { s = max(0, s) }
                c[i * ldc + j] = s
            }
        }
        return c
    }

    func check(m: Int, n: Int, k: Int, transposedA: Bool, transposedB: Bool, ldbExtra: Int = 0, ldcExtra: Int = 0,
               accumulate: Bool, bias withBias: Bool, relu: Bool, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        var f = Fixture(seed)
        let rs = transposedA ? 1 : k, ds = transposedA ? m : 1
        let a = f.floats(m * k)
        let ldb = (transposedB ? k : n) + ldbExtra
        let b = f.floats(transposedB ? n * ldb : k * ldb)
        let ldc = n + ldcExtra
        let c0 = f.floats(m * ldc)
        let bias = f.floats(n)
        var c = c0
        a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in bias.withUnsafeBufferPointer { bias in
            c.withUnsafeMutableBufferPointer { c in
                let e = Kernels.Epilogue(accumulate: accumulate, bias: withBias ? bias.baseAddress! : nil, relu: relu)
                if transposedB {
                    Kernels.gemm(m: m, n: n, k: k, a: a.baseAddress!, rowStride: rs, depthStride: ds,
                                 transposedB: b.baseAddress!, ldb: ldb, c: c.baseAddress!, ldc: ldc, epilogue: e)
                } else {
                    Kernels.gemm(m: m, n: n, k: k, a: a.baseAddress!, rowStride: rs, depthStride: ds,
                                 b: b.baseAddress!, ldb: ldb, c: c.baseAddress!, ldc: ldc, epilogue: e)
                }
            }
        } } }
        let expected = reference(m: m, n: n, k: k, a: a, rs: rs, ds: ds, b: b, ldb: ldb, transposedB: transposedB,
                                 c0: c0, ldc: ldc, bias: withBias ? bias : nil, accumulate: accumulate, relu: relu)
        let label = "\(m)×\(n)×\(k) Aᵀ \(transposedA) Bᵀ \(transposedB) ldb+\(ldbExtra) ldc+\(ldcExtra) acc \(accumulate) bias \(withBias) relu \(relu)"
        var worst = 0.0, at = -1
        for i in 0..<(m * ldc) {
            // Columns past n (ldc padding) must be untouched: expected holds c0 there.
            let tolerance = 1e-5 * (1 + Double(k).squareRoot()) * (1 + abs(expected[i]))
            let error = abs(Double(c[i]) - expected[i]) / tolerance
            if error > worst { worst = error; at = i }
        }
        XCTAssertLessThanOrEqual(worst, 1, "\(label): worst at \(at / ldc),\(at % ldc): \(at >= 0 ? c[at] : 0) vs \(at >= 0 ? expected[at] : 0)",
                                 file: file, line: line)
    }

    func testEveryTileShapeAndEdge() {
        let ms = [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 32]
        let ns = [1, 5, 15, 16, 17, 27, 31, 32, 33, 48, 63, 64, 65, 70, 100, 130]
        let ks = [1, 3, 16, 27, 64]
        var seed: UInt64 = 1
        for m in ms {
            for n in ns {
                for k in ks {
                    for transposedA in [false, true] {
                        for transposedB in [false, true] {
                            seed += 1
                            let (accumulate, bias, relu) = [(false, false, false), (true, false, false), (false, true, true),
                                                            (true, true, true)][Int(seed % 4)]
                            check(m: m, n: n, k: k, transposedA: transposedA, transposedB: transposedB,
                                  accumulate: accumulate, bias: bias, relu: relu, seed: seed)
                        }
                    }
                }
            }
        }
    }

    func testEveryEpilogueOnRaggedColumns() {
        var seed: UInt64 = 1000
        for (m, n, k) in [(7, 27, 64), (32, 27, 64), (64, 27, 32), (32, 64, 27), (5, 9, 4)] {
            for accumulate in [false, true] {
                for bias in [false, true] {
                    for relu in [false, true] {
                        for transposedB in [false, true] {
                            seed += 1
                            check(m: m, n: n, k: k, transposedA: false, transposedB: transposedB,
                                  accumulate: accumulate, bias: bias, relu: relu, seed: seed)
                        }
                    }
                }
            }
        }
    }

    /// Depths above one 128-deep block (several passes, bias/ReLU only on the last), in
    /// uneven and 16-aligned splits, and a zero depth (C = epilogue alone).
    func testDeepProductsAndZeroDepth() {
        var seed: UInt64 = 2000
        for (m, n, k) in [(13, 70, 129), (6, 64, 256), (9, 27, 300), (32, 256, 200), (3, 17, 0), (8, 40, 0)] {
            for transposedA in [false, true] {
                for transposedB in [false, true] {
                    seed += 1
                    check(m: m, n: n, k: k, transposedA: transposedA, transposedB: transposedB,
                          accumulate: seed % 2 == 0, bias: true, relu: true, seed: seed)
                }
            }
        }
    }

    /// Rows of B ≥ 2 KiB apart (packed) and padded rows of B and C (C's padding untouched).
    func testStridedOperands() {
        check(m: 30, n: 130, k: 40, transposedA: false, transposedB: false, ldbExtra: 512 - 130, accumulate: true,
              bias: true, relu: false, seed: 3001)
        check(m: 25, n: 80, k: 33, transposedA: true, transposedB: false, ldbExtra: 600, ldcExtra: 7, accumulate: false,
              bias: true, relu: true, seed: 3002)
        check(m: 7, n: 27, k: 20, transposedA: false, transposedB: true, ldbExtra: 5, ldcExtra: 13, accumulate: true,
              bias: false, relu: false, seed: 3003)
        check(m: 4, n: 9, k: 5, transposedA: true, transposedB: true, ldbExtra: 3, ldcExtra: 2, accumulate: false,
              bias: true, relu: true, seed: 3004)
    }
}

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
