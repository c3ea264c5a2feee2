/// The numeric kernels: every loop over floats that the layers run lives here.
///
/// This file holds the vector type and the helpers every kernel uses: full- and partial-width
/// loads and stores, lane masks and blends, horizontal sum and max. The kernels themselves are
/// in the other files of this folder: the matrix products (`MatrixProduct.swift`, its register
/// tile in `MicroKernel.swift`, its panels and the transposes in `Packing.swift`),
/// `Elementwise.swift`, `EmbeddingRows.swift`, `OptimizerUpdates.swift` and `Softmax.swift`.
///
/// Compiler note: the module is built with `-Xllvm -unroll-runtime=false`
/// (see Package.swift), and `replace(with:where:)` is used only where it was checked to
/// compile to a single `vmaxps`/blend: in bigger loops LLVM splits it into 2-lane selects.
public enum Kernels {
    public typealias Vector = SIMD16<Float>
    public static let width = 16

    @inline(always)
    static func load(_ p: UnsafePointer<Float>) -> Vector {
        UnsafeRawPointer(p).loadUnaligned(as: Vector.self)
    }

    @inline(always)
    static func store(_ v: Vector, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vector.self)
    }

    /// Loads `count` lanes (all 16 if `count ≥ 16`), zero elsewhere; never reads past `count`.
    @inline(always)
    static func load(_ p: UnsafePointer<Float>, _ count: Int) -> Vector {
        if count >= width { return load(p) }
        var v = Vector()
        for j in 0..<count { v[j] = p[j] }
        return v
    }

    /// Stores the first `count` lanes (all 16 if `count ≥ 16`); never writes past `count`.
    @inline(always)
    static func store(_ v: Vector, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
        if count >= width { store(v, p); return }
        for j in 0..<count { p[j] = v[j] }
    }

    /// Lanes `0, 1, …, 15`, to build "lane < k" masks.
    @inline(always)
    static var laneIndex: SIMD16<Int32> { SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) }

    /// `v` with lanes below `fresh` replaced by `old`: the store of a vector that was shifted
    /// back over lanes another vector already wrote.
    @inline(always)
    static func keeping(_ old: Vector, below fresh: Int, in v: Vector) -> Vector {
        var r = v
        r.replace(with: old, where: laneIndex .< SIMD16<Int32>(repeating: Int32(truncatingIfNeeded: fresh)))
        return r
    }

    /// Σ of the 16 lanes, as a tree (4 dependent adds instead of 15).
    @inline(__always)
    public static func sum(_ v: Vector) -> Float {
        let a = v.lowHalf + v.highHalf
        let b = a.lowHalf + a.highHalf
        let c = b.lowHalf + b.highHalf
        return c.x + c.y
    }

    /// Largest of the 16 lanes: four rounds of "max with a permuted copy" at full width (every
    /// lane ends up holding the maximum). Narrower halves would not compile to `vmaxps`.
    @inline(__always)
    public static func max(_ v: Vector) -> Float { maxAcrossLanes(v)[0] }

    @inline(always)
    static func larger(_ a: Vector, _ b: Vector) -> Vector { a.replacing(with: b, where: b .> a) }

    @inline(always)
    static func maxAcrossLanes(_ v: Vector) -> Vector {
        var m = larger(v, Vector(lowHalf: v.highHalf, highHalf: v.lowHalf))
        m = larger(m, Vector(lowHalf: SIMD8(lowHalf: m.lowHalf.highHalf, highHalf: m.lowHalf.lowHalf),
                             highHalf: SIMD8(lowHalf: m.highHalf.highHalf, highHalf: m.highHalf.lowHalf)))
        m = larger(m, Vector(m[2], m[3], m[0], m[1], m[6], m[7], m[4], m[5], m[10], m[11], m[8], m[9], m[14], m[15], m[12], m[13]))
        m = larger(m, Vector(m[1], m[0], m[3], m[2], m[5], m[4], m[7], m[6], m[9], m[8], m[11], m[10], m[13], m[12], m[15], m[14]))
        return m
    }
}
