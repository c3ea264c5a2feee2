#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The numeric kernels: every loop over floats that the layers run lives here.
///
/// # Matrix products
///
/// The six matrix products of a training step (forward, dW and dX of each Linear) are 98% of its
/// FLOPs. They all reduce to one register-blocked micro-kernel that computes a tile of up to
/// 6 rows × 64 columns of
///
///     C[i, j] (+)= Σ_p  a(i, p) · B(p, j)
///
/// where `a(i, p) = A[i·rowStride + p·depthStride]`, so the same code serves `X·W` (A as stored)
/// and `Xᵀ·dY` (A transposed, by swapping the strides), and `B(p, j)` is either `B[p·ldb + j]`
/// (``gemm(m:n:k:a:rowStride:depthStride:b:ldb:c:ldc:epilogue:)``) or `B[j·ldb + p]`
/// (``gemm(m:n:k:a:rowStride:depthStride:transposedB:ldb:c:ldc:epilogue:)``, for `dY·Wᵀ`).
///
/// **Tile shape.** AVX-512 has 32 vector registers and a core retires two 16-wide FMAs per
/// cycle with a latency of 4 cycles, so at least 8 independent accumulators must be in flight.
/// A tile of 6 rows × 4 vectors (64 columns) keeps 24 accumulators, 4 vectors of B and one
/// broadcast of A in 29 registers. Per step of `p` it loads 4 vectors of B and broadcasts 6
/// scalars of A (10 loads) for 24 FMAs: 12 cycles of FMA work against 5 cycles of the two load
/// ports, so the tile is bound by the FMA units, not by loads. 64 columns is exactly the hidden
/// width of the default model, and 6 rows split its 32-row batch into tiles of 6,6,5,5,5,5
/// (every row count 1…6 has its own specialised kernel, so a short tile wastes no FMAs).
///
/// **Ragged columns.** When `n ≥ 16` but not a multiple of 16 (the 27-letter vocabulary), the
/// last vector of the last tile is shifted back to end exactly at column `n`: every load and
/// store stays full-width and in bounds, and the lanes that overlap columns already written are
/// blended back to what memory holds. Only `n < 16` falls back to lane-by-lane stores.
///
/// **Blocking and packing.** The depth is cut into blocks of at most 128 (a 128 × 64 panel of
/// B is 32 KiB and stays in the 48 KiB L1 while the tiles sweep down the rows). A transposed B
/// is turned around 16 × 16 floats at a time in registers (`vpermt2ps`) into a contiguous
/// 32 KiB panel on the stack, so `dY·Wᵀ` never needs a transposed copy of W; a B whose rows
/// are ≥ 2 KiB apart is copied into the panel too (such rows share a few L1 sets and evict
/// each other); closer rows are read in place.
///
/// **Measured** (AMD EPYC Zen 5, one core, peak 254 GFLOP/s by `peak`): 32×256·256×64 at
/// 246 GFLOP/s (97%), 256×1024·1024×1024 at 223 GFLOP/s (88%); the default model's step runs
/// its six products at ~85% of peak overall (the 27-column head and the transposes of `dY·Wᵀ`
/// cost the rest). Compiler note: the module is built with `-Xllvm -unroll-runtime=false`
/// (see Package.swift), and `replace(with:where:)` is used only where it was checked to
/// compile to a single `vmaxps`/blend: in bigger loops LLVM splits it into 2-lane selects.
public enum Kernels {
    public typealias Vector = SIMD16<Float>
    public static let width = 16

    /// Rows of C per micro-tile.
    static let tileRows = 6
    #if PARALLELISMS_AVX2
    /// Columns of C per micro-tile: with AVX2's 16 registers of 8 floats, one 16-wide vector
    /// is two registers, and 6 rows × 1 vector (12 registers of accumulators) is what fits.
    static let tileVectors = 1
    #else
    /// Columns of C per micro-tile, in 16-wide vectors: 6 × 4 accumulators in AVX-512's 32.
    static let tileVectors = 4
    #endif
    static let tileColumns = 16 * tileVectors
    /// Depth of a block of the product: a packed `128 × 64` panel of B is 32 KiB (fits L1).
    static let blockDepth = 128

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

    /// What happens to a tile of C before the products are added, and after.
    public struct Epilogue {
        /// Add the existing C (for gradient accumulation) instead of overwriting it.
        public var accumulate = false
        /// A bias row added to every row of C (length n), or nil.
        public var bias: UnsafePointer<Float>? = nil
        /// Clamp at zero after everything else (fused ReLU).
        public var relu = false
        public init(accumulate: Bool = false, bias: UnsafePointer<Float>? = nil, relu: Bool = false) {
            self.accumulate = accumulate
            self.bias = bias
            self.relu = relu
        }
    }

    /// `C[m×n] (+)= a·B` with `a(i,k) = A[i·rowStride + k·depthStride]`, `B[k×n]` with row stride
    /// `ldb`, `C` with row stride `ldc`. See the type's documentation.
    public static func gemm(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
        b: UnsafePointer<Float>, ldb: Int,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        epilogue: Epilogue = Epilogue()
    ) {
        product(m: m, n: n, k: k, a: a, rowStride: rowStride, depthStride: depthStride,
                b: b, ldb: ldb, transposedB: false, c: c, ldc: ldc, epilogue: epilogue)
    }

    /// `C[m×n] (+)= a·Bᵀ` with `a` as in ``gemm(m:n:k:a:rowStride:depthStride:b:ldb:c:ldc:epilogue:)``
    /// and `B[n×k]` with row stride `ldb` (so `C = dY·Wᵀ` takes W as stored). B is transposed
    /// 16 × 16 at a time while it is packed, at no extra pass over memory.
    public static func gemm(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
        transposedB b: UnsafePointer<Float>, ldb: Int,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        epilogue: Epilogue = Epilogue()
    ) {
        product(m: m, n: n, k: k, a: a, rowStride: rowStride, depthStride: depthStride,
                b: b, ldb: ldb, transposedB: true, c: c, ldc: ldc, epilogue: epilogue)
    }

