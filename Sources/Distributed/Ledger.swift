import CMPI

/// The kinds of communication the ledger counts.
public enum CommunicationKind: Int, CaseIterable, Sendable {
    case allreduce, allgather, reduceScatter, send, receive, broadcast

    /// The key used in reports and in the `"comm"` object of `--metrics`.
    public var name: String {
        switch self {
        case .allreduce: "allreduce"
        case .allgather: "allgather"
        case .reduceScatter: "reduce_scatter"
        case .send: "send"
        case .receive: "recv"
        case .broadcast: "broadcast"
        }
    }
}

/// Per-process counters of every call in `Distributed`: calls, bytes, and seconds spent in MPI
/// (including waiting for slower ranks), by kind.
///
/// **Bytes** are the payload each call hands to or gets from MPI on this rank: the buffer of an
/// allreduce or broadcast (n elements), the whole gathered output of an allgather and the whole
/// input of a reduce-scatter (p·n), the message of a send or receive. So per step, DP's
/// allreduce counts Ψ floats, and FSDP's allgathers count Ψ twice and its reduce-scatters Ψ once
/// (plus padding). What travels on the wire depends on MPI's algorithm: a ring allreduce sends
/// 2·(p−1)/p of its buffer, a ring allgather or reduce-scatter (p−1)/p. Groups of one rank
/// communicate nothing and are not counted.
///
/// Counting costs two `MPI_Wtime` calls and a few adds per call; it never allocates.
public enum Ledger {
    nonisolated(unsafe) static let counters: UnsafeMutablePointer<Double> = {
        let p = UnsafeMutablePointer<Double>.allocate(capacity: CommunicationKind.allCases.count * 3)
        p.initialize(repeating: 0, count: CommunicationKind.allCases.count * 3)
        return p
    }()

    /// While false, calls are not counted (e.g. during a checkpoint save or the final report).
    nonisolated(unsafe) public static var isRecording = true

    @inline(__always)
    static func record(_ kind: CommunicationKind, bytes: Int, since start: Double) {
        guard isRecording else { return }
        let c = counters + kind.rawValue * 3
        c[0] += 1
        c[1] += Double(bytes)
        c[2] += MPI_Wtime() - start
    }

    @inline(__always)
    static func addSeconds(_ kind: CommunicationKind, since start: Double) {
        guard isRecording else { return }
        counters[kind.rawValue * 3 + 2] += MPI_Wtime() - start
    }

    /// `(calls, bytes, seconds)` per kind, in `CommunicationKind` order, flattened.
    public static func snapshot() -> [Double] {
        Array(UnsafeBufferPointer(start: counters, count: CommunicationKind.allCases.count * 3))
    }

    public static func reset() {
        counters.update(repeating: 0, count: CommunicationKind.allCases.count * 3)
    }
}
