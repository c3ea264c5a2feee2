/// The micro-kernel of the matrix products (see `MatrixProduct.swift`): one tile of up to
/// 6 rows × 64 columns of C, over one depth block.
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
extension Kernels {
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
            Self.row(V, x.0, &c00, &c01, &c02, &c03, b0, b1, b2, b3)
            if R > 1 { Self.row(V, x.1, &c10, &c11, &c12, &c13, b0, b1, b2, b3) }
            if R > 2 { Self.row(V, x.2, &c20, &c21, &c22, &c23, b0, b1, b2, b3) }
            if R > 3 { Self.row(V, x.3, &c30, &c31, &c32, &c33, b0, b1, b2, b3) }
            if R > 4 { Self.row(V, x.4, &c40, &c41, &c42, &c43, b0, b1, b2, b3) }
            if R > 5 { Self.row(V, x.5, &c50, &c51, &c52, &c53, b0, b1, b2, b3) }
        }

        /// One row of the tile: `[c0 c1 c2 c3] += x · [b0 b1 b2 b3]`, the first `V` vectors.
        @inline(always)
        static func row(_ V: Int, _ x: Float, _ c0: inout Vector, _ c1: inout Vector, _ c2: inout Vector, _ c3: inout Vector,
                        _ b0: Vector, _ b1: Vector, _ b2: Vector, _ b3: Vector) {
            let s = Vector(repeating: x)
            c0.addProduct(s, b0)
            if V > 1 { c1.addProduct(s, b1) }
            if V > 2 { c2.addProduct(s, b2) }
            if V > 3 { c3.addProduct(s, b3) }
        }
    }

    // MARK: - Loads and stores of the micro-kernel

    /// ``load(_:)``, ``load(_:_:)``, ``store(_:_:)`` and ``store(_:_:_:)`` for the micro-kernel.
    ///
    /// `@inline(always)` inlines a body as written, before optimisation, so the kernel receives
    /// the standard library's `loadUnaligned`/`storeBytes` as calls; once specialised, the kernel
    /// is far too big for the optimiser's inliner, and the calls are left for LLVM. LLVM inlines
    /// them only within one file: release builds compile the files of the module in parallel,
    /// one LLVM module each, and with `-g` these two functions go to the first file whose code
    /// inlined them (`Elementwise.swift`). Left as calls in the depth loop, they cost a spill of
    /// every accumulator: the training step ran 3× slower. `@inline(__always)` inlines a body
    /// after it has been optimised, the standard library's code already inlined into it, so the
    /// kernel gets plain loads and stores whichever file it is in.
    @inline(__always) static func tileLoad(_ p: UnsafePointer<Float>) -> Vector { load(p) }
    @inline(__always) static func tileLoad(_ p: UnsafePointer<Float>, _ count: Int) -> Vector { load(p, count) }
    @inline(__always) static func tileStore(_ v: Vector, _ p: UnsafeMutablePointer<Float>) { store(v, p) }
    @inline(__always) static func tileStore(_ v: Vector, _ p: UnsafeMutablePointer<Float>, _ count: Int) { store(v, p, count) }

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
                let b0 = tileLoad(bp + o0)
                let b1 = V > 1 ? tileLoad(bp + o1) : Vector()
                let b2 = V > 2 ? tileLoad(bp + o2) : Vector()
                let b3 = V > 3 ? tileLoad(bp + o3) : Vector()
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
                let b0 = tileLoad(bp + o0)
                let b1 = V > 1 ? tileLoad(bp + o1) : Vector()
                let b2 = V > 2 ? tileLoad(bp + o2) : Vector()
                let b3 = V > 3 ? tileLoad(bp + o3) : Vector()
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
        let bias0 = b.map { tileLoad($0 + c0, V == 1 ? count : width) } ?? Vector()
        let bias1 = V > 1 ? b.map { tileLoad($0 + c1) } ?? Vector() : Vector()
        let bias2 = V > 2 ? b.map { tileLoad($0 + c2) } ?? Vector() : Vector()
        let bias3 = V > 3 ? b.map { tileLoad($0 + c3) } ?? Vector() : Vector()
        let hasBias = g.bias != nil, accumulate = g.accumulate, relu = g.relu, fresh = g.fresh

        @inline(always)
        func finish(_ value: Vector, _ bias: Vector, _ p: UnsafeMutablePointer<Float>, isLast: Bool) {
            var r = value
            if hasBias { r += bias }
            if isLast && count < width {
                if accumulate { r += tileLoad(p, count) }
                if relu { r.replace(with: 0, where: r .< 0) }
                tileStore(r, p, count)
                return
            }
            let shifted = isLast && fresh > 0
            let old = accumulate || shifted ? tileLoad(p) : Vector()
            if accumulate { r += old }
            if relu { r.replace(with: 0, where: r .< 0) }
            if shifted { r = keeping(old, below: fresh, in: r) }
            tileStore(r, p)
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
}