    // MARK: - The product: blocking and packing

    /// Everything a micro-tile needs besides its shape.
    struct TileArguments {
        var k: Int
        var a: UnsafePointer<Float>
        var rowStride: Int
        var depthStride: Int
        /// B of this tile: vector `v < V−1` at `b + p·ldb + 16v`, the last one at `b + p·ldb + bLast`.
        var b: UnsafePointer<Float>
        var ldb: Int
        var bLast: Int
        /// C of this tile: vector `v < V−1` at `c + r·ldc + 16v`, the last one at `c + r·ldc + cLast`.
        var c: UnsafeMutablePointer<Float>
        var ldc: Int
        var cLast: Int
        /// Lanes of the last vector below `fresh` were written by an earlier vector: keep them.
        var fresh: Int
        /// Columns of the last vector when `n < 16` (lane-by-lane stores), else 16.
        var count: Int
        /// Bias for this tile's columns (same offsets as C), or nil.
        var bias: UnsafePointer<Float>?
        var accumulate: Bool
        var relu: Bool
    }

    static func product(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
        b: UnsafePointer<Float>, ldb: Int, transposedB: Bool,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        epilogue: Epilogue
    ) {
        if m <= 0 || n <= 0 { return }
        // Pack when B must be turned around, when its rows are too short for full-width loads,
        // or when its rows are 2 KiB or more apart (a panel's rows then fall into a few L1 sets
        // and evict each other; measured at 256 × 1024 × 1024: 191 → 223 GFLOP/s). Closer rows
        // are read in place: there the copy costs more than it saves (32 × 256 × 64: 4.6 µs in
        // place, 5.7 µs packed).
        let pack = transposedB || n < width || (n > tileColumns && ldb >= 512 && m >= 4 * tileRows && k >= width)
        if pack {
            packedProduct(m: m, n: n, k: k, a: a, rowStride: rowStride, depthStride: depthStride,
                          b: b, ldb: ldb, transposedB: transposedB, c: c, ldc: ldc, epilogue: epilogue)
        } else {
            sweep(m: m, n: n, k: k, a: a, rowStride: rowStride, depthStride: depthStride,
                  b: b, ldb: ldb, transposedB: false, c: c, ldc: ldc, epilogue: epilogue, panel: nil)
        }
    }

    /// The packed path: a 32 KiB panel on the stack (no heap allocation, nothing shared between
    /// threads). It is not zeroed: packing writes every float the kernels then read, and any
    /// bit pattern is a valid `Float` (zeroing it cost 2% of a default step, measured).
    @inline(never)
    static func packedProduct(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
        b: UnsafePointer<Float>, ldb: Int, transposedB: Bool,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        epilogue: Epilogue
    ) {
        var storage = InlineArray<512, Vector> { (span: inout OutputSpan<Vector>) in  // blockDepth × 64 floats
            span.withUnsafeMutableBufferPointer { buffer, initialized in initialized = buffer.count }
        }
        withUnsafeMutablePointer(to: &storage) { raw in
            let panel = UnsafeMutableRawPointer(raw).assumingMemoryBound(to: Float.self)
            sweep(m: m, n: n, k: k, a: a, rowStride: rowStride, depthStride: depthStride,
                  b: b, ldb: ldb, transposedB: transposedB, c: c, ldc: ldc, epilogue: epilogue, panel: panel)
        }
    }

    /// Depth blocks outermost (the rows of A they touch stay in L2 across column panels), then
    /// 64-column panels (packed into `panel` if given), then balanced row tiles of 5–6 rows.
    @inline(always)
    static func sweep(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
        b: UnsafePointer<Float>, ldb: Int, transposedB: Bool,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        epilogue: Epilogue, panel: UnsafeMutablePointer<Float>?
    ) {
        let transposedA = rowStride == 1 && m > 1
        // Depth blocks of equal size (a multiple of 16 where possible, for the 16 × 16 transposes).
        let blocks = Swift.max(1, (k + blockDepth - 1) / blockDepth)
        var depth = (k + blocks - 1) / blocks
        if blocks > 1 { depth = Swift.min(blockDepth, (depth + 15) & ~15) }
        let rowTiles = (m + tileRows - 1) / tileRows
        let shortRows = m / rowTiles, tallTiles = m % rowTiles

        var p0 = 0
        repeat {
            let kb = Swift.min(depth, k - p0)
            let first = p0 == 0, last = p0 + kb >= k
            var j0 = 0
            while j0 < n {
                let vectors = Swift.min(tileVectors, (n - j0 + width - 1) / width)
                // The last vector ends at column n when n ≥ 16 (shifted back over written lanes).
                let lastStart = n >= width ? Swift.min(j0 + width * (vectors - 1), n - width) : 0
                let fresh = j0 + width * (vectors - 1) - lastStart
                var tileB: UnsafePointer<Float>, tileLdb: Int, bLast: Int
                if let panel {
                    if transposedB {
                        packTransposed(b, ldb: ldb, p0: p0, depth: kb, j0: j0, vectors: vectors, lastStart: lastStart, n: n, into: panel)
                    } else {
                        packRows(b, ldb: ldb, p0: p0, depth: kb, j0: j0, vectors: vectors, lastStart: lastStart, n: n, into: panel)
                    }
                    tileB = UnsafePointer(panel)
                    tileLdb = width * vectors
                    bLast = width * (vectors - 1)
                } else {
                    tileB = b + p0 * ldb + j0
                    tileLdb = ldb
                    bLast = lastStart - j0
                }
                var args = TileArguments(
                    k: kb, a: a + p0 * depthStride, rowStride: rowStride, depthStride: depthStride,
                    b: tileB, ldb: tileLdb, bLast: bLast,
                    c: c + j0, ldc: ldc, cLast: lastStart - j0, fresh: fresh, count: Swift.min(width, n),
                    bias: last ? epilogue.bias.map { $0 + j0 } : nil,
                    accumulate: epilogue.accumulate || !first, relu: last && epilogue.relu)
                for t in 0..<rowTiles {
                    let rows = shortRows + (t < tallTiles ? 1 : 0)
                    tile(rows, vectors, transposedA, args)
                    args.a += rows * rowStride
                    args.c += rows * ldc
                }
                j0 += tileColumns
            }
            p0 += kb
        } while p0 < k
    }

