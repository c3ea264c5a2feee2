extension Kernels {
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

    /// Σ x[i]² over `count` floats. Squares are summed in Float lanes over chunks of 1,024 floats
    /// and the chunks' sums in Double, so the result is good to a few Float ulps at any length
    /// (a single Float accumulator over millions of floats would drift far more).
    public static func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
        var total = 0.0
        var i = 0
        while i < count {
            let end = Swift.min(count, i + 1024)
            var lanes = Vector()
            while i + width <= end {
                let v = load(x + i)
                lanes.addProduct(v, v)
                i += width
            }
            var chunk = Double(sum(lanes))
            while i < end { chunk += Double(x[i]) * Double(x[i]); i += 1 }
            total += chunk
        }
        return total
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
}
