import Training

/// `mpirun -np N train_fsdp`: fully sharded data parallel; see `FullyShardedDataParallel`.
struct TrainFSDP: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_fsdp",
        abstract: "Fully sharded data parallel (ZeRO-1, 2 or 3; hybrid with --replicate): the optimizer state, and from stage 2 the gradients, from stage 3 the parameters, are sharded over the ranks.")

    @OptionGroup var options: TrainingOptions

    @OptionGroup var recomputation: RecomputeOption

    @Option(parsing: .unconditional,
            help: "ZeRO stage: 1 shards the optimizer state, 2 also the gradients, 3 also the parameters.")
    var zero: Int = 3

    @Option(parsing: .unconditional,
            help: "HSDP: R replicas of the model, each sharded over N / R ranks (R must divide N).")
    var replicate: Int = 1

    func validate() throws {
        if !(1...3).contains(zero) { throw UsageError("--zero must be 1, 2 or 3 (got \(zero))") }
        try requirePositive(replicate, "replicate")
    }

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try FullyShardedDataParallel(context, zero: zero, replicate: replicate, recompute: recomputation.enabled)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription {
        var layout = LayoutDescription.fullySharded(ranks: ranks, zero: zero, replicate: replicate)
        layout.recompute = recomputation.enabled
        return layout
    }
}

TrainFSDP.launch()