    /// Copies `depth` rows of B (from row `p0`) into the panel, 16·vectors floats per row, the
    /// last vector from `lastStart` (zero-padded past `n` when `n < 16`).
    @inline(never)
    static func packRows(_ b: UnsafePointer<Float>, ldb: Int, p0: Int, depth: Int, j0: Int, vectors: Int, lastStart: Int,
                         n: Int, into panel: UnsafeMutablePointer<Float>) {
        let stride = width * vectors
        for p in 0..<depth {
            let source = b + (p0 + p) * ldb
            let row = panel + p * stride
            for v in 0..<(vectors - 1) { store(load(source + j0 + width * v), row + width * v) }
            store(load(source + lastStart, n), row + width * (vectors - 1))
        }
    }

    /// The panel of `B(p, j) = Bt[j·ldb + p]`: 16 rows of Bt are loaded, transposed in registers
    /// and stored as 16 panel rows. A depth that is not a multiple of 16 transposes one more block
    /// that ends at the block's last row and keeps only its new rows.
    @inline(never)
    static func packTransposed(_ bt: UnsafePointer<Float>, ldb: Int, p0: Int, depth: Int, j0: Int, vectors: Int,
                               lastStart: Int, n: Int, into panel: UnsafeMutablePointer<Float>) {
        let stride = width * vectors
        if n < width || depth < width {
            for p in 0..<depth {
                for v in 0..<vectors {
                    let column = v == vectors - 1 ? lastStart : j0 + width * v
                    let out = panel + p * stride + width * v
                    for l in 0..<width {
                        out[l] = column + l < n ? bt[(column + l) * ldb + p0 + p] : 0
                    }
                }
            }
            return
        }
        for v in 0..<vectors {
            let column = v == vectors - 1 ? lastStart : j0 + width * v
            let source = bt + column * ldb + p0
            let out = panel + width * v
            var q = 0
            while q + width <= depth {
                transpose16(source + q, ldb, into: out + q * stride, stride, skip: 0)
                q += width
            }
            if q < depth {
                let start = depth - width
                transpose16(source + start, ldb, into: out + start * stride, stride, skip: q - start)
            }
        }
    }

    // MARK: - The micro-kernel

    /// A compile-time count: the tile shape is a pair of these type parameters, so every shape
    /// gets its own specialised copy of the kernel with the shape as constants (unused
    /// accumulators vanish, the loops over rows and vectors disappear).
    protocol Count { static var value: Int { get } }
    enum One: Count { static var value: Int { 1 } }
    enum Two: Count { static var value: Int { 2 } }
    enum Three: Count { static var value: Int { 3 } }
    enum Four: Count { static var value: Int { 4 } }
    enum Five: Count { static var value: Int { 5 } }
    enum Six: Count { static var value: Int { 6 } }
    /// How A is addressed: `a(i, p)` from one pointer per row, or (A transposed, `rowStride` 1)
    /// from one pointer per depth step, the tile's rows adjacent.
    protocol Addressing { static var transposed: Bool { get } }
    enum RowsOfA: Addressing { static var transposed: Bool { false } }
    enum ColumnsOfA: Addressing { static var transposed: Bool { true } }

    /// Dispatches to one of 48 specialisations: rows 1…6 × vectors 1…4 × addressing of A.
    @inline(never)
    static func tile(_ rows: Int, _ vectors: Int, _ transposedA: Bool, _ g: TileArguments) {
        if transposedA {
            switch vectors {
            case 4: tileRows(rows, Four.self, ColumnsOfA.self, g)
            case 3: tileRows(rows, Three.self, ColumnsOfA.self, g)
            case 2: tileRows(rows, Two.self, ColumnsOfA.self, g)
            default: tileRows(rows, One.self, ColumnsOfA.self, g)
            }
        } else {
            switch vectors {
            case 4: tileRows(rows, Four.self, RowsOfA.self, g)
            case 3: tileRows(rows, Three.self, RowsOfA.self, g)
            case 2: tileRows(rows, Two.self, RowsOfA.self, g)
            default: tileRows(rows, One.self, RowsOfA.self, g)
            }
        }
    }

    @inline(always)
    static func tileRows<V: Count, A: Addressing>(_ rows: Int, _ v: V.Type, _ a: A.Type, _ g: TileArguments) {
        switch rows {
        case 6: kernel(Six.self, v, a, g)
        case 5: kernel(Five.self, v, a, g)
        case 4: kernel(Four.self, v, a, g)
        case 3: kernel(Three.self, v, a, g)
        case 2: kernel(Two.self, v, a, g)
        default: kernel(One.self, v, a, g)
        }
    }

    /// The accumulators of one tile: `R` rows × `V` vectors (row-major names `c<row><vector>`).
    /// A local value of this type lives entirely in registers once `R` and `V` are constants.
    struct Accumulators {
        var c00 = Vector(), c01 = Vector(), c02 = Vector(), c03 = Vector()
        var c10 = Vector(), c11 = Vector(), c12 = Vector(), c13 = Vector()
        var c20 = Vector(), c21 = Vector(), c22 = Vector(), c23 = Vector()
        var c30 = Vector(), c31 = Vector(), c32 = Vector(), c33 = Vector()
        var c40 = Vector(), c41 = Vector(), c42 = Vector(), c43 = Vector()
        var c50 = Vector(), c51 = Vector(), c52 = Vector(), c53 = Vector()

