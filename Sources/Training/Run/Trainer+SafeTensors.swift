import Core
import Distributed

extension Trainer {
    /// The whole initial model, canonical layout, on every rank: from `--init-from` when given,
    /// else from the seed. Every layout then cuts its part out of it, as from a fresh model.
    ///
    /// Rank 0 reads and checks the file (so only the first host needs it, as with checkpoints)
    /// and broadcasts the Ψ floats (4·Ψ bytes, before training: not in the ledger's steps).
    /// Returns nil after an error was reported on every rank.
    func initialParameters(config: ModelConfig, dataset: Dataset) -> [Float]? {
        guard let path = options.initFrom else { return config.plan.initialParameters(seed: options.seed) }
        guard let loaded = agreeing(world, { () throws -> [Float]? in
            guard isLeader else { return nil }
            return try SafeTensors.read(path: path, config: config, vocabulary: dataset.vocabulary)
        }) else { return nil }
        var parameters = loaded ?? [Float](repeating: 0, count: config.parameterCount)
        parameters.withUnsafeMutableBufferPointer { world.broadcast($0.baseAddress!, count: $0.count, root: 0) }
        return parameters
    }

    /// `--export`: gathers the parameters to rank 0 (every rank takes part), which writes the
    /// safetensors file. Returns false after an error was reported on every rank.
    func export(_ session: Session, to path: String) -> Bool {
        let config = session.config
        let parameters = session.layout.local.gather(world, total: config.parameterCount) { $0.values }
        let written: Void? = agreeing(world) { () throws -> Void in
            guard let parameters else { return }
            let data = try SafeTensors.encode(parameters: parameters, config: config, vocabulary: session.context.dataset.vocabulary,
                                              steps: max(session.start, options.steps))
            try SafeTensors.save(data, to: path)
        }
        if written != nil { say("exported \(config.parameterCount) parameters to \(path)") }
        return written != nil
    }
}
