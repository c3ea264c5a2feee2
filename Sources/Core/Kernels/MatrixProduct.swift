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
/// The register tile is in `MicroKernel.swift`, the packing of B in `Packing.swift`.
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
/// cost the rest).
extension Kernels {
    /// Depth of a block of the product: a packed `128 × 64` panel of B is 32 KiB (fits L1).
    static let blockDepth = 128

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
    /// `ldb`, `C` with row stride `ldc`. See the notes at the top of this file.
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

    /// `C[m×n] (+)= a·B` with `a` as in ``gemm(m:n:k:a:rowStride:depthStride:b:ldb:c:ldc:epilogue:)``
    /// and B already packed by ``packPanels(_:ldb:n:k:transposed:into:)`` for this `n` and `k`. Bit
    /// for bit the product from B as stored: the same panels, the same sums in the same order.
    public static func gemm(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
        panels: UnsafePointer<Float>,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        epilogue: Epilogue = Epilogue()
    ) {
        if m <= 0 || n <= 0 { return }
        sweep(m: m, n: n, k: k, a: a, rowStride: rowStride, depthStride: depthStride,
              b: panels, ldb: 0, transposedB: false, c: c, ldc: ldc, epilogue: epilogue, panel: nil, panels: panels)
    }

    /// The depth of each block of a product of depth `k`: blocks of equal size, at most
    /// ``blockDepth``, a multiple of 16 where possible (for the 16 × 16 transposes).
    @inline(__always)
    static func depthOfBlocks(_ k: Int) -> Int {
        let blocks = Swift.max(1, (k + blockDepth - 1) / blockDepth)
        let depth = (k + blocks - 1) / blocks
        return blocks > 1 ? Swift.min(blockDepth, (depth + 15) & ~15) : depth
    }

    /// Depth blocks outermost (the rows of A they touch stay in L2 across column panels), then
    /// 64-column panels (packed into `panel` if given, or read from `panels` packed ahead of
    /// time), then balanced row tiles of 5–6 rows.
    @inline(always)
    static func sweep(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
        b: UnsafePointer<Float>, ldb: Int, transposedB: Bool,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        epilogue: Epilogue, panel: UnsafeMutablePointer<Float>?, panels: UnsafePointer<Float>? = nil
    ) {
        let transposedA = rowStride == 1 && m > 1
        let depth = depthOfBlocks(k)
        var packed = panels
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
                if let panels = packed {  // packed ahead of time (``packPanels``), panel after panel
                    tileB = panels
                    tileLdb = width * vectors
                    bLast = width * (vectors - 1)
                    packed = panels + kb * tileLdb
                } else if let panel {
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
}
