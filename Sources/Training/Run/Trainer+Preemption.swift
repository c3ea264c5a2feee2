import Core
import Distributed

extension Trainer {
    /// Ends a run that `signal` asked to stop, after `steps` completed steps (every rank agreed
    /// on them, see ``StopVote``): with `--checkpoint-dir`, saves the checkpoint of that step
    /// unless the loop just did (`savedAt`), then reports one line naming the signal, the step and
    /// the checkpoint, e.g. `error: stopped by SIGTERM after step 58 of 1000; saved
    /// '/ckpt/step-00000058' (continue with --resume /ckpt)`. The process then exits with
    /// 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the shell's convention for a
    /// process ended by that signal. Returns false (training did not complete).
    func stopped(by signal: Int32, after steps: Int, savedAt: Int, _ stop: StopVote, _ session: inout Session) -> Bool {
        Ledger.isRecording = false
        session.metrics?.flush()
        let name = StopVote.name(signal)
        var outcome = "nothing saved (no --checkpoint-dir)"
        if let directory = options.checkpointDir {
            if savedAt != steps {
                guard save(session.layout, step: steps, seed: session.seed, config: session.config, data: session.data) else {
                    return false
                }
            }
            outcome = "saved '\(directory)/\(Checkpoint.folderName(step: steps))' (continue with --resume \(directory))"
        }
        // Saved (or nothing to save): a second signal may now end the process at once.
        stop.restoreDefault()
        if isLeader { writeError("error: stopped by \(name) after step \(steps) of \(options.steps); \(outcome)") }
        session.stoppedBy = signal
        return false
    }
}
