import Core

/// The pure part of pipeline parallelism: which blocks a stage owns and in which order it runs
/// the forwards and backwards of the micro-batches. No MPI here, so it is unit-tested directly.

/// How the model's chain of blocks is cut into stages: contiguous runs of blocks, at least one
/// per stage.
///
/// **By cost, by default.** A stage's time is its blocks' compute, and the slowest stage sets the
/// pipeline's pace, so the cut minimises the largest stage cost (the linear-partition problem,
/// solved exactly by dynamic programming over the few blocks). A block's cost is its forward and
/// backward FLOPs per row, 6·in·out for a Linear, 6·in·E + 6·K·in·out for a mixture of experts
/// (the router, and the K experts each row visits when none is dropped); the embedding only
/// copies rows and costs 0. Among
/// cuts with the same largest cost, earlier stages take more blocks. `--partition 3,2` (blocks per
/// stage) overrides the cut.
public enum PipelinePartition {
    /// The chunks stage `stage` of `stages` holds in `cut` (the model's `P·V` chunks): chunks
    /// `s, s + P, …, s + (V − 1)P` — one unless interleaved. The runtime layouts and the plans
    /// (``RankGeometry``) both take a stage's blocks from here.
    public static func chunks(_ cut: [Range<Int>], stage: Int, stages: Int) -> [Range<Int>] {
        stride(from: stage, to: cut.count, by: stages).map { cut[$0] }
    }

