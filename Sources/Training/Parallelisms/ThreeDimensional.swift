import Core
import Distributed

/// `train_3d`: tensor × data × pipeline parallelism, composed from the three pieces with no new
/// math. On the grid of ``ProcessGrid`` (tp fastest, then dp, then pp), a rank
///
/// 1. takes its pipeline stage's run of blocks (``PipelinePartition``, over the pp axis);
/// 2. lays those blocks out tensor-parallel over its tp group (``TensorParallelPlan``: Megatron
///    column/row pairs, allreduce-sum of partial outputs and of input gradients);
/// 3. shards each of those (tensor-parallel) blocks over its dp group (``ShardedBlocks``,
///    ZeRO-3: allgather before forward and backward, reduce-scatter of the gradients);
/// 4. runs the resulting layers as a ``PipelineStage`` over its dp group's rows of the global
///    batch, in `M` micro-batches with the GPipe or 1F1B schedule.
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
    public let grid: ProcessGrid
    public let plan: TensorParallelPlan
    let blocks: ShardedBlocks
    let stage: PipelineStage
    public let local: LocalParameters
    let globalBatch: Int

    public init(_ context: TrainingContext, tp: Int, dp: Int, pp: Int, pipeline: PipelineOptions) throws(UsageError) {
        let world = context.world, config = context.config, batch = context.batchSize, m = pipeline.microBatches
        for (flag, value) in [("tp", tp), ("dp", dp), ("pp", pp)] where value < 1 {
            throw UsageError("--\(flag) must be a positive integer (got \(value))")
        }
        if m < 1 { throw UsageError("--micro-batches must be a positive integer (got \(m))") }
        if tp * dp * pp != world.size {
            throw UsageError("--tp \(tp) × --dp \(dp) × --pp \(pp) = \(tp * dp * pp), but mpirun started \(world.size) ranks")
        }
        if pp > config.blockCount {
            throw UsageError("\(pp) pipeline stages but the model has only \(config.blockCount) blocks (embedding, \(config.layers) hidden, head); use --pp ≤ \(config.blockCount) or more --layers")
        }
        if batch % (dp * m) != 0 {
            throw UsageError("--batch-size \(batch) is not divisible by --dp \(dp) × --micro-batches \(m)")
        }
        let grid = ProcessGrid(world: world, tp: tp, dp: dp, pp: pp)
        self.grid = grid
        globalBatch = batch
        let blockRange = PipelinePartition.blocks(stage: grid.pp.rank, stages: pp, blockCount: config.blockCount)
        let plan = try TensorParallelPlan(config: config, blocks: blockRange, tpSize: tp, tpRank: grid.tp.rank)
        self.plan = plan
        blocks = ShardedBlocks(
            blocks: plan.blocks.map { block in
                ShardedBlocks.Block(count: block.parameterCount, map: block.map,
                                    make: { plan.makeLayer(block, tp: grid.tp, parameters: $0) })
            },
            group: grid.dp, initialParameters: context.initialParameters)
        stage = PipelineStage(layers: blocks.layers, widths: plan.widths, rows: try dataParallelRows(batch: batch, group: grid.dp),
                              schedule: PipelineSchedule(pipeline.schedule, stage: grid.pp.rank, stages: pp, microBatches: m),
                              pp: grid.pp, seqLen: config.seqLen, lossScale: 1 / Float(batch))
        local = LocalParameters(map: blocks.map, values: blocks.shards.value, gradients: blocks.shards.grad,
                                optimizer: Optimizer(config: context.optimizer, count: blocks.shards.count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        blocks.shards.zeroGradients()
        return grid.dp.sum(stage.trainingStep(batch: index, from: sampler)) / Float(globalBatch)
    }

    public func trainingFinished() -> String? { stage.waitingReport(world: grid.world) }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        grid.dp.sum(stage.evaluate(batch: index, from: sampler)) / Float(globalBatch)
    }
}
