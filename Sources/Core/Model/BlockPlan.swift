/// What a block of the chain computes. Layouts decide how to place a block by its kind
/// (tensor parallelism splits Linears, not embeddings), never by its position.
public enum BlockKind: String, Sendable, CaseIterable {
    /// Token embedding then flatten: ids `[B × seq]` → `[B × seq·emb]`.
    /// Parameters: the table `[vocab × emb]`.
    case embedding
    /// `ReLU(x·W + b)`: `[B × in]` → `[B × out]`. Parameters: `W [in × out]`, then `b [out]`.
    case dense
    /// `x·W + b`, the logits: `[B × hidden]` → `[B × vocab]`. Parameters as ``dense``.
    case head
    /// A mixture of experts in place of a ``dense`` block (``MixtureOfExperts``): `[B × in]` →
    /// `[B × out]`, each row the gated sum of its top-K experts' `ReLU(x·W_e + b_e)`.
    /// Parameters: the router `W_r [in × E]`, then per expert `W_e [in × out]` and `b_e [out]`.
    case mixtureOfExperts

    /// A Linear `y = x·W + b` (with or without ReLU): what tensor parallelism can split.
    public var isLinear: Bool { self == .dense || self == .head }

    /// Whether ReLU follows the Linear. The one place this rule is written.
    public var appliesReLU: Bool { self == .dense }
}

/// A named parameter tensor and where it sits in the canonical flat vector.
public struct Tensor: Sendable, Equatable {
    public var name: String
    public var offset: Int
    public var shape: [Int]
    public var count: Int { shape.reduce(1, *) }
}

/// One block of the chain: its kind, its widths and its parameters' place in the canonical vector.
public struct Block: Sendable, Equatable {
    /// Position in the chain (0 is the embedding).
    public let index: Int
    public let kind: BlockKind
    /// Canonical name prefix: `embedding`, `fc1` … `fcL`, `head`.
    public let name: String
    /// Width of the activation the block reads (the embedding reads `seq` token ids) and writes.
    public let inputWidth: Int
    public let outputWidth: Int
    /// Rows and columns of the block's weight: `[vocab, emb]` for the embedding, `[in, out]` for a Linear.
    public let weightRows: Int
    public let weightColumns: Int
    /// Where the block's floats start in the canonical vector.
    public let parameterOffset: Int
    /// The experts of a ``BlockKind/mixtureOfExperts`` block (nil for every other kind).
    public var experts: ExpertsConfig? = nil

    /// The weight, then (Linears) the bias; for a mixture of experts the router `in × E`, then
    /// E experts of `in × out + out`.
    public var parameterCount: Int {
        if kind == .mixtureOfExperts, let experts {
            return MixtureOfExperts.parameterCount(inputs: weightRows, outputs: weightColumns, experts: experts.count)
        }
        return weightRows * weightColumns + (kind.isLinear ? weightColumns : 0)
    }
    public var parameterRange: Range<Int> { parameterOffset ..< parameterOffset + parameterCount }

    /// The block's tensors, with canonical offsets.
    public var tensors: [Tensor] {
        switch kind {
        case .embedding:
            return [Tensor(name: name, offset: parameterOffset, shape: [weightRows, weightColumns])]
        case .dense, .head:
            return [Tensor(name: name + ".weight", offset: parameterOffset, shape: [weightRows, weightColumns]),
                    Tensor(name: name + ".bias", offset: parameterOffset + weightRows * weightColumns, shape: [weightColumns])]
        case .mixtureOfExperts:
            let count = experts?.count ?? 0, router = weightRows * count, expert = weightRows * weightColumns + weightColumns
            return [Tensor(name: name + ".router.weight", offset: parameterOffset, shape: [weightRows, count])]
                + (0..<count).flatMap { e -> [Tensor] in
                    let start = parameterOffset + router + e * expert
                    return [Tensor(name: "\(name).experts.\(e).weight", offset: start, shape: [weightRows, weightColumns]),
                            Tensor(name: "\(name).experts.\(e).bias", offset: start + weightRows * weightColumns, shape: [weightColumns])]
                }
        }
    }

