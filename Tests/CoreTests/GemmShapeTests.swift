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
        // The same product from B packed ahead of time (a pipeline stage's weights) is bit for bit
        // the product from B as stored. The panels start as NaN: a float the packing left unwritten
        // and the product read would show.
        var panels = [Float](repeating: .nan, count: max(1, Kernels.panelsCount(n: n, k: k)))
        var fromPanels = c0
        a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in bias.withUnsafeBufferPointer { bias in
            panels.withUnsafeMutableBufferPointer { panels in fromPanels.withUnsafeMutableBufferPointer { c in
                Kernels.packPanels(b.baseAddress!, ldb: ldb, n: n, k: k, transposed: transposedB, into: panels.baseAddress!)
                let e = Kernels.Epilogue(accumulate: accumulate, bias: withBias ? bias.baseAddress! : nil, relu: relu)
                Kernels.gemm(m: m, n: n, k: k, a: a.baseAddress!, rowStride: rs, depthStride: ds,
                             panels: panels.baseAddress!, c: c.baseAddress!, ldc: ldc, epilogue: e)
            } }
        } } }
        XCTAssertEqual(fromPanels.map(\.bitPattern), c.map(\.bitPattern),
                       "\(m)×\(n)×\(k) Aᵀ \(transposedA) Bᵀ \(transposedB) ldb+\(ldbExtra): packed panels differ", file: file, line: line)
        let expected = reference(m: m, n: n, k: k, a: a, rs: rs, ds: ds, b: b, ldb: ldb, transposedB: transposedB,
                                 c0: c0, ldc: ldc, bias: withBias ? bias : nil, accumulate: accumulate, relu: relu)
        let label = "\(m)×\(n)×\(k) Aᵀ \(transposedA) Bᵀ \(transposedB) ldb+\(ldbExtra) ldc+\(ldcExtra) acc \(accumulate) bias \(withBias) relu \(relu)"
        var worst = 0.0, at = -1
        for i in 0..<(m * ldc) {
            // Columns past n (ldc padding) must be untouched: expected holds c0 there.
            let tolerance = 1e-5 * (1 + Double(k).squareRoot()) * (1 + abs(expected[i]))
            let error = abs(Double(c[i]) - expected[i]) / tolerance
            if !(error <= worst) { worst = error; at = i }  // a NaN is the worst and stays so
            if error.isNaN { break }
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
