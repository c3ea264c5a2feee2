import Core
import Distributed

/// One block's parameters, cut into N equal shards over a data-parallel group (ZeRO-3).
///
/// Wraps the reference layer unchanged: the inner layer was built over the shared
/// ``GatherBuffer``, and the wrapper fills that buffer just before the inner layer needs it.
///
///     forward:  allgather shards → full W, b;  inner.forward(x, y)
///     backward: allgather shards → full W, b;  zero full grads;  inner.backward(x, y);
///               reduce-scatter the full grads → this rank's shard of Σ_ranks grad;  shard.grad += it
///
/// A block of `c` floats is padded to `N·⌈c/N⌉`, so any N works, whatever divides emb, hidden
/// or vocab. Biases and the embedding are sharded and reduced like everything else (ml.c never
/// reduced the bias gradients, so its ranks drifted apart). Per step and rank, a block moves
/// 2 allgathers + 1 reduce-scatter of `⌈c/N⌉·(N−1)·4` bytes each: over the model 1.5× the
/// traffic of DP's allreduce (ZeRO's figure), for 1/N of the parameter, gradient and optimizer
/// memory plus one gather buffer sized for the largest block.
public final class ShardedLayer: Layer {
    public let inner: Layer
    let group: Communicator
    /// This rank's `⌈c/N⌉` floats and their gradients.
    let shard: ParameterView
    let buffer: GatherBuffer

    init(inner: Layer, group: Communicator, shard: ParameterView, buffer: GatherBuffer) {
        self.inner = inner
        self.group = group
        self.shard = shard
        self.buffer = buffer
    }

    func gather() {
        group.allgather(shard.value, count: shard.count, into: buffer.full.value)
    }

    public func forward(_ input: Activation, _ output: Activation) {
        gather()
        inner.forward(input, output)
    }

    public func backward(_ input: Activation, _ output: Activation) {
        gather()
        buffer.full.grad.update(repeating: 0, count: shard.count * group.size)
        inner.backward(input, output)
        group.reduceScatterSum(buffer.full.grad, into: buffer.reduced, count: shard.count)
        Kernels.add(buffer.reduced, into: shard.grad, count: shard.count)
    }
}

/// The one place a rank holds full parameters: sized for the largest block, reused by all.
public final class GatherBuffer {
    /// Full (padded) parameters and gradients of the block being computed.
    public let full: ParameterBuffer
    /// The reduce-scattered gradient shard, before it is added into the shard's gradients.
    let reduced: UnsafeMutablePointer<Float>

    let shardCapacity: Int

    init(capacity: Int, shardCapacity: Int) {
        full = ParameterBuffer(count: capacity, isScratch: true)
        self.shardCapacity = shardCapacity
        reduced = .allocate(capacity: max(1, shardCapacity))
        reduced.initialize(repeating: 0, count: max(1, shardCapacity))
        MemoryLedger.add(.buffers, bytes: 4 * max(1, shardCapacity))
    }

    deinit {
        reduced.deallocate()
        MemoryLedger.add(.buffers, bytes: -4 * max(1, shardCapacity))
    }
}

/// A chain of blocks sharded over one data-parallel group: the shards (one flat buffer, so the
/// optimizer updates them in one pass and holds state for them only), the gather buffer, and
/// the wrapped layers. Blocks can be any layers — the reference ones here, tensor-parallel
/// ones in `train_3d` — described by how many local floats they have, where those sit in the
/// canonical vector, and how to build the layer over a view of its floats.
public final class ShardedBlocks {
    public struct Block {
        public var count: Int
        public var map: ParameterMap
        public var make: (ParameterView) -> Layer
        public init(count: Int, map: ParameterMap, make: @escaping (ParameterView) -> Layer) {
            self.count = count
            self.map = map
            self.make = make
        }
    }

