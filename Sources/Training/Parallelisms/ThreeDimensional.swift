import Core
import Distributed

/// `train_3d`: tensor × data × pipeline parallelism, composed from the three pieces with no new
/// math. On the ``ProcessMesh`` `[tp, dp, pp]` (tp fastest, then dp, then pp), a rank
///
/// 1. takes its pipeline stage's run of blocks (``PipelinePartition``, over the pp axis);
/// 2. lays those blocks out tensor-parallel over its tp group (``TensorParallelPlan``: Megatron
///    column/row pairs, allreduce-sum of partial outputs and of input gradients);
/// 3. shards each of those (tensor-parallel) blocks over its dp group (``ShardedParameters``,
///    ZeRO-3: hooks that allgather before forward and backward and reduce-scatter the gradients);
/// 4. runs the resulting layers and hooks as a ``PipelineStage`` over its dp group's rows of the
///    global batch, in `M` micro-batches with the GPipe, 1F1B, ZB-H1 or interleaved schedule
///    (interleaved: steps 1–3 for each of the stage's `V` chunks `s, s + P, …`, FSDP sharding
///    all their blocks together).
///
/// So every rank of a tp group holds a slice of each hidden Linear of its stage, of which its
/// dp rank holds 1/D; the optimizer (and Adam's moments) covers exactly those floats. The loss
/// is each pipeline's summed loss, added over the dp groups (one 4-byte allreduce).
///
/// Any `T·D·P = N` works, including T = 1 or D = 1 (every axis is a real communicator; ml.c
/// crashed on both and needed ≥ 12 ranks). Per step and rank: the TP activations of its
/// stage's blocks, the FSDP allgathers and reduce-scatters of its (1/T) blocks once per
/// micro-batch, and the PP activations and gradients at its stage's boundaries.
public final class ThreeDimensional: TrainingLayout {
    public let mesh: ProcessMesh
    /// The data-parallel group, over which the pipelines' losses are summed.
    let dp: Communicator
    /// The tensor-parallel layout of each of this stage's chunks (one unless interleaved).
    public let plans: [TensorParallelPlan]
    let sharded: ShardedParameters
    let stage: PipelineStage
    public let local: LocalParameters
    let globalBatch: Int
    /// This dp group's rows in `--accumulate` micro-steps (each one a full schedule run).
    let steps: MicroSteps
    /// Every stage's blocks, and the model they cut.
    let cut: [Range<Int>]
    let modelPlan: BlockPlan

    public init(_ context: TrainingContext, tp: Int, dp: Int, pp: Int, pipeline: PipelineOptions) throws(UsageError) {
        let v = pipeline.virtualStages
        let shape = LayoutShape.threeDimensional(tp: tp, dp: dp, pp: pp, microBatches: pipeline.microBatches,
                                                 partition: pipeline.partition, virtualStages: v)
        let mesh = try shape.makeMesh(context)
        self.mesh = mesh
        self.dp = mesh[.dp]
        globalBatch = context.batchSize
        let cut = PipelinePartition.stages(context.plan, stages: pp * v, override: pipeline.partition)
        self.cut = cut
        modelPlan = context.plan
        // This stage's chunks (one unless interleaved: chunks s, s + P, …), each laid out tensor-parallel;
        // FSDP shards all their blocks, chunk after chunk, and its hooks address them in that order.
        let chunkPlans = try (0..<v).map { c throws(UsageError) in
            try TensorParallelPlan(context.plan, blocks: cut[c * pp + mesh[.pp].rank], tpSize: tp, tpRank: mesh[.tp].rank)
        }
        plans = chunkPlans
        let sharded = ShardedParameters(
            blocks: chunkPlans.flatMap { plan in
                plan.blocks.map { block in
                    ShardedParameters.Block(count: block.parameterCount, map: block.map,
                                            make: { plan.makeLayer(block, tp: mesh[.tp], parameters: $0) })
                }
            },
            group: mesh[.dp], initialParameters: context.initialParameters)
        self.sharded = sharded
        steps = mesh.microSteps(batch: globalBatch, accumulation: context.options.accumulate)
        var firstLayer = 0
        let chunks = chunkPlans.map { plan in
            defer { firstLayer += plan.blocks.count }
            return (layers: Array(sharded.layers[firstLayer ..< firstLayer + plan.blocks.count]), widths: plan.widths)
        }
        stage = PipelineStage(chunks: chunks, hooks: sharded, rows: steps.rows(0),
                              schedule: PipelineSchedule(pipeline.schedule, stage: mesh[.pp].rank, stages: pp,
                                                         microBatches: pipeline.microBatches, virtualStages: v),
                              pp: mesh[.pp], seqLen: context.config.seqLen, lossScale: 1 / Float(globalBatch), recompute: pipeline.recompute)
        local = LocalParameters(map: sharded.map, values: sharded.shards.value, gradients: sharded.shards.grad,
                                optimizer: Optimizer(config: context.optimizer, count: sharded.shards.count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        sharded.shards.zeroGradients()
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.trainingStep(batch: index, from: sampler)
        }
        return dp.sum(lossSum) / Float(globalBatch)
    }

    public func trainingFinished() -> String? { stage.waitingReport(world: mesh.world) }

    public var summary: String? { PipelinePartition.describe(modelPlan, cut, stages: mesh[.pp].size) }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.evaluate(batch: index, from: sampler)
        }
        return dp.sum(lossSum) / Float(globalBatch)
    }
}
