import Core
import Distributed

// MARK: - The two Megatron layers

/// `Y_t = X·W[:, cols_t] + b[cols_t]` (then ReLU): the first half of a Megatron pair.
///
/// Each of the `N` ranks of the tensor-parallel group holds `outputs / N` consecutive columns of
/// `W` (`[inputs × outputs/N]`, row-major, then its `outputs/N` floats of `b`) and reads the
/// whole, replicated input `X`. Its output is this rank's column slice of `Y`: no communication
/// forward. ReLU is elementwise, so it applies to the slice unchanged.
///
/// Backward, `dW_t = Xᵀ·dY_t` and `db_t = Σ_rows dY_t` are local, but every rank's
/// `dY_t·W_tᵀ` is only a partial sum of `dX = Σ_t dY_t·W_tᵀ`: one allreduce (**sum**) of the
/// `rows × inputs` input gradient (Megatron's `f`) makes it whole before the previous layer
/// reads it. That is `2(N−1)/N · rows · inputs · 4` bytes per rank.
public final class ColumnParallelLinear: Layer {
    public let inputs: Int
    /// Columns held here: `outputs / N`.
    public let localOutputs: Int
    let local: Linear
    let tp: Communicator

    /// - Parameters:
    ///   - parameters: `inputs · localOutputs + localOutputs` floats: `W[:, cols_t]` then `b[cols_t]`.
    public init(inputs: Int, localOutputs: Int, relu: Bool, parameters: ParameterView, tp: Communicator) {
        self.inputs = inputs
        self.localOutputs = localOutputs
        self.tp = tp
        local = Linear(inputs: inputs, outputs: localOutputs, relu: relu, parameters: parameters)
    }

    public func forward(_ input: Activation, _ output: Activation) {
        local.forward(input, output)
    }

    public func backward(_ input: Activation, _ output: Activation) {
        local.backward(input, output)
        tp.allreduceSum(input.grad, count: input.rows * inputs)
    }
}

/// `Y = Σ_t X_t·W[rows_t, :] + b` (then ReLU): the second half of a Megatron pair.
///
/// Each rank holds `inputs / N` consecutive rows of `W` (`[inputs/N × outputs]`) — the rows
/// that multiply the column slice `X_t` the previous ``ColumnParallelLinear`` produced here — and
/// the whole bias. Forward, the partial products are summed with one allreduce of
/// `rows × outputs` floats (Megatron's `g`), and only then is the bias added, once, followed by
/// ReLU: exactly the single-rank `X·W + b`. (Averaging the partials, or adding `b` on every rank
/// before the sum, as ml.c does, computes a different model.)
///
/// Backward needs no communication: `dY` is the same on every rank, so `db = Σ_rows dY` is
/// the same everywhere (the replicated bias stays replicated without a reduction), and
/// `dW_t = X_tᵀ·dY`, `dX_t = dY·W_tᵀ` are exactly this rank's slices.
public final class RowParallelLinear: Layer {
    /// Rows of `W` held here: `inputs / N`.
    public let localInputs: Int
    public let outputs: Int
    public let relu: Bool
    let local: Linear
    let bias: UnsafeMutablePointer<Float>
    let biasGrad: UnsafeMutablePointer<Float>
    let tp: Communicator

    /// - Parameters:
    ///   - parameters: `localInputs · outputs + outputs` floats: `W[rows_t, :]` then all of `b`.
    public init(localInputs: Int, outputs: Int, relu: Bool, parameters: ParameterView, tp: Communicator) {
        precondition(parameters.count == localInputs * outputs + outputs)
        self.localInputs = localInputs
        self.outputs = outputs
        self.relu = relu
        self.tp = tp
        let weights = localInputs * outputs
        local = Linear(inputs: localInputs, outputs: outputs, relu: false, bias: false,
                       parameters: ParameterView(value: parameters.value, grad: parameters.grad, count: weights))
        bias = parameters.value + weights
        biasGrad = parameters.grad + weights
    }

    public func forward(_ input: Activation, _ output: Activation) {
        local.forward(input, output)
        tp.allreduceSum(output.value, count: output.rows * outputs)
        Kernels.addBias(output.value, rows: output.rows, cols: outputs, bias: bias, relu: relu)
    }

    public func backward(_ input: Activation, _ output: Activation) {
        if relu { Kernels.maskByPositive(output.grad, output.value, count: output.rows * outputs) }
        Kernels.addColumnSums(output.grad, rows: output.rows, cols: outputs, into: biasGrad)
        local.backward(input, output)
    }
}

// MARK: - Which block is sharded how

