import Core
import Distributed

/// `train_pp`: the model's blocks cut into `N` contiguous stages (``PipelinePartition``: balanced
/// by FLOPs unless `--partition` says), one
/// per rank, each stage running the same reference layers on its blocks through a
/// ``PipelineStage`` with the chosen ``PipelineScheduleKind`` and `M` micro-batches.
///
/// Gradients accumulate over the micro-batches (each is scaled by `1/B` already, so the sum is
/// exactly the full-batch gradient), and each rank updates only its own blocks.
public final class PipelineParallel: TrainingLayout {
    public let stage: PipelineStage
    let mesh: ProcessMesh
    let parameters: ParameterBuffer
    /// Every stage's blocks.
    let cut: [Range<Int>]
    let plan: BlockPlan
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
        stage = PipelineStage(
            layers: blocks.map { $0.makeLayer(parameters: parameters.view(offset: $0.parameterOffset - first, count: $0.parameterCount)) },
            widths: plan.widths(blocks.indices), rows: 0..<context.batchSize,
            schedule: PipelineSchedule(pipeline.schedule, stage: pp.rank, stages: n, microBatches: microBatches),
            pp: pp, seqLen: context.config.seqLen, lossScale: 1 / Float(context.batchSize))
        local = LocalParameters(map: map, values: parameters.value, gradients: parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        parameters.zeroGradients()
        return stage.trainingStep(batch: index, from: sampler) / Float(stage.rows.count)
    }

    public func trainingFinished() -> String? { stage.waitingReport(world: mesh.world) }

    public var summary: String? { PipelinePartition.describe(plan, cut) }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        stage.evaluate(batch: index, from: sampler) / Float(stage.rows.count)
    }
}
