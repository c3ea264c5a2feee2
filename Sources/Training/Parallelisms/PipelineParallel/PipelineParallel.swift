import Core
import Distributed

/// `train_pp`: the model's blocks cut into `N` contiguous stages (``PipelinePartition``: balanced
/// by FLOPs unless `--partition` says), one
/// per rank, each stage running the same reference layers on its blocks through a
/// ``PipelineStage`` with the chosen ``PipelineScheduleKind`` and `M` micro-batches.
///
/// Gradients accumulate over the micro-batches (each is scaled by `1/B` already, so the sum is
/// exactly the full-batch gradient), and each rank updates only its own blocks. With
/// `--accumulate K` the schedule runs K times per step, each over B/K rows in M micro-batches.
public final class PipelineParallel: TrainingLayout {
    public let stage: PipelineStage
    let mesh: ProcessMesh
    let parameters: ParameterBuffer
    /// Every stage's blocks.
    let cut: [Range<Int>]
    let plan: BlockPlan
    let steps: MicroSteps
    public let local: LocalParameters

    /// - Parameter pipeline: `M ≥ 1` micro-batches dividing the global batch, the schedule (GPipe
    ///   or 1F1B), and the cut (``PipelinePartition``: by cost unless `--partition` says).
    public init(_ context: TrainingContext, pipeline: PipelineOptions) throws(UsageError) {
        let n = context.world.size, plan = context.plan, microBatches = pipeline.microBatches
        mesh = try LayoutShape.pipeline(stages: n, microBatches: microBatches, partition: pipeline.partition).makeMesh(context)
        let pp = mesh[.pp]
        self.plan = plan
        cut = PipelinePartition.stages(plan, stages: n, override: pipeline.partition)
        let blocks = plan.blocks[cut[pp.rank]]
        // The stage's blocks are contiguous in the canonical vector: its parameters are one run.
        let first = blocks.first!.parameterOffset
        let count = blocks.reduce(0) { $0 + $1.parameterCount }
        let parameters = ParameterBuffer(count: count)
        self.parameters = parameters
        let map = ParameterMap.contiguous(first, count)
        map.extract(from: context.initialParameters, into: parameters.value)
        steps = MicroSteps(rows: 0..<context.batchSize, count: context.options.accumulate)
        stage = PipelineStage(
            layers: blocks.map { $0.makeLayer(parameters: parameters.view(offset: $0.parameterOffset - first, count: $0.parameterCount)) },
            widths: plan.widths(blocks.indices), rows: steps.rows(0),
            schedule: PipelineSchedule(pipeline.schedule, stage: pp.rank, stages: n, microBatches: microBatches),
            pp: pp, seqLen: context.config.seqLen, lossScale: 1 / Float(context.batchSize), recompute: pipeline.recompute)
        local = LocalParameters(map: map, values: parameters.value, gradients: parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        parameters.zeroGradients()
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.trainingStep(batch: index, from: sampler)
        }
        return lossSum / Float(steps.rows.count)
    }

    public func trainingFinished() -> String? { stage.waitingReport(world: mesh.world) }

    public var summary: String? { PipelinePartition.describe(plan, cut) }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.evaluate(batch: index, from: sampler)
        }
        return lossSum / Float(steps.rows.count)
    }
}
