/// The architecture's hyperparameters, independent of how the model is laid out over ranks.
///
///     tokens [B × seq] → Embedding(vocab, emb) → flatten [B × seq·emb]
///       → Linear(seq·emb → hidden) → ReLU → [Linear(hidden → hidden) → ReLU] × (layers − 1)
///       → Linear(hidden → vocab) → softmax cross-entropy
///
/// `layers = 1` is exactly ml.c's model. What the blocks are, how wide, and where their
/// parameters sit is the ``BlockPlan`` (``plan``): every layout reads that, never index arithmetic.
public struct ModelConfig: Equatable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var vocab: Int
    public var seqLen: Int
    public var emb: Int
    public var hidden: Int
    public var layers: Int
    /// The mixture of experts that replaces every hidden block, or nil for the dense model
    /// (`--experts 0`). Encoded only when present, so dense configurations read and write as before.
    public var experts: ExpertsConfig?

    public init(vocab: Int, seqLen: Int, emb: Int, hidden: Int, layers: Int, experts: ExpertsConfig? = nil) {
        self.vocab = vocab
        self.seqLen = seqLen
        self.emb = emb
        self.hidden = hidden
        self.layers = layers
        self.experts = experts
    }

    public var description: String {
        "vocab \(vocab), seq-len \(seqLen), emb \(emb), hidden \(hidden), layers \(layers)"
            + (experts.map { ", \($0)" } ?? "")
    }

    /// The chain of blocks this configuration describes.
    public var plan: BlockPlan { BlockPlan(self) }

    /// Ψ, the total number of parameters.
    public var parameterCount: Int { plan.parameterCount }

    /// The named tensors in canonical order (see ``BlockPlan/tensors``).
    public var tensors: [(name: String, offset: Int, shape: [Int])] {
        plan.tensors.map { ($0.name, $0.offset, $0.shape) }
    }

    /// The initial parameters, canonical layout, from `seed` alone (see ``BlockPlan/initialParameters(seed:)``).
    public func initialParameters(seed: UInt64) -> [Float] { plan.initialParameters(seed: seed) }
}
