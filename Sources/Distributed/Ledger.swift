import CMPI

/// The kinds of communication the ledger counts.
///
/// `stopVote` is the training loop's 4-byte vote on whether a signal asked the job to stop (see
/// `StopVote` in Training): an allreduce, counted apart so that the other kinds stay exactly what
/// the layout's math moves. `allToAll` (equal counts) and `allToAllV` (counts per peer) come
/// last, after it, so the older kinds keep their places in reports.
public enum CommunicationKind: Int, CaseIterable, Sendable {
    case allreduce, allgather, reduceScatter, send, receive, broadcast, stopVote, allToAll, allToAllV

    /// The key used in reports and in the `"comm"` object of `--metrics`.
    public var name: String {
        switch self {
        case .allreduce: "allreduce"
        case .allgather: "allgather"
        case .reduceScatter: "reduce_scatter"
        case .send: "send"
        case .receive: "recv"
        case .broadcast: "broadcast"
        case .stopVote: "stop_vote"
        case .allToAll: "all_to_all"
        case .allToAllV: "all_to_all_v"
        }
    }
}

/// What the ledger counts for one kind of communication.
public struct CommunicationCounter: Sendable, Equatable {
    /// Calls made.
    public var calls: Int
    /// Payload bytes handed to or received from MPI (see ``Ledger``).
    public var bytes: Int
    /// Seconds spent in MPI, waiting included.
    public var seconds: Double

    public init(calls: Int = 0, bytes: Int = 0, seconds: Double = 0) {
        self.calls = calls
        self.bytes = bytes
        self.seconds = seconds
    }
}

/// Per-process counters of every call in `Distributed`: calls, bytes, and seconds spent in MPI
/// (including waiting for slower ranks), by kind.
///
/// **Bytes** are the payload each call hands to or gets from MPI on this rank: the buffer of an
/// allreduce or broadcast (n elements), the whole gathered output of an allgather and the whole
/// input of a reduce-scatter (p·n), the message of a send or receive, and what an all-to-all
/// sends to the *other* ranks (the block a rank keeps for itself moves nothing). So per step, DP's
/// allreduce counts Ψ floats, and FSDP's allgathers count Ψ twice and its reduce-scatters Ψ once
/// (plus padding). What travels on the wire depends on MPI's algorithm: a ring allreduce sends
/// 2·(p−1)/p of its buffer, a ring allgather or reduce-scatter (p−1)/p. Groups of one rank
/// communicate nothing and are not counted.
///
/// Counting costs two `MPI_Wtime` calls and a few adds per call; it never allocates (one
/// ``CommunicationCounter`` per kind, allocated once).
public enum Ledger {
    nonisolated(unsafe) static let counters: UnsafeMutablePointer<CommunicationCounter> = {
        let p = UnsafeMutablePointer<CommunicationCounter>.allocate(capacity: CommunicationKind.allCases.count)
        p.initialize(repeating: CommunicationCounter(), count: CommunicationKind.allCases.count)
        return p
    }()

    /// While false, calls are not counted (e.g. during a checkpoint save or the final report).
    nonisolated(unsafe) public static var isRecording = true

    @inline(__always)
    static func record(_ kind: CommunicationKind, bytes: Int, since start: Double) {
        guard isRecording else { return }
        counters[kind.rawValue].calls += 1
        counters[kind.rawValue].bytes += bytes
        counters[kind.rawValue].seconds += MPI_Wtime() - start
    }

    @inline(__always)
    static func addSeconds(_ kind: CommunicationKind, since start: Double) {
        guard isRecording else { return }
        counters[kind.rawValue].seconds += MPI_Wtime() - start
    }

    /// The counters, one per kind, in `CommunicationKind` order.
    public static func snapshot() -> [CommunicationCounter] {
        Array(UnsafeBufferPointer(start: counters, count: CommunicationKind.allCases.count))
    }

    public static func reset() {
        counters.update(repeating: CommunicationCounter(), count: CommunicationKind.allCases.count)
    }
}
