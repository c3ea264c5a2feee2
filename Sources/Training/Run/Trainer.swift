import Core
import Distributed
import Tracing

/// One training run, the same for every executable: set up, train, then report, save, dump,
/// validate and sample. Every phase is collective; a failure in any rank ends it on every rank.
struct Trainer<Command: TrainingCommand> {
    let command: Command
    let world: Communicator
    var options: TrainingOptions { command.options }
    var isLeader: Bool { world.rank == 0 }

    func say(_ line: String) { if isLeader { print(line) } }

    /// What the phases share once the run is set up.
    struct Session {
        var context: TrainingContext
        var layout: TrainingLayout
        var metrics: MetricsWriter?
        /// The first step to run (0, or where a checkpoint left off) and the batch seed.
        var start = 0
        var seed: UInt64
        var config: ModelConfig { context.config }
        /// The training loop's figures for the final metrics record (`training_seconds`, the ledger).
        var summary = ""
        /// The whole model's gradient norm, when `--metrics` records it or `--clip-grad-norm` needs it.
        var gradientNorm: GradientNorm?
        /// The data file, recorded in checkpoints and checked on resume (nil when neither is asked).
        var data: DataIdentity?
        /// The signal that stopped training early (SIGTERM, SIGINT), once its checkpoint is saved.
        var stoppedBy: Int32?
        /// Model FLOPs and the machine's peak, for MFU (rank 0 only: it prints and writes metrics).
        var utilization: ModelFlopsUtilization?
        /// `"memory_plan_per_rank"` for the final metrics record (every rank's plan on rank 0).
        var plannedMemory = ""
    }

    /// Returns the process exit status.
    func run() -> Int32 {
        guard var session = prepare() else { return 1 }
        guard train(&session) else { return session.stoppedBy.map { 128 + $0 } ?? 1 }
        Watchdog.phase = .finishing
        return finish(session) ? 0 : 1
    }

    /// Loads the data, builds the layout from the whole initial model, opens the metrics file and
    /// resumes from a checkpoint when asked.
    func prepare() -> Session? {
        guard let dataset = agreeing(world, { () throws -> Dataset in
            try Dataset.load(path: options.data, seqLen: options.seqLen)
        }) else { return nil }
        guard let data = agreeing(world, { () throws -> DataIdentity? in
            guard isLeader, options.checkpointDir != nil || options.resume != nil else { return nil }
            return try DataIdentity(path: options.data)
        }) else { return nil }
        let config = options.model(dataset.vocabulary.count)
        // Before the whole model is built: refuse what will not fit (Trainer+Memory.swift).
        guard let (plan, memory, line) = agreeing(world, { () throws -> (BlockPlan, [MemoryPlan], String) in
            try planMemory(config, examples: dataset.train.count + dataset.validation.count)
        }) else { return nil }
        announce(line)
        guard let initial = initialParameters(config: config, dataset: dataset) else { return nil }
        let context = TrainingContext(world: world, options: options, config: config, plan: plan,
                                      optimizer: options.optimizerConfig, dataset: dataset, initialParameters: initial)
        guard let layout = agreeing(world, { try command.makeLayout(context) }) else { return nil }
        guard let metrics = agreeing(world, { () throws -> MetricsWriter? in
            guard isLeader, let path = options.metrics else { return nil }
            return try MetricsWriter(path: path)
        }) else { return nil }
        say("\(Command.name): \(world.size) rank(s), \(config), \(plan.parameterCount) parameters, "
            + "\(dataset.train.count) training / \(dataset.validation.count) validation examples from \(options.data)")
        if let line = layout.summary { say(line) }
        var session = Session(context: context, layout: layout, metrics: metrics, seed: options.seed, data: data)
        if options.metrics != nil || options.clipGradNorm != nil {
            session.gradientNorm = GradientNorm(local: layout.local, world: world, total: plan.parameterCount)
        }
        if isLeader {
            session.utilization = ModelFlopsUtilization(flopsPerStep: plan.trainingFlops(batchSize: options.batchSize),
                                                        peak: MachinePeak.current(), ranks: world.size)
            say(session.utilization!.summary)
        }
        session.plannedMemory = MemoryPlan.json(memory)
        if let path = options.initFrom { say("initialised from \(path)") }
        if let directory = options.resume {
            guard let resumed = resume(layout, from: directory, config: config, data: data) else { return nil }
            (session.start, session.seed) = resumed
        }
        return session
    }

