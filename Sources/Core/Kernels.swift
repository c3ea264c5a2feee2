/// The numeric kernels: every loop over floats that the layers run lives here.
///
/// The six matrix products of a training step (forward, dW and dX of each Linear) are 98% of its
/// FLOPs. They all reduce to one register-blocked micro-kernel that computes a 4 × 32 tile of
///
///     C[i, j] (+)= Σ_k  a(i, k) · B[k, j]        B row-major, contiguous along j
///
/// where `a(i, k) = A[i·rowStride + k·depthStride]`, so the same code serves `X·W` (A as stored)
/// and `Xᵀ·dY` (A transposed, by swapping the strides). `dY·Wᵀ` transposes W once into a
/// workspace (in·out floats: 1/B of the product's work) and then is the same product again.
/// Each tile keeps 8 SIMD16 accumulators in registers, streams two vectors of B per k and
/// broadcasts four scalars of A. Columns past a multiple of 16 (the vocabulary's 27) are loaded
/// lane by lane; that edge costs a few scalar moves per k, not a separate slow path.
public enum Kernels {
    public typealias Vector = SIMD16<Float>
    public static let width = 16

    @inline(__always)
    static func load(_ p: UnsafePointer<Float>) -> Vector {
        UnsafeRawPointer(p).loadUnaligned(as: Vector.self)
    }

    @inline(__always)
    static func store(_ v: Vector, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vector.self)
    }

    /// Loads `count` lanes (all 16 if `count ≥ 16`), zero elsewhere; never reads past `count`.
    @inline(__always)
    static func load(_ p: UnsafePointer<Float>, _ count: Int) -> Vector {
        if count >= width { return load(p) }
        var v = Vector()
        for j in 0..<count { v[j] = p[j] }
        return v
    }

    /// Stores the first `count` lanes (all 16 if `count ≥ 16`); never writes past `count`.
    @inline(__always)
    static func store(_ v: Vector, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
        if count >= width { store(v, p); return }
        for j in 0..<count { p[j] = v[j] }
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
        var j0 = 0
        while j0 < n {
            let cols = min(2 * width, n - j0)
            var i0 = 0
            while i0 < m {
                let rows = min(4, m - i0)
                tile(rows: rows, cols: cols, k: k,
                     a: a + i0 * rowStride, rowStride: rowStride, depthStride: depthStride,
                     b: b + j0, ldb: ldb, c: c + i0 * ldc + j0, ldc: ldc,
                     bias: epilogue.bias.map { $0 + j0 }, accumulate: epilogue.accumulate, relu: epilogue.relu)
                i0 += 4
            }
            j0 += 2 * width
        }
    }

    /// One tile of at most 4 rows × 32 columns. Rows beyond `rows` repeat the last row's A and
    /// are not stored, so the inner loop has no row branches.
    @inline(__always)
    static func tile(
        rows: Int, cols: Int, k: Int,
        a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
        b: UnsafePointer<Float>, ldb: Int,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        bias: UnsafePointer<Float>?, accumulate: Bool, relu: Bool
    ) {
        let w0 = min(width, cols)
        let w1 = cols - w0
        let a0 = a
        let a1 = a + min(1, rows - 1) * rowStride
        let a2 = a + min(2, rows - 1) * rowStride
        let a3 = a + min(3, rows - 1) * rowStride

        var c00 = Vector(), c01 = Vector(), c10 = Vector(), c11 = Vector()
        var c20 = Vector(), c21 = Vector(), c30 = Vector(), c31 = Vector()

        if w1 > 0 {
            var p = 0
            while p < k {
                let bp = b + p * ldb
                let b0 = load(bp)
                let b1 = load(bp + width, w1)
                let o = p * depthStride
                let x0 = Vector(repeating: a0[o]), x1 = Vector(repeating: a1[o])
                let x2 = Vector(repeating: a2[o]), x3 = Vector(repeating: a3[o])
                c00.addProduct(x0, b0); c01.addProduct(x0, b1)
                c10.addProduct(x1, b0); c11.addProduct(x1, b1)
                c20.addProduct(x2, b0); c21.addProduct(x2, b1)
                c30.addProduct(x3, b0); c31.addProduct(x3, b1)
                p += 1
            }
        } else {
            var p = 0
            while p < k {
                let b0 = load(b + p * ldb, w0)
                let o = p * depthStride
                c00.addProduct(Vector(repeating: a0[o]), b0)
                c10.addProduct(Vector(repeating: a1[o]), b0)
                c20.addProduct(Vector(repeating: a2[o]), b0)
                c30.addProduct(Vector(repeating: a3[o]), b0)
                p += 1
            }
        }

        var bias0 = Vector(), bias1 = Vector()
        if let bias {
            bias0 = load(bias, w0)
            if w1 > 0 { bias1 = load(bias + width, w1) }
        }
        finish(c00 + bias0, c01 + bias1, c, w0, w1, accumulate, relu)
        if rows > 1 { finish(c10 + bias0, c11 + bias1, c + ldc, w0, w1, accumulate, relu) }
        if rows > 2 { finish(c20 + bias0, c21 + bias1, c + 2 * ldc, w0, w1, accumulate, relu) }
        if rows > 3 { finish(c30 + bias0, c31 + bias1, c + 3 * ldc, w0, w1, accumulate, relu) }
    }

    /// Stores one row of a tile: adds the existing C if accumulating, applies ReLU.
    /// (A static function, not a closure: a closure capturing mutable locals would be boxed on
    /// the heap at every call.)
    @inline(__always)
    static func finish(_ lo: Vector, _ hi: Vector, _ row: UnsafeMutablePointer<Float>, _ w0: Int, _ w1: Int,
                       _ accumulate: Bool, _ relu: Bool) {
        var lo = lo, hi = hi
        if accumulate {
            lo += load(row, w0)
            if w1 > 0 { hi += load(row + width, w1) }
        }
        if relu {
            lo.replace(with: 0, where: lo .< 0)
            hi.replace(with: 0, where: hi .< 0)
        }
        store(lo, row, w0)
        if w1 > 0 { store(hi, row + width, w1) }
    }

    /// `out[cols × rows] = in[rows × cols]ᵀ`.
    public static func transpose(_ input: UnsafePointer<Float>, rows: Int, cols: Int, into output: UnsafeMutablePointer<Float>) {
        let block = 16
        var r0 = 0
        while r0 < rows {
            let r1 = min(r0 + block, rows)
            var c0 = 0
            while c0 < cols {
                let c1 = min(c0 + block, cols)
                for r in r0..<r1 {
                    for c in c0..<c1 { output[c * rows + r] = input[r * cols + c] }
                }
                c0 = c1
            }
            r0 = r1
        }
    }

    /// `sums[j] += Σ_i x[i, j]` over `rows` rows of `cols` columns (bias gradients).
    public static func addColumnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into sums: UnsafeMutablePointer<Float>) {
        var j = 0
        while j < cols {
            let w = min(width, cols - j)
            var acc = load(sums + j, w)
            for i in 0..<rows { acc += load(x + i * cols + j, w) }
            store(acc, sums + j, w)
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
                let w = min(width, cols - j)
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
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + width <= count { store(load(y + i) + load(x + i), y + i); i += width }
        while i < count { y[i] += x[i]; i += 1 }
    }
}