        /// One step of the depth: row `r` of the tile += `x_r · [b0 b1 b2 b3]`.
        @inline(always)
        mutating func update(_ R: Int, _ V: Int, _ x: (Float, Float, Float, Float, Float, Float),
                             _ b0: Vector, _ b1: Vector, _ b2: Vector, _ b3: Vector) {
            do {
                let s = Vector(repeating: x.0)
                c00.addProduct(s, b0)
                if V > 1 { c01.addProduct(s, b1) }
                if V > 2 { c02.addProduct(s, b2) }
                if V > 3 { c03.addProduct(s, b3) }
            }
            if R > 1 {
                let s = Vector(repeating: x.1)
                c10.addProduct(s, b0)
                if V > 1 { c11.addProduct(s, b1) }
                if V > 2 { c12.addProduct(s, b2) }
                if V > 3 { c13.addProduct(s, b3) }
            }
            if R > 2 {
                let s = Vector(repeating: x.2)
                c20.addProduct(s, b0)
                if V > 1 { c21.addProduct(s, b1) }
                if V > 2 { c22.addProduct(s, b2) }
                if V > 3 { c23.addProduct(s, b3) }
            }
            if R > 3 {
                let s = Vector(repeating: x.3)
                c30.addProduct(s, b0)
                if V > 1 { c31.addProduct(s, b1) }
                if V > 2 { c32.addProduct(s, b2) }
                if V > 3 { c33.addProduct(s, b3) }
            }
            if R > 4 {
                let s = Vector(repeating: x.4)
                c40.addProduct(s, b0)
                if V > 1 { c41.addProduct(s, b1) }
                if V > 2 { c42.addProduct(s, b2) }
                if V > 3 { c43.addProduct(s, b3) }
            }
            if R > 5 {
                let s = Vector(repeating: x.5)
                c50.addProduct(s, b0)
                if V > 1 { c51.addProduct(s, b1) }
                if V > 2 { c52.addProduct(s, b2) }
                if V > 3 { c53.addProduct(s, b3) }
            }
        }

    }

    /// `R × V` tile: the depth loop, then bias, accumulate, ReLU and the stores.
    @inline(never)
    static func kernel<Rows: Count, Vectors: Count, A: Addressing>(_: Rows.Type, _: Vectors.Type, _: A.Type, _ g: TileArguments) {
        let R = Rows.value, V = Vectors.value, transposedA = A.transposed
        var acc = Accumulators()
        let o0 = V == 1 ? g.bLast : 0
        let o1 = V == 2 ? g.bLast : width
        let o2 = V == 3 ? g.bLast : 2 * width
        let o3 = g.bLast
        var bp = g.b
        let ldb = g.ldb, depthStride = g.depthStride
        if transposedA {
            // a(i, p) = A[p·depthStride + i]: the tile's R scalars are adjacent.
            var ap = g.a
            for _ in 0..<g.k {
                let b0 = load(bp + o0)
                let b1 = V > 1 ? load(bp + o1) : Vector()
                let b2 = V > 2 ? load(bp + o2) : Vector()
                let b3 = V > 3 ? load(bp + o3) : Vector()
                acc.update(R, V, (ap[0], R > 1 ? ap[1] : 0, R > 2 ? ap[2] : 0, R > 3 ? ap[3] : 0,
                                  R > 4 ? ap[4] : 0, R > 5 ? ap[5] : 0), b0, b1, b2, b3)
                ap += depthStride
                bp += ldb
            }
        } else {
            // a(i, p) = A[i·rowStride + p·depthStride]: one pointer per row.
            let rs = g.rowStride
            let a0 = g.a, a1 = g.a + rs, a2 = g.a + 2 * rs, a3 = g.a + 3 * rs, a4 = g.a + 4 * rs, a5 = g.a + 5 * rs
            var o = 0
            for _ in 0..<g.k {
                let b0 = load(bp + o0)
                let b1 = V > 1 ? load(bp + o1) : Vector()
                let b2 = V > 2 ? load(bp + o2) : Vector()
                let b3 = V > 3 ? load(bp + o3) : Vector()
                acc.update(R, V, (a0[o], R > 1 ? a1[o] : 0, R > 2 ? a2[o] : 0, R > 3 ? a3[o] : 0,
                                  R > 4 ? a4[o] : 0, R > 5 ? a5[o] : 0), b0, b1, b2, b3)
                o += depthStride
                bp += ldb
            }
        }

        // Epilogue. Column offsets in C: 0, 16, 32 for the first vectors, cLast for the last.
        let c0 = V == 1 ? g.cLast : 0
        let c1 = V == 2 ? g.cLast : width
        let c2 = V == 3 ? g.cLast : 2 * width
        let c3 = g.cLast
        let count = g.count
        // Constants only: the nested functions below capture them, and a captured `var` could
        // be boxed on the heap.
        let b = g.bias
        let bias0 = b.map { load($0 + c0, V == 1 ? count : width) } ?? Vector()
        let bias1 = V > 1 ? b.map { load($0 + c1) } ?? Vector() : Vector()
        let bias2 = V > 2 ? b.map { load($0 + c2) } ?? Vector() : Vector()
        let bias3 = V > 3 ? b.map { load($0 + c3) } ?? Vector() : Vector()
        let hasBias = g.bias != nil, accumulate = g.accumulate, relu = g.relu, fresh = g.fresh

        @inline(always)
        func finish(_ value: Vector, _ bias: Vector, _ p: UnsafeMutablePointer<Float>, isLast: Bool) {
            var r = value
            if hasBias { r += bias }
            if isLast && count < width {
                if accumulate { r += load(p, count) }
                if relu { r.replace(with: 0, where: r .< 0) }
                store(r, p, count)
                return
            }
            let shifted = isLast && fresh > 0
            let old = accumulate || shifted ? load(p) : Vector()
            if accumulate { r += old }
            if relu { r.replace(with: 0, where: r .< 0) }
            if shifted { r = keeping(old, below: fresh, in: r) }
            store(r, p)
        }

        @inline(always)
        func finishRow(_ v0: Vector, _ v1: Vector, _ v2: Vector, _ v3: Vector, _ row: UnsafeMutablePointer<Float>) {
            finish(v0, bias0, row + c0, isLast: V == 1)
            if V > 1 { finish(v1, bias1, row + c1, isLast: V == 2) }
            if V > 2 { finish(v2, bias2, row + c2, isLast: V == 3) }
            if V > 3 { finish(v3, bias3, row + c3, isLast: true) }
        }
        let c = g.c, ldc = g.ldc
        finishRow(acc.c00, acc.c01, acc.c02, acc.c03, c)
        if R > 1 { finishRow(acc.c10, acc.c11, acc.c12, acc.c13, c + ldc) }
        if R > 2 { finishRow(acc.c20, acc.c21, acc.c22, acc.c23, c + 2 * ldc) }
        if R > 3 { finishRow(acc.c30, acc.c31, acc.c32, acc.c33, c + 3 * ldc) }
        if R > 4 { finishRow(acc.c40, acc.c41, acc.c42, acc.c43, c + 4 * ldc) }
        if R > 5 { finishRow(acc.c50, acc.c51, acc.c52, acc.c53, c + 5 * ldc) }
    }