    /// The reference loop: forward and backward, update, record; checkpoints every `--save-every`
    /// steps; the validation loss every `--val-every`; a progress line every `--log-every`; a clean
    /// stop on SIGTERM or SIGINT (``StopVote``). The communication ledger and the step timing count
    /// the training steps only.
    func train(_ session: inout Session) -> Bool {
        let layout = session.layout, metrics = session.metrics, gradientNorm = session.gradientNorm
        let sampler = BatchSampler(examples: session.context.dataset.train, batchSize: options.batchSize,
                                   seed: session.seed, stream: .trainingBatches)
        let dumpSteps = options.dumpSteps
        guard let tracer = makeTracer() else { return false }  // first: its set-up is not a step's time
        var progress = Progress(options: options)
        let stop = StopVote(world: world)
        progress.utilization = session.utilization
        var validationSeconds = 0.0
        Ledger.reset()
        let loopStart = MPI.time()
        var savedAt = options.resume == nil ? -1 : session.start
        Watchdog.phase = .training
        for step in session.start..<max(session.start, options.steps) {
            Watchdog.step = step
            tracer?.stepBegins(step)
            let loss = layout.forwardBackward(batch: step, from: sampler)
            if !loss.isFinite {
                metrics?.flush()
                if isLeader { writeError("error: loss became \(loss) at step \(step); stopping (nothing saved)") }
                return false
            }
            let norm = gradientNorm?.norm()
            if let norm, !norm.isFinite {
                metrics?.flush()
                if isLeader { writeError("error: gradient norm became \(norm) at step \(step); stopping (nothing saved)") }
                return false
            }
            if let norm, let maxNorm = options.clipGradNorm { gradientNorm?.clip(norm: norm, to: maxNorm) }
            let traced = Trace.begin()
            layout.update(step: step + 1)
            Trace.compute("update", since: traced)
            metrics?.record(step: step, loss: loss, gradientNorm: norm, experts: layout.expertStatistics)
            if let path = options.dump, dumpSteps.contains(step + 1) {
                Ledger.isRecording = false
                defer { Ledger.isRecording = true }
                guard dump(layout, config: session.config, to: "\(path).step\(step + 1)") else { return false }
            }
            if options.saveEvery > 0 && (step + 1) % options.saveEvery == 0 {
                Ledger.isRecording = false
                defer { Ledger.isRecording = true }
                guard save(layout, step: step + 1, seed: session.seed, config: session.config, data: session.data) else { return false }
                savedAt = step + 1
            }
            let validation = periodicValidation(session, after: step)
            if let validation {
                validationSeconds += validation.seconds
                progress.pause(validation.seconds)
            }
            if let line = progress.record(step: step, loss: loss, validationLoss: validation?.loss, experts: layout.expertStatistics) { say(line) }
            if let signal = stop.afterStep() { return stopped(by: signal, after: step + 1, savedAt: savedAt, stop, &session) }
        }
        tracer?.stop()
        let trainingSeconds = MPI.time() - loopStart - validationSeconds
        Ledger.isRecording = false
        let end = max(session.start, options.steps)
        if let signal = stop.afterTraining() { return stopped(by: signal, after: end, savedAt: savedAt, stop, &session) }
        Watchdog.phase = .report
        let ledger = LedgerReport(world: world, steps: max(0, options.steps - session.start))
        if isLeader { print(ledger.table) }
        if let line = layout.trainingFinished(), isLeader { print(line) }
        session.summary = "\"training_seconds\":\(trainingSeconds),\(ledger.json),\(session.plannedMemory)"
        if let report = session.utilization?.report(steps: max(0, options.steps - session.start), seconds: trainingSeconds) {
            say(report.line)
            session.summary += "," + report.json
        }
        guard finishTracing(tracer, &session) else { return false }

        if options.checkpointDir != nil && savedAt != end {
            guard save(layout, step: end, seed: session.seed, config: session.config, data: session.data) else { return false }
        }
        return true
    }

