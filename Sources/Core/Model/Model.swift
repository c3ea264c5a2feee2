/// The architecture, independent of how it is laid out over ranks.
///
///     tokens [B × seq] → Embedding(vocab, emb) → flatten [B × seq·emb]
///       → Linear(seq·emb → hidden) → ReLU → [Linear(hidden → hidden) → ReLU] × (layers − 1)
///       → Linear(hidden → vocab) → softmax cross-entropy
///
/// The model is a chain of `layers + 2` blocks: block 0 is the embedding, blocks 1…layers the
/// hidden Linear+ReLU, the last block the head. `layers = 1` is exactly ml.c's model.
public struct ModelConfig: Equatable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var vocab: Int
    public var seqLen: Int
    public var emb: Int
    public var hidden: Int
    public var layers: Int

    public init(vocab: Int, seqLen: Int, emb: Int, hidden: Int, layers: Int) {
        self.vocab = vocab
        self.seqLen = seqLen
        self.emb = emb
        self.hidden = hidden
        self.layers = layers
    }

    public var description: String {
        "vocab \(vocab), seq-len \(seqLen), emb \(emb), hidden \(hidden), layers \(layers)"
    }

    /// Embedding, `layers` hidden blocks, head.
    public var blockCount: Int { layers + 2 }

    /// `(inputs, outputs)` of the Linear in block `i` (1 ≤ i ≤ layers + 1).
    public func linearShape(block i: Int) -> (inputs: Int, outputs: Int) {
        precondition(i >= 1 && i <= layers + 1)
        let inputs = i == 1 ? seqLen * emb : hidden
        let outputs = i == layers + 1 ? vocab : hidden
        return (inputs, outputs)
    }

    /// Width of the activation that block `i` produces (block `−1`: the token input).
    public func outputWidth(block i: Int) -> Int {
        if i < 0 { return seqLen }
        if i == 0 { return seqLen * emb }
        return linearShape(block: i).outputs
    }

    /// Parameters of block `i`: the embedding table, or a Linear's `W` then `b`.
    public func parameterCount(block i: Int) -> Int {
        if i == 0 { return Embedding.parameterCount(vocab: vocab, dim: emb) }
        let s = linearShape(block: i)
        return Linear.parameterCount(inputs: s.inputs, outputs: s.outputs)
    }

    /// Where block `i` starts in the canonical flat parameter vector (blocks in order).
    public func parameterOffset(block i: Int) -> Int {
        (0..<i).reduce(0) { $0 + parameterCount(block: $1) }
    }

    /// Ψ, the total number of parameters.
    public var parameterCount: Int { parameterOffset(block: blockCount) }

    /// Names of the tensors in canonical order, with their offsets and shapes.
    public var tensors: [(name: String, offset: Int, shape: [Int])] {
        var result: [(String, Int, [Int])] = [("embedding", 0, [vocab, emb])]
        for i in 1...layers + 1 {
            let s = linearShape(block: i)
            let offset = parameterOffset(block: i)
            let name = i == layers + 1 ? "head" : "fc\(i)"
            result.append(("\(name).weight", offset, [s.inputs, s.outputs]))
            result.append(("\(name).bias", offset + s.inputs * s.outputs, [s.outputs]))
        }
        return result
    }

    /// The initial parameters, canonical layout, from `seed` alone.
    ///
    /// Every layout calls this and then takes its own slice, so every layout starts from the same
    /// weights (ml.c's "build the whole model, then shard"). Values are drawn in canonical order
    /// from the `.initialization` stream: the embedding `U(−1, 1)`, each Linear's weight and bias
    /// `U(−1/√in, 1/√in)` (PyTorch's default for `nn.Linear`).
    public func initialParameters(seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed, stream: RandomStream.initialization.rawValue, index: 0)
        var p = [Float]()
        p.reserveCapacity(parameterCount)
        for _ in 0..<vocab * emb { p.append(rng.symmetric(1)) }
        for i in 1...layers + 1 {
            let s = linearShape(block: i)
            let bound = 1 / Float(s.inputs).squareRoot()
            for _ in 0..<(s.inputs * s.outputs + s.outputs) { p.append(rng.symmetric(bound)) }
        }
        return p
    }

    /// The reference layer of block `i` over `parameters` (``parameterCount(block:)`` floats).
    public func makeLayer(block i: Int, parameters: ParameterView) -> Layer {
        if i == 0 { return Embedding(vocab: vocab, dim: emb, parameters: parameters) }
        let s = linearShape(block: i)
        return Linear(inputs: s.inputs, outputs: s.outputs, relu: i <= layers, parameters: parameters)
    }

    /// The reference layers over parameter storage chosen by the caller: `parameters(i)` gives
    /// block `i`'s view. The same construction serves the reference model (slices of one flat
    /// buffer) and FSDP (one shared gather buffer).
    public func makeLayers(parameters: (Int) -> ParameterView) -> [Layer] {
        (0..<blockCount).map { makeLayer(block: $0, parameters: parameters($0)) }
    }
}

/// The whole model on one rank: the reference every layout must reproduce.
///
/// Owns one flat parameter buffer in canonical layout, the activations for a batch of
/// `batchSize` rows, and the targets. Nothing is allocated after `init`.
public final class Model {
    public let config: ModelConfig
    public let batchSize: Int
    public let parameters: ParameterBuffer
    public let layers: [Layer]
    /// `activations[0]` holds the token ids; `activations[i + 1]` is layer `i`'s output.
    public let activations: [Activation]
    public let targets: UnsafeMutablePointer<Int32>
    public var loss: SoftmaxCrossEntropy

    /// - Parameters:
    ///   - lossScale: the gradient scale of the loss, normally `1 / global batch`.
    ///   - spareGradients: extra gradient floats after the Ψ real ones (see ``ParameterBuffer``).
    public init(config: ModelConfig, batchSize: Int, lossScale: Float? = nil, spareGradients: Int = 0) {
        self.config = config
        self.batchSize = batchSize
        let parameters = ParameterBuffer(count: config.parameterCount, spare: spareGradients)
        self.parameters = parameters
        layers = config.makeLayers(
            parameters: { parameters.view(offset: config.parameterOffset(block: $0), count: config.parameterCount(block: $0)) })
        activations = (-1..<config.blockCount).map { Activation(rows: batchSize, cols: config.outputWidth(block: $0)) }
        targets = .allocate(capacity: batchSize)
        targets.initialize(repeating: 0, count: batchSize)
        loss = SoftmaxCrossEntropy(gradientScale: lossScale ?? 1 / Float(batchSize))
    }

    deinit { targets.deallocate() }

    /// The token input, `[batchSize × seqLen]`.
    public var tokens: Activation { activations[0] }
    /// The logits, `[batchSize × vocab]`.
    public var logits: Activation { activations[activations.count - 1] }

    /// Copies a canonical parameter vector in.
    public func load(_ values: [Float]) {
        precondition(values.count == parameters.count)
        values.withUnsafeBufferPointer { parameters.value.update(from: $0.baseAddress!, count: values.count) }
    }

    /// Runs every layer forward; returns the summed loss over the batch.
    public func forward() -> Float {
        for (i, layer) in layers.enumerated() { layer.forward(activations[i], activations[i + 1]) }
        return loss.forward(logits, targets)
    }

    /// Backpropagates the last forward, adding into `parameters.grad`.
    public func backward() {
        loss.backward(logits, targets)
        for i in stride(from: layers.count - 1, through: 0, by: -1) {
            layers[i].backward(activations[i], activations[i + 1])
        }
    }
}
