import Core
import Distributed

/// `train_pp`: the model's blocks cut into `N` contiguous stages (``PipelinePartition``: balanced
/// by FLOPs unless `--partition` says), one
/// per rank, each stage running the same reference layers on its blocks through a
/// ``PipelineStage`` with the chosen ``PipelineScheduleKind`` and `M` micro-batches.
/// Interleaved (`--virtual-stages V`), the cut has `N·V` chunks and rank `r` holds chunks
/// `r, r + N, …, r + (V − 1)N`, its parameters back to back in one buffer.
///
/// Gradients accumulate over the micro-batches (each is scaled by `1/B` already, so the sum is
/// exactly the full-batch gradient), and each rank updates only its own blocks. With
/// `--accumulate K` the schedule runs K times per step, each over B/K rows in M micro-batches.
///
/// A mixture of experts (`--experts`) sees the whole batch in one forward when M = 1; with
/// M > 1 (GPipe, dropless) each micro-batch in flight runs its own copy of the block and the
/// copies sum the step's routing statistics at the first backward (``StepRouting``, no
/// communication: the pipeline holds every row). Every stage's aux loss and load are
/// allgathered over pp after each step (``PipelineExpertStatistics``, 8 bytes per stage).
public final class PipelineParallel: TrainingLayout {
    public let stage: PipelineStage
    let mesh: ProcessMesh
    let parameters: ParameterBuffer
    /// Every stage's blocks.
    let cut: [Range<Int>]
    let plan: BlockPlan
    let steps: MicroSteps
    public let local: LocalParameters
    let expertFigures: PipelineExpertStatistics?
    public var expertStatistics: ExpertStatistics? { expertFigures?.last }

    /// - Parameter pipeline: `M ≥ 1` micro-batches dividing the global batch, the schedule (GPipe
    ///   or 1F1B), and the cut (``PipelinePartition``: by cost unless `--partition` says).
    public init(_ context: TrainingContext, pipeline: PipelineOptions) throws(UsageError) {
        let n = context.world.size, plan = context.plan, microBatches = pipeline.microBatches, v = pipeline.virtualStages
        let mesh = try LayoutShape.pipeline(stages: n, microBatches: microBatches, partition: pipeline.partition,
                                            virtualStages: v).makeMesh(context)
        self.mesh = mesh
        let pp = mesh[.pp]
        self.plan = plan
        let cut = PipelinePartition.stages(plan, stages: n * v, override: pipeline.partition)
        self.cut = cut
        // This rank's chunks r, r + N, …; each chunk's blocks are one run of the canonical vector.
        let chunkBlocks = PipelinePartition.chunks(cut, stage: pp.rank, stages: n).map { plan.blocks[$0] }
        var map = ParameterMap()
        for blocks in chunkBlocks {
            map.append(start: blocks.first!.parameterOffset, count: blocks.reduce(0) { $0 + $1.parameterCount })
        }
        let parameters = ParameterBuffer(count: map.count)
        self.parameters = parameters
        map.extract(from: context.initialParameters, into: parameters.value)
        steps = MicroSteps(rows: 0..<context.batchSize, count: context.options.accumulate)
        var offset = 0
        let microRows = context.batchSize / context.options.accumulate / microBatches
        let chunks = chunkBlocks.map { blocks in
            let layers = blocks.map { block in
                defer { offset += block.parameterCount }
                let layer = block.makeLayer(parameters: parameters.view(offset: offset, count: block.parameterCount), rows: microRows)
                if let mixture = layer as? MixtureOfExperts, microBatches > 1 {
                    mixture.shareStepRouting(StepRouting(experts: mixture.experts, microBatches: microBatches, exchange: nil))
                }
                return layer
            }
            return (layers: layers, widths: plan.widths(blocks.indices), split: SequenceSplit?.none)
        }
        stage = PipelineStage(
            chunks: chunks, rows: steps.rows(0),
            schedule: PipelineSchedule(pipeline.schedule, stage: pp.rank, stages: n, microBatches: microBatches, virtualStages: v),
            pp: pp, seqLen: context.config.seqLen, lossScale: 1 / Float(context.batchSize), recompute: pipeline.recompute,
            packsWeights: true, batchWeightGradients: pipeline.batchWeightGradients)
        expertFigures = PipelineExpertStatistics(layers: stage.layers, model: context.config, pp: pp)
        local = LocalParameters(map: map, values: parameters.value, gradients: parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: map.count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        parameters.zeroGradients()
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.trainingStep(batch: index, from: sampler)
        }
        return lossSum / Float(steps.rows.count) + (expertFigures?.gather() ?? 0)
    }

    public func trainingFinished() -> String? { stage.waitingReport(world: mesh.world) }

    public var summary: String? { PipelinePartition.describe(plan, cut, stages: mesh[.pp].size) }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.evaluate(batch: index, from: sampler)
        }
        return lossSum / Float(steps.rows.count)
    }
}