    // MARK: - Transposes

    /// Rows `2i`, `2i+1` → the even lanes of both, then the odd lanes of both. Four rounds of
    /// this perfect unshuffle rotate the 8-bit index (row, column) of a 16 × 16 block by 4
    /// bits, which is a transpose; each round is 16 two-source permutes (`vpermt2ps`).
    @inline(always)
    static func unzip(_ a: Vector, _ b: Vector) -> (Vector, Vector) {
        let both = SIMD32(lowHalf: a, highHalf: b)
        return (both.evenHalf, both.oddHalf)
    }

    /// `out[i·ldo + j] = in[j·ldi + i]` for a 16 × 16 block, storing output rows `skip…15` only.
    @inline(always)
    static func transpose16(_ input: UnsafePointer<Float>, _ ldi: Int, into output: UnsafeMutablePointer<Float>, _ ldo: Int,
                            skip: Int) {
        var r0 = load(input), r1 = load(input + ldi), r2 = load(input + 2 * ldi), r3 = load(input + 3 * ldi)
        var r4 = load(input + 4 * ldi), r5 = load(input + 5 * ldi), r6 = load(input + 6 * ldi), r7 = load(input + 7 * ldi)
        var r8 = load(input + 8 * ldi), r9 = load(input + 9 * ldi), r10 = load(input + 10 * ldi), r11 = load(input + 11 * ldi)
        var r12 = load(input + 12 * ldi), r13 = load(input + 13 * ldi), r14 = load(input + 14 * ldi), r15 = load(input + 15 * ldi)
        for _ in 0..<4 {
            let (n0, n8) = unzip(r0, r1), (n1, n9) = unzip(r2, r3)
            let (n2, n10) = unzip(r4, r5), (n3, n11) = unzip(r6, r7)
            let (n4, n12) = unzip(r8, r9), (n5, n13) = unzip(r10, r11)
            let (n6, n14) = unzip(r12, r13), (n7, n15) = unzip(r14, r15)
            r0 = n0; r1 = n1; r2 = n2; r3 = n3; r4 = n4; r5 = n5; r6 = n6; r7 = n7
            r8 = n8; r9 = n9; r10 = n10; r11 = n11; r12 = n12; r13 = n13; r14 = n14; r15 = n15
        }
        if skip == 0 {
            store(r0, output); store(r1, output + ldo); store(r2, output + 2 * ldo); store(r3, output + 3 * ldo)
            store(r4, output + 4 * ldo); store(r5, output + 5 * ldo); store(r6, output + 6 * ldo); store(r7, output + 7 * ldo)
            store(r8, output + 8 * ldo); store(r9, output + 9 * ldo); store(r10, output + 10 * ldo)
            store(r11, output + 11 * ldo); store(r12, output + 12 * ldo); store(r13, output + 13 * ldo)
            store(r14, output + 14 * ldo); store(r15, output + 15 * ldo)
        } else {
            transposeTail(r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, r14, r15, output, ldo, skip)
        }
    }

    @inline(always)
    static func transposeTail(_ r0: Vector, _ r1: Vector, _ r2: Vector, _ r3: Vector, _ r4: Vector, _ r5: Vector,
                              _ r6: Vector, _ r7: Vector, _ r8: Vector, _ r9: Vector, _ r10: Vector, _ r11: Vector,
                              _ r12: Vector, _ r13: Vector, _ r14: Vector, _ r15: Vector,
                              _ output: UnsafeMutablePointer<Float>, _ ldo: Int, _ skip: Int) {
        if skip <= 0 { store(r0, output) }
        if skip <= 1 { store(r1, output + ldo) }
        if skip <= 2 { store(r2, output + 2 * ldo) }
        if skip <= 3 { store(r3, output + 3 * ldo) }
        if skip <= 4 { store(r4, output + 4 * ldo) }
        if skip <= 5 { store(r5, output + 5 * ldo) }
        if skip <= 6 { store(r6, output + 6 * ldo) }
        if skip <= 7 { store(r7, output + 7 * ldo) }
        if skip <= 8 { store(r8, output + 8 * ldo) }
        if skip <= 9 { store(r9, output + 9 * ldo) }
        if skip <= 10 { store(r10, output + 10 * ldo) }
        if skip <= 11 { store(r11, output + 11 * ldo) }
        if skip <= 12 { store(r12, output + 12 * ldo) }
        if skip <= 13 { store(r13, output + 13 * ldo) }
        if skip <= 14 { store(r14, output + 14 * ldo) }
        store(r15, output + 15 * ldo)
    }

    /// `out[cols × rows] = in[rows × cols]ᵀ`, in 16 × 16 register blocks; the last block in each
    /// direction is shifted back to end at the edge (it rewrites a few elements with the same
    /// values), so only matrices with fewer than 16 rows or columns take the scalar loop.
    public static func transpose(_ input: UnsafePointer<Float>, rows: Int, cols: Int, into output: UnsafeMutablePointer<Float>) {
        if rows < width || cols < width {
            for r in 0..<rows {
                for c in 0..<cols { output[c * rows + r] = input[r * cols + c] }
            }
            return
        }
        var r0 = 0
        while r0 < rows {
            let r = Swift.min(r0, rows - width)
            var c0 = 0
            while c0 < cols {
                let c = Swift.min(c0, cols - width)
                transpose16(input + r * cols + c, cols, into: output + c * rows + r, rows, skip: 0)
                c0 += width
            }
            r0 += width
        }
    }

