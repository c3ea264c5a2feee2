import Core

/// What a training step's mixture-of-experts blocks report beside the loss.
public struct ExpertStatistics: Sendable, Equatable {
    /// The load-balancing loss summed over the blocks, α · E · Σ_e f_e · P_e each: part of the
    /// step's trained loss (cross-entropy + this).
    public var auxiliaryLoss: Float
    /// The worst block's load: the most assignments one expert computed over the mean per expert
    /// (1 is even; E/K when every row went to the same K experts).
    public var imbalance: Float

    public init(auxiliaryLoss: Float, imbalance: Float) {
        self.auxiliaryLoss = auxiliaryLoss
        self.imbalance = imbalance
    }

    /// The figures of `model`'s last forward, or nil when it has no experts.
    public init?(_ model: Model) {
        guard !model.mixtures.isEmpty else { return nil }
        self.init(auxiliaryLoss: model.auxiliaryLoss, imbalance: model.expertImbalance)
    }
}
