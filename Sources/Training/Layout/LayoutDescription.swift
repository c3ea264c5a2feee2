import Core
import Distributed

/// A layout as the plans see it: the parallelism with its own flags' values (``LayoutFacts``),
/// the mesh and micro-batches (``LayoutShape``), and the flags that change how every chain runs.
/// Pure data, no MPI, so a plan can be made for any layout at any rank count (the refusal line
/// lists the layouts that would fit). Each parallelism's folder builds its descriptions
/// (`LayoutDescription.fullySharded(ranks:zero:replicate:)`, …).
public struct LayoutDescription: Sendable {
    /// What is particular to the parallelism: its flags' values and its facts.
    var facts: any LayoutFacts
    public var shape: LayoutShape
    /// The pipeline schedule (`train_pp`, `train_3d`).
    public var schedule: PipelineScheduleKind = .oneForwardOneBackward
    /// `--recompute`: a pipeline stage keeps only each micro-batch's boundary; one chain keeps
    /// only its √n segments' boundaries (``RecomputeSegments``).
    public var recompute = false
    /// `--sequence-parallel` (`train_tp`, `train_3d`): rows split over tp outside the pairs.
    public var sequenceParallel = false
    /// `train_pp --batch-weight-gradients`: each chunk stages every micro-batch's inputs and
    /// output gradients of its splitting layers, for one weight pass per run.
    public var batchWeightGradients = false

    init(_ facts: any LayoutFacts, shape: LayoutShape, schedule: PipelineScheduleKind = .oneForwardOneBackward) {
        self.facts = facts
        self.shape = shape
        self.schedule = schedule
    }

    /// How to run it, for messages: `train_fsdp -np 4`, `train_3d -np 12 --tp 2 --dp 2 --pp 3`.
    public var command: String { facts.command(self) }

    /// The command with the flags the planner varies: `train_pp -np 4 --schedule 1f1b --micro-batches 8`.
    public var planCommand: String {
        command + facts.planFlags + (shape.microBatches.map { " --micro-batches \($0)" } ?? "")
    }

    /// The executable that runs it.
    public var executable: String { type(of: facts).executable }

    /// Throws the first reason this layout cannot run `plan` with a global batch of `batchSize`
    /// on `worldSize` ranks in `accumulation` micro-steps: the shape's rules, then the
    /// parallelism's own.
    public func check(worldSize: Int, plan: BlockPlan, batchSize: Int, accumulation: Int = 1) throws(UsageError) {
        try facts.check(self, worldSize: worldSize)
        var shape = shape
        shape.sequenceParallel = sequenceParallel
        try shape.check(worldSize: worldSize, plan: plan, batchSize: batchSize, accumulation: accumulation)
    }

    /// `" --recompute"` when recomputing, for the commands.
    var recomputeFlag: String { recompute ? " --recompute" : "" }

    /// The pipeline's flags for the commands: the schedule and its chunks.
    var scheduleFlags: String {
        " --schedule \(schedule.rawValue)" + (shape.virtualStages > 1 ? " --virtual-stages \(shape.virtualStages)" : "")
    }
}
