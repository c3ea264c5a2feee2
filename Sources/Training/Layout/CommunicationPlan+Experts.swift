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

extension CommunicationPlan {
    /// The mixture-of-experts calls of `train_dp` and `train_ep` for world rank `rank` (the caller
    /// adds the rest):
    ///
    /// - both: per block, the allgather of routing statistics over the world
    ///   (``DataParallelExpertExchange``): 2E floats per rank, `4·N·2E` bytes;
    /// - `train_ep --ep E'` (mesh `[expert E', replicate N/E']`, ``ExpertParallel``): one allreduce
    ///   of the D dense floats and one of the 4-byte loss over the world, one of this rank's X
    ///   expert floats over `replicate` (N/E' ranks, stride E'); per block over its expert group,
    ///   the counts' all-to-all (`4·(E'−1)·E/E'` bytes) and four all-to-all-v of rows — inputs out
    ///   and outputs back forward, output gradients out and input gradients back backward:
    ///   `4·(s + r)·(in + out)` bytes, s and r the assignments sent to and received from the
    ///   other ranks of the group, under ``UniformRouting`` `s = (E'−1)·m·kept(rank)` and
    ///   `r = Σ_{q ≠ rank in the group} m·kept(q)`, m = E/E' (the step's total rounded to whole bytes).
    mutating func addExperts(rank: Int, _ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings) {
        guard let experts = plan.config.experts else { return }
        let n = layout.shape.ranks, group = layout.shape.expertGroup ?? 1, e = experts.count, m = e / group
        let routing = UniformRouting(experts: experts, batchRows: settings.batchSize, ranks: n)
        let first = rank / group * group
        let sent = Double((group - 1) * m) * routing.kept(rank: rank)
        let received = (first ..< first + group).filter { $0 != rank }.reduce(0.0) { $0 + Double(m) * routing.kept(rank: $1) }
        var dense = 0, held = 0, mixtures = 0, rows = 0.0
        for block in plan.blocks {
            guard block.kind == .mixtureOfExperts else {
                dense += block.parameterCount
                continue
            }
            let inputs = block.weightRows, outputs = block.weightColumns
            dense += inputs * e
            held += m * (inputs * outputs + outputs)
            add(.allgather, group > 1 ? nil : .dp, size: n, stride: 1, bytesPerCall: 4 * n * 2 * e)
            guard group > 1 else { continue }
            add(.allToAll, .expert, size: group, stride: 1, bytesPerCall: 4 * (group - 1) * m)
            mixtures += 1
            rows += 4 * (sent + received) * Double(inputs + outputs)
        }
        guard group > 1 else { return }
        if mixtures > 0 {
            transfers.append(Transfer(kind: .allToAllV, axis: .expert, groupSize: group, stride: 1, calls: 4 * mixtures,
                                      bytes: Int(rows.rounded())))
        }
        add(.allreduce, nil, size: n, stride: 1, bytesPerCall: 4 * dense)
        add(.allreduce, nil, size: n, stride: 1, bytesPerCall: 4)
        add(.allreduce, .replicate, size: n / group, stride: group, bytesPerCall: 4 * held)
    }
}

extension CommunicationPlan {
    /// The mixture-of-experts calls of `train_3d` in one chunk of blocks `range`, for a rank at
    /// dp coordinate `dp` (the FSDP gathers of the two parts are the caller's): per block and
    /// forward (`runs·(1 + reruns)` of them), the routing-statistics allgather over dp (`4·D·2E`
    /// bytes; with M > 1 micro-batches once per step, by ``StepRouting``); with `--ep E'` per
    /// forward the counts' all-to-all over the `expert` axis and per run four all-to-all-v, as
    /// ``addExperts(rank:_:_:_:)`` counts them for `train_ep`, with the dp group in place of the
    /// world (``UniformRouting`` over D ranks: its rows per step, whatever M). The expert group is
    /// E' consecutive dp ranks: world stride T.
    mutating func addExperts3D(_ plan: BlockPlan, _ range: Range<Int>, _ layout: LayoutDescription, _ settings: PlanSettings,
                               dp rank: Int, runs: Int, reruns: [Int]) {
        guard let experts = plan.config.experts else { return }
        let shape = layout.shape, d = shape.size(.dp), tp = shape.size(.tp), group = shape.expertGroup ?? 1
        let e = experts.count, m = e / group
        let routing = UniformRouting(experts: experts, batchRows: settings.batchSize, ranks: d)
        let first = rank / group * group
        let sent = Double((group - 1) * m) * routing.kept(rank: rank)
        let received = (first ..< first + group).filter { $0 != rank }.reduce(0.0) { $0 + Double(m) * routing.kept(rank: $1) }
        var rows = 0.0, mixtures = 0
        let micro = shape.microBatches ?? 1, steps = runs / micro
        for (i, index) in range.enumerated() where plan[index].kind == .mixtureOfExperts {
            let block = plan[index], forwards = runs * (1 + reruns[i])
            add(.allgather, .dp, size: d, stride: tp, calls: micro > 1 ? steps : forwards, bytesPerCall: 4 * d * 2 * e)
            guard group > 1 else { continue }
            add(.allToAll, .expert, size: group, stride: tp, calls: forwards, bytesPerCall: 4 * (group - 1) * m)
            mixtures += runs
            rows += Double(steps) * 4 * (sent + received) * Double(block.weightRows + block.weightColumns)
        }
        if mixtures > 0 {
            if let i = transfers.firstIndex(where: { $0.kind == .allToAllV && $0.axis == .expert }) {
                transfers[i].calls += 4 * mixtures
                transfers[i].bytes += Int(rows.rounded())
            } else {
                transfers.append(Transfer(kind: .allToAllV, axis: .expert, groupSize: group, stride: tp, calls: 4 * mixtures,
                                          bytes: Int(rows.rounded())))
            }
        }
    }
}
