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
        if stages == 1 { return [k] }  // the search below is quadratic in the blocks
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
    /// Zero bubble, ZB-H1 (Qi et al., 2023): 1F1B with every backward split into the input pass
    /// (the gradient the previous stage waits for) and the weight pass (which nobody waits for).
    /// Stage `s` defers `s` weight passes and runs them in the tail, where 1F1B's stage `s` sits
    /// idle waiting for the last backwards to come back: for equal F, B and W times the idle time
    /// drops to a third of 1F1B's. Every stage holds up to `min(M, N)` micro-batches (a deferred
    /// weight pass needs its micro-batch's activations).
    case zeroBubble = "zb1p"
}

/// One unit of work on a stage: the forward or the backward of one micro-batch, or one half of
/// a split backward.
public struct PipelineAction: Equatable, Hashable, Sendable, CustomStringConvertible {
    public enum Direction: Sendable {
        case forward, backward
        /// The input-gradient half of a split backward: receives the output gradient and sends the
        /// input gradient, like a backward.
        case inputGradient
        /// The weight-gradient half: local, after the same micro-batch's input half.
        case weightGradient
    }
    public var direction: Direction
    public var microBatch: Int

    public static func forward(_ m: Int) -> PipelineAction { PipelineAction(direction: .forward, microBatch: m) }
    public static func backward(_ m: Int) -> PipelineAction { PipelineAction(direction: .backward, microBatch: m) }
    public static func inputGradient(_ m: Int) -> PipelineAction { PipelineAction(direction: .inputGradient, microBatch: m) }
    public static func weightGradient(_ m: Int) -> PipelineAction { PipelineAction(direction: .weightGradient, microBatch: m) }

    /// `F3`, `B3`; split: `I3` (input gradient), `W3` (weights).
    public var description: String {
        let letter = switch direction {
        case .forward: "F"
        case .backward: "B"
        case .inputGradient: "I"
        case .weightGradient: "W"
        }
        return "\(letter)\(microBatch)"
    }

    /// Whether the action ends the micro-batch's use of its activations on this stage.
    var releasesSlot: Bool { direction == .backward || direction == .weightGradient }
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
/// With equal stage times `t_f`, `t_b`, GPipe and 1F1B take `(M + N − 1)(t_f + t_b)`, of which
/// each stage is idle `(N − 1)(t_f + t_b)`: the bubble fraction `(N − 1)/(M + N − 1)`. ZB-H1 with
/// the backward split into input and weight passes of `t_b = t_w = t_f` each is idle
/// `(N − 1) · t_f` of `3M·t_f + (N − 1)·t_f` once `M ≥ N`: the fraction `(N − 1)/(3M + N − 1)`.
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
        case .zeroBubble:
            actions = Self.zeroBubbleActions(stage: stage, stages: stages, microBatches: m)
        }
        self.actions = actions
        forwardOnly = (0..<m).map { .forward($0) }
        // Forwards and slot releases both run in ascending micro-batch order, so the micro-batches
        // in flight are always consecutive and `m % slots` never hands out a slot still in use.
        var inFlight = 0, most = 0
        for action in actions {
            if action.direction == .forward { inFlight += 1; most = Swift.max(most, inFlight) }
            if action.releasesSlot { inFlight -= 1 }
        }
        slots = most
    }

    /// ZB-H1 on stage `s`: 1F1B's warm-up of `N − s − 1` forwards; then one forward and one input
    /// pass at a time, where the weight pass of the oldest micro-batch follows once `s` of them are
    /// waiting; then the remaining input passes, each with one weight pass; then the last `s`
    /// weight passes, in the tail where 1F1B would sit idle.
    static func zeroBubbleActions(stage: Int, stages: Int, microBatches m: Int) -> [PipelineAction] {
        var actions: [PipelineAction] = []
        let warmUp = Swift.min(stages - stage - 1, m), deferred = stage
        var nextWeights = 0
        func inputPass(_ b: Int) {
            actions.append(.inputGradient(b))
            if b + 1 - nextWeights > deferred { actions.append(.weightGradient(nextWeights)); nextWeights += 1 }
        }
        actions += (0..<warmUp).map { .forward($0) }
        for i in 0..<(m - warmUp) {
            actions.append(.forward(warmUp + i))
            inputPass(i)
        }
        for b in (m - warmUp)..<m { inputPass(b) }
        actions += (nextWeights..<m).map { .weightGradient($0) }
        return actions
    }

    /// Micro-batches a stage holds at once (forwarded, their activations still needed): the
    /// number of activation buffers to preallocate. GPipe: `M`; 1F1B: `min(M, N − s)`; ZB-H1:
    /// `min(M, N)`.
    public let slots: Int

    /// The ideal idle fraction for equal stage times and free messages: `(N − 1)/(M + N − 1)`,
    /// and `(N − 1)/(3M + N − 1)` for ZB-H1 (backward = input + weight pass, each as long as F;
    /// `M ≥ N`, below which the tail has too few weight passes to fill it).
    public var idealBubble: Double {
        let n = Double(stages - 1), m = Double(microBatches)
        return kind == .zeroBubble ? n / (3 * m + n) : n / (m + n)
    }

    /// The bubble formula, as the end-of-run report prints it.
    public var idealBubbleFormula: String { kind == .zeroBubble ? "(N−1)/(3M+N−1)" : "(N−1)/(M+N−1)" }
}
