import CMPI

/// The one way `Distributed` calls MPI.
///
/// Every MPI call that can block goes through ``MPICall/watched(_:_:_:)``: the ``Watchdog``
/// records it before and clears it after (so a peer that never arrives ends the job after
/// `--timeout` instead of leaving this rank spinning for ever), and its return code is checked
/// (an MPI error ends the job with one line naming the call). The communicator's operations add
/// the ``Ledger``'s count — the bytes the call moves and the seconds it took — through
/// ``Communicator/blocking(_:peer:counted:bytes:_:_:)``. A non-blocking start
/// (``Communicator/starting(counted:bytes:_:_:)``) cannot block, so it is not watched; the
/// ``Request/wait()`` that completes it is. Nothing here allocates: the closures are inlined.
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
    /// point to point; the ledger counts `bytes` under `kind` with the call's time.
    @inline(__always)
    func blocking(_ operation: WatchedOperation, peer: Int = -1, counted kind: CommunicationKind, bytes: Int,
                  _ name: StaticString, _ call: () -> Int32) {
        let start = MPI_Wtime()
        MPICall.watched(WatchedCall(operation, on: self, peer: peer), name, call)
        Ledger.record(kind, bytes: bytes, since: start)
    }

    /// A blocking call on this group that the ledger does not count (a barrier, a split, one
    /// exchange of the ring whose whole is counted once).
    @inline(__always)
    func blocking(_ operation: WatchedOperation, _ name: StaticString, _ call: () -> Int32) {
        MPICall.watched(WatchedCall(operation, on: self), name, call)
    }

    /// Starts a non-blocking operation (it returns at once: nothing to watch), checks the return
    /// code, and counts `bytes` under `kind`; the request's ``Request/wait()`` adds its time.
    @inline(__always)
    func starting(counted kind: CommunicationKind, bytes: Int, _ name: StaticString, _ call: () -> Int32) {
        let start = MPI_Wtime()
        MPI.check(call(), name)
        Ledger.record(kind, bytes: bytes, since: start)
    }
}
