import XCTest
@testable import Core

/// The matrix multiply and the small kernels against naive loops written here.
final class KernelReferenceTests: XCTestCase {
    /// Every combination of transposition, accumulation, bias and ReLU against a naive loop, over
    /// shapes with ragged edges (27 columns, 1–5 rows, k = 1).
    func testGemmAgainstNaive() {
        var f = Fixture(11)
        let shapes = [(1, 1, 1), (3, 27, 64), (32, 64, 256), (5, 33, 7), (4, 16, 1), (7, 48, 3), (2, 17, 31), (9, 100, 5), (64, 27, 32)]
        for (m, n, k) in shapes {
            for transposed in [false, true] {
                for (accumulate, withBias, relu) in [(false, false, false), (true, false, false), (false, true, true), (true, true, false)] {
                    let a = f.floats(m * k), b = f.floats(k * n), bias = f.floats(n), c0 = f.floats(m * n)
                    var c = c0
                    a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in bias.withUnsafeBufferPointer { bias in
                        c.withUnsafeMutableBufferPointer { c in
                            Kernels.gemm(m: m, n: n, k: k, a: a.baseAddress!, rowStride: transposed ? 1 : k, depthStride: transposed ? m : 1,
                                         b: b.baseAddress!, ldb: n, c: c.baseAddress!, ldc: n,
                                         epilogue: .init(accumulate: accumulate, bias: withBias ? bias.baseAddress! : nil, relu: relu))
                        }
                    } } }
                    for i in 0..<m {
                        for j in 0..<n {
                            var s = Double(accumulate ? c0[i * n + j] : 0) + Double(withBias ? bias[j] : 0)
                            for p in 0..<k { s += Double(transposed ? a[p * m + i] : a[i * k + p]) * Double(b[p * n + j]) }
                            if relu { s = max(0, s) }
                            XCTAssertEqual(Double(c[i * n + j]), s, accuracy: 1e-4 * (1 + abs(s)), "\(m)×\(n)×\(k) T\(transposed) at \(i),\(j)")
                        }
                    }
                }
            }
        }
    }

    func testGemmWritesNothingOutsideC() {
        // A 3×27 C inside a larger buffer with ldc 40: the gaps must stay untouched.
        var f = Fixture(2)
        let a = f.floats(3 * 5), b = f.floats(5 * 27)
        var c = [Float](repeating: 99, count: 3 * 40)
        a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in c.withUnsafeMutableBufferPointer { c in
            Kernels.gemm(m: 3, n: 27, k: 5, a: a.baseAddress!, rowStride: 5, depthStride: 1, b: b.baseAddress!, ldb: 27,
                         c: c.baseAddress!, ldc: 40)
        } } }
        for r in 0..<3 { for j in 27..<40 { XCTAssertEqual(c[r * 40 + j], 99) } }
    }

    func testSmallKernels() {
        var x: [Float] = (0..<37).map { Float($0) - 18 }
        var y: [Float] = (0..<37).map { Float($0 % 3) - 1 }
        let x0 = x
        Kernels.maskByPositive(&x, y, count: 37)
        for i in 0..<37 { XCTAssertEqual(x[i], y[i] > 0 ? x0[i] : 0) }
        var sums = [Float](repeating: 1, count: 19)
        let m: [Float] = (0..<(3 * 19)).map { Float($0) }
        Kernels.addColumnSums(m, rows: 3, cols: 19, into: &sums)
        for j in 0..<19 { XCTAssertEqual(sums[j], 1 + Float(j) + Float(19 + j) + Float(38 + j)) }
        let t: [Float] = (0..<(5 * 7)).map { Float($0) }
        var out = [Float](repeating: 0, count: 35)
        Kernels.transpose(t, rows: 5, cols: 7, into: &out)
        for r in 0..<5 { for c in 0..<7 { XCTAssertEqual(out[c * 5 + r], t[r * 7 + c]) } }
        Kernels.addBias(&y, rows: 1, cols: 37, bias: x0, relu: true)
        for i in 0..<37 { XCTAssertEqual(y[i], max(0, Float(i % 3) - 1 + x0[i])) }
    }
}
