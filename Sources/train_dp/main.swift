import Training

/// `mpirun -np N train_dp`: data parallel; see `DataParallel`.
struct TrainDP: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_dp",
        abstract: "Data-parallel training: every rank holds the model, trains on 1/N of the global batch, and the gradients are summed with bucketed allreduces, each started as backward completes its bucket.")

    @OptionGroup var options: TrainingOptions

    @OptionGroup var recomputation: RecomputeOption

    @Option(name: .customLong("bucket-kb"), parsing: .unconditional,
            help: "Gradient bucket size in KiB: a bucket's allreduce starts as soon as backward has filled it.")
    var bucketKB: Int = 1024

    func validate() throws { try requirePositive(bucketKB, "bucket-kb") }

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try DataParallel(context, bucketBytes: bucketKB * 1024, recompute: recomputation.enabled)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription {
        var layout = LayoutDescription.dataParallel(ranks: ranks, bucketBytes: bucketKB * 1024)
        layout.recompute = recomputation.enabled
        return layout
    }
}

TrainDP.launch()
