import Training

/// `mpirun -np N train_diloco --inner-steps H`: DiLoCo and Streaming DiLoCo; see `DiLoCo`.
struct TrainDiLoCo: TrainingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train_diloco",
        abstract: "DiLoCo: every rank a worker with a whole replica and its own inner optimizer, training on 1/N of the global batch; every H steps the workers average their progress (one allreduce of the parameters) and take an outer SGD step with Nesterov momentum.")

    @OptionGroup var options: TrainingOptions

    @Option(name: .customLong("inner-steps"), parsing: .unconditional,
            help: "H: inner optimizer steps between two outer steps (--steps must be a multiple of it).")
    var innerSteps: Int = 50

    @Option(name: .customLong("outer-lr"), parsing: .unconditional, help: "The outer SGD's learning rate.")
    var outerLR: Float = 0.7

    @Option(name: .customLong("outer-momentum"), parsing: .unconditional, help: "The outer SGD's Nesterov momentum, in [0, 1).")
    var outerMomentum: Float = 0.9

    @Option(name: .customLong("fragments"), parsing: .unconditional,
            help: "Streaming DiLoCo: cut the parameters into this many fragments, each synchronised every H steps at staggered steps (must divide H).")
    var fragments: Int = 1

    var settings: OuterSettings {
        OuterSettings(innerSteps: innerSteps, learningRate: outerLR, momentum: outerMomentum, fragments: fragments)
    }

    func validate() throws {
        try requirePositive(innerSteps, "inner-steps")
        try requirePositive(fragments, "fragments")
        if !outerLR.isFinite || outerLR <= 0 { throw UsageError("--outer-lr must be a positive finite number (got \(outerLR))") }
        if !(outerMomentum >= 0 && outerMomentum < 1) { throw UsageError("--outer-momentum must be in [0, 1) (got \(outerMomentum))") }
        if innerSteps % fragments != 0 {
            throw UsageError("--fragments \(fragments) does not divide --inner-steps \(innerSteps) (fragment f is synchronised at steps ≡ f·H/F mod H)")
        }
        if options.steps % innerSteps != 0 {
            throw UsageError("--steps \(options.steps) is not a multiple of --inner-steps \(innerSteps): training must end on an outer step")
        }
    }

    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout {
        try DiLoCo(context, settings: settings)
    }

    func layoutDescription(ranks: Int) -> LayoutDescription { .diloco(ranks: ranks, settings: settings) }
}

TrainDiLoCo.launch()