/// How a range of the model's blocks is laid out on one rank of a tensor-parallel group of `N`:
/// each block's sharding, its local parameters (count and ``ParameterMap``), and the local widths
/// of the activations it reads and writes. Pure: no MPI until ``makeLayers(tp:parameters:)``.
///
/// The Linear blocks `1 … L+1` pair up as (1 column, 2 row), (3 column, 4 row), …; when `L + 1`
/// is odd the head is left over and stays replicated, as does the embedding. So every hidden
/// Linear is sharded and the only sharded width is `hidden`, which `N` must divide. A group of
/// one rank replicates everything: the plan is then the reference model's blocks.
///
/// The pairing depends on the block index only, so a pipeline stage can take any range of
/// blocks (even one that cuts a pair: the activation it sends is then a per-rank slice of
/// width `hidden/N`, and ``widths`` says so). `train_3d` composes this with
/// ``PipelineStage`` and FSDP without new math.
public struct TensorParallelPlan: Sendable {
    public enum Sharding: Sendable, Equatable {
        case replicated
        /// Column slice of `W` and `b`: ``ColumnParallelLinear``.
        case column
        /// Row slice of `W`, the whole `b`: ``RowParallelLinear``.
        case row
    }

    /// One block on this rank.
    public struct Block: Sendable {
        /// Canonical block index (0 = embedding, 1…L hidden, L+1 head).
        public let index: Int
        public let sharding: Sharding
        /// Where this rank's floats of the block sit in the canonical vector, in local order.
        public let map: ParameterMap
        /// Local width of the activation the block reads, and of the one it writes.
        public let inputWidth: Int
        public let outputWidth: Int
        public var parameterCount: Int { map.count }
    }

    public let config: ModelConfig
    public let tpSize: Int
    public let tpRank: Int
    public let blocks: [Block]

    /// How block `index` is sharded over a group of `tpSize` ranks.
    public static func sharding(block index: Int, config: ModelConfig, tpSize: Int) -> Sharding {
        if tpSize == 1 || index == 0 { return .replicated }
        if index % 2 == 0 { return .row }
        return index + 1 <= config.layers + 1 ? .column : .replicated
    }

    /// - Throws: `UsageError` when `tpSize` does not divide `config.hidden`.
    public init(config: ModelConfig, blocks range: Range<Int>, tpSize: Int, tpRank: Int) throws(UsageError) {
        precondition(tpRank >= 0 && tpRank < tpSize && range.lowerBound >= 0 && range.upperBound <= config.blockCount)
        if config.hidden % tpSize != 0 {
            throw UsageError("tensor parallelism over \(tpSize) ranks needs --hidden divisible by \(tpSize) (got --hidden \(config.hidden)); use a rank count that divides it")
        }
        self.config = config
        self.tpSize = tpSize
        self.tpRank = tpRank
        blocks = range.map { i in
            let offset = config.parameterOffset(block: i)
            let sharding = Self.sharding(block: i, config: config, tpSize: tpSize)
            if i == 0 {
                return Block(index: 0, sharding: .replicated, map: .contiguous(offset, config.parameterCount(block: 0)),
                             inputWidth: config.seqLen, outputWidth: config.outputWidth(block: 0))
            }
            let (inputs, outputs) = config.linearShape(block: i)
            switch sharding {
            case .replicated:
                return Block(index: i, sharding: .replicated, map: .contiguous(offset, config.parameterCount(block: i)),
                             inputWidth: inputs, outputWidth: outputs)
            case .column:
                // One run per input row: W[r, t·o ..< (t+1)·o], then b[t·o ..< (t+1)·o].
                let o = outputs / tpSize, first = tpRank * o
                var map = ParameterMap()
                for r in 0..<inputs { map.append(start: offset + r * outputs + first, count: o) }
                map.append(start: offset + inputs * outputs + first, count: o)
                return Block(index: i, sharding: .column, map: map, inputWidth: inputs, outputWidth: o)
            case .row:
                // Rows t·k ..< (t+1)·k of W are contiguous; then the whole bias.
                let k = inputs / tpSize
                let map = ParameterMap.contiguous(offset + tpRank * k * outputs, k * outputs)
                    + .contiguous(offset + inputs * outputs, outputs)
                return Block(index: i, sharding: .row, map: map, inputWidth: k, outputWidth: outputs)
            }
        }
    }

    /// Local parameters of all the blocks.
    public var parameterCount: Int { blocks.reduce(0) { $0 + $1.parameterCount } }
    /// The blocks' maps one after the other: the map of a buffer laid out block after block.
    public var map: ParameterMap { blocks.reduce(ParameterMap()) { $0 + $1.map } }
    /// Local activation widths: the input of the first block, then every block's output.
    public var widths: [Int] { [blocks.first?.inputWidth ?? 0] + blocks.map(\.outputWidth) }

    /// The layers, over parameter storage chosen by the caller: `parameters(i)` is the view of
    /// canonical block `i`'s local floats (``Block/parameterCount`` of them, in ``Block/map``
    /// order). The sharded layers communicate over `tp`, which must have `tpSize` ranks.
    public func makeLayers(tp: Communicator, parameters: (Int) -> ParameterView) -> [Layer] {
        blocks.map { makeLayer($0, tp: tp, parameters: parameters($0.index)) }
    }