    /// The reference (single-rank) layer of this block over `parameters` (``parameterCount`` floats).
    /// `rows`, the most rows one forward takes, matters only to a mixture of experts, which
    /// allocates its routing and packed buffers for them once, here.
    public func makeLayer(parameters: ParameterView, rows: Int) -> Layer {
        switch kind {
        case .embedding:
            return Embedding(vocab: weightRows, dim: weightColumns, parameters: parameters)
        case .dense, .head:
            return Linear(inputs: weightRows, outputs: weightColumns, relu: kind.appliesReLU, parameters: parameters)
        case .mixtureOfExperts:
            return MixtureOfExperts(inputs: weightRows, outputs: weightColumns, experts: experts!, rows: rows, parameters: parameters)
        }
    }

    /// The layer of a block that needs no row count: any kind but a mixture of experts (which
    /// the layouts that call this refuse before building layers).
    public func makeLayer(parameters: ParameterView) -> Layer {
        precondition(kind != .mixtureOfExperts, "a mixture of experts needs its rows: makeLayer(parameters:rows:)")
        return makeLayer(parameters: parameters, rows: 0)
    }
}

/// The model as a chain of blocks, layout-neutral: kinds, widths, parameter counts and canonical
/// offsets. Every layout cuts its part out of this plan (FSDP shards blocks, TP splits Linears by
/// kind, PP takes runs of blocks), checkpoints name tensors from it, and the tests' Double
/// reference walks it.
///
/// For ``ModelConfig``: block 0 is the embedding, blocks `1 … layers` dense (mixtures of experts
/// when the configuration has ``ModelConfig/experts``), the last the head.
/// Canonical order is the blocks in order, each block's tensors in order.
public struct BlockPlan: Sendable, Equatable {
    public let config: ModelConfig
    public let blocks: [Block]

    public init(_ config: ModelConfig) {
        self.config = config
        var blocks: [Block] = []
        var offset = 0
        func add(_ kind: BlockKind, _ name: String, input: Int, output: Int, rows: Int, columns: Int) {
            var block = Block(index: blocks.count, kind: kind, name: name, inputWidth: input, outputWidth: output,
                              weightRows: rows, weightColumns: columns, parameterOffset: offset)
            if kind == .mixtureOfExperts { block.experts = config.experts }
            blocks.append(block)
            offset += block.parameterCount
        }
        let flat = config.seqLen * config.emb
        add(.embedding, "embedding", input: config.seqLen, output: flat, rows: config.vocab, columns: config.emb)
        for l in stride(from: 1, through: config.layers, by: 1) {
            let inputs = l == 1 ? flat : config.hidden
            add(config.experts == nil ? .dense : .mixtureOfExperts, "fc\(l)", input: inputs, output: config.hidden, rows: inputs, columns: config.hidden)
        }
        let inputs = config.layers >= 1 ? config.hidden : flat
        add(.head, "head", input: inputs, output: config.vocab, rows: inputs, columns: config.vocab)
        self.blocks = blocks
    }

    public var count: Int { blocks.count }
    public subscript(index: Int) -> Block { blocks[index] }

    /// Ψ, the total number of parameters.
    public var parameterCount: Int { blocks.last.map { $0.parameterOffset + $0.parameterCount } ?? 0 }

    /// Every tensor in canonical order.
    public var tensors: [Tensor] { blocks.flatMap(\.tensors) }

    /// Activation widths along `range`: the input of its first block, then each block's output.
    public func widths(_ range: Range<Int>) -> [Int] {
        [blocks[range.lowerBound].inputWidth] + blocks[range].map(\.outputWidth)
    }

    /// The initial parameters, canonical layout, from `seed` alone.
    ///
    /// Every layout calls this and then takes its own slice, so every layout starts from the same
    /// weights (ml.c's "build the whole model, then shard"). Values are drawn in canonical order
    /// from the `.initialization` stream: the embedding `U(−1, 1)`, each Linear's weight and bias
    /// `U(−1/√in, 1/√in)` (PyTorch's default for `nn.Linear`), and a mixture of experts' router
    /// and experts the same (all read the block's input, `in` wide).
    public func initialParameters(seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed, stream: RandomStream.initialization.rawValue, index: 0)
        var p = [Float]()
        p.reserveCapacity(parameterCount)
        for block in blocks {
            let bound: Float = block.kind == .embedding ? 1 : 1 / Float(block.weightRows).squareRoot()
            for _ in 0..<block.parameterCount { p.append(rng.symmetric(bound)) }
        }
        return p
    }
}
