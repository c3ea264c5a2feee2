import CTraceClock

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One interval of a rank's timeline: a block's pass, the loss, an update, or an MPI call.
///
/// A small value with no reference in it: the name is a `StaticString` (a pointer into the
/// binary's constant data) and everything else is an integer, so writing one into the
/// preallocated buffer copies a few words and allocates nothing. What the fields mean is read
/// back when the trace is written, after training (`Training`'s `TraceWriter`).
public struct TraceEvent: Sendable {
    /// Start and end, in ticks of ``Trace/now()`` (``Trace/nanoseconds(_:)`` converts them).
    public var start: UInt64
    public var end: UInt64
    /// What ran: a pass ("forward", "backward", …) or the MPI function.
    public var name: StaticString
    /// Payload bytes as the communication ledger counts them (0 for compute and uncounted calls).
    public var bytes: Int
    /// Which timeline row: ``TraceThread``.
    public var thread: TraceThread
    /// Communication: the ledger's kind (`CommunicationKind.rawValue`), or −1 when not counted.
    public var kind: Int8
    /// Communication: the watchdog's operation (`WatchedOperation.rawValue`); 0 for compute.
    public var operation: UInt8
    /// Point to point: ``TraceFlow``.
    public var flow: TraceFlow
    /// Compute: the block's position in its chain (−1: not a block). Communication: −1.
    public var block: Int16
    /// The micro-batch and the pipeline chunk being run (−1 when unknown or not a pipeline).
    public var microBatch: Int16
    public var chunk: Int16
    /// Communication: the communicator's index in `CommunicatorRegistry`; −1 for compute.
    public var group: Int16
    /// Point to point: the peer's rank in that communicator, the message tag, and the message's
    /// number among those with the same (peer, tag, direction): what lets both ends name the
    /// same flow without communicating.
    public var peer: Int32
    public var tag: Int32
    public var sequence: Int32

    @inlinable
    public init(start: UInt64, end: UInt64, name: StaticString, thread: TraceThread, bytes: Int = 0, kind: Int8 = -1,
                operation: UInt8 = 0, flow: TraceFlow = .none, block: Int16 = -1, group: Int16 = -1, peer: Int32 = -1,
                tag: Int32 = -1, sequence: Int32 = -1) {
        self.start = start
        self.end = end
        self.name = name
        self.bytes = bytes
        self.thread = thread
        self.kind = kind
        self.operation = operation
        self.flow = flow
        self.block = block
        self.microBatch = Trace.microBatch
        self.chunk = Trace.chunk
        self.group = group
        self.peer = peer
        self.tag = tag
        self.sequence = sequence
    }
}

/// The two rows of a rank in the timeline (Chrome trace `tid`s).
public enum TraceThread: UInt8, Sendable {
    case compute = 0, communication = 1
}

/// A point-to-point event's end of a message: the send starts a flow arrow, the receive ends it.
public enum TraceFlow: UInt8, Sendable {
    case none = 0, send, receive
}

/// The recorder behind `--trace`: a buffer of ``TraceEvent``s allocated once, before the first
/// step, and a flag that the training loop raises for the steps of the window.
///
/// Every place that records — `LayerChain` around each block, the pipeline stage around each
/// micro-batch, the collectives wrapper around each MPI call, the training loop around the
/// update — first reads ``isRecording``: without `--trace` that one branch is all tracing costs
/// (always false, so always predicted). While recording, an event costs two clock reads
/// (``now()``) and a copy into the next slot.
/// When the buffer is full, further events are counted in ``dropped`` and lost; nothing grows.
///
/// Single-threaded by design: only the main thread computes and calls MPI.
public enum Trace {
    /// True for the steps of the window. The only thing read when tracing is off.
    nonisolated(unsafe) public static var isRecording = false
    nonisolated(unsafe) public static private(set) var events: UnsafeMutablePointer<TraceEvent>?
    nonisolated(unsafe) public static private(set) var capacity = 0
    nonisolated(unsafe) public static private(set) var count = 0
    /// Events lost to a full buffer.
    nonisolated(unsafe) public static private(set) var dropped = 0
    /// Set by the pipeline stage around each micro-batch's work (−1 outside it): copied into
    /// every event recorded meanwhile.
    nonisolated(unsafe) public static var microBatch: Int16 = -1
    nonisolated(unsafe) public static var chunk: Int16 = -1

