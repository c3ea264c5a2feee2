/// How a mixture of experts sees the whole batch when its rows are spread over ranks (data
/// parallelism): the capacity rule, `f_e` and `P_e` are properties of the global batch, so each
/// block exchanges its rows' routing once per forward.
///
/// Each rank contributes `2E` floats — per expert the assignments its rows routed there (exact
/// as floats below 2²⁴) and the sum of its rows' router probabilities — and receives every
/// rank's, in rank order, which is row order: rank r's rows follow those of ranks 0 … r − 1.
/// From them every rank computes the global counts, the assignments to each expert in the rows
/// before its own (where its capacity count starts), and the global `P_e`.
/// **Bytes per block and step:** an allgather of `4 · 2E` bytes from each of N ranks.
public protocol ExpertBatchExchange: AnyObject {
    /// Rows of the whole batch (the capacity, f and P are over these).
    var batchRows: Int { get }
    /// This rank's place among the ranks that share the batch, in row order, and their number.
    var rank: Int { get }
    var ranks: Int { get }
    /// Every rank's `count` floats of `local`, in rank order, into `gathered` (`ranks · count`).
    func allgather(_ local: UnsafePointer<Float>, count: Int, into gathered: UnsafeMutablePointer<Float>)
}
