import Core
import Distributed
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An executable of the suite: the shared flags plus a way to build its layout.
///
/// `launch()` is the whole program: parse, start MPI, load the data, build the layout, run the
/// reference training loop, validate, sample. Any error becomes one line on stderr (printed by
/// one rank) and exit status 1 on every rank; no rank is left waiting.
public protocol TrainingCommand: ParsableCommand {
    var options: TrainingOptions { get }
    /// Builds this executable's layout. Throw a `UsageError` for a layout that cannot work.
    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout
}

extension TrainingCommand {
    public static func launch() -> Never {
        let command: Self
        do {
            command = try Self.parse(Array(CommandLine.arguments.dropFirst()))
        } catch {
            if Self.exitCode(for: error) == .success {
                print(Self.fullMessage(for: error))
                Glibc.exit(0)
            }
            // MPI has not started yet, but under mpirun every rank got the same bad command line:
            // only the launcher's rank 0 reports it.
            let environment = ProcessInfo.processInfo.environment
            let rank = environment["OMPI_COMM_WORLD_RANK"] ?? environment["PMI_RANK"] ?? "0"
            if rank == "0" {
                let message = Self.message(for: error).split(separator: "\n").joined(separator: " ")
                writeError("error: \(message) (see --help)")
            }
            Glibc.exit(64)
        }
        let world = MPI.initialize()
        let code = Trainer(command: command, world: world).run()
        MPI.finalize()
        Glibc.exit(code)
    }
}

/// Runs a step everywhere or fails everywhere: if any rank throws, the lowest failing rank prints
/// its message and every rank gets `nil`. One tiny allreduce; no rank can be left behind.
func agreeing<T>(_ world: Communicator, _ body: () throws -> T) -> T? {
    var result: T?
    var message = ""
    do { result = try body() } catch { message = "\(error)" }
    // Largest (size − rank) among failing ranks ⇒ the lowest failing rank.
    let flag = world.max(Int32(result == nil ? world.size - world.rank : 0))
    if flag == 0 { return result }
    if world.rank == world.size - Int(flag) { writeError("error: \(message)") }
    return nil
}

struct Trainer<Command: TrainingCommand> {
    let command: Command
    let world: Communicator
    var options: TrainingOptions { command.options }
    var isLeader: Bool { world.rank == 0 }

    func say(_ line: String) { if isLeader { print(line) } }

    /// Returns the process exit status.
    func run() -> Int32 {
        guard let dataset = agreeing(world, { () throws -> Dataset in
            try options.check()
            return try Dataset.load(path: options.data, seqLen: options.seqLen)
        }) else { return 1 }

        let config = options.model(dataset.vocabulary.count)
        let context = TrainingContext(world: world, options: options, config: config, optimizer: options.optimizerConfig,
                                      dataset: dataset, initialParameters: config.initialParameters(seed: options.seed))
        guard let layout = agreeing(world, { try command.makeLayout(context) }) else { return 1 }
        guard let metrics = agreeing(world, { () throws -> MetricsWriter? in
            guard isLeader, let path = options.metrics else { return nil }
            return try MetricsWriter(path: path)
        }) else { return 1 }

        say("\(Command._commandName): \(world.size) rank(s), \(config), \(config.parameterCount) parameters, "
            + "\(dataset.train.count) training / \(dataset.validation.count) validation examples from \(options.data)")

        var start = 0
        var seed = options.seed
        if let directory = options.resume {
            guard let resumed = resume(layout, from: directory, config: config) else { return 1 }
            (start, seed) = resumed
        }

        let train = BatchSampler(examples: dataset.train, batchSize: options.batchSize, seed: seed, stream: .trainingBatches)
        let validation = BatchSampler(examples: dataset.validation, batchSize: options.batchSize, seed: seed,
                                      stream: .validationBatches)

        // The reference loop. The communication ledger counts from here.
        Ledger.reset()
        let loopStart = MPI.time()
        var windowStart = loopStart
        var windowSteps = 0
        var windowLoss: Double = 0
        var savedAt = options.resume == nil ? -1 : start
        for step in start..<max(start, options.steps) {
            let loss = layout.forwardBackward(batch: step, from: train)
            if !loss.isFinite {
                metrics?.flush()
                if isLeader { writeError("error: loss became \(loss) at step \(step); stopping (nothing saved)") }
                return 1
            }
            layout.update(step: step + 1)
            metrics?.record(step: step, loss: loss)
            windowLoss += Double(loss)
            windowSteps += 1
            if options.saveEvery > 0 && (step + 1) % options.saveEvery == 0 {
                Ledger.isRecording = false
                defer { Ledger.isRecording = true }
                guard save(layout, step: step + 1, seed: seed, config: config) else { return 1 }
                savedAt = step + 1
            }
            if (step + 1) % options.logEvery == 0 || step + 1 == options.steps {
                let now = MPI.time()
                let perStep = (now - windowStart) / Double(windowSteps)
                say("step \(step + 1)/\(options.steps)  loss \(format(loss, 4))  mean \(format(Float(windowLoss / Double(windowSteps)), 4))  "
                    + "\(format(Float(perStep * 1e6), 1)) µs/step  \(format(Float(Double(options.batchSize) / perStep), 0)) tokens/s")
                windowStart = now
                windowLoss = 0
                windowSteps = 0
            }
        }
        // The ledger covers the training steps only.
        let trainingSeconds = MPI.time() - loopStart
        Ledger.isRecording = false
        let ledger = LedgerReport(world: world, steps: max(0, options.steps - start))
        if isLeader { print(ledger.table) }
        if let line = layout.trainingFinished(), isLeader { print(line) }

        if options.checkpointDir != nil && savedAt != max(start, options.steps) {
            guard save(layout, step: max(start, options.steps), seed: seed, config: config) else { return 1 }
        }

        if let path = options.dump {
            let parameters = layout.local.gather(world, total: config.parameterCount) { $0.values }
            let gradients = layout.local.gather(world, total: config.parameterCount) { $0.gradients }
            if isLeader, let parameters, let gradients {
                do { try writeDump(path: path, config: config, parameters: parameters, gradients: gradients) } catch {
                    writeError("error: \(error)")
                    return 1
                }
            }
        }

        var validationLoss: Double = 0
        for i in 0..<options.valBatches { validationLoss += Double(layout.evaluate(batch: i, from: validation)) }
        let valLoss = Float(validationLoss / Double(options.valBatches))
        say("validation loss \(format(valLoss, 4)) (\(options.valBatches) batches of \(options.batchSize))")
        if let metrics {
            metrics.append("{\"val_loss\":\(valLoss.description),\"steps\":\(options.steps),\"world\":\(world.size),"
                           + "\"parameters\":\(config.parameterCount),\"training_seconds\":\(trainingSeconds),\(ledger.json)}\n")
            metrics.flush()
        }

        let parameters = options.samples > 0 ? layout.local.gather(world, total: config.parameterCount) { $0.values } : nil
        if isLeader, let parameters {
            let sampler = Model(config: config, batchSize: 1)
            sampler.load(parameters)
            say("samples (temperature \(options.temperature)):")
            for text in generateSamples(model: sampler, vocabulary: dataset.vocabulary, count: options.samples,
                                        temperature: options.temperature, seed: options.seed) {
                say("  \(text)")
            }
        }
        return 0
    }
}

