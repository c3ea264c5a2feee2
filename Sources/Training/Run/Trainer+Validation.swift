import Core
import Distributed

extension Trainer {
    /// The validation loss: the mean of `--val-batches` batches of `--batch-size` validation
    /// examples, forward only (``TrainingLayout/evaluate(batch:from:)``, collective, the same on
    /// every rank). Batch i is a function of (seed, i) alone, so the curve (`--val-every`) and the
    /// final figure measure the very same batches: at the last step they are equal, bit for bit.
    func validationLoss(_ session: Session) -> Float {
        let sampler = BatchSampler(examples: session.context.dataset.validation, batchSize: options.batchSize,
                                   seed: session.seed, stream: .validationBatches)
        var total: Double = 0
        for i in 0..<options.valBatches { total += Double(session.layout.evaluate(batch: i, from: sampler)) }
        return Float(total / Double(options.valBatches))
    }

    /// `--val-every`: the validation loss after training step `step` (0-based) when it falls due,
    /// with the communication ledger paused (its figures stay per training step), and the
    /// seconds it took, which the caller leaves out of the step timing. Forward only: the
    /// parameters, gradients, optimizer state and training batches are untouched, so training
    /// goes on exactly as without it.
    func periodicValidation(_ session: Session, after step: Int) -> (loss: Float, seconds: Double)? {
        guard let every = options.valEvery, (step + 1) % every == 0 else { return nil }
        let start = MPI.time()
        Ledger.isRecording = false
        defer { Ledger.isRecording = true }
        let loss = validationLoss(session)
        session.metrics?.record(step: step + 1, validationLoss: loss)
        return (loss, MPI.time() - start)
    }
}
