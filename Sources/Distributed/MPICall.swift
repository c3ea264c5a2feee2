import CMPI
import Tracing

/// The one way `Distributed` calls MPI.
///
/// Every MPI call that can block goes through ``MPICall/watched(_:_:_:)``: the ``Watchdog``
/// records it before and clears it after (so a peer that never arrives ends the job after
/// `--timeout` instead of leaving this rank spinning for ever), and its return code is checked
/// (an MPI error ends the job with one line naming the call). The communicator's operations add
/// the ``Ledger``'s count — the bytes the call moves and the seconds it took — through
/// ``Communicator/blocking(_:peer:tag:counted:bytes:_:_:)``. A non-blocking start
/// (``Communicator/starting(_:peer:tag:counted:bytes:_:_:)``) cannot block, so it is not watched; the
/// ``Request/wait()`` that completes it is. Nothing here allocates: the closures are inlined.
///
/// This is also where `--trace` sees communication: while ``Trace/isRecording`` (the training
/// loop's window), each call, start and wait becomes a ``TraceEvent`` on the rank's
/// communication row, with the ledger's kind and bytes, the communicator and, point to point, the
/// peer, tag and message number that join a send to its receive (``TraceMessages``).
enum MPICall {
    /// Runs `call` (the MPI function named `name`) under the watchdog's eye as `watchedCall`, and
    /// ends the job with one line if it fails.
    @inline(__always)
    static func watched(_ watchedCall: WatchedCall, _ name: StaticString, _ call: () -> Int32) {
        Watchdog.begin(watchedCall)
        let rc = call()
        Watchdog.end()
        MPI.check(rc, name)
    }
}

extension Communicator {
    /// A blocking call on this group (``MPICall/watched(_:_:_:)``), waiting on `peer` when it is
    /// point to point; the ledger counts `bytes` under `kind` with the call's time. A message's
    /// `tag` (point to point) names its trace flow.
    @inline(__always)
    func blocking(_ operation: WatchedOperation, peer: Int = -1, tag: MessageTag? = nil, counted kind: CommunicationKind, bytes: Int,
                  _ name: StaticString, _ call: () -> Int32) {
        let start = MPI_Wtime(), traced = Trace.begin()
        MPICall.watched(WatchedCall(operation, on: self, peer: peer), name, call)
        Ledger.record(kind, bytes: bytes, since: start)
        if traced != 0 { trace(name, operation, kind: kind, bytes: bytes, peer: peer, tag: tag, since: traced) }
    }

    /// A blocking call on this group that the ledger does not count (a barrier, a split, one
    /// exchange of the ring whose whole is counted once).
    @inline(__always)
    func blocking(_ operation: WatchedOperation, _ name: StaticString, _ call: () -> Int32) {
        let traced = Trace.begin()
        MPICall.watched(WatchedCall(operation, on: self), name, call)
        if traced != 0 { trace(name, operation, kind: nil, bytes: 0, since: traced) }
    }

    /// Calls that the ledger counts as one `kind` of `bytes` in all (the ring reduce-scatter's
    /// exchanges): traced as one event named `name` around them.
    @inline(__always)
    func counting(_ operation: WatchedOperation, _ kind: CommunicationKind, bytes: Int, _ name: StaticString, _ calls: () -> Void) {
        let start = MPI_Wtime(), traced = Trace.begin()
        calls()
        Ledger.record(kind, bytes: bytes, since: start)
        if traced != 0 { trace(name, operation, kind: kind, bytes: bytes, since: traced) }
    }

    /// Starts a non-blocking operation (it returns at once: nothing to watch), checks the return
    /// code, and counts `bytes` under `kind`; the request's ``Request/wait()`` adds its time.
    @inline(__always)
    func starting(_ operation: WatchedOperation, peer: Int = -1, tag: MessageTag? = nil, counted kind: CommunicationKind, bytes: Int,
                  _ name: StaticString, _ call: () -> Int32) {
        let start = MPI_Wtime(), traced = Trace.begin()
        MPI.check(call(), name)
        Ledger.record(kind, bytes: bytes, since: start)
        if traced != 0 { trace(name, operation, kind: kind, bytes: bytes, peer: peer, tag: tag, since: traced) }
    }

    /// Records the call that began at `start`: its bytes only if the ledger counted them, and
    /// for a message its place in the (peer, tag, direction) sequence.
    @inline(never)
    func trace(_ name: StaticString, _ operation: WatchedOperation, kind: CommunicationKind?, bytes: Int, peer: Int = -1,
               tag: MessageTag? = nil, since start: UInt64) {
        let counted = kind != nil && Ledger.isRecording && size > 1
        var event = TraceEvent(start: start, end: Trace.now(), name: name, thread: .communication, bytes: counted ? bytes : 0,
                               kind: Int8(kind?.rawValue ?? -1), operation: UInt8(operation.rawValue), group: Int16(registryIndex),
                               peer: Int32(peer))
        if let tag, operation == .send || operation == .receive {
            event.flow = operation == .send ? .send : .receive
            event.tag = tag.rawValue
            event.sequence = TraceMessages.next(group: registryIndex, peer: peer, tag: tag, flow: event.flow)
        }
        Trace.append(event)
    }
}

extension Request {
    /// Records the wait that began at `start` on the communication row (no bytes: its start
    /// counted them).
    @inline(never)
    func traceWait(since start: UInt64) {
        Trace.append(TraceEvent(start: start, end: Trace.now(), name: "MPI_Wait", thread: .communication, kind: Int8(kind.rawValue),
                                operation: UInt8(call.operation.rawValue), group: Int16(call.communicator),
                                peer: Int32(call.peer ?? -1)))
    }
}
