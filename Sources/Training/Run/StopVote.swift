import CStopSignal
import Distributed

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Stops a run cleanly when it is told to (SIGTERM from a scheduler, SIGINT from Ctrl-C): every
/// rank stops at the end of the same step, so the checkpoint saved there is complete.
///
/// **The signal.** While training runs, SIGTERM and SIGINT only store their number into a flag
/// (`CStopSignal`: a `volatile sig_atomic_t`, the one thing a signal handler may safely do); the
/// training loop reads it after every step. Before training and after it (validation, samples)
/// the default action applies: the process ends at once, as before.
///
/// **The agreement.** Ranks may see the signal in different steps (mpirun signals them one by
/// one; a scheduler may signal one process only), yet all must stop after the same step. So the
/// ranks vote: after step s each rank starts a non-blocking 4-byte MAX allreduce of its flag
/// (`MPI_Iallreduce`), and completes it after step s + 1, where the result — the same on every
/// rank — decides whether to stop. A signal seen during step s therefore stops every rank at the
/// end of step s + 1 (one step of lag, the same answer everywhere), or at the end of step s + 2
/// if it arrived after step s's vote was cast. The vote travels on its own communicator (a
/// split of the world), so it never matches a layout's collectives.
///
/// **The cost**, per step on N > 1 ranks: one `MPI_Iallreduce` of one `Int32` (4 bytes) and one
/// `MPI_Wait`, counted by the ledger as `stop_vote` (1 call, 4 bytes per step on each rank);
/// the wait overlaps a whole step of work, so it finds the vote done. On one rank: no MPI call
/// at all, the flag is read directly and the stop is at the end of the current step. A
/// blocking allreduce every step would add a synchronisation point; folding the flag into a
/// layout's own reduction would need a different place in every layout (TP has no per-step
/// reduction of its own). Nothing here allocates: the vote's buffer is allocated once.
final class StopVote {
    private let group: Communicator
    private let ballot: UnsafeMutablePointer<Int32>
    private var pending = Request()
    private var isPending = false

    /// Installs the recording handler and splits off the vote's communicator (collective).
    init(world: Communicator) {
        group = world.size == 1 ? world : world.split(color: 0, key: world.rank, axis: "world")
        ballot = .allocate(capacity: 1)
        ballot.initialize(to: 0)
        if stop_signal_install() != 0 { writeError("warning: cannot catch SIGTERM and SIGINT; a signal will end the run unsaved") }
    }

    deinit {
        settle()
        ballot.deallocate()
    }

    /// Call after every step: the signal every rank agrees to stop on, or nil to go on.
    func afterStep() -> Int32? {
        if group.size == 1 {
            let signal = stop_signal_received()
            return signal == 0 ? nil : signal
        }
        if isPending {
            pending.wait()
            isPending = false
            if ballot.pointee != 0 { return ballot.pointee }
        }
        ballot.pointee = stop_signal_received()
        pending = group.startAllreduceMax(ballot, count: 1, countedAs: .stopVote)
        isPending = true
        return nil
    }

    /// After the last step: completes the vote in flight and votes once more (blocking), so a
    /// signal that reached any rank during the last steps is seen by all. Then restores the
    /// default action of both signals. Returns the agreed signal, or nil.
    func afterTraining() -> Int32? {
        settle()
        let seen = Swift.max(ballot.pointee, stop_signal_received())
        let signal = group.size == 1 ? seen : group.max(seen)
        stop_signal_restore_default()
        return signal == 0 ? nil : signal
    }

    /// Completes the vote in flight, if any: no request may outlive the loop (MPI_Finalize).
    private func settle() {
        if isPending {
            pending.wait()
            isPending = false
        }
    }

    /// Restores the default action of SIGTERM and SIGINT (the run is ending anyway).
    func restoreDefault() { stop_signal_restore_default() }

    /// `SIGTERM`, `SIGINT`, or `signal 10`.
    static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        default: "signal \(signal)"
        }
    }
}
