import CMPI

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The collective watchdog: a rank that waits in MPI longer than `--timeout` ends the whole job.
///
/// **The failure it catches.** A rank that stalls — a paused process (`kill -STOP`), a dead link,
/// a stuck host — is not dead, so MPI never notices: its peers sit in the collective, send or
/// receive they share with it, busy-polling at 100% CPU for ever. PyTorch, torchtitan and
/// Megatron all answer this with a collective timeout and a watchdog; so does this.
///
/// **What the main thread does (per MPI call, nothing allocated).** Every MPI call in
/// `Distributed` that can block — the collectives, MPI's and the ring's reduce-scatter, the
/// blocking and the waited-for non-blocking sends and receives, barrier, `MPI_Comm_split`,
/// `MPI_Finalize` — is bracketed by ``begin(_:)`` and ``end()``: one 64-bit release store of a
/// packed record before the call (operation, communicator, peer, and a serial number that makes
/// every call's record distinct) and one store of zero after it. The training loop adds one
/// store of the step number per step (``step``); the ``phase`` names the parts of the run that
/// are not steps (setup, checkpoint save, validation, shutdown). That is the whole cost: two
/// stores and an increment per MPI call, against the microseconds the call itself takes.
///
/// **What the watchdog thread does.** ``start(timeout:rank:)`` (after `MPI_Init`) starts one
/// thread, which never calls MPI. It wakes every `min(1 s, timeout/4)`, loads the record and
/// compares it with what it saw last time: a record that is not zero and has not changed means
/// the same call is still in flight. Once that has lasted `timeout` seconds (by the thread's
/// own monotonic clock, from the wake-up that first saw it, so the call began up to one period
/// earlier) the thread writes one line on stderr (``Stall``: the rank, its host, the operation,
/// the mesh axis, the step or phase, and the ranks it is waiting for where that can be known),
/// waits one more period and half a second so that the other ranks waiting in the same call
/// can print their line too (a rank that prints nothing is the stalled one), and ends the
/// process with `_exit(124)` (124, as `timeout(1)`).
///
/// **Why `_exit`, and how the rest of the job ends.** MPI is initialised `MPI_THREAD_FUNNELED`:
/// only the main thread may call it, and the main thread is inside MPI at that moment, so
/// `MPI_Abort` from the watchdog thread is not allowed (and OpenMPI without
/// `MPI_THREAD_MULTIPLE` takes no locks that would make it safe). `_exit` needs no lock, runs no
/// atexit handler that could touch MPI, and is enough: mpirun sees a rank end with a non-zero
/// status without `MPI_Finalize`, aborts the job (`orte_abort_on_non_zero_status`, on by
/// default) and kills every other rank — a stopped one too: its daemon sends `SIGCONT`, then
/// `SIGTERM`, then `SIGKILL` — and exits non-zero itself. Every rank waiting on the stalled one
/// runs the same watchdog, so the job ends even when the stalled rank's host is unreachable.
public enum Watchdog {
    /// The part of a run a rank is in, for the watchdog's line.
    public enum Phase: UInt64, Sendable {
        /// Reading the data, building the layout (the mesh's `MPI_Comm_split`s), resuming.
        case setup
        /// The training loop; the line names ``step``.
        case training
        /// Gathering and writing a checkpoint (after ``step``).
        case checkpoint
        /// The end-of-training ledger report (allgathers over the world).
        case report
        /// The replica check, `--dump`, validation and sampling.
        case finishing
        /// `MPI_Finalize`.
        case shutdown
    }

    /// The shared words (allocated once, never freed): 0 the record of the call in flight
    /// (0 when none), 1 the step, 2 the phase, 3 the main thread's serial counter.
    nonisolated(unsafe) static let words: UnsafeMutablePointer<UInt64> = {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        p.initialize(repeating: 0, count: 4)
        p[1] = UInt64(bitPattern: -1)
        return p
    }()

    /// The current training step (0-based, as in `--metrics`; −1 before the first). Set once per
    /// step by the training loop: one store.
    public static var step: Int {
        get { Int(bitPattern: UInt(cmpi_load_acquire(words + 1))) }
        set { cmpi_store_release(words + 1, UInt64(UInt(bitPattern: newValue))) }
    }

    /// The current phase of the run (see ``Phase``).
    public static var phase: Phase {
        get { Phase(rawValue: cmpi_load_acquire(words + 2)) ?? .setup }
        set { cmpi_store_release(words + 2, newValue.rawValue) }
    }

    /// Publishes `call` as the call in flight. The serial number (bits 32–63) makes two equal
    /// calls in a row distinct records, so the watchdog never mistakes a series of short calls
    /// for one long one.
    @inline(__always)
    static func begin(_ call: WatchedCall) {
        words[3] &+= 1
        cmpi_store_release(words, words[3] << 32 | UInt64(call.bits))
    }