extension Trainer {
    /// Gathers parameters and optimizer moments to rank 0, which writes the checkpoint.
    func save(_ layout: TrainingLayout, step: Int, seed: UInt64, config: ModelConfig) -> Bool {
        let total = config.parameterCount
        let local = layout.local
        let parameters = local.gather(world, total: total) { $0.values }
        // Every rank must take part in every gather: no short-circuiting on rank 0's results.
        var moments: ([Float], [Float])?
        if local.optimizer.config.kind == .adam {
            let m = local.gather(world, total: total) { $0.optimizer.moment1! }
            let v = local.gather(world, total: total) { $0.optimizer.moment2! }
            if let m, let v { moments = (m, v) }
        }
        return agreeing(world) { () throws in
            guard isLeader, let parameters, let directory = options.checkpointDir else { return }
            try Checkpoint(step: step, seed: seed, config: config, optimizer: local.optimizer.config,
                           parameters: parameters, moments: moments).save(in: directory)
        } != nil
    }

    /// Rank 0 reads and checks the newest checkpoint; every rank loads its part of it.
    /// Returns (completed steps, sampler seed), or nil after an error was reported.
    func resume(_ layout: TrainingLayout, from directory: String, config: ModelConfig) -> (Int, UInt64)? {
        guard let loaded = agreeing(world, { () throws -> Checkpoint? in
            guard isLeader else { return nil }
            let folder = try Checkpoint.latest(in: directory)
            let checkpoint = try Checkpoint.load(folder: folder)
            if let why = checkpoint.mismatch(config: config, optimizer: options.optimizer) {
                throw UsageError("checkpoint '\(folder)' is from a different model: \(why)")
            }
            return checkpoint
        }) else { return nil }
        var header: [Int64] = [Int64(loaded?.step ?? 0), Int64(bitPattern: loaded?.seed ?? 0)]
        world.broadcast(&header, count: 2, root: 0)
        let total = config.parameterCount
        let local = layout.local
        local.load(loaded?.parameters, world, total: total) { $0.values }
        if local.optimizer.config.kind == .adam {
            local.load(loaded?.moments?.m, world, total: total) { $0.optimizer.moment1! }
            local.load(loaded?.moments?.v, world, total: total) { $0.optimizer.moment2! }
        }
        if let loaded, loaded.seed != options.seed {
            say("note: continuing the checkpoint's batch sequence (seed \(loaded.seed)), not --seed \(options.seed)")
        }
        say("resumed from step \(header[0]) of \(directory)")
        return (Int(header[0]), UInt64(bitPattern: header[1]))
    }
}

func format(_ x: Float, _ decimals: Int) -> String {
    var scale: Float = 1
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (Double(x) * Double(scale)).rounded() / Double(scale)
    if decimals == 0 { return String(Int(rounded)) }
    var text = String(rounded)
    if let dot = text.firstIndex(of: ".") {
        let have = text.distance(from: dot, to: text.endIndex) - 1
        if have < decimals { text += String(repeating: "0", count: decimals - have) }
    }
    return text
}

/// The dump format: "PSDUMP1\n", then a JSON header line with the model configuration and Ψ,
/// then Ψ little-endian float32 parameters and Ψ float32 gradients, canonical layout.
func writeDump(path: String, config: ModelConfig, parameters: [Float], gradients: [Float]) throws(UsageError) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if fd < 0 { throw UsageError("cannot write dump '\(path)': \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let header = "PSDUMP1\n{\"vocab\":\(config.vocab),\"seq_len\":\(config.seqLen),\"emb\":\(config.emb),\"hidden\":\(config.hidden),\"layers\":\(config.layers),\"count\":\(parameters.count)}\n"
    var bytes = Array(header.utf8)
    for array in [parameters, gradients] {
        array.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    if written != bytes.count { throw UsageError("short write to dump '\(path)'") }
}
