/// The whole model on one rank: the reference every layout must reproduce.
///
/// One flat parameter buffer in canonical layout, the reference layers over slices of it, and a
/// ``LayerChain`` for a batch of `batchSize` rows. Nothing is allocated after `init`.
public final class Model {
    public let config: ModelConfig
    public let plan: BlockPlan
    public let batchSize: Int
    public let parameters: ParameterBuffer
    public let chain: LayerChain
    /// The chain's mixture-of-experts blocks (none in a dense model).
    public let mixtures: [MixtureOfExperts]

    /// - Parameters:
    ///   - lossScale: the gradient scale of the loss, normally `1 / global batch`.
    public init(config: ModelConfig, batchSize: Int, lossScale: Float? = nil, recompute: Bool = false) {
        self.config = config
        self.batchSize = batchSize
        let plan = config.plan
        self.plan = plan
        let parameters = ParameterBuffer(count: plan.parameterCount)
        self.parameters = parameters
        let layers = plan.blocks.map {
            $0.makeLayer(parameters: parameters.view(offset: $0.parameterOffset, count: $0.parameterCount), rows: batchSize)
        }
        mixtures = layers.compactMap { $0 as? MixtureOfExperts }
        chain = LayerChain(layers: layers, widths: plan.widths(0..<plan.count), rows: batchSize,
                           loss: SoftmaxCrossEntropy(gradientScale: lossScale ?? 1 / Float(batchSize)), recompute: recompute)
    }

    /// The token input, `[batchSize × seqLen]`.
    public var tokens: Activation { chain.input }
    /// The targets, `batchSize` token ids.
    public var targets: UnsafeMutablePointer<Int32> { chain.targets }
    /// The logits, `[batchSize × vocab]`.
    public var logits: Activation { chain.output }

    /// Copies a canonical parameter vector in.
    public func load(_ values: [Float]) {
        precondition(values.count == parameters.count)
        values.withUnsafeBufferPointer { parameters.value.update(from: $0.baseAddress!, count: values.count) }
    }

    /// The last forward's load-balancing loss, summed over the mixture-of-experts blocks (0 for a
    /// dense model). Not part of ``forward()``'s sum: the trained loss is that mean plus this.
    public var auxiliaryLoss: Float { mixtures.reduce(0) { $0 + $1.auxiliaryLoss } }

    /// The last forward's worst load imbalance over the mixture-of-experts blocks: the most
    /// assignments one expert computed over the mean per expert (1 is perfectly even; 0 when dense).
    public var expertImbalance: Float { mixtures.reduce(0) { Swift.max($0, $1.imbalance) } }

    /// Runs the chain forward; returns the summed loss over the batch (cross-entropy only).
    public func forward() -> Float { chain.forward() }

    /// Backpropagates the last forward, adding into `parameters.grad`.
    public func backward() { chain.backward() }
}
