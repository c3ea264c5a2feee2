import Training

/// `train_pp`: pipeline parallelism. The model's blocks are cut into one contiguous stage per
/// rank; micro-batches flow through them in a GPipe or 1F1B schedule. It must reproduce `train`
/// step for step.
struct TrainPP: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_pp",
        abstract: "Train with pipeline parallelism: one stage of contiguous blocks per MPI rank.",
        discussion: "Run as `mpirun -np N train_pp`; N may be 1 … layers + 2. With --experts and --micro-batches M > 1 the schedule must be gpipe (and no --capacity-factor).")

    @OptionGroup var options: TrainingOptions

    @OptionGroup var pipelineFlags: PipelineOptions

    @OptionGroup var batching: BatchedWeightGradientsOption

    /// The pipeline's flags with `--batch-weight-gradients` (checked in ``validate()``).
    var pipeline: PipelineOptions { batching.applied(to: pipelineFlags) }

    func validate() throws {
        try pipeline.checkBatchedWeightGradients()
        if let experts = options.expertsConfig { try pipeline.checkExperts(experts) }
    }

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try PipelineParallel(context, pipeline: pipeline)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription { .pipeline(stages: ranks, pipeline) }
}

TrainPP.launch()
