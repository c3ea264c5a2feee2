import Training

/// `train`: the single-rank reference. Every other executable must reproduce its losses and
/// gradients step for step.
struct Train: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train the character-level MLP on one rank: the reference for every parallel layout.")

    @OptionGroup var options: TrainingOptions

    @OptionGroup var recomputation: RecomputeOption

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try SingleRank(context, recompute: recomputation.enabled)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription {
        var layout = LayoutDescription.singleRank
        layout.recompute = recomputation.enabled
        return layout
    }
}

Train.launch()