    // MARK: - Elementwise and reductions

    /// `sums[j] += Σ_i x[i, j]` over `rows` rows of `cols` columns (bias gradients).
    public static func addColumnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into sums: UnsafeMutablePointer<Float>) {
        columnSums(x, rows: rows, cols: cols, into: sums, accumulate: true)
    }

    /// `sums[j] (+)= Σ_i x[i, j]`: four vectors of columns at a time, the last vector shifted back
    /// to end at `cols` (blended with the lanes already written).
    @inline(always)
    static func columnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into sums: UnsafeMutablePointer<Float>,
                           accumulate: Bool) {
        if cols < width {
            var acc = accumulate ? load(sums, cols) : Vector()
            for i in 0..<rows { acc += load(x + i * cols, cols) }
            store(acc, sums, cols)
            return
        }
        var j = 0
        while j < cols {
            let start = Swift.min(j, cols - width)
            var s0 = Vector(), s1 = Vector(), s2 = Vector(), s3 = Vector()
            var i = 0
            let p = x + start
            while i + 4 <= rows {
                s0 += load(p + i * cols); s1 += load(p + (i + 1) * cols)
                s2 += load(p + (i + 2) * cols); s3 += load(p + (i + 3) * cols)
                i += 4
            }
            while i < rows { s0 += load(p + i * cols); i += 1 }
            var s = (s0 + s1) + (s2 + s3)
            let old = load(sums + start)
            if accumulate { s += old }
            if start < j { s = keeping(old, below: j - start, in: s) }
            store(s, sums + start)
            j += width
        }
    }

    /// ReLU's backward through its output: `g[i] = 0` wherever `y[i] ≤ 0` (ReLU passed nothing).
    public static func maskByPositive(_ g: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, count: Int) {
        var i = 0
        while i + width <= count {
            var v = load(g + i)
            v.replace(with: 0, where: load(y + i) .<= 0)
            store(v, g + i)
            i += width
        }
        while i < count {
            if y[i] <= 0 { g[i] = 0 }
            i += 1
        }
    }

    /// `y[r, :] += bias` and, if `relu`, clamp at zero, for `rows` rows of `cols` columns.
    public static func addBias(_ y: UnsafeMutablePointer<Float>, rows: Int, cols: Int, bias: UnsafePointer<Float>?, relu: Bool) {
        for r in 0..<rows {
            let row = y + r * cols
            var j = 0
            while j < cols {
                let w = Swift.min(width, cols - j)
                var v = load(row + j, w)
                if let bias { v += load(bias + j, w) }
                if relu { v.replace(with: 0, where: v .< 0) }
                store(v, row + j, w)
                j += width
            }
        }
    }

    /// `y[i] = x[i] * s` over `count` floats.
    public static func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by s: Float) {
        var i = 0
        let sv = Vector(repeating: s)
        while i + width <= count { store(load(x + i) * sv, x + i); i += width }
        while i < count { x[i] *= s; i += 1 }
    }

    /// `y[i] += x[i]` over `count` floats.
    @inline(__always)
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + width <= count { store(load(y + i) + load(x + i), y + i); i += width }
        while i < count { y[i] += x[i]; i += 1 }
    }

    /// `y[i] = x[i]` over `count` floats (a row copy without a call into `memmove`).
    @inline(__always)
    public static func copy(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + width <= count { store(load(x + i), y + i); i += width }
        while i < count { y[i] = x[i]; i += 1 }
    }

    /// `x[i] = 0` over `count` floats.
    public static func zero(_ x: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 4 * width <= count {
            store(Vector(), x + i); store(Vector(), x + i + width)
            store(Vector(), x + i + 2 * width); store(Vector(), x + i + 3 * width)
            i += 4 * width
        }
        while i + width <= count { store(Vector(), x + i); i += width }
        while i < count { x[i] = 0; i += 1 }
    }

    // MARK: - Embedding rows

    /// `out[t] = table[ids[t]]` for `count` rows of `dim` floats (ids stored as floats).
    public static func gatherRows(_ table: UnsafePointer<Float>, dim: Int, ids: UnsafePointer<Float>, count: Int,
                                  into out: UnsafeMutablePointer<Float>) {
        if dim == width {
            for t in 0..<count { store(load(table + Int(ids[t]) * width), out + t * width) }
        } else {
            for t in 0..<count { copy(table + Int(ids[t]) * dim, into: out + t * dim, count: dim) }
        }
    }

    /// Independent partial tables the scatter spreads its tokens over.
    public static let scatterStreams = 4

    /// `table[ids[t]] += rows[t]` for `count` rows of `dim` floats.
    ///
    /// Consecutive tokens are often the same (the left padding of every context), and adding
    /// into one row again and again is a chain through memory: each add waits for the previous
    /// store (~10 cycles). With `scratch` (`(scatterStreams − 1) · rows · dim` floats) token `t`
    /// goes to partial table `t mod 4` (table 0 is `table` itself), so four chains run side by
    /// side; the partial tables are then added into `table` and left zeroed for next time.
    public static func scatterAddRows(_ rows: UnsafePointer<Float>, dim: Int, ids: UnsafePointer<Float>, count: Int,
                                      into table: UnsafeMutablePointer<Float>, rows tableRows: Int,
                                      scratch: UnsafeMutablePointer<Float>?) {
        guard let scratch, count >= 4 * scatterStreams else {
            for t in 0..<count { add(rows + t * dim, into: table + Int(ids[t]) * dim, count: dim) }
            return
        }
        let size = tableRows * dim
        let t1 = scratch, t2 = scratch + size, t3 = scratch + 2 * size
        var t = 0
        if dim == width {
            @inline(always)
            func add16(_ row: Int, _ into: UnsafeMutablePointer<Float>) {
                let p = into + Int(ids[row]) * width
                store(load(p) + load(rows + row * width), p)
            }
            while t + 4 <= count {
                add16(t, table); add16(t + 1, t1); add16(t + 2, t2); add16(t + 3, t3)
                t += 4
            }
            while t < count { add16(t, table); t += 1 }
        } else {
            while t + 4 <= count {
                add(rows + t * dim, into: table + Int(ids[t]) * dim, count: dim)
                add(rows + (t + 1) * dim, into: t1 + Int(ids[t + 1]) * dim, count: dim)
                add(rows + (t + 2) * dim, into: t2 + Int(ids[t + 2]) * dim, count: dim)
                add(rows + (t + 3) * dim, into: t3 + Int(ids[t + 3]) * dim, count: dim)
                t += 4
            }
            while t < count { add(rows + t * dim, into: table + Int(ids[t]) * dim, count: dim); t += 1 }
        }
        // table += t1 + t2 + t3; the partial tables back to zero.
        var i = 0
        while i + width <= size {
            store(load(table + i) + ((load(t1 + i) + load(t2 + i)) + load(t3 + i)), table + i)
            store(Vector(), t1 + i); store(Vector(), t2 + i); store(Vector(), t3 + i)
            i += width
        }
        while i < size {
            table[i] += (t1[i] + t2[i]) + t3[i]
            t1[i] = 0; t2[i] = 0; t3[i] = 0
            i += 1
        }
    }

    // MARK: - Optimizer updates

    /// `p −= lr · (g + wd · p)` over `count` floats: full vectors, then one partial vector.
    /// (With `wd = 0` the product `wd · p` is skipped: `g + 0·p = g` for every finite `p`.)
    public static func sgd(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, count: Int,
                           learningRate: Float, weightDecay: Float) {
        let lr = Vector(repeating: learningRate), wd = Vector(repeating: weightDecay)
        let decay = weightDecay != 0
        @inline(always)
        func update(_ p: Vector, _ g: Vector) -> Vector { decay ? p - lr * (g + wd * p) : p - lr * g }
        var i = 0
        while i + 2 * width <= count {
            let p0 = load(p + i), p1 = load(p + i + width)
            let g0 = load(g + i), g1 = load(g + i + width)
            store(update(p0, g0), p + i)
            store(update(p1, g1), p + i + width)
            i += 2 * width
        }
        while i < count {
            let w = Swift.min(width, count - i)
            store(update(load(p + i, w), load(g + i, w)), p + i, w)
            i += width
        }
    }

    /// One Adam(W) update over `count` floats (see ``Optimizer``): `correction1 = 1/(1 − β₁ᵗ)`,
    /// `correction2 = 1/(1 − β₂ᵗ)`.
    public static func adam(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>,
                            _ m1: UnsafeMutablePointer<Float>, _ m2: UnsafeMutablePointer<Float>, count: Int,
                            learningRate: Float, beta1: Float, beta2: Float, correction1: Float, correction2: Float,
                            epsilon: Float, weightDecay: Float) {
        let lr = Vector(repeating: learningRate), wd = Vector(repeating: weightDecay)
        let b1 = Vector(repeating: beta1), b2 = Vector(repeating: beta2)
        let c1 = Vector(repeating: 1 - beta1), c2 = Vector(repeating: 1 - beta2)
        let k1 = Vector(repeating: correction1), k2 = Vector(repeating: correction2)
        let eps = Vector(repeating: epsilon)
        var i = 0
        while i < count {
            let w = Swift.min(width, count - i)
            let pv = load(p + i, w), gv = load(g + i, w)
            let m = b1 * load(m1 + i, w) + c1 * gv
            let v = b2 * load(m2 + i, w) + c2 * (gv * gv)
            let update = (m * k1) / ((v * k2).squareRoot() + eps)
            store(m, m1 + i, w)
            store(v, m2 + i, w)
            store(pv - lr * (update + wd * pv), p + i, w)
            i += width
        }
    }

    // MARK: - Exponential and softmax

    /// `eˣ` lane by lane, to about 1 ulp, without a call per element.
    ///
    /// `eˣ = 2ⁿ · eʳ` with `n = round(x·log₂e)` and `r = x − n·ln 2` (Cody–Waite: ln 2 split in a
    /// part exact in few bits and a correction, both applied with FMAs), `|r| ≤ ln 2 / 2`, where a
    /// degree-6 minimax polynomial (Cephes' `expf`) is accurate to about 1 ulp. `2ⁿ` is built in
    /// the exponent bits as `2^⌊n/2⌋ · 2^(n−⌊n/2⌋)`, two normal numbers for any `n` in
    /// [−152, 128], so overflow gives +∞ and the subnormal range is rounded once, by the last
    /// multiply. `x` is clamped to [−105, 89] first (e⁻¹⁰⁵ rounds to 0, e⁸⁹ to +∞); NaN stays NaN.
    public static func exp(_ x: Vector) -> Vector { expVector(x) }

    @inline(always)
    static func expVector(_ x: Vector) -> Vector {
        var t = x
        t.replace(with: -105, where: x .< -105)
        t.replace(with: 89, where: x .> 89)
        // n = round(t·log₂e) by the 1.5·2²³ trick: the integer lands in the low mantissa bits.
        let magic = Vector(repeating: 12582912)
        let shifted = magic.addingProduct(t, Vector(repeating: 1.44269504088896341))
        let n = shifted - magic
        var r = t.addingProduct(n, Vector(repeating: -0.693359375))
        r = r.addingProduct(n, Vector(repeating: 2.12194440e-4))
        var p = Vector(repeating: 1.9875691500e-4)
        p = Vector(repeating: 1.3981999507e-3).addingProduct(p, r)
        p = Vector(repeating: 8.3334519073e-3).addingProduct(p, r)
        p = Vector(repeating: 4.1665795894e-2).addingProduct(p, r)
        p = Vector(repeating: 1.6666665459e-1).addingProduct(p, r)
        p = Vector(repeating: 5.0000001201e-1).addingProduct(p, r)
        let er = (r + Vector(repeating: 1)).addingProduct(p, r * r)
        let bits = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- unsafeBitCast(magic, to: SIMD16<Int32>.self)
        let half = bits &>> 1
        let scale1 = unsafeBitCast((half &+ 127) &<< 23, to: Vector.self)
        let scale2 = unsafeBitCast((bits &- half &+ 127) &<< 23, to: Vector.self)
        return er * scale1 * scale2
    }

    /// `eˣ` over `count` floats, in place.
    public static func exp(_ x: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + width <= count { store(expVector(load(x + i)), x + i); i += width }
        if i < count { store(expVector(load(x + i, count - i)), x + i, count - i) }
    }

    /// Softmax of one row of `cols` logits into `p`; returns `(max, Σ e^(x − max))`, from which
    /// the caller forms `log Σ eˣ = log(sum) + max`.
    public static func softmax(_ x: UnsafePointer<Float>, cols: Int, into p: UnsafeMutablePointer<Float>) -> (max: Float, sum: Float) {
        softmaxAnyWidth(x, cols: cols, into: p)
    }

    /// Softmax of `rows` rows of `cols` logits into `p`, and the summed cross-entropy against
    /// `targets`: `Σ_r log Σ_j e^(x[r,j] − m_r) − (x[r, target_r] − m_r)`, `m_r` the row's max.
    ///
    /// Three passes over the (small, L1-resident) matrix, each a short loop the compiler keeps
    /// in full-width registers: (1) per row, `m_r` and `p = x − m_r`; (2) `p = eᵖ` over the
    /// whole matrix at once; (3) per row, the sum `z_r`, `p /= z_r` and `log z_r`. Rows of 16…64
    /// columns are a few vectors each, the last one shifted back to end at `cols` (its
    /// overlapping lanes kept out of the sum); other widths go through ``softmaxAnyWidth``.
    public static func softmaxCrossEntropy(_ x: UnsafePointer<Float>, rows: Int, cols: Int, targets: UnsafePointer<Int32>,
                                           into p: UnsafeMutablePointer<Float>) -> Float {
        if cols < width || cols > 4 * width {
            var total: Float = 0
            for r in 0..<rows {
                let row = x + r * cols
                let (m, z) = softmaxAnyWidth(row, cols: cols, into: p + r * cols)
                total += logf(z) + m - row[Int(targets[r])]
            }
            return total
        }
        let shifted = subtractRowMax(x, rows: rows, cols: cols, into: p, targets: targets)
        exp(p, count: rows * cols)
        return normalizeRows(p, rows: rows, cols: cols) - shifted
    }

    /// `g = (p − onehot(target)) · scale` in place, row by row.
    public static func crossEntropyGradient(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                                            targets: UnsafePointer<Int32>, scale s: Float) {
        for r in 0..<rows { p[r * cols + Int(targets[r])] -= 1 }
        scale(p, count: rows * cols, by: s)
    }

    /// Pass 1: `p[r, :] = x[r, :] − max_r`; returns `Σ_r p[r, target_r]`.
    @inline(never)
    static func subtractRowMax(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into p: UnsafeMutablePointer<Float>,
                               targets: UnsafePointer<Int32>) -> Float {
        let vectors = (cols + width - 1) / width, last = cols - width
        var total: Float = 0
        for r in 0..<rows {
            let row = x + r * cols, out = p + r * cols
            var m = load(row + last)
            var j = 0
            while j < last { m = larger(m, load(row + j)); j += width }
            let mv = maxAcrossLanes(m)
            j = 0
            for _ in 0..<(vectors - 1) { store(load(row + j) - mv, out + j); j += width }
            store(load(row + last) - mv, out + last)
            total += out[Int(targets[r])]
        }
        return total
    }

    /// Pass 3: `p[r, :] /= z_r` with `z_r = Σ_j p[r, j]`; returns `Σ_r log z_r`.
    @inline(never)
    static func normalizeRows(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int) -> Float {
        let vectors = (cols + width - 1) / width, last = cols - width
        // The last vector's lanes below `fresh` belong to the previous vector.
        let fresh = width * (vectors - 1) - last
        var keep = Vector(repeating: 1)
        for l in 0..<fresh { keep[l] = 0 }
        var total: Float = 0
        for r in 0..<rows {
            let row = p + r * cols
            var s = load(row + last) * keep
            var j = 0
            for _ in 0..<(vectors - 1) { s += load(row + j); j += width }
            let z = sum(s)
            let inverse = Vector(repeating: 1 / z)
            // Scale the last (shifted) vector first: the others then overwrite the overlap
            // with the same values, never scaling a lane twice.
            let lastValues = load(row + last) * inverse
            j = 0
            var scaled = (Vector(), Vector(), Vector())
            if vectors > 1 { scaled.0 = load(row) * inverse }
            if vectors > 2 { scaled.1 = load(row + width) * inverse }
            if vectors > 3 { scaled.2 = load(row + 2 * width) * inverse }
            store(lastValues, row + last)
            if vectors > 1 { store(scaled.0, row) }
            if vectors > 2 { store(scaled.1, row + width) }
            if vectors > 3 { store(scaled.2, row + 2 * width) }
            total += logf(z)
        }
        return total
    }

    @inline(never)
    static func softmaxAnyWidth(_ x: UnsafePointer<Float>, cols: Int, into p: UnsafeMutablePointer<Float>) -> (max: Float, sum: Float) {
        var mx = -Float.infinity
        var j = 0
        while j < cols {
            let w = Swift.min(width, cols - j)
            var v = load(x + j, w)
            if w < width { v.replace(with: -.infinity, where: laneIndex .>= SIMD16<Int32>(repeating: Int32(w))) }
            let vm = max(v)
            if vm > mx { mx = vm }
            j += width
        }
        let mv = Vector(repeating: mx)
        var s = Vector()
        j = 0
        while j < cols {
            let w = Swift.min(width, cols - j)
            var e = expVector(load(x + j, w) - mv)
            if w < width { e.replace(with: 0, where: laneIndex .>= SIMD16<Int32>(repeating: Int32(w))) }
            store(e, p + j, w)
            s += e
            j += width
        }
        let z = sum(s)
        scale(p, count: cols, by: 1 / z)
        return (mx, z)
    }
}