    /// The layer of one block over `parameters` (``Block/parameterCount`` floats, ``Block/map`` order).
    public func makeLayer(_ block: Block, tp: Communicator, parameters view: ParameterView) -> Layer {
        precondition(tp.size == tpSize && tp.rank == tpRank)
        precondition(view.count == block.parameterCount)
        let relu = block.index <= config.layers
        switch block.sharding {
        case .replicated where block.index == 0:
            return Embedding(vocab: config.vocab, dim: config.emb, parameters: view)
        case .replicated:
            return Linear(inputs: block.inputWidth, outputs: block.outputWidth, relu: relu, parameters: view)
        case .column:
            return ColumnParallelLinear(inputs: block.inputWidth, localOutputs: block.outputWidth, relu: relu,
                                        parameters: view, tp: tp)
        case .row:
            return RowParallelLinear(localInputs: block.inputWidth, outputs: block.outputWidth, relu: relu,
                                     parameters: view, tp: tp)
        }
    }

    /// The layers over one flat buffer holding the blocks one after the other (``map`` order).
    public func makeLayers(tp: Communicator, buffer: ParameterBuffer) -> [Layer] {
        precondition(buffer.count == parameterCount)
        var offsets: [Int: Int] = [:]
        var offset = 0
        for block in blocks { offsets[block.index] = offset; offset += block.parameterCount }
        return makeLayers(tp: tp, parameters: { i in
            buffer.view(offset: offsets[i]!, count: blocks.first { $0.index == i }!.parameterCount)
        })
    }
}

// MARK: - train_tp

/// `train_tp`: Megatron tensor parallelism over all `N` ranks of the world.
///
/// Every rank runs the whole global batch through the whole depth of the model, holding a
/// `1/N` slice of every hidden Linear (see ``TensorParallelPlan``) and a replica of the embedding
/// (and of the head when it is left unpaired). The logits are whole on every rank, so every
/// rank computes the same loss with no further communication, and every replicated parameter
/// receives the same gradient on every rank and so stays replicated through any optimizer.
///
/// Per step, each row-parallel layer allreduces its `B × outputs` output forward and each
/// column-parallel layer its `B × inputs` input gradient backward: with ml.c's sizes (B 32,
/// seq·emb 256, hidden 64, vocab 27, one hidden layer) that is 3,456 + 32,768 bytes of payload,
/// `2(N−1)/N` times that on the wire per rank, in two allreduces.
public final class TensorParallel: TrainingLayout {
    public let plan: TensorParallelPlan
    let world: Communicator
    let tp: Communicator
    let config: ModelConfig
    let parameters: ParameterBuffer
    let layers: [Layer]
    /// `activations[0]` holds the token ids; `activations[i + 1]` is layer `i`'s (local) output.
    let activations: [Activation]
    let targets: UnsafeMutablePointer<Int32>
    let loss: SoftmaxCrossEntropy
    public let local: LocalParameters
    let batchSize: Int

    public init(_ context: TrainingContext) throws(UsageError) {
        let n = context.world.size
        config = context.config
        plan = try TensorParallelPlan(config: config, blocks: 0..<config.blockCount, tpSize: n, tpRank: context.world.rank)
        world = context.world
        tp = ProcessGrid(world: world, tp: n, dp: 1, pp: 1).tp
        batchSize = context.batchSize
        parameters = ParameterBuffer(count: plan.parameterCount)
        plan.map.extract(from: context.initialParameters, into: parameters.value)
        layers = plan.makeLayers(tp: tp, buffer: parameters)
        activations = plan.widths.map { Activation(rows: context.batchSize, cols: $0) }
        targets = .allocate(capacity: context.batchSize)
        targets.initialize(repeating: 0, count: context.batchSize)
        loss = SoftmaxCrossEntropy(gradientScale: 1 / Float(context.batchSize))
        local = LocalParameters(map: plan.map, values: parameters.value, gradients: parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: parameters.count))
    }

    deinit { targets.deallocate() }

    var logits: Activation { activations[activations.count - 1] }

    func forward(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: 0..<batchSize, tokens: activations[0].value, targets: targets)
        for (i, layer) in layers.enumerated() { layer.forward(activations[i], activations[i + 1]) }
        return loss.forward(logits, targets) / Float(batchSize)
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        let mean = forward(batch: index, from: sampler)
        parameters.zeroGradients()
        loss.backward(logits, targets)
        for i in stride(from: layers.count - 1, through: 0, by: -1) { layers[i].backward(activations[i], activations[i + 1]) }
        return mean
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        forward(batch: index, from: sampler)
    }
}
