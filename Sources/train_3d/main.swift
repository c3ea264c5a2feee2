import Training

/// `mpirun -np N train_3d --tp T --dp D --pp P [--experts E --ep E']`: the three parallelisms
/// composed, and expert parallelism carved out of dp as a fourth axis; see `ThreeDimensional`.
struct Train3D: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_3d",
        abstract: "Tensor × data (FSDP) × pipeline parallel training on a T × D × P grid of ranks.",
        discussion: "Run as `mpirun -np N train_3d --tp T --dp D --pp P` with T·D·P = N. Tensor-parallel ranks are neighbours (rank % T), then data-parallel, then pipeline stages. With --experts E (more than one micro-batch only under --schedule gpipe, dropless), --ep E' splits each block's experts over E' ranks of every data-parallel group.")

    @OptionGroup var options: TrainingOptions

    @Option(parsing: .unconditional, help: "Tensor-parallel ranks per stage (must divide --hidden).")
    var tp: Int = 1

    @Option(parsing: .unconditional, help: "Data-parallel (FSDP) ranks per (tp, pp) position.")
    var dp: Int = 1

    @Option(parsing: .unconditional, help: "Pipeline stages (at most --layers + 2).")
    var pp: Int = 1

    @OptionGroup var pipeline: PipelineOptions

    @OptionGroup var sequenceParallel: SequenceParallelOption

    @Option(name: .customLong("ep"), parsing: .unconditional,
            help: "With --experts: expert-parallel ranks E' carved out of each data-parallel group; each holds E/E' experts of every block (E' divides --dp and --experts).")
    var expertGroup: Int = 1

    func validate() throws {
        for (flag, value) in [("tp", tp), ("dp", dp), ("pp", pp), ("ep", expertGroup)] { try requirePositive(value, flag) }
        try ThreeDimensional.checkExperts(options.expertsConfig, expertGroup: expertGroup, dp: dp, pipeline: pipeline,
                                          sequenceParallel: sequenceParallel.enabled)
    }

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try ThreeDimensional(context, tp: tp, dp: dp, pp: pp, pipeline: pipeline, sequenceParallel: sequenceParallel.enabled,
                             expertGroup: expertGroup)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription {
        var layout = LayoutDescription.threeDimensional(tp: tp, dp: dp, pp: pp, pipeline)
        layout.sequenceParallel = sequenceParallel.enabled
        if options.experts > 0 { layout.shape.expertGroup = expertGroup }
        return layout
    }
}

Train3D.launch()
