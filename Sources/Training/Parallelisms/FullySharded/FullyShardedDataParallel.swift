import Core
import Distributed

/// `train_fsdp`: fully sharded data parallel, as ZeRO stage 1, 2 or 3 (`--zero`, default 3),
/// optionally hybrid (HSDP, `--replicate R`). The reference chain over the reference layers,
/// with a ``ZeroStage`` deciding where the full parameters live and what runs around the
/// blocks; each rank trains on its B/N rows, and the optimizer — SGD, or Adam with its moments —
/// runs over this rank's shard only:
///
///     stage 1 (ShardedOptimizerState): full parameters and gradients; reduce-scatter ∇ once,
///                                      update the shard, allgather the parameters
///     stage 2 (ShardedGradients):      full parameters; reduce-scatter each block's ∇ during
///                                      backward into the shard; update, allgather
///     stage 3 (ShardedParameters):     allgather each block before forward and backward (the
///                                      last two stay gathered from forward into backward),
///                                      reduce-scatter its ∇ after; update the shard
///
/// **HSDP.** On the mesh `[shard, replicate]` (S·R = N, shard fastest) the parameters are
/// sharded within each group of S neighbouring ranks, and the R groups are replicas of each
/// other: every stage's collectives run over the shard group, and once per optimizer step, after
/// the last micro-step, the gradient shards are summed across the replicas with one allreduce of
/// s floats over the replicate group (4Ψ'/S bytes; nothing when R = 1). With R = 1 this is plain
/// FSDP. Every stage works with any R that divides N.
///
/// The loss is summed over all N ranks: one 4-byte allreduce. With `--accumulate K`
/// (``MicroSteps``) ZeRO-3 gathers and reduce-scatters every block again per micro-step (it
/// keeps no full parameters between them), ZeRO-2 reduce-scatters per micro-step, ZeRO-1 only
/// after the last; each stage's comment says why.
public final class FullyShardedDataParallel: TrainingLayout {
    let mesh: ProcessMesh
    /// The S ranks that shard the model among themselves, and the R replicas of this rank.
    let shardGroup: Communicator
    let replicas: Communicator
    let zero: Int
    let stage: ZeroStage
    let chain: LayerChain
    public let local: LocalParameters
    let steps: MicroSteps
    let globalBatch: Int

    /// - Parameters:
    ///   - zero: the ZeRO stage, 1, 2 or 3 (checked when the flags are parsed).
    ///   - replicate: R, the number of replicas of the shard group (HSDP when > 1).
    public init(_ context: TrainingContext, zero: Int = 3, replicate: Int = 1, recompute: Bool = false) throws(UsageError) {
        precondition((1...3).contains(zero), "ZeRO stage \(zero)")
        mesh = try LayoutShape.fullySharded(ranks: context.world.size, replicate: replicate).makeMesh(context)
        steps = mesh.microSteps(batch: context.batchSize, accumulation: context.options.accumulate)
        shardGroup = mesh[.shard]
        replicas = mesh[.replicate]
        self.zero = zero
        globalBatch = context.batchSize
        let plan = context.plan
        switch zero {
        case 1: stage = ShardedOptimizerState(plan: plan, group: shardGroup, initialParameters: context.initialParameters)
        case 2: stage = ShardedGradients(plan: plan, group: shardGroup, initialParameters: context.initialParameters)
        default:
            stage = ShardedParameters(
                blocks: plan.blocks.map { block in
                    ShardedParameters.Block(count: block.parameterCount,
                                            map: .contiguous(block.parameterOffset, block.parameterCount),
                                            make: block.makeLayer(parameters:))
                },
                group: shardGroup, initialParameters: context.initialParameters,
                gatherBuffers: recompute ? 1 : 2)  // the last two blocks stay gathered into backward
        }
        chain = LayerChain(layers: stage.layers, widths: plan.widths(0..<plan.count), rows: steps.rowsPerStep,
                           loss: SoftmaxCrossEntropy(gradientScale: 1 / Float(globalBatch)), hooks: stage.hooks,
                           recompute: recompute)
        // Replicas hold the same shards: only the first reports them when gathering.
        local = stage.makeLocal(optimizer: context.optimizer, reports: replicas.rank == 0)
    }

    public var summary: String? {
        guard replicas.size > 1 else { return "ZeRO-\(zero) over \(shardGroup.size) ranks" }
        return "ZeRO-\(zero) over HSDP: \(replicas.size) replicas of \(shardGroup.size)-rank shard groups"
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: chain.input.value, targets: chain.targets)
            lossSum += chain.forward()
            if j == 0 { stage.zeroGradients() }
            chain.backward()
        }
        stage.reduceGradients()
        replicas.allreduceSum(local.gradients, count: local.map.count)
        return mesh.world.sum(lossSum) / Float(globalBatch)
    }

    public func update(step: Int) {
        local.optimizer.step(local.values, local.gradients, t: step)
        stage.gatherParameters()
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: chain.input.value, targets: chain.targets)
            lossSum += chain.forward()
        }
        return mesh.world.sum(lossSum) / Float(globalBatch)
    }
}
