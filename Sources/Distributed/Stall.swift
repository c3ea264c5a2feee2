/// A call the ``Watchdog`` found stalled, and the one line it prints about it:
///
///     error: watchdog: rank 0 (host a) stuck 3.2 s in allreduce on axis dp (2 ranks) at step 1234,
///     waiting for rank 1 (--timeout 3 s); ending the job
///
/// (one line; wrapped here). Ranks are world ranks, as mpirun numbers them.
///
/// **Which peers are missing, where that can be known.** A send or a receive waits for its one
/// peer; the ring reduce-scatter's exchange for its left neighbour (who sends to this rank) or
/// its right one (who receives from it); a collective on two ranks for the other one. In a
/// collective on more ranks MPI does not say which members have not arrived (its algorithms
/// relay data between ranks in rounds, so a rank may wait on a member that is itself waiting),
/// and the line says so, listing the candidates. Every rank waiting in the call prints its own
/// line, so across the job's output the stalled rank is the one that printed none.
public struct Stall: Sendable, CustomStringConvertible {
    /// This process's world rank and host.
    public var rank: Int
    public var host: String
    public var operation: WatchedOperation
    /// The communicator's mesh axis ("tp", "dp", "pp", …, or "world").
    public var axis: String
    /// The communicator's members as world ranks (by rank in it), and this rank's place among them.
    public var members: [Int]
    public var groupRank: Int
    /// The peer of a point-to-point call (its rank in the communicator), if any.
    public var peer: Int?
    public var phase: Watchdog.Phase
    /// The last training step started (−1: none yet).
    public var step: Int
    /// Seconds the watchdog saw the call in flight (a lower bound), and the limit.
    public var waited: Double
    public var timeout: Double

    public init(rank: Int, host: String, operation: WatchedOperation, axis: String, members: [Int], groupRank: Int,
                peer: Int?, phase: Watchdog.Phase, step: Int, waited: Double, timeout: Double) {
        self.rank = rank
        self.host = host
        self.operation = operation
        self.axis = axis
        self.members = members
        self.groupRank = groupRank
        self.peer = peer
        self.phase = phase
        self.step = step
        self.waited = waited
        self.timeout = timeout
    }

    public var description: String {
        "error: watchdog: rank \(rank) (host \(host)) stuck \((waited * 10).rounded() / 10) s in \(operation.name) on axis \(axis) "
            + "(\(members.count) ranks) \(when), waiting for \(missing) (--timeout \(timeoutText) s); ending the job"
    }

    /// The step, or the phase when the run is not inside a step.
    var when: String {
        switch phase {
        case .setup: "during setup"
        case .training: "at step \(step)"
        case .checkpoint: "saving a checkpoint after step \(step)"
        case .report: "in the ledger report after step \(step)"
        case .finishing: "after training (replica check, dump, validation or samples)"
        case .shutdown: "in shutdown"
        }
    }

    /// The peers this call waits for, as far as this rank can know.
    var missing: String {
        func worldRank(_ r: Int) -> String { r >= 0 && r < members.count ? "rank \(members[r])" : "rank \(r) of the group" }
        if operation.isPointToPoint, let peer { return worldRank(peer) }
        let p = members.count
        if operation == .ringExchange && p > 2 && groupRank >= 0 {
            return "\(worldRank((groupRank + p - 1) % p)) (sends to this rank) or \(worldRank((groupRank + 1) % p)) (receives from it)"
        }
        let others = members.indices.filter { $0 != groupRank }.map { members[$0] }
        if others.count == 1 { return "rank \(others[0])" }
        if others.isEmpty { return "an unknown rank" }
        let shown = others.prefix(8).map(String.init).joined(separator: ", ") + (others.count > 8 ? ", …" : "")
        return "one or more of ranks \(shown) (MPI does not say which)"
    }

    /// `3` for 3.0, `0.25` for 0.25: the limit as it was given.
    var timeoutText: String { timeout.rounded() == timeout && timeout < 1e15 ? String(Int(timeout)) : "\(timeout)" }
}
