import Core
import Distributed

extension Trainer {
    /// Gathers parameters and optimizer moments to rank 0, which writes the checkpoint.
    func save(_ layout: TrainingLayout, step: Int, seed: UInt64, config: ModelConfig, data: DataIdentity?) -> Bool {
        let total = config.parameterCount
        let local = layout.local
        let phase = Watchdog.phase
        Watchdog.phase = .checkpoint
        defer { Watchdog.phase = phase }
        let parameters = local.gather(world, total: total) { $0.values }
        // Every rank must take part in every gather: no short-circuiting on rank 0's results.
        var moments: ([Float], [Float])?
        if local.optimizer.config.kind == .adam {
            let m = local.gather(world, total: total) { $0.optimizer.moment1! }
            let v = local.gather(world, total: total) { $0.optimizer.moment2! }
            if let m, let v { moments = (m, v) }
        }
        let layoutFiles = local.ownState?.gather(world)
        return agreeing(world) { () throws in
            guard isLeader, let parameters, let directory = options.checkpointDir else { return }
            try Checkpoint(step: step, seed: seed, config: config, optimizer: local.optimizer.config,
                           parameters: parameters, moments: moments, data: data, layoutFiles: layoutFiles ?? [:]).save(in: directory)
        } != nil
    }

    /// Rank 0 reads and checks the newest checkpoint (model, optimizer, and the data file against
    /// `data`, this run's); every rank loads its part of it.
    /// Returns (completed steps, sampler seed), or nil after an error was reported.
    func resume(_ layout: TrainingLayout, from directory: String, config: ModelConfig, data: DataIdentity?) -> (Int, UInt64)? {
        guard let loaded = agreeing(world, { () throws -> Checkpoint? in
            guard isLeader else { return nil }
            let folder = try Checkpoint.latest(in: directory)
            let checkpoint = try Checkpoint.load(folder: folder)
            if let why = checkpoint.mismatch(config: config, optimizer: options.optimizer) {
                throw UsageError("checkpoint '\(folder)' is from a different model: \(why)")
            }
            try checkData(of: checkpoint, in: folder, against: data)
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
        if let state = local.ownState {
            guard agreeing(world, { () throws in try state.load(loaded?.layoutFiles, world) }) != nil else { return nil }
        }
        if let loaded, loaded.seed != options.seed {
            say("note: continuing the checkpoint's batch sequence (seed \(loaded.seed)), not --seed \(options.seed)")
        }
        say("resumed from step \(header[0]) of \(directory)")
        return (Int(header[0]), UInt64(bitPattern: header[1]))
    }

    /// Refuses a checkpoint trained on other data than `data` unless `--allow-data-change`
    /// (then prints a note); a checkpoint of format version 1 records no data file, which a note
    /// says. Runs on rank 0.
    func checkData(of checkpoint: Checkpoint, in folder: String, against data: DataIdentity?) throws(UsageError) {
        guard let data else { return }
        guard let saved = checkpoint.data else {
            say("note: checkpoint '\(folder)' does not record its data file (format version 1): \(data.description) is not checked")
            return
        }
        guard saved.differs(from: data) else { return }
        if options.allowDataChange {
            say("note: --allow-data-change: continuing on \(data.description); the checkpoint was trained on \(saved.description)")
        } else {
            throw UsageError("checkpoint '\(folder)' was trained on \(saved.description), but --data is \(data.description); "
                             + "pass --allow-data-change to continue on different data")
        }
    }
}
