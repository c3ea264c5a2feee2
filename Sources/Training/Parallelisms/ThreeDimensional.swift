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
///    global batch, in `M` micro-batches with the GPipe or 1F1B schedule.
///
/// So every rank of a tp group holds a slice of each hidden Linear of its stage, of which its
/// dp rank holds 1/D; the optimizer (and Adam's moments) covers exactly those floats. The loss
/// is each pipeline's summed loss, added over the dp groups (one 4-byte allreduce).
///
/// Any `T·D·P = N` works, including T = 1 or D = 1 (every axis is a real communicator; ml.c
/// crashed on both and needed ≥ 12 ranks). Per step and rank: the TP activations of its
/// stage's blocks, the FSDP allgathers and reduce-scatters of its (1/T) blocks once per
/// micro-batch, and the PP activations and gradients at its stage's boundaries.
///
/// With `--sequence-parallel` the tensor-parallel blocks run as in `train_tp --sequence-parallel`
/// (``SequenceSplit``), stage boundaries outside the pairs carry `1/T` of the rows, and per step
/// the partial gradients of the parameters used outside the pairs — this rank's FSDP shards of
/// them, after the dp reduce-scatter — are summed over tp (``PartialGradientSum``), as is the
/// loss (4 bytes).
public final class ThreeDimensional: TrainingLayout {
    public let mesh: ProcessMesh
    /// The data-parallel group, over which the pipelines' losses are summed.
    let dp: Communicator
    public let plan: TensorParallelPlan
    let sharded: ShardedParameters
    let stage: PipelineStage
    public let local: LocalParameters
    let globalBatch: Int
    /// This dp group's rows in `--accumulate` micro-steps (each one a full schedule run).
    let steps: MicroSteps
    /// Every stage's blocks, and the model they cut.
    let cut: [Range<Int>]
    let modelPlan: BlockPlan
    /// Sequence parallelism's tp group, full-rows buffer and gradient sum (nil without it).
    let sequenceGroup: Communicator?
    let scratch: SequenceParallelScratch?
    let partials: PartialGradientSum?

    public init(_ context: TrainingContext, tp: Int, dp: Int, pp: Int, pipeline: PipelineOptions,
                sequenceParallel: Bool = false) throws(UsageError) {
        var shape = LayoutShape.threeDimensional(tp: tp, dp: dp, pp: pp, microBatches: pipeline.microBatches,
                                                 partition: pipeline.partition)
        shape.sequenceParallel = sequenceParallel
        let mesh = try shape.makeMesh(context)
        self.mesh = mesh
        self.dp = mesh[.dp]
        globalBatch = context.batchSize
        cut = PipelinePartition.stages(context.plan, stages: pp, override: pipeline.partition)
        modelPlan = context.plan
        let blockRange = cut[mesh[.pp].rank]
        let plan = try TensorParallelPlan(context.plan, blocks: blockRange, tpSize: tp, tpRank: mesh[.tp].rank,
                                          sequenceParallel: sequenceParallel)
        self.plan = plan
        let steps = mesh.microSteps(batch: globalBatch, accumulation: context.options.accumulate)
        self.steps = steps
        let split = plan.sequenceSplit, microRows = steps.rowsPerStep / pipeline.microBatches
        let scratch = split.map { _ in SequenceParallelScratch(capacity: plan.scratchCapacity(rows: microRows)) }
        self.scratch = scratch
        let sharded = ShardedParameters(
            blocks: plan.blocks.map { block in
                ShardedParameters.Block(count: block.parameterCount, map: block.map,
                                        make: { plan.makeLayer(block, tp: mesh[.tp], parameters: $0, rows: microRows, scratch: scratch) })
            },
            group: mesh[.dp], initialParameters: context.initialParameters)
        self.sharded = sharded
        sequenceGroup = split.map { _ in mesh[.tp] }
        partials = split.map { _ in
            PartialGradientSum(ranges: Self.shardRanges(plan, dp: mesh[.dp]), gradients: sharded.shards.grad, tp: mesh[.tp])
        }
        stage = PipelineStage(layers: sharded.layers, widths: plan.widths, hooks: sharded,
                              rows: steps.rows(0),
                              schedule: PipelineSchedule(pipeline.schedule, stage: mesh[.pp].rank, stages: pp,
                                                         microBatches: pipeline.microBatches),
                              pp: mesh[.pp], seqLen: context.config.seqLen, lossScale: 1 / Float(globalBatch),
                              recompute: pipeline.recompute, split: split)
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
        partials?.sum()
        if let sequenceGroup { lossSum = sequenceGroup.sum(lossSum) }
        return dp.sum(lossSum) / Float(globalBatch)
    }

    /// Where ``TensorParallelPlan/partialGradients(_:)`` of each block fall in this rank's FSDP
    /// shards: block `i` (`c` floats) is cut into `D` shards of `s = ⌈c/D⌉`, laid back to back;
    /// dp rank `d` holds the block's floats `d·s ..< (d+1)·s`. Every tp rank of a (dp, pp)
    /// position holds the same replicated blocks and row-parallel biases at the same places, so
    /// the ranges agree over the tp group, as the allreduce needs.
    static func shardRanges(_ plan: TensorParallelPlan, dp: Communicator) -> [Range<Int>] {
        var offset = 0, ranges: [Range<Int>] = []
        for block in plan.blocks {
            let s = (block.parameterCount + dp.size - 1) / dp.size, first = dp.rank * s
            if let r = plan.partialGradients(block) {
                let lower = max(r.lowerBound, first), upper = min(r.upperBound, first + s)
                if lower < upper { ranges.append(offset + lower - first ..< offset + upper - first) }
            }
            offset += s
        }
        return ranges
    }

    public func trainingFinished() -> String? { stage.waitingReport(world: mesh.world) }

    public var summary: String? { PipelinePartition.describe(modelPlan, cut) }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.evaluate(batch: index, from: sampler)
        }
        if let sequenceGroup { lossSum = sequenceGroup.sum(lossSum) }
        return dp.sum(lossSum) / Float(globalBatch)
    }
}
