import Training

/// `mpirun -np N train_dp`: data parallel; see `DataParallel`.
struct TrainDP: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_dp",
        abstract: "Data-parallel training: every rank holds the model, trains on 1/N of the global batch, and the gradients are summed with one bucketed, overlapped allreduce.")

    @OptionGroup var options: TrainingOptions

    @Option(name: .customLong("bucket-kb"), parsing: .unconditional,
            help: "Gradient bucket size in KiB: a bucket's allreduce starts as soon as backward has filled it.")
    var bucketKB: Int = 1024

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        if bucketKB <= 0 { throw UsageError("--bucket-kb must be a positive integer (got \(bucketKB))") }
        return try DataParallel(context, group: context.world, bucketBytes: bucketKB * 1024)
    }
}

TrainDP.launch()
