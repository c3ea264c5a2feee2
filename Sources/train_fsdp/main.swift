import Training

/// `mpirun -np N train_fsdp`: fully sharded data parallel; see `FullyShardedDataParallel`.
struct TrainFSDP: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_fsdp",
        abstract: "Fully sharded data parallel (ZeRO-3): each rank holds 1/N of every parameter, gradient and optimizer state; layers allgather their parameters just in time and reduce-scatter their gradients.")

    @OptionGroup var options: TrainingOptions

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try FullyShardedDataParallel(context)
    }
}

TrainFSDP.launch()
