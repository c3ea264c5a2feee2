import Training

/// `mpirun -np N train_3d --tp T --dp D --pp P`: the three parallelisms composed; see
/// `ThreeDimensional`.
struct Train3D: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_3d",
        abstract: "Tensor × data (FSDP) × pipeline parallel training on a T × D × P grid of ranks.",
        discussion: "Run as `mpirun -np N train_3d --tp T --dp D --pp P` with T·D·P = N. Tensor-parallel ranks are neighbours (rank % T), then data-parallel, then pipeline stages.")

    @OptionGroup var options: TrainingOptions

    @Option(parsing: .unconditional, help: "Tensor-parallel ranks per stage (must divide --hidden).")
    var tp: Int = 1

    @Option(parsing: .unconditional, help: "Data-parallel (FSDP) ranks per (tp, pp) position.")
    var dp: Int = 1

    @Option(parsing: .unconditional, help: "Pipeline stages (at most --layers + 2).")
    var pp: Int = 1

    @OptionGroup var pipeline: PipelineOptions

    @OptionGroup var sequenceParallel: SequenceParallelOption

    func validate() throws {
        for (flag, value) in [("tp", tp), ("dp", dp), ("pp", pp)] { try requirePositive(value, flag) }
    }

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try ThreeDimensional(context, tp: tp, dp: dp, pp: pp, pipeline: pipeline, sequenceParallel: sequenceParallel.enabled)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription {
        var layout = LayoutDescription.threeDimensional(tp: tp, dp: dp, pp: pp, pipeline)
        layout.sequenceParallel = sequenceParallel.enabled
        return layout
    }
}

Train3D.launch()