    /// No call in flight.
    @inline(__always)
    static func end() {
        cmpi_store_release(words, 0)
    }

    /// The timeout the running watchdog enforces (nil: none started).
    nonisolated(unsafe) public private(set) static var timeout: Double?

    /// Starts the watchdog thread (once per process; later calls are ignored). `rank` is this
    /// process's world rank, for the line. Call it after `MPI.initialize()`.
    public static func start(timeout: Double, rank: Int) {
        precondition(timeout > 0 && timeout.isFinite, "the watchdog's timeout must be a positive finite number of seconds")
        guard self.timeout == nil else { return }
        self.timeout = timeout
        let settings = UnsafeMutablePointer<Settings>.allocate(capacity: 1)
        settings.initialize(to: Settings(timeout: timeout, rank: rank))
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { argument in
            #if canImport(Darwin)
            let settings = argument.assumingMemoryBound(to: Settings.self).pointee
            #else
            let settings = argument!.assumingMemoryBound(to: Settings.self).pointee
            #endif
            Watchdog.watch(settings)
        }, settings)
        if rc != 0 { MPI.abort("error: cannot start the watchdog thread (pthread_create: \(rc))") }
        pthread_detach(thread)
    }

    struct Settings {
        let timeout: Double
        let rank: Int
        /// How often the thread looks: often enough to act within a quarter of the timeout,
        /// at most once a second, at least every 10 ms.
        var period: Double { Swift.min(1, Swift.max(0.01, timeout / 4)) }
    }

    /// The watchdog thread's loop. Per wake-up: two loads, a comparison, a clock read; no
    /// allocation, no MPI.
    static func watch(_ settings: Settings) -> Never {
        var seen: UInt64 = 0
        var since = monotonicSeconds()
        while true {
            sleep(seconds: settings.period)
            let record = cmpi_load_acquire(words)
            let now = monotonicSeconds()
            if record == 0 || record != seen {
                seen = record
                since = now
                continue
            }
            if now - since >= settings.timeout {
                report(WatchedCall(bits: UInt32(truncatingIfNeeded: record)), waited: now - since, settings: settings)
            }
        }
    }

    /// Writes the line, lets the other waiting ranks write theirs, and ends the process.
    static func report(_ call: WatchedCall, waited: Double, settings: Settings) -> Never {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count - 1)
        let host = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let group = CommunicatorRegistry.entry(call.communicator)
        let stall = Stall(rank: settings.rank, host: host, operation: call.operation, axis: group.axis,
                          members: group.worldRanks, groupRank: group.groupRank, peer: call.peer,
                          phase: phase, step: step, waited: waited, timeout: settings.timeout)
        writeError(stall.description)
        sleep(seconds: settings.period + 0.5)
        _exit(124)
    }

    static func monotonicSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }

    static func sleep(seconds: Double) {
        var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - seconds.rounded(.down)) * 1e9))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }
}

/// The blocking MPI calls the watchdog names.
public enum WatchedOperation: UInt32, CaseIterable, Sendable {
    // From 1: a record is never zero, whatever its serial number.
    case allreduce = 1, allgather, reduceScatter, ringExchange, broadcast, send, receive, barrier, split, finalize, allToAll

    /// The name in the watchdog's line (the ledger's names where there is one).
    public var name: String {
        switch self {
        case .allreduce: "allreduce"
        case .allgather: "allgather"
        case .reduceScatter: "reduce_scatter"
        case .ringExchange: "reduce_scatter (ring exchange)"
        case .broadcast: "broadcast"
        case .send: "send"
        case .receive: "recv"
        case .barrier: "barrier"
        case .split: "communicator split"
        case .finalize: "MPI_Finalize"
        case .allToAll: "all_to_all"
        }
    }

    /// Point-to-point: waits for one known peer.
    var isPointToPoint: Bool { self == .send || self == .receive }
}

/// One blocking call as the watchdog records it, packed into 32 bits: the operation (bits 0–3),
/// the communicator's ``CommunicatorRegistry`` index (bits 4–11) and the peer's rank in that
/// communicator plus one (bits 12–31; 0: no single peer).
struct WatchedCall: Sendable {
    let bits: UInt32

    init(bits: UInt32) { self.bits = bits }

    @inline(__always)
    init(_ operation: WatchedOperation, on communicator: Communicator, peer: Int = -1) {
        let peerBits = peer >= 0 && peer < 0xFFFFF ? UInt32(peer + 1) : 0
        bits = operation.rawValue | UInt32(communicator.registryIndex) << 4 | peerBits << 12
    }

    var operation: WatchedOperation { WatchedOperation(rawValue: bits & 0xF) ?? .allreduce }
    var communicator: Int { Int(bits >> 4 & 0xFF) }
    var peer: Int? { bits >> 12 == 0 ? nil : Int(bits >> 12) - 1 }
}
