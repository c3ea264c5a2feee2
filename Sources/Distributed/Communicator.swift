import CMPI
import Tracing

/// Element types that can travel through a collective.
public protocol MPIScalar: Sendable {
    static var datatype: OpaquePointer { get }
}

extension Float: MPIScalar { public static var datatype: OpaquePointer { cmpi_float() } }
extension Double: MPIScalar { public static var datatype: OpaquePointer { cmpi_double() } }
extension Int32: MPIScalar { public static var datatype: OpaquePointer { cmpi_int32() } }
extension Int64: MPIScalar { public static var datatype: OpaquePointer { cmpi_int64() } }

/// A group of ranks that talk to each other: the world, or one axis of a ``ProcessMesh``.
///
/// All buffers are caller-owned pointers; nothing here allocates on the heap, so a training step
/// that uses these calls stays allocation-free. Every call that can block is bracketed by the
/// ``Watchdog``'s two stores (`begin`/`end`), which is how a stalled peer ends the job. Costs
/// below are per rank for `n` elements of `s` bytes in a group of `p` ranks, for the ring
/// algorithms MPI uses at these sizes.
public struct Communicator: @unchecked Sendable {
    /// The MPI_Comm handle.
    public let handle: OpaquePointer
    /// This process's rank in the group.
    public let rank: Int
    /// Number of ranks in the group.
    public let size: Int
    /// Where the watchdog finds this group's axis name and members (``CommunicatorRegistry``).
    let registryIndex: Int

    /// Wraps `handle`; `axis` names the group in the watchdog's line ("world", "tp", "dp", …).
    public init(handle: OpaquePointer, axis: String) {
        self.handle = handle
        var r: Int32 = 0, s: Int32 = 0
        MPI.check(MPI_Comm_rank(handle, &r), "MPI_Comm_rank")
        MPI.check(MPI_Comm_size(handle, &s), "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
        registryIndex = CommunicatorRegistry.register(handle, axis: axis, rank: rank, size: size)
    }

    /// MPI_COMM_WORLD.
    public static var world: Communicator { Communicator(handle: cmpi_comm_world(), axis: "world") }

    /// The mesh axis this group spans ("world" for the world), as the watchdog reports it.
    public var axis: String { CommunicatorRegistry.entry(registryIndex).axis }

    /// Splits the group: ranks with the same `color` form a new communicator, ordered by `key`,
    /// named `axis`. A group of one rank is a real communicator too, so callers never
    /// special-case size 1.
    public func split(color: Int, key: Int, axis: String) -> Communicator {
        var out: OpaquePointer? = cmpi_comm_null()
        blocking(.split, "MPI_Comm_split") { MPI_Comm_split(handle, Int32(color), Int32(key), &out) }
        guard let out else { MPI.abort("error: MPI_Comm_split returned no communicator") }
        MPI_Comm_set_errhandler(out, cmpi_errors_return())
        return Communicator(handle: out, axis: axis)
    }

    /// Blocks until every rank of the group arrives.
    public func barrier() {
        blocking(.barrier, "MPI_Barrier") { MPI_Barrier(handle) }
    }

    /// In-place sum over the group: afterwards every rank holds Σ of all ranks' `buffer`.
    /// Moves 2·(p−1)/p·n·s bytes per rank (reduce-scatter then allgather).
    public func allreduceSum<T: MPIScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int) {
        if size == 1 || count == 0 { return }
        blocking(.allreduce, counted: .allreduce, bytes: count * MemoryLayout<T>.size, "MPI_Allreduce") {
            MPI_Allreduce(cmpi_in_place(), buffer, Int32(count), T.datatype, cmpi_op_sum(), handle)
        }
    }

