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
            throw UsageError("--experts cannot be combined with --accumulate \(accumulate): the load-balancing loss and the capacity count the whole batch in one forward, which accumulation splits into \(accumulate)")
        }
    }
}
