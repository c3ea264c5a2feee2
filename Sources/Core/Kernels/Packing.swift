extension Kernels {
    // MARK: - Packing B into a panel

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

    // MARK: - Packing B ahead of time

    /// Floats of ``packPanels(_:ldb:n:k:transposed:into:)``'s output for a `k × n` B: every panel
    /// of the product, `depth × 16·vectors` floats each (n rounded up to whole vectors).
    public static func panelsCount(n: Int, k: Int) -> Int {
        var vectors = 0, j0 = 0
        while j0 < n {
            vectors += Swift.min(tileVectors, (n - j0 + width - 1) / width)
            j0 += tileColumns
        }
        return k * width * vectors
    }

    /// Packs a `k × n` B (`B(p, j) = b[p·ldb + j]`, or `b[j·ldb + p]` if `transposed`) into the
    /// panels the product would pack on the fly, in the order it reads them, so that
    /// ``gemm(m:n:k:a:rowStride:depthStride:panels:c:ldc:epilogue:)`` reads one contiguous
    /// stream instead of `depth` rows `ldb` apart per panel.
    ///
    /// This pays when one B meets several small A's: a pipeline stage's weights, the same for all
    /// of a step's micro-batches. Each product of a 32-row micro-batch reads all of W for only 32
    /// rows of work, and packing it on the fly reads W `depth` strided rows at a time, which the
    /// hardware prefetchers do not follow; packed once per step, W streams in order.
    public static func packPanels(_ b: UnsafePointer<Float>, ldb: Int, n: Int, k: Int, transposed: Bool,
                                  into panels: UnsafeMutablePointer<Float>) {
        let depth = depthOfBlocks(k)
        var p0 = 0, out = panels
        repeat {
            let kb = Swift.min(depth, k - p0)
            var j0 = 0
            while j0 < n {
                let vectors = Swift.min(tileVectors, (n - j0 + width - 1) / width)
                let lastStart = n >= width ? Swift.min(j0 + width * (vectors - 1), n - width) : 0
                if transposed {
                    packTransposed(b, ldb: ldb, p0: p0, depth: kb, j0: j0, vectors: vectors, lastStart: lastStart, n: n, into: out)
                } else {
                    packRows(b, ldb: ldb, p0: p0, depth: kb, j0: j0, vectors: vectors, lastStart: lastStart, n: n, into: out)
                }
                out += kb * width * vectors
                j0 += tileColumns
            }
            p0 += kb
        } while p0 < k
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
}
