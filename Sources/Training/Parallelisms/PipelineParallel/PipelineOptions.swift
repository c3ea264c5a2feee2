import ArgumentParser
import Core

/// The flags of the executables that run a pipeline (`train_pp`, `train_3d`).
public struct PipelineOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("micro-batches"), parsing: .unconditional,
            help: "Micro-batches per step; each data-parallel rank's rows must divide evenly into them.")
    public var microBatches: Int = 1

    @Option(help: "Pipeline schedule: gpipe (all forwards, then all backwards), 1f1b (one forward, one backward), zb1p (zero bubble ZB-H1: 1f1b with weight gradients deferred into the bubble) or interleaved (Megatron's interleaved 1f1b over --virtual-stages chunks per stage).")
    public var schedule: PipelineScheduleKind = .oneForwardOneBackward

    @Option(name: .customLong("partition"),
            help: "Blocks per pipeline stage, e.g. 3,2 (default: the cut that balances the stages' FLOPs).")
    public var partitionText: String?

    @Flag(help: "Activation recomputation: keep only each micro-batch's stage input and output, and rerun its forward inside the backward (less memory, one more forward).")
    public var recompute = false

    /// `train_pp --batch-weight-gradients` (``BatchedWeightGradientsOption``): one weight pass per
    /// step over every micro-batch's rows. Not a flag of this group, so that `train_3d`, whose
    /// stages cannot batch them, does not offer it.
    public var batchWeightGradients = false

    @Option(name: .customLong("virtual-stages"), parsing: .unconditional,
            help: "With --schedule interleaved: model chunks per pipeline stage (V ≥ 2; stage s holds chunks s, s+N, …; --micro-batches a multiple of the stages).")
    public var virtualStagesFlag: Int?

    public init() {}

    /// The parsed flags (``batchWeightGradients`` is set by `train_pp` from its own flag).
    enum CodingKeys: String, CodingKey {
        case microBatches, schedule, partitionText, recompute, virtualStagesFlag
    }

    /// Chunks per pipeline stage: `--virtual-stages` (interleaved), else 1.
    public var virtualStages: Int { virtualStagesFlag ?? 1 }

    /// `--partition` as blocks per stage (nil: balance by cost).
    public var partition: [Int]? {
        partitionText.map { $0.split(separator: ",", omittingEmptySubsequences: false).map { Int($0) ?? 0 } }
    }

    public func validate() throws {
        try requirePositive(microBatches, "micro-batches")
        if recompute && schedule == .zeroBubble {
            throw UsageError("--recompute cannot be combined with --schedule zb1p: its deferred weight passes need the activations that recomputation drops")
        }
        try validateInterleaving()
        if let text = partitionText, let counts = partition, counts.contains(where: { $0 <= 0 }) {
            throw UsageError("--partition must be positive block counts separated by commas, e.g. 3,2 (got '\(text)')")
        }
    }
}

extension PipelineScheduleKind: ExpressibleByArgument {}

/// `train_pp --batch-weight-gradients`: each micro-batch runs only its input-gradient pass, and one
/// weight pass per step covers every micro-batch's rows (`BatchedWeightGradients`).
public struct BatchedWeightGradientsOption: ParsableArguments, Sendable {
    @Flag(name: .customLong("batch-weight-gradients"),
          help: "Compute the weight gradients once per step over all micro-batches' rows instead of once per micro-batch (keeps every micro-batch's layer inputs and output gradients; not with zb1p or --recompute).")
    public var enabled = false

    public init() {}

    /// `pipeline` with the flag applied (its rules: ``PipelineOptions/checkBatchedWeightGradients()``).
    public func applied(to pipeline: PipelineOptions) -> PipelineOptions {
        var result = pipeline
        result.batchWeightGradients = enabled
        return result
    }
}

extension PipelineOptions {
    /// The rules of ``batchWeightGradients``: the zero-bubble schedule runs each micro-batch's
    /// weight pass in the bubble, and recomputation drops the layer inputs a batched pass needs.
    public func checkBatchedWeightGradients() throws(UsageError) {
        guard batchWeightGradients else { return }
        if schedule == .zeroBubble {
            throw UsageError("--batch-weight-gradients cannot be combined with --schedule zb1p, which runs each micro-batch's weight pass in the bubble")
        }
        if recompute {
            throw UsageError("--batch-weight-gradients cannot be combined with --recompute: it keeps every micro-batch's layer inputs, which recomputation drops")
        }
    }
}

extension PipelineOptions {
    /// `--virtual-stages V` belongs to `--schedule interleaved`, which needs it with V ≥ 2;
    /// ZB-H1 stays a one-chunk schedule.
    func validateInterleaving() throws(UsageError) {
        switch (schedule, virtualStagesFlag) {
        case (.interleaved, nil):
            throw UsageError("--schedule interleaved needs --virtual-stages V (model chunks per stage, V ≥ 2)")
        case (.interleaved, let v?) where v < 2:
            throw UsageError("--virtual-stages must be at least 2 for --schedule interleaved (got \(v))")
        case (.zeroBubble, _?):
            throw UsageError("--virtual-stages cannot be combined with --schedule zb1p: the zero-bubble schedule is not interleaved; use --schedule interleaved")
        case (_, let v?) where schedule != .interleaved:
            throw UsageError("--virtual-stages \(v) needs --schedule interleaved (got --schedule \(schedule.rawValue))")
        default:
            break
        }
    }
}

extension PipelineOptions {
    /// A pipeline's rules for a mixture-of-experts model (`train_pp`, `train_3d`). With M > 1
    /// micro-batches the whole batch's routing statistics are summed at the first backward
    /// (``StepRouting``), which must come after every forward (GPipe), cannot cap the experts in
    /// row order, and must not see a micro-batch routed twice.
    public func checkExperts(_ experts: ExpertsConfig) throws(UsageError) {
        let m = microBatches
        guard m > 1 else { return }
        if schedule != .gpipe {
            throw UsageError("--experts with --micro-batches \(m) needs --schedule gpipe: a mixture of experts balances the whole batch, and under \(schedule.rawValue) the first backward runs before the last micro-batch is routed")
        }
        if experts.capacityFactor != nil {
            throw UsageError("--capacity-factor needs --micro-batches 1 in a pipeline: the capacity counts the whole batch's assignments in row order in one forward")
        }
        if recompute {
            throw UsageError("--experts with --micro-batches \(m) cannot be combined with --recompute: a rerun forward would route its micro-batch twice")
        }
    }
}
