import Core

/// The mixture-of-experts flags (`--experts`, `--top-k`, `--capacity-factor`, `--aux-loss-coef`):
/// their checks and the configuration they describe.
extension TrainingOptions {
    /// The experts of every hidden block, or nil for the dense model (`--experts 0`).
    public var expertsConfig: ExpertsConfig? {
        guard experts > 0 else { return nil }
        return ExpertsConfig(count: experts, topK: topK, capacityFactor: capacityFactor, auxiliaryLossCoefficient: auxLossCoef)
    }

    /// One line per problem, when the command line is parsed.
    func validateExperts() throws(UsageError) {
        try Self.checkExperts(experts, topK: topK, capacityFactor: capacityFactor, auxLossCoef: auxLossCoef, accumulate: accumulate)
    }

    /// The checks of the mixture-of-experts flags, shared with `plan` (which takes the same flags).
    public static func checkExperts(_ experts: Int, topK: Int, capacityFactor: Float?, auxLossCoef: Float,
                                    accumulate: Int) throws(UsageError) {
        if experts < 0 { throw UsageError("--experts must be 0 (dense) or a positive number of experts (got \(experts))") }
        if let capacityFactor, !capacityFactor.isFinite || capacityFactor <= 0 {
            throw UsageError("--capacity-factor must be a positive finite number (got \(capacityFactor))")
        }
        if !auxLossCoef.isFinite || auxLossCoef < 0 {
            throw UsageError("--aux-loss-coef must be a finite number ≥ 0 (got \(auxLossCoef))")
        }
        guard experts > 0 else {
            if capacityFactor != nil { throw UsageError("--capacity-factor needs --experts") }
            return
        }
        if topK < 1 || topK > experts {
            throw UsageError("--top-k must be between 1 and --experts \(experts) (got \(topK))")
        }
        // f_e and the capacity count the whole batch in one forward, before any backward.
        if accumulate > 1 {
            throw UsageError("--experts cannot be combined with --accumulate \(accumulate) yet: the load-balancing loss and the capacity count the whole batch in one forward")
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
