import Core

/// The pure part of pipeline parallelism: which blocks a stage owns and in which order it runs
/// the forwards and backwards of the micro-batches. No MPI here, so it is unit-tested directly.

/// How the model's chain of blocks is cut into stages: contiguous runs of blocks, at least one
/// per stage.
///
/// **By cost, by default.** A stage's time is its blocks' compute, and the slowest stage sets the
/// pipeline's pace, so the cut minimises the largest stage cost (the linear-partition problem,
/// solved exactly by dynamic programming over the few blocks). A block's cost is its forward and
/// backward FLOPs per row, 6·in·out for a Linear; the embedding only copies rows and costs 0. Among
/// cuts with the same largest cost, earlier stages take more blocks. `--partition 3,2` (blocks per
/// stage) overrides the cut.
public enum PipelinePartition {
    /// Forward plus backward FLOPs per row of `block` (the matrix products; the embedding's row
    /// copies count as free).
    public static func cost(_ block: Block) -> Double {
        block.kind.isLinear ? 6 * Double(block.weightRows) * Double(block.weightColumns) : 0
    }

    /// Blocks per stage for `costs` over `stages` stages, minimising the most expensive stage.
    /// Requires `1 ≤ stages ≤ costs.count`.
    public static func balanced(costs: [Double], stages: Int) -> [Int] {
        let k = costs.count
        precondition(stages >= 1 && stages <= k)
        var prefix = [0.0]
        for c in costs { prefix.append(prefix.last! + c) }
        // best[n][j]: the smallest largest-stage cost of the first j blocks in n stages;
        // cut[n][j]: where its last stage starts.
        var best = [[Double]](repeating: [Double](repeating: .infinity, count: k + 1), count: stages + 1)
        var cut = [[Int]](repeating: [Int](repeating: 0, count: k + 1), count: stages + 1)
        best[0][0] = 0
        for n in 1...stages {
            for j in n...k {
                // Try every start i of the last stage, latest first: on ties the earlier stages keep more blocks.
                for i in stride(from: j - 1, through: n - 1, by: -1) {
                    let candidate = max(best[n - 1][i], prefix[j] - prefix[i])
                    if candidate < best[n][j] { best[n][j] = candidate; cut[n][j] = i }
                }
            }
        }
        var counts: [Int] = []
        var j = k
        for n in stride(from: stages, through: 1, by: -1) {
            counts.append(j - cut[n][j])
            j = cut[n][j]
        }
        return counts.reversed()
    }

    /// The cut for `plan` over `stages` stages: `override` (blocks per stage) if given, else
    /// ``balanced(costs:stages:)``. As block ranges, stage by stage.
    public static func stages(_ plan: BlockPlan, stages: Int, override: [Int]?) -> [Range<Int>] {
        let counts = override ?? balanced(costs: plan.blocks.map(cost), stages: stages)
        var start = 0
        return counts.map { count in
            defer { start += count }
            return start ..< start + count
        }
    }

    /// One line for the start of a run: the blocks of each stage and their cost.
    public static func describe(_ plan: BlockPlan, _ ranges: [Range<Int>]) -> String {
        let stages = ranges.enumerated().map { s, range in
            let flops = plan.blocks[range].reduce(0) { $0 + cost($1) }
            return "stage \(s): " + plan.blocks[range].map(\.name).joined(separator: " ") + " (\(Int(flops)) FLOP/row)"
        }
        return "pipeline cut: " + stages.joined(separator: "; ")
    }
}

/// The order of work on one stage.
public enum PipelineScheduleKind: String, CaseIterable, Sendable {
    /// GPipe: every forward, then every backward. Simple; a stage holds all M micro-batches.
    case gpipe
    /// One-forward-one-backward (PipeDream-flush): a warm-up of `N − s − 1` forwards, then
    /// alternate one forward and one backward, then the remaining backwards. The same bubble as
    /// GPipe, but stage `s` never holds more than `N − s` micro-batches.
    case oneForwardOneBackward = "1f1b"
}

/// One unit of work on a stage: the forward or the backward of one micro-batch.
public struct PipelineAction: Equatable, Hashable, Sendable, CustomStringConvertible {
    public enum Direction: Sendable { case forward, backward }
    public var direction: Direction
    public var microBatch: Int

    public static func forward(_ m: Int) -> PipelineAction { PipelineAction(direction: .forward, microBatch: m) }
    public static func backward(_ m: Int) -> PipelineAction { PipelineAction(direction: .backward, microBatch: m) }

    public var description: String { "\(direction == .forward ? "F" : "B")\(microBatch)" }
}

/// The list of actions a stage runs in one training step, and how many micro-batches it must
/// be able to hold at once.
///
/// Dependencies between stages are data: the forward of `m` on stage `s` needs the activation
/// that stage `s − 1` sends after its forward of `m`; the backward of `m` on `s` needs the
/// gradient that `s + 1` sends after its backward of `m`. Both schedules take micro-batches in
/// ascending order in each direction, so messages between two neighbours arrive in the order
/// they are received and a micro-batch `m` can live in buffer slot `m % slots`.
///
/// With equal stage times `t_f`, `t_b`, both schedules take `(M + N − 1)(t_f + t_b)`, of which
/// each stage is idle `(N − 1)(t_f + t_b)`: the bubble fraction `(N − 1)/(M + N − 1)`.
public struct PipelineSchedule: Sendable {
    public let kind: PipelineScheduleKind
    public let stage: Int
    public let stages: Int
    public let microBatches: Int
    /// The training step's actions, in order.
    public let actions: [PipelineAction]
    /// Forward only (evaluation): every micro-batch in order; buffers are reused as soon as the
    /// activation has been sent on.
    public let forwardOnly: [PipelineAction]

    public init(_ kind: PipelineScheduleKind, stage: Int, stages: Int, microBatches: Int) {
        precondition(stages >= 1 && stage >= 0 && stage < stages && microBatches >= 1)
        self.kind = kind
        self.stage = stage
        self.stages = stages
        self.microBatches = microBatches
        let m = microBatches
        var actions: [PipelineAction] = []
        actions.reserveCapacity(2 * m)
        switch kind {
        case .gpipe:
            actions += (0..<m).map { .forward($0) }
            actions += (0..<m).map { .backward($0) }
        case .oneForwardOneBackward:
            let warmUp = Swift.min(stages - stage - 1, m)
            actions += (0..<warmUp).map { .forward($0) }
            for i in 0..<(m - warmUp) {
                actions.append(.forward(warmUp + i))
                actions.append(.backward(i))
            }
            actions += ((m - warmUp)..<m).map { .backward($0) }
        }
        self.actions = actions
        forwardOnly = (0..<m).map { .forward($0) }
    }

    /// Micro-batches a stage holds at once (forwarded, not yet backwarded): the number of
    /// activation buffers to preallocate. GPipe: `M`; 1F1B: `min(M, N − s)`.
    public var slots: Int {
        switch kind {
        case .gpipe: return microBatches
        case .oneForwardOneBackward: return Swift.min(microBatches, stages - stage)
        }
    }

    /// The ideal idle fraction `(N − 1)/(M + N − 1)` for equal stage times and free messages.
    public var idealBubble: Double { Double(stages - 1) / Double(microBatches + stages - 1) }
}
