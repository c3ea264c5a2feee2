import Core
import Distributed

/// `train_dp --experts`: the mixture-of-experts blocks' view of the global batch over the
/// data-parallel group (``ExpertBatchExchange``). The group's ranks hold the batch's rows in rank
/// order (``ProcessMesh/dataParallelRows(batch:)``), so rank order is row order, and the capacity
/// rule, `f_e` and `P_e` come out as `train` computes them on the whole batch.
///
/// **Bytes per block and forward:** each rank sends `4 · 2E` bytes to every other (an allgather).
final class DataParallelExpertExchange: ExpertBatchExchange {
    let group: Communicator
    let batchRows: Int

    init(group: Communicator, batchRows: Int) {
        self.group = group
        self.batchRows = batchRows
    }

    var rank: Int { group.rank }
    var ranks: Int { group.size }

    func allgather(_ local: UnsafePointer<Float>, count: Int, into gathered: UnsafeMutablePointer<Float>) {
        group.allgather(local, count: count, into: gathered)
    }
}
