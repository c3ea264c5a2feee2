/// The pure part of pipeline parallelism: which blocks a stage owns and in which order it runs
/// the forwards and backwards of the micro-batches. No MPI here, so it is unit-tested directly.

/// How the model's chain of blocks is cut into stages.
///
/// Stages take contiguous runs of blocks, **split evenly by block count**: with `K` blocks and
/// `N` stages, every stage gets `K / N` blocks and the first `K % N` stages one more. Block count
/// (not parameter count) keeps the cut predictable and independent of the widths; the cost is
/// balance — in ml.c's model the first hidden Linear holds most of the FLOPs wherever it lands.
/// The earlier stages take the spare blocks because the embedding, always first, is nearly free.
public enum PipelinePartition {
    /// The blocks of stage `stage` (0-based) out of `stages`, for a model of `blockCount` blocks.
    /// Requires `1 ≤ stages ≤ blockCount`, so every stage owns at least one block.
    public static func blocks(stage: Int, stages: Int, blockCount: Int) -> Range<Int> {
        precondition(stages >= 1 && stages <= blockCount && stage >= 0 && stage < stages)
        let base = blockCount / stages, extra = blockCount % stages
        let start = stage * base + Swift.min(stage, extra)
        return start..<(start + base + (stage < extra ? 1 : 0))
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