    /// After training: the replica check, the dump, validation and samples.
    func finish(_ session: Session) -> Bool {
        let layout = session.layout, config = session.config, total = config.parameterCount
        if options.checkReplicas {
            guard let line = agreeing(world, { () throws -> String? in try layout.local.checkReplicas(world, total: total) })
            else { return false }
            if let line { say(line) }
        }
        if let path = options.dump { guard dump(layout, config: config, to: path) else { return false } }
        if let path = options.export { guard export(session, to: path) else { return false } }

        let valLoss = validationLoss(session)
        say("validation loss \(format(valLoss, 4)) (\(options.valBatches) batches of \(options.batchSize))")
        if let metrics = session.metrics {
            metrics.append("{\"val_loss\":\(valLoss.description),\"steps\":\(options.steps),\"world\":\(world.size),"
                           + "\"parameters\":\(total),\(session.summary)}\n")
            metrics.flush()
        }

        let parameters = options.samples > 0 ? layout.local.gather(world, total: total) { $0.values } : nil
        if isLeader, let parameters {
            let sampler = Model(config: config, batchSize: 1)
            sampler.load(parameters)
            say("samples (temperature \(options.temperature)):")
            for text in generateSamples(model: sampler, vocabulary: session.context.dataset.vocabulary, count: options.samples,
                                        temperature: options.temperature, seed: options.seed) {
                say("  \(text)")
            }
        }
        return true
    }
}

extension Trainer {
    /// Writes the whole model's parameters and the last step's gradients to `path` (`--dump`,
    /// and after each of `--dump-steps`): both gathered into canonical order on rank 0.
    func dump(_ layout: TrainingLayout, config: ModelConfig, to path: String) -> Bool {
        let total = config.parameterCount
        let parameters = layout.local.gather(world, total: total) { $0.values }
        let gradients = layout.local.gather(world, total: total) { $0.gradients }
        let written: Void? = agreeing(world) { () throws -> Void in
            if let parameters, let gradients { try writeDump(path: path, config: config, parameters: parameters, gradients: gradients) }
        }
        return written != nil
    }
}

/// The progress line: every `--log-every` steps and at the last, the step's loss, the window's
/// mean loss, and the window's time per step and tokens per second.
struct Progress {
    let every: Int
    let steps: Int
    let batchSize: Int
    var windowStart = MPI.time()
    var windowSteps = 0
    var windowLoss: Double = 0
    /// Adds model FLOP/s and MFU to the line (rank 0).
    var utilization: ModelFlopsUtilization?

    init(options: TrainingOptions) {
        every = options.logEvery
        steps = options.steps
        batchSize = options.batchSize
    }

    /// Leaves `seconds` (spent validating) out of the window's time per step.
    mutating func pause(_ seconds: Double) { windowStart += seconds }

    /// The line after step `step`, if one is due; a `validationLoss` measured after the step is
    /// added to it, or gets a line of its own. With experts, the step's aux loss (part of `loss`)
    /// and load imbalance follow the loss.
    mutating func record(step: Int, loss: Float, validationLoss: Float? = nil, experts: ExpertStatistics? = nil) -> String? {
        windowLoss += Double(loss)
        windowSteps += 1
        let validation = validationLoss.map { "  val loss \(format($0, 4))" } ?? ""
        guard (step + 1) % every == 0 || step + 1 == steps else {
            return validationLoss == nil ? nil : "step \(step + 1)/\(steps)" + validation
        }
        let now = MPI.time()
        let perStep = (now - windowStart) / Double(windowSteps)
        defer {
            windowStart = now
            windowLoss = 0
            windowSteps = 0
        }
        let moe = experts.map { " (aux \(format($0.auxiliaryLoss, 4)), expert imbalance \(format($0.imbalance, 2)))" } ?? ""
        return "step \(step + 1)/\(steps)  loss \(format(loss, 4))\(moe)  mean \(format(Float(windowLoss / Double(windowSteps)), 4))  "
            + "\(format(Float(perStep * 1e6), 1)) µs/step  \(format(Float(Double(batchSize) / perStep), 0)) tokens/s"
            + (utilization?.progressText(secondsPerStep: perStep) ?? "") + validation
    }
}