    /// Allocates and touches the buffer (once; later calls with a smaller capacity keep it), and
    /// chooses the clock and takes its first reading.
    public static func reserve(capacity wanted: Int) {
        usesCounter = trace_clock_counter() != 0 && clockSource() == "tsc"
        anchors.first = (now(), monotonicNanoseconds())
        anchors.last = (anchors.first.ticks &+ 1, anchors.first.ns &+ 1)
        guard wanted > capacity else { return }
        events?.deallocate()
        let buffer = UnsafeMutablePointer<TraceEvent>.allocate(capacity: wanted)
        // Touch every page now, so that the window does not pay for first-touch page faults.
        UnsafeMutableRawPointer(buffer).initializeMemory(as: UInt8.self, repeating: 0, count: wanted * MemoryLayout<TraceEvent>.stride)
        events = buffer
        capacity = wanted
        count = 0
        dropped = 0
    }

    /// Linux's clock source ("tsc", "kvm-clock", …), or "" when it cannot be read.
    static func clockSource() -> String {
        guard let file = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r") else { return "" }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 64)
        guard fgets(&line, Int32(line.count), file) != nil else { return "" }
        return String(decoding: line.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The recorded events, in the order they ended.
    public static var recorded: UnsafeBufferPointer<TraceEvent> { UnsafeBufferPointer(start: events, count: count) }

    /// Forgets the recorded events (the buffer stays).
    public static func clear() {
        count = 0
        dropped = 0
    }

    /// Whether ``now()`` reads the CPU's time-stamp counter (see ``reserve(capacity:)``).
    nonisolated(unsafe) public static private(set) var usesCounter = false
    /// Two (ticks, nanoseconds) readings taken together, at ``reserve(capacity:)`` and
    /// ``calibrate()``: the line that converts ticks to `CLOCK_MONOTONIC`.
    nonisolated(unsafe) static var anchors = (first: (ticks: UInt64(0), ns: UInt64(0)), last: (ticks: UInt64(1), ns: UInt64(1)))

    /// The clock of the events, in ticks: the time-stamp counter when Linux itself keeps time with
    /// it (its clock source is `tsc`, which it only is when the counter is invariant and the same
    /// on every core), else `CLOCK_MONOTONIC` in nanoseconds. Reading the counter takes about a
    /// third of a `clock_gettime`, which reads the same counter and scales it.
    @inlinable
    public static func now() -> UInt64 { usesCounter ? trace_clock_counter() : trace_clock_monotonic_ns() }

    /// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of a host.
    public static func monotonicNanoseconds() -> UInt64 { trace_clock_monotonic_ns() }

    /// Takes the second reading of the tick-to-nanosecond line (after the window, before
    /// converting its events).
    public static func calibrate() {
        let ticks = now(), ns = monotonicNanoseconds()
        if ticks > anchors.first.ticks && ns > anchors.first.ns { anchors.last = (ticks, ns) }
    }

    /// `ticks` (of ``now()``) as nanoseconds of `CLOCK_MONOTONIC`: on the line through the two
    /// readings (the identity without the counter).
    public static func nanoseconds(_ ticks: UInt64) -> Int64 {
        guard usesCounter else { return Int64(bitPattern: ticks) }
        let (a, b) = anchors
        let rate = Double(b.ns - a.ns) / Double(b.ticks - a.ticks)
        return Int64(bitPattern: a.ns) + Int64((Double(Int64(bitPattern: ticks &- a.ticks)) * rate).rounded())
    }

    /// The start of an interval: the clock while recording, else 0 (which ``append(_:)``'s
    /// callers test instead of reading the flag again).
    @inlinable
    public static func begin() -> UInt64 { isRecording ? now() : 0 }

    /// Stores `event` in the next slot (or counts it as dropped). Called only while recording.
    public static func append(_ event: TraceEvent) {
        if count < capacity {
            events.unsafelyUnwrapped[count] = event
            count += 1
        } else {
            dropped += 1
        }
    }

    /// A compute interval named `name` that began at `start` (from ``begin()``), ending now.
    @inlinable
    public static func compute(_ name: StaticString, block: Int = -1, since start: UInt64) {
        guard start != 0 else { return }
        append(TraceEvent(start: start, end: now(), name: name, thread: .compute, block: Int16(truncatingIfNeeded: block)))
    }
}
