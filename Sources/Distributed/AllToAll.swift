import CMPI

/// All-to-all: every rank sends a block to every rank of the group and receives one from each.
///
/// The collective of expert parallelism (`train_ep`): each rank sends each token row to the rank
/// that holds the row's expert, and gets the expert's output back the same way. Rank `q`'s
/// block for rank `d` lands in rank `d`'s receive buffer at the place reserved for source `q`;
/// the block a rank addresses to itself is copied locally.
///
/// **What the ledger counts** (kinds `all_to_all` and `all_to_all_v`): the bytes this rank
/// sends to the *other* ranks of the group — Σ over peers `d ≠ rank` of the block for `d` —
/// leaving out the block it keeps for itself, which never leaves the process. A rank's received
/// bytes are the other ranks' sent bytes, so summing the ledger over the group counts every
/// byte that crossed between ranks exactly once. A group of one rank communicates nothing and
/// is not counted. Over shared memory or a network, each block is one message to one peer
/// (pairwise exchange: `p − 1` steps), so these bytes are also what goes on the wire.
extension Communicator {
    /// Equal blocks (`MPI_Alltoall`): sends elements `d·count ..< (d+1)·count` of `input` to rank
    /// `d` and receives rank `q`'s block for this rank into `output[q·count ..< (q+1)·count]`,
    /// for every rank. `input` and `output` hold `p·count` elements and must not overlap.
    /// Ledger: `(p − 1)·count·s` bytes.
    public func allToAll<T: MPIScalar>(_ input: UnsafePointer<T>, count: Int, into output: UnsafeMutablePointer<T>) {
        if size == 1 { output.update(from: input, count: count); return }
        if count == 0 { return }
        blocking(.allToAll, counted: .allToAll, bytes: (size - 1) * count * MemoryLayout<T>.size, "MPI_Alltoall") {
            MPI_Alltoall(input, Int32(count), T.datatype, output, Int32(count), T.datatype, handle)
        }
    }

    /// Blocks of any size (`MPI_Alltoallv`), in elements: to rank `d` this rank sends
    /// `sendCounts[d]` elements of `input` from `sendOffsets[d]`; from rank `q` it receives
    /// `receiveCounts[q]` elements into `output` at `receiveOffsets[q]`. A count may be 0. The
    /// counts must match pairwise (this rank's `receiveCounts[q]` is rank `q`'s `sendCounts` for
    /// it), which is why `train_ep` exchanges them first with ``allToAll(_:count:into:)``.
    /// Every array has `p` entries. Ledger: `Σ_{d ≠ rank} sendCounts[d]·s` bytes.
    public func allToAllV<T: MPIScalar>(_ input: UnsafePointer<T>, sendCounts: UnsafePointer<Int32>, sendOffsets: UnsafePointer<Int32>,
                                        into output: UnsafeMutablePointer<T>, receiveCounts: UnsafePointer<Int32>,
                                        receiveOffsets: UnsafePointer<Int32>) {
        if size == 1 {
            (output + Int(receiveOffsets[0])).update(from: input + Int(sendOffsets[0]), count: Int(sendCounts[0]))
            return
        }
        var sent = 0
        for d in 0..<size where d != rank { sent += Int(sendCounts[d]) }
        blocking(.allToAll, counted: .allToAllV, bytes: sent * MemoryLayout<T>.size, "MPI_Alltoallv") {
            MPI_Alltoallv(input, sendCounts, sendOffsets, T.datatype, output, receiveCounts, receiveOffsets, T.datatype, handle)
        }
    }
}
