import Training

/// `train_tp`: Megatron tensor parallelism. Every rank runs the whole batch through a `1/N`
/// column or row slice of every hidden Linear; it must reproduce `train` step for step.
struct TrainTP: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_tp",
        abstract: "Train with tensor parallelism (Megatron column/row-parallel Linear pairs) over all MPI ranks.",
        discussion: "Run as `mpirun -np N train_tp`; N must divide --hidden.")

    @OptionGroup var options: TrainingOptions

    @OptionGroup var recomputation: RecomputeOption

    @OptionGroup var sequenceParallel: SequenceParallelOption

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try TensorParallel(context, sequenceParallel: sequenceParallel.enabled, recompute: recomputation.enabled)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription {
        var layout = LayoutDescription.tensorParallel(ranks: ranks)
        layout.sequenceParallel = sequenceParallel.enabled
        layout.recompute = recomputation.enabled
        return layout
    }
}

TrainTP.launch()
