import Training

/// `mpirun -np N train_ep --ep E' --experts E`: expert parallelism; see `ExpertParallel`.
struct TrainEP: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_ep",
        abstract: "Expert-parallel training: the experts of every mixture-of-experts block are split over groups of --ep consecutive ranks, token rows travel to their experts and back with all-to-alls, and everything else is data parallel.")

    @OptionGroup var options: TrainingOptions

    @Option(name: .customLong("ep"), parsing: .unconditional,
            help: "Expert-parallel group size E': each group of E' consecutive ranks splits every block's experts, E/E' per rank (E' divides the ranks and --experts).")
    var expertGroup: Int = 1

    func validate() throws {
        try requirePositive(expertGroup, "ep")
        if options.experts == 0 { throw UsageError("--ep needs --experts E (train_ep shards the experts of a mixture-of-experts model)") }
        if options.experts % expertGroup != 0 {
            throw UsageError("--experts \(options.experts) is not divisible by --ep \(expertGroup) (each rank of a group holds E/E' experts)")
        }
    }

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try ExpertParallel(context, expertGroup: expertGroup)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription {
        .expertParallel(ranks: ranks, expertGroup: expertGroup)
    }
}

TrainEP.launch()