    public let layers: [ShardedLayer]
    /// This rank's shards of every block, back to back.
    public let shards: ParameterBuffer
    /// Where `shards` sit in the canonical vector.
    public let map: ParameterMap
    public let buffer: GatherBuffer

    public init(blocks: [Block], group: Communicator, initialParameters: [Float]) {
        let n = group.size
        let shardCounts = blocks.map { ($0.count + n - 1) / n }
        let buffer = GatherBuffer(capacity: (shardCounts.max() ?? 0) * n, shardCapacity: shardCounts.max() ?? 0)
        let shards = ParameterBuffer(count: shardCounts.reduce(0, +))
        var map = ParameterMap()
        var layers: [ShardedLayer] = []
        var offset = 0
        for (block, s) in zip(blocks, shardCounts) {
            let mine = block.map.slice(group.rank * s ..< (group.rank + 1) * s)
            mine.extract(from: initialParameters, into: shards.value + offset)
            map.append(mine)
            let inner = block.make(buffer.full.view(offset: 0, count: block.count))
            layers.append(ShardedLayer(inner: inner, group: group, shard: shards.view(offset: offset, count: s), buffer: buffer))
            offset += s
        }
        self.layers = layers
        self.shards = shards
        self.map = map
        self.buffer = buffer
    }
}

/// `train_fsdp`: fully sharded data parallel (ZeRO-3, with ZeRO-1/2's sharded optimizer state
/// and gradients). The loop is the reference loop over ``ShardedLayer``s; the optimizer — SGD,
/// or Adam with its moments — runs over this rank's shards only.
public final class FullyShardedDataParallel: TrainingLayout {
    let world: Communicator
    let group: Communicator
    let blocks: ShardedBlocks
    let activations: [Activation]
    let targets: UnsafeMutablePointer<Int32>
    let loss: SoftmaxCrossEntropy
    public let local: LocalParameters
    let rows: Range<Int>
    let globalBatch: Int

    public init(_ context: TrainingContext, group: Communicator) throws(UsageError) {
        let batch = context.batchSize, config = context.config
        rows = try dataParallelRows(batch: batch, group: group)
        world = context.world
        self.group = group
        globalBatch = batch
        let rowsPerRank = rows.count
        blocks = ShardedBlocks(
            blocks: (0..<config.blockCount).map { i in
                ShardedBlocks.Block(count: config.parameterCount(block: i),
                                    map: .contiguous(config.parameterOffset(block: i), config.parameterCount(block: i)),
                                    make: { config.makeLayer(block: i, parameters: $0) })
            },
            group: group, initialParameters: context.initialParameters)
        activations = (-1..<config.blockCount).map { Activation(rows: rowsPerRank, cols: config.outputWidth(block: $0)) }
        targets = .allocate(capacity: rowsPerRank)
        targets.initialize(repeating: 0, count: rowsPerRank)
        loss = SoftmaxCrossEntropy(gradientScale: 1 / Float(batch))
        local = LocalParameters(map: blocks.map, values: blocks.shards.value, gradients: blocks.shards.grad,
                                optimizer: Optimizer(config: context.optimizer, count: blocks.shards.count))
    }

    deinit { targets.deallocate() }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        let lossSum = forward(batch: index, from: sampler)
        blocks.shards.zeroGradients()
        loss.backward(activations[activations.count - 1], targets)
        for i in stride(from: blocks.layers.count - 1, through: 0, by: -1) {
            blocks.layers[i].backward(activations[i], activations[i + 1])
        }
        return group.sum(lossSum) / Float(globalBatch)
    }

    /// The reference forward over sharded layers; returns this rank's loss sum.
    func forward(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: rows, tokens: activations[0].value, targets: targets)
        for (i, layer) in blocks.layers.enumerated() { layer.forward(activations[i], activations[i + 1]) }
        return loss.forward(activations[activations.count - 1], targets)
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        group.sum(forward(batch: index, from: sampler)) / Float(globalBatch)
    }

}
