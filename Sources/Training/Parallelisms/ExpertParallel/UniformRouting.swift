import Core
import Distributed

/// Where a mixture of experts' assignments go, as the planner assumes it before anything runs.
///
/// The routing is learnt, so the rows `train_ep` moves are not known in advance. The planner
/// plans for **uniform routing**: each of a rank's `b·K` (row, slot) assignments (b = B/N rows)
/// lands on each of the E experts equally, `a = b·K/E` per expert. A rank of an expert group
/// keeps the share 1/E' of them that its own experts take, and sends the rest, `(E'−1)/E'`, to
/// the other ranks of its group. With `--capacity-factor` each expert keeps the first
/// `cap = ⌈C·B·K/E⌉` assignments of the batch in row order, so rank q keeps
/// `min(a, max(0, cap − q·a))` of its a per expert (the ranks' rows are consecutive in row order).
/// With K = E the routing is forced (every row goes to every expert), `a = b` exactly, and the
/// plan is what the ledger counts; otherwise it is the expected load of a balanced router (the
/// load-balancing loss pushes towards it) and a real step moves more or less.
public struct UniformRouting: Sendable {
    public var experts: ExpertsConfig
    /// B, the global batch's rows.
    public var batchRows: Int
    /// N, the ranks the rows are split over.
    public var ranks: Int

    public init(experts: ExpertsConfig, batchRows: Int, ranks: Int) {
        (self.experts, self.batchRows, self.ranks) = (experts, batchRows, ranks)
    }

    /// Assignments of world rank `rank`'s rows that one expert keeps.
    public func kept(rank: Int) -> Double {
        let a = Double(batchRows / ranks) * Double(experts.topK) / Double(experts.count)
        guard experts.capacityFactor != nil else { return a }
        return min(a, max(0, Double(experts.capacity(rows: batchRows)) - Double(rank) * a))
    }

    /// Assignments world rank `rank` computes per block: all its rows' kept assignments (every
    /// expert is local: `group` 1), or, in a group of `group` ranks, those of the group's ranks
    /// for its E/E' experts.
    public func computed(rank: Int, group: Int) -> Double {
        let m = Double(experts.count / group), first = rank / group * group
        return (first ..< first + group).reduce(0) { $0 + m * kept(rank: $1) }
    }
}