    /// In-place maximum over the group.
    public func allreduceMax<T: MPIScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int) {
        if size == 1 || count == 0 { return }
        blocking(.allreduce, counted: .allreduce, bytes: count * MemoryLayout<T>.size, "MPI_Allreduce") {
            MPI_Allreduce(cmpi_in_place(), buffer, Int32(count), T.datatype, cmpi_op_max(), handle)
        }
    }

    /// Sum of one scalar over the group.
    public func sum<T: MPIScalar>(_ value: T) -> T {
        var v = value
        allreduceSum(&v, count: 1)
        return v
    }

    /// Maximum of one scalar over the group.
    public func max<T: MPIScalar>(_ value: T) -> T {
        var v = value
        allreduceMax(&v, count: 1)
        return v
    }

    /// Starts an in-place sum without waiting for it (`MPI_Iallreduce`). The buffer must not be
    /// touched until ``Request/wait()`` returns. Lets gradient buckets travel while the backward
    /// pass computes the next ones.
    public func startAllreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) -> Request {
        if size == 1 || count == 0 { return Request() }
        var request: OpaquePointer? = cmpi_request_null()
        starting(.allreduce, counted: .allreduce, bytes: count * 4, "MPI_Iallreduce") {
            MPI_Iallreduce(cmpi_in_place(), buffer, Int32(count), Float.datatype, cmpi_op_sum(), handle, &request)
        }
        return Request(handle: request, kind: .allreduce, call: WatchedCall(.allreduce, on: self))
    }

    /// Starts an in-place maximum without waiting for it (`MPI_Iallreduce` with `MPI_MAX`),
    /// counted in the ledger as `kind`. The buffer must not be touched until ``Request/wait()``
    /// returns.
    public func startAllreduceMax(_ buffer: UnsafeMutablePointer<Int32>, count: Int,
                                  countedAs kind: CommunicationKind = .allreduce) -> Request {
        if size == 1 || count == 0 { return Request() }
        var request: OpaquePointer? = cmpi_request_null()
        starting(.allreduce, counted: kind, bytes: count * 4, "MPI_Iallreduce") {
            MPI_Iallreduce(cmpi_in_place(), buffer, Int32(count), Int32.datatype, cmpi_op_max(), handle, &request)
        }
        return Request(handle: request, kind: kind, call: WatchedCall(.allreduce, on: self))
    }

    /// Concatenates every rank's `count` elements, in rank order, into `output` (p·count elements)
    /// on every rank. Moves (p−1)/p·p·count·s bytes per rank. `input` may alias this rank's slot
    /// of `output`, in which case the copy is skipped (MPI_IN_PLACE).
    public func allgather<T: MPIScalar>(_ input: UnsafePointer<T>, count: Int, into output: UnsafeMutablePointer<T>) {
        let inPlace = input == UnsafePointer(output + rank * count)
        if size == 1 {
            if !inPlace { output.update(from: input, count: count) }
            return
        }
        blocking(.allgather, counted: .allgather, bytes: size * count * MemoryLayout<T>.size, "MPI_Allgather") {
            inPlace ? MPI_Allgather(cmpi_in_place(), 0, T.datatype, output, Int32(count), T.datatype, handle)
                : MPI_Allgather(input, Int32(count), T.datatype, output, Int32(count), T.datatype, handle)
        }
    }

    /// Copies `count` elements from `root` to every rank.
    public func broadcast<T: MPIScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int, root: Int) {
        if size == 1 || count == 0 { return }
        blocking(.broadcast, counted: .broadcast, bytes: count * MemoryLayout<T>.size, "MPI_Bcast") {
            MPI_Bcast(buffer, Int32(count), T.datatype, Int32(root), handle)
        }
    }

    /// Sends `count` elements to rank `destination` of this group (blocking, `MPI_Send`).
    public func send<T: MPIScalar>(_ buffer: UnsafePointer<T>, count: Int, to destination: Int, tag: MessageTag) {
        blocking(.send, peer: destination, tag: tag, counted: .send, bytes: count * MemoryLayout<T>.size, "MPI_Send") {
            MPI_Send(buffer, Int32(count), T.datatype, Int32(destination), tag.rawValue, handle)
        }
    }

    /// Receives `count` elements from rank `source` of this group (blocking, `MPI_Recv`).
    public func receive<T: MPIScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int, from source: Int, tag: MessageTag) {
        blocking(.receive, peer: source, tag: tag, counted: .receive, bytes: count * MemoryLayout<T>.size, "MPI_Recv") {
            MPI_Recv(buffer, Int32(count), T.datatype, Int32(source), tag.rawValue, handle, cmpi_status_ignore())
        }
    }

    /// Starts a send without waiting (`MPI_Isend`).
    public func startSend<T: MPIScalar>(_ buffer: UnsafePointer<T>, count: Int, to destination: Int, tag: MessageTag) -> Request {
        var request: OpaquePointer? = cmpi_request_null()
        starting(.send, peer: destination, tag: tag, counted: .send, bytes: count * MemoryLayout<T>.size, "MPI_Isend") {
            MPI_Isend(buffer, Int32(count), T.datatype, Int32(destination), tag.rawValue, handle, &request)
        }
        return Request(handle: request, kind: .send, call: WatchedCall(.send, on: self, peer: destination))
    }
}

/// A communication in flight. Call ``wait()`` exactly once before reusing its buffer.
public struct Request: @unchecked Sendable {
    var handle: OpaquePointer?
    var kind: CommunicationKind = .allreduce
    /// What ``wait()`` reports to the watchdog while it blocks.
    var call = WatchedCall(bits: 0)

    /// A request that is already complete (used for groups of one rank).
    public init() { handle = nil }
    init(handle: OpaquePointer?, kind: CommunicationKind, call: WatchedCall) {
        self.handle = handle
        self.kind = kind
        self.call = call
    }

    /// Blocks until the operation completes (the wait counts as the operation's time).
    public mutating func wait() {
        guard handle != nil else { return }
        let start = MPI_Wtime(), traced = Trace.begin()
        MPICall.watched(call, "MPI_Wait") { MPI_Wait(&handle, cmpi_status_ignore()) }
        Ledger.addSeconds(kind, since: start)
        if traced != 0 { traceWait(since: traced) }
        handle = nil
    }

    /// Lets MPI progress the operation without blocking (`MPI_Test`) and says whether it is done.
    ///
    /// OpenMPI moves a non-blocking collective only inside MPI calls: a rank that computes
    /// without calling MPI leaves it where it was. Calling this between pieces of work advances
    /// it — each call runs MPI's progress engine once, moving the next fragments. The call's
    /// time counts as the operation's, like ``wait()``.
    public mutating func test() -> Bool {
        guard handle != nil else { return true }
        let start = MPI_Wtime()
        var done: Int32 = 0
        MPI.check(MPI_Test(&handle, &done, cmpi_status_ignore()), "MPI_Test")
        Ledger.addSeconds(kind, since: start)
        if done != 0 { handle = nil }
        return done != 0
    }
}
