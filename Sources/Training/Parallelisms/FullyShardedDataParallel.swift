import Core
import Distributed

/// `train_fsdp`: fully sharded data parallel (ZeRO-3, with ZeRO-1/2's sharded optimizer state
/// and gradients). The reference chain over the reference layers, with ``ShardedParameters`` as
/// its hooks (allgather before each block, reduce-scatter after its backward); each rank trains
/// on its B/N rows, and the optimizer — SGD, or Adam with its moments — runs over this rank's
/// shards only. The loss is summed over the group: one 4-byte allreduce.
///
/// With `--accumulate K` (``MicroSteps``) each micro-step gathers and reduce-scatters every block
/// again — ZeRO-3 keeps no full parameters between micro-steps — so its bytes per optimizer step
/// are K times those of one pass, while each shard's gradient adds up the K reduce-scatters.
public final class FullyShardedDataParallel: TrainingLayout {
    let mesh: ProcessMesh
    /// The data-parallel group (the mesh's `dp` axis: all ranks).
    let dp: Communicator
    let sharded: ShardedParameters
    let chain: LayerChain
    public let local: LocalParameters
    let steps: MicroSteps
    let globalBatch: Int

    public init(_ context: TrainingContext) throws(UsageError) {
        mesh = try LayoutShape.dataParallel(ranks: context.world.size).makeMesh(context)
        steps = mesh.microSteps(batch: context.batchSize, accumulation: context.options.accumulate)
        dp = mesh[.dp]
        globalBatch = context.batchSize
        let plan = context.plan
        sharded = ShardedParameters(
            blocks: plan.blocks.map { block in
                ShardedParameters.Block(count: block.parameterCount,
                                        map: .contiguous(block.parameterOffset, block.parameterCount),
                                        make: block.makeLayer(parameters:))
            },
            group: dp, initialParameters: context.initialParameters)
        chain = LayerChain(layers: sharded.layers, widths: plan.widths(0..<plan.count), rows: steps.rowsPerStep,
                           loss: SoftmaxCrossEntropy(gradientScale: 1 / Float(globalBatch)), hooks: sharded)
        local = LocalParameters(map: sharded.map, values: sharded.shards.value, gradients: sharded.shards.grad,
                                optimizer: Optimizer(config: context.optimizer, count: sharded.shards.count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: chain.input.value, targets: chain.targets)
            lossSum += chain.forward()
            if j == 0 { sharded.shards.zeroGradients() }
            chain.backward()
        }
        return dp.sum(lossSum) / Float(globalBatch)
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: chain.input.value, targets: chain.targets)
            lossSum += chain.forward()
        }
        return dp.sum(lossSum) / Float(globalBatch)
    }
}
