extension Kernels {
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
}
