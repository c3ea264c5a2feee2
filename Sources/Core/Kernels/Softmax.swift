#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Kernels {
    // MARK: - Exponential and softmax

    /// `eˣ` lane by lane, to about 1 ulp, without a call per element.
    ///
    /// `eˣ = 2ⁿ · eʳ` with `n = round(x·log₂e)` and `r = x − n·ln 2` (Cody–Waite: ln 2 split in a
    /// part exact in few bits and a correction, both applied with FMAs), `|r| ≤ ln 2 / 2`, where a
    /// degree-6 minimax polynomial (Cephes' `expf`) is accurate to about 1 ulp. `2ⁿ` is built in
    /// the exponent bits as `2^⌊n/2⌋ · 2^(n−⌊n/2⌋)`, two normal numbers for any `n` in
    /// [−152, 128], so overflow gives +∞ and the subnormal range is rounded once, by the last
    /// multiply. `x` is clamped to [−105, 89] first (e⁻¹⁰⁵ rounds to 0, e⁸⁹ to +∞); NaN stays NaN.
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

    /// Softmax of one row of `cols` logits into `p`; returns `(max, Σ e^(x − max))`, from which
    /// the caller forms `log Σ eˣ = log(sum) + max`.
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
