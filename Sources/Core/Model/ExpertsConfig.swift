/// The mixture-of-experts hyperparameters (`--experts`, `--top-k`, `--capacity-factor`,
/// `--aux-loss-coef`): what every hidden block becomes when the model has experts.
///
/// Each hidden block then routes every row to `topK` of `count` experts (see
/// ``MixtureOfExperts``). The capacity factor and the auxiliary-loss coefficient change what is
/// trained, so they belong to the model's configuration like the widths: a checkpoint records
/// them and a resume must agree with them.
public struct ExpertsConfig: Equatable, Hashable, Sendable, Codable, CustomStringConvertible {
    /// E, the experts per hidden block (≥ 1).
    public var count: Int
    /// K, the experts each row is sent to (1 ≤ K ≤ E).
    public var topK: Int
    /// C: each expert takes at most ⌈C · B · K / E⌉ of a batch's B·K assignments; nil is dropless.
    public var capacityFactor: Float?
    /// α, the weight of the load-balancing loss α · E · Σ_e f_e · P_e.
    public var auxiliaryLossCoefficient: Float

    enum CodingKeys: String, CodingKey {
        case count, topK = "top_k", capacityFactor = "capacity_factor", auxiliaryLossCoefficient = "aux_loss_coef"
    }

    public init(count: Int, topK: Int, capacityFactor: Float? = nil, auxiliaryLossCoefficient: Float = 0.01) {
        self.count = count
        self.topK = topK
        self.capacityFactor = capacityFactor
        self.auxiliaryLossCoefficient = auxiliaryLossCoefficient
    }

    /// The most assignments one expert takes from a batch of `rows` rows: ⌈C · rows · K / E⌉,
    /// or `rows` when dropless (a row picks an expert at most once).
    public func capacity(rows: Int) -> Int {
        guard let capacityFactor else { return rows }
        let exact = (Double(capacityFactor) * Double(rows * topK) / Double(count)).rounded(.up)
        return Swift.min(rows, Swift.max(0, Int(exact)))
    }

    public var description: String {
        "experts \(count), top-k \(topK)" + (capacityFactor.map { ", capacity factor \($0)" } ?? "")
            + ", aux-loss-coef \(auxiliaryLossCoefficient)"
    }
}