    /// Forward plus backward FLOPs per row of `block` (the matrix products; the embedding's row
    /// copies count as free).
    public static func cost(_ block: Block) -> Double {
        let linear = 6 * Double(block.weightRows) * Double(block.weightColumns)
        if let experts = block.experts { return 6 * Double(block.weightRows) * Double(experts.count) + Double(experts.topK) * linear }
        return block.kind.isLinear ? linear : 0
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

    /// One line for the start of a run: the blocks of each stage and their cost; interleaved
    /// (more ranges than `stages`), of each chunk and the stage that holds it.
    public static func describe(_ plan: BlockPlan, _ ranges: [Range<Int>], stages: Int? = nil) -> String {
        let parts = ranges.enumerated().map { g, range in
            let flops = plan.blocks[range].reduce(0) { $0 + cost($1) }
            let name = stages.map { $0 < ranges.count ? "chunk \(g) (stage \(g % $0))" : "stage \(g)" } ?? "stage \(g)"
            return "\(name): " + plan.blocks[range].map(\.name).joined(separator: " ") + " (\(Int(flops)) FLOP/row)"
        }
        return "pipeline cut: " + parts.joined(separator: "; ")
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
    /// Interleaved 1F1B (Megatron-LM, Narayanan et al., 2021): the blocks are cut into `N·V`
    /// chunks and stage `s` holds chunks `s, s + N, …, s + (V − 1)N` (`--virtual-stages V`), so a
    /// micro-batch passes every stage `V` times. Warm-up, steady 1F1B and cool-down run over
    /// (micro-batch, chunk) pairs in groups of `N` micro-batches; each unit of work is a `V`-th of
    /// a stage's, so the fill and drain shrink by `V`: the bubble is `(N − 1)/(V·M + N − 1)`.
    /// `M` must be a multiple of `N` (Megatron's rule).
    case interleaved
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
    /// Which of the stage's chunks runs it: 0 unless the schedule is interleaved, where chunk `c`
    /// of stage `s` is the model's chunk `c·N + s`.
    public var chunk: Int = 0

    public static func forward(_ m: Int, chunk: Int = 0) -> PipelineAction {
        PipelineAction(direction: .forward, microBatch: m, chunk: chunk)
    }
    public static func backward(_ m: Int, chunk: Int = 0) -> PipelineAction {
        PipelineAction(direction: .backward, microBatch: m, chunk: chunk)
    }
    public static func inputGradient(_ m: Int) -> PipelineAction { PipelineAction(direction: .inputGradient, microBatch: m) }
    public static func weightGradient(_ m: Int) -> PipelineAction { PipelineAction(direction: .weightGradient, microBatch: m) }

    /// `F3`, `B3`; split: `I3` (input gradient), `W3` (weights); a later chunk: `F3.1`.
    public var description: String {
        let letter = switch direction {
        case .forward: "F"
        case .backward: "B"
        case .inputGradient: "I"
        case .weightGradient: "W"
        }
        return "\(letter)\(microBatch)" + (chunk == 0 ? "" : ".\(chunk)")
    }

    /// Whether the action ends the micro-batch's use of its activations on this stage.
    var releasesSlot: Bool { direction == .backward || direction == .weightGradient }
}

/// The list of actions a stage runs in one training step, and how many micro-batches it must
/// be able to hold at once.
///
/// Dependencies between stages are data: the forward of `m` on stage `s` needs the activation
/// that stage `s − 1` sends after its forward of `m`; the backward of `m` on `s` needs the
/// gradient that `s + 1` sends after its backward of `m`. Every schedule takes micro-batches in
/// ascending order in each direction and chunk, so messages between two neighbours arrive in the
/// order they are received and micro-batch `m` of chunk `c` can live in that chunk's buffer slot
/// `m % chunkSlots[c]`.
///
/// Interleaved, the model's chunk `g = c·N + s` runs as chunk `c` of stage `s`: its forward needs
/// chunk `g − 1`'s (stage `s − 1`, or for `s = 0` stage `N − 1`'s chunk `c − 1`), its backward
/// chunk `g + 1`'s. Every stage walks the same sequence of (micro-batch, chunk) pairs forward,
/// virtual index `k = 0, 1, …, V·M − 1` with micro-batch `⌊k / NV⌋·N + k mod N` and chunk
/// `⌊(k mod NV)/N⌋`, and the same sequence backward with the chunks reversed (Megatron's
/// `get_model_chunk_id`); stage `s` warms up with `min(2(N − s − 1) + (V − 1)N, V·M)` forwards.
///
/// With equal stage times `t_f`, `t_b`, GPipe and 1F1B take `(M + N − 1)(t_f + t_b)`, of which
/// each stage is idle `(N − 1)(t_f + t_b)`: the bubble fraction `(N − 1)/(M + N − 1)`. ZB-H1 with
/// the backward split into input and weight passes of `t_b = t_w = t_f` each is idle
/// `(N − 1) · t_f` of `3M·t_f + (N − 1)·t_f` once `M ≥ N`: the fraction `(N − 1)/(3M + N − 1)`.
/// Interleaved with equal chunk times `t_f/V`, `t_b/V` the fill and drain are `N − 1` chunk
/// times each way: idle `(N − 1)(t_f + t_b)/V` of `(V·M + N − 1)(t_f + t_b)/V`, the fraction
/// `(N − 1)/(V·M + N − 1)`, about `1/V` of 1F1B's.
public struct PipelineSchedule: Sendable {
    public let kind: PipelineScheduleKind
    public let stage: Int
    public let stages: Int
    public let microBatches: Int
    /// Chunks per stage: `V` interleaved, else 1.
    public let virtualStages: Int
    /// The training step's actions, in order.
    public let actions: [PipelineAction]
    /// Forward only (evaluation): every micro-batch in order (interleaved: in the forward
    /// sequence of (micro-batch, chunk) pairs); buffers are reused as soon as the activation has
    /// been sent on.
    public let forwardOnly: [PipelineAction]

    /// - Parameter virtualStages: `V ≥ 2` chunks per stage for `.interleaved` (then `microBatches`
    ///   must be a multiple of `stages`), 1 for the others.
    public init(_ kind: PipelineScheduleKind, stage: Int, stages: Int, microBatches: Int, virtualStages: Int = 1) {
        precondition(stages >= 1 && stage >= 0 && stage < stages && microBatches >= 1)
        precondition(kind == .interleaved ? virtualStages >= 2 && microBatches % stages == 0 : virtualStages == 1)
        self.kind = kind
        self.stage = stage
        self.stages = stages
        self.microBatches = microBatches
        self.virtualStages = virtualStages
        let m = microBatches
        var actions: [PipelineAction] = []
        actions.reserveCapacity(2 * m * virtualStages)
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
        case .interleaved:
            actions = Self.interleavedActions(stage: stage, stages: stages, microBatches: m, virtualStages: virtualStages)
        }
        self.actions = actions
        forwardOnly = (0..<(m * virtualStages)).map {
            Self.virtual($0, stages: stages, virtualStages: virtualStages, forward: true)
        }
        // Forwards and slot releases both run in ascending micro-batch order per chunk, so a chunk's
        // micro-batches in flight are always consecutive and `m % slots` never hands out a slot in use.
        var inFlight = [Int](repeating: 0, count: virtualStages), most = inFlight
        for action in actions {
            if action.direction == .forward {
                inFlight[action.chunk] += 1
                most[action.chunk] = Swift.max(most[action.chunk], inFlight[action.chunk])
            }
            if action.releasesSlot { inFlight[action.chunk] -= 1 }
        }
        chunkSlots = most
    }

    /// The `k`-th forward (or backward) of an interleaved stage: micro-batch `⌊k/NV⌋·N + k mod N`
    /// of chunk `⌊(k mod NV)/N⌋`, the chunks in reverse order backward (Megatron's
    /// `get_model_chunk_id`). With `V = 1` simply micro-batch `k`.
    static func virtual(_ k: Int, stages n: Int, virtualStages v: Int, forward: Bool) -> PipelineAction {
        let group = k / (n * v), inGroup = k % (n * v)
        let chunk = forward ? inGroup / n : v - 1 - inGroup / n
        return PipelineAction(direction: forward ? .forward : .backward, microBatch: group * n + k % n, chunk: chunk)
    }

    /// Megatron's interleaved 1F1B on stage `s`: `min(2(N − s − 1) + (V − 1)N, V·M)` warm-up
    /// forwards, then one forward and one backward at a time, then the remaining backwards, over
    /// the virtual sequence of ``virtual(_:stages:virtualStages:forward:)``.
    static func interleavedActions(stage: Int, stages n: Int, microBatches m: Int, virtualStages v: Int) -> [PipelineAction] {
        let total = m * v
        let warmUp = Swift.min(2 * (n - stage - 1) + (v - 1) * n, total)
        var actions = (0..<warmUp).map { virtual($0, stages: n, virtualStages: v, forward: true) }
        for i in 0..<(total - warmUp) {
            actions.append(virtual(warmUp + i, stages: n, virtualStages: v, forward: true))
            actions.append(virtual(i, stages: n, virtualStages: v, forward: false))
        }
        actions += ((total - warmUp)..<total).map { virtual($0, stages: n, virtualStages: v, forward: false) }
        return actions
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

    /// Micro-batches each chunk holds at once (forwarded, their activations still needed): the
    /// number of activation buffers to preallocate per chunk. GPipe: `M`; 1F1B: `min(M, N − s)`;
    /// ZB-H1: `min(M, N)`. Interleaved, counted from the actions: chunk 0 holds up to `min(M, 2N)`,
    /// later chunks fewer (N = 4, V = 3, M ≥ 8, stage 0: 8, 7, 4); the stage as a whole never holds
    /// more than `min(w + 1, V·M)` (micro-batch, chunk) pairs, `w` its warm-up
    /// `2(N − s − 1) + (V − 1)N`, each a `V`-th of a stage's activations.
    public let chunkSlots: [Int]

    /// Micro-batches the one chunk of a non-interleaved stage holds at once.
    public var slots: Int { chunkSlots[0] }

    /// The ideal idle fraction for equal stage times and free messages: `(N − 1)/(M + N − 1)`,
    /// and `(N − 1)/(3M + N − 1)` for ZB-H1 (backward = input + weight pass, each as long as F;
    /// `M ≥ N`, below which the tail has too few weight passes to fill it).
    /// Interleaved (equal chunk times, `M` a multiple of `N`): `(N − 1)/(V·M + N − 1)`.
    public var idealBubble: Double {
        let n = Double(stages - 1), m = Double(microBatches)
        switch kind {
        case .zeroBubble: return n / (3 * m + n)
        case .interleaved: return n / (Double(virtualStages) * m + n)
        case .gpipe, .oneForwardOneBackward: return n / (m + n)
        }
    }

    /// The bubble formula, as the end-of-run report prints it.
    public var idealBubbleFormula: String {
        switch kind {
        case .zeroBubble: "(N−1)/(3M+N−1)"
        case .interleaved: "(N−1)/(V·M+N−1)"
        case .gpipe, .oneForwardOneBackward: "(N−1)/(M+N−1)"
        }
    }
}
