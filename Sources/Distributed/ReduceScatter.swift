import CMPI

/// How ``Communicator/reduceScatterSum(_:into:count:algorithm:)`` moves and adds the data.
///
/// Both give every rank block `rank` of the sum over the group; they differ in cost and in the
/// order of the additions (so, for more than two ranks, in the last bits of the result).
public enum ReduceScatterAlgorithm: String, CaseIterable, Sendable {
    /// `MPI_Reduce_scatter_block`: whatever the MPI library chose. OpenMPI 4.1's choice over
    /// shared memory is slow from a few KB on (see the README's collectives table).
    case mpi
    /// The ring, spelled out over `MPI_Sendrecv`: `p − 1`
    /// steps, each passing one block of partial sums to the right neighbour while the next
    /// arrives from the left and gets this rank's contribution added. Every rank sends and
    /// receives `(p − 1)·n` elements — the minimum for a reduce-scatter — in `p − 1` messages:
    /// time ≈ `(p − 1)·(α + n·s·β + n·γ)` (α the message latency, β the time per byte, γ per
    /// addition). For two ranks it is a single exchange.
    case ring

    /// The algorithm used when none is given: the ring from ``ringThreshold`` bytes of input
    /// (`p·n·4`), MPI's below (measured with the `collectives` benchmark; README).
    public static func automatic(bytes: Int) -> ReduceScatterAlgorithm { bytes >= ringThreshold ? .ring : .mpi }
    public static let ringThreshold = 16384
}

// MARK: - The ring algorithms

extension Communicator {
    /// Sums `input` (`p·count` elements, clobbered) over the group and leaves block `rank` of the
    /// sum, `count` elements, in `output`. Moves (p−1)/p of `p·count·4` bytes per rank: half an
    /// allreduce. With `algorithm` nil the size picks it (``ReduceScatterAlgorithm/automatic(bytes:)``).
    /// The ledger counts `p·count·4` bytes whichever algorithm runs.
    public func reduceScatterSum(_ input: UnsafeMutablePointer<Float>, into output: UnsafeMutablePointer<Float>, count: Int,
                                 algorithm: ReduceScatterAlgorithm? = nil) {
        if size == 1 { output.update(from: input, count: count); return }
        if count == 0 { return }
        switch algorithm ?? .automatic(bytes: size * count * 4) {
        case .mpi:
            blocking(.reduceScatter, counted: .reduceScatter, bytes: size * count * 4, "MPI_Reduce_scatter_block") {
                MPI_Reduce_scatter_block(input, output, Int32(count), Float.datatype, cmpi_op_sum(), handle)
            }
        case .ring:
            counting(.reduceScatter, .reduceScatter, bytes: size * count * 4, "ring reduce-scatter") {
                ringReduceScatter(input, into: output, count: count)
            }
        }
    }

    /// Sums `input` over the group and leaves this rank's block of the sum in `output`, the blocks
    /// cut by `counts` (one per rank, in rank order: rank `q` gets elements
    /// `counts[0] + … + counts[q−1]` onward, `counts[q]` of them; a count may be 0). ZeRO-2 uses it
    /// to hand each rank the part of one block's gradient that falls in its shard
    /// (`MPI_Reduce_scatter`). The ledger counts the whole input, `Σ counts · 4` bytes.
    public func reduceScatterSum(_ input: UnsafeMutablePointer<Float>, into output: UnsafeMutablePointer<Float>,
                                 counts: UnsafePointer<Int32>) {
        if size == 1 { output.update(from: input, count: Int(counts[0])); return }
        var total = 0
        for q in 0..<size { total += Int(counts[q]) }
        if total == 0 { return }
        blocking(.reduceScatter, counted: .reduceScatter, bytes: total * 4, "MPI_Reduce_scatter") {
            MPI_Reduce_scatter(input, output, counts, Float.datatype, cmpi_op_sum(), handle)
        }
    }

    /// The ring over blocks of `count` elements. Step `s` sends block `r − s − 1` of the partial
    /// sums in `input` to rank `r + 1` and receives the partial sum of block `r − s − 2` from
    /// rank `r − 1` into `output`, then adds: into `input`'s block, or at the last step (where
    /// that block is `r` itself) `input`'s own contribution into `output`, which then holds the
    /// whole sum. Block `j`'s sum is accumulated from rank `j + 1` round to rank `j`, always in
    /// that order, so results are reproducible run to run.
    func ringReduceScatter(_ input: UnsafeMutablePointer<Float>, into output: UnsafeMutablePointer<Float>, count: Int) {
        let p = size, right = (rank + 1) % p, left = (rank + p - 1) % p
        for step in 0..<p - 1 {
            let sending = (rank - step - 1 + 2 * p) % p, receiving = (rank - step - 2 + 2 * p) % p
            blocking(.ringExchange, "MPI_Sendrecv") {
                MPI_Sendrecv(input + sending * count, Int32(count), Float.datatype, Int32(right), MessageTag.ring.rawValue,
                             output, Int32(count), Float.datatype, Int32(left), MessageTag.ring.rawValue, handle, cmpi_status_ignore())
            }
            if step < p - 2 {
                addVectors(output, into: input + receiving * count, count: count)
            } else {
                addVectors(input + receiving * count, into: output, count: count)
            }
        }
    }
}

/// `y += x`, 16 lanes at a time.
@inline(__always)
func addVectors(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    var i = 0
    while i + 16 <= count {
        let a = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
        let b = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD16<Float>.self)
        UnsafeMutableRawPointer(y + i).storeBytes(of: a + b, as: SIMD16<Float>.self)
        i += 16
    }
    while i < count {
        y[i] += x[i]
        i += 1
    }
}
