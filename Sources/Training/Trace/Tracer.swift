import Distributed
import Foundation
import Tracing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `--trace`: records every rank's compute and communication over a window of training steps and,
/// after training, writes them as one Chrome Trace Event file on rank 0.
///
/// Before the first step it reserves the event buffer (``capacity(_:window:)`` events, every page
/// touched), numbers messages from zero (``TraceMessages``) and aligns the clocks
/// (``ClockAlignment``). The training loop calls ``stepBegins(_:)`` at the top of every step,
/// which raises ``Trace/isRecording`` at the window's first step and lowers it at the step after
/// its last (``stop()`` after the loop, if the window reaches the last step): the window is
/// whole steps, the progress line, stop vote and metrics record included. Nothing is written while
/// recording. ``finish(world:)`` then measures the clocks again, has every rank format its own
/// events (``TraceWriter``) and send the text to rank 0, which writes the file and reports where
/// each rank's time went (``TraceReport``).
final class Tracer {
    let path: String
    let window: ClosedRange<Int>
    let start: ClockAlignment
    /// Each window step's start on this rank's clock (0: not run, e.g. before a resumed start).
    let stepStarts: UnsafeMutablePointer<UInt64>
    var began: UInt64 = 0
    var ended: UInt64 = 0

    /// Collective over `world`; throws (on rank 0) when `path` cannot be written, and on every
    /// rank when the window would need more than ``maximumBufferBytes`` of events.
    init(path: String, window: ClosedRange<Int>, options: TrainingOptions, world: Communicator) throws(UsageError) {
        self.path = path
        self.window = window
        stepStarts = .allocate(capacity: window.count)
        stepStarts.initialize(repeating: 0, count: window.count)
        let capacity = Self.capacity(options, window: window), bytes = capacity * MemoryLayout<TraceEvent>.stride
        if bytes > Self.maximumBufferBytes {
            throw UsageError("--trace-steps \(window.lowerBound + 1):\(window.upperBound + 1) would reserve \(bytes >> 20) MiB of trace events "
                             + "per rank (at most \(Self.maximumBufferBytes >> 20)): trace fewer steps")
        }
        // Every rank takes part in the clock exchange before rank 0 may refuse the file.
        let created = world.rank != 0 || FileManager.default.createFile(atPath: path, contents: Data())
        Trace.reserve(capacity: capacity)
        TraceMessages.prepare(worldSize: world.size)
        start = ClockAlignment(world: world)
        if !created { throw UsageError("cannot write trace file '\(path)'") }
    }

    deinit { stepStarts.deallocate() }

    /// Events reserved for the window: per step, 512 (the update, the stop vote, the gradient
    /// norm, the loss's allreduce, …) plus 32 per block (its passes, their hooks' and layers'
    /// collectives, a pipeline's messages) per micro-batch and chunk of a pipeline (the layout,
    /// made before the tracer, has announced its schedule) and per accumulation micro-step.
    /// Each event takes `MemoryLayout<TraceEvent>.stride` bytes.
    static func capacity(_ options: TrainingOptions, window: ClosedRange<Int>) -> Int {
        let passes = (TracedPipeline.schedule?.microBatches ?? 1) * (TracedPipeline.schedule?.virtualStages ?? 1)
        return window.count * (512 + 32 * (options.layers + 2) * options.accumulate * passes)
    }

    /// The largest event buffer a rank reserves.
    static let maximumBufferBytes = 1 << 30

    /// At the top of training step `step` (0-based).
    @inline(__always)
    func stepBegins(_ step: Int) {
        if window.contains(step) {
            let now = Trace.now()
            stepStarts[step - window.lowerBound] = now
            if !Trace.isRecording { began = now }
            Trace.isRecording = true
        } else if Trace.isRecording {
            stop()
        }
    }

    /// Ends the window (after the last step, if it was still open).
    func stop() {
        guard Trace.isRecording else { return }
        Trace.isRecording = false
        ended = Trace.now()
    }

    /// Collective over `world`: writes the file on rank 0 and returns the report there (nil
    /// elsewhere); throws on rank 0 when the file cannot be written.
    func finish(world: Communicator) throws(UsageError) -> TraceReport? {
        stop()
        Trace.calibrate()
        let end = ClockAlignment(world: world)
        let r = world.rank
        // Rank 0's window start on the common axis: time 0 of the file.
        var origin = [Trace.nanoseconds(began) + start.applied(r)]
        world.broadcast(&origin, count: 1, root: 0)
        let writer = TraceWriter(rank: r, worldSize: world.size, shift: start.applied(r) - origin[0],
                                 namesChunks: (TracedPipeline.schedule?.virtualStages ?? 1) > 1)
        // This rank's part: its events, then its metadata (so the part ends without a comma).
        let metadata = writer.metadata(host: ClockAlignment.hostName()).joined(separator: ",\n")
        var text = TraceText(capacity: 4096 + metadata.utf8.count + window.count * 128 + Trace.count * writer.bytesPerEvent)
        defer { text.deallocate() }
        for k in 0..<window.count where stepStarts[k] != 0 { writer.appendStepMarker(window.lowerBound + k, at: stepStarts[k], to: &text) }
        var events = Array(Trace.recorded)
        events.sort { ($0.start, $1.end) < ($1.start, $0.end) }
        for event in events { writer.append(event, to: &text) }
        text.append(metadata)
        let shares = TimeShares(Trace.recorded, start: began, end: ended)
        let figures = LedgerReport.allgather([shares.compute, shares.communication, Double(Trace.count), Double(Trace.dropped)], world)
        let name = Array(writer.processName.utf8)
        let names = name.withUnsafeBufferPointer { Self.gatherBytes($0, world) }?.map { String(decoding: $0, as: UTF8.self) }
        let parts = Self.gatherBytes(UnsafeBufferPointer(start: text.bytes, count: text.count), world)
        guard r == 0, let parts, let names else { return nil }
        let skews = (0..<world.size).map { Double(abs(end.offsets[$0] - start.applied($0)) + end.roundTrips[$0] / 2) / 1000 }
        let clocks = (0..<world.size).map {
            "{\"rank\":\($0),\"same_host_as_rank_0\":\(start.sharesHost[$0]),\"applied_offset_us\":\(Double(start.applied($0)) / 1000),"
                + "\"offset_estimate_start_us\":\(Double(start.offsets[$0]) / 1000),\"offset_estimate_end_us\":\(Double(end.offsets[$0]) / 1000),"
                + "\"round_trip_us\":\(Double(end.roundTrips[$0]) / 1000),\"residual_skew_us\":\(skews[$0])}"
        }
        let report = TraceReport(path: path, window: window,
                                 shares: (0..<world.size).map { TimeShares(compute: figures[4 * $0], communication: figures[4 * $0 + 1]) },
                                 names: names,
                                 events: (0..<world.size).reduce(0) { $0 + Int(figures[4 * $1 + 2]) },
                                 dropped: (0..<world.size).reduce(0) { $0 + Int(figures[4 * $1 + 3]) },
                                 residualSkewMicroseconds: skews.max() ?? 0)
        let header = "{\"traceEvents\":[\n", footer = "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{"
            + "\"clock\":\"CLOCK_MONOTONIC, aligned to rank 0 (ClockAlignment)\",\"ranks\":\(world.size),"
            + "\"residual_skew_us\":\(report.residualSkewMicroseconds),\"clocks\":[\(clocks.joined(separator: ","))],\(report.json)}}\n"
        guard let file = fopen(path, "w") else { throw UsageError("cannot write trace file '\(path)'") }
        var written = fputs(header, file) >= 0
        for (q, part) in parts.enumerated() {
            if q > 0 { written = written && fputs(",\n", file) >= 0 }
            written = written && part.withUnsafeBufferPointer { fwrite($0.baseAddress, 1, $0.count, file) } == part.count
        }
        written = written && fputs(footer, file) >= 0
        if fclose(file) != 0 || !written { throw UsageError("cannot write trace file '\(path)'") }
        return report
    }

    /// Every rank's `bytes`, in rank order, on rank 0 (nil elsewhere): lengths by allgather, then
    /// each rank's bytes (packed into Int64s) by a message to rank 0. A fixed number of
    /// allocations per rank, whatever the lengths.
    static func gatherBytes(_ bytes: UnsafeBufferPointer<UInt8>, _ world: Communicator) -> [[UInt8]]? {
        let lengths = LedgerReport.allgather([Int64(bytes.count)], world)
        func words(_ n: Int64) -> Int { max(1, (Int(n) + 7) / 8) }
        if world.rank != 0 {
            var packed = [Int64](repeating: 0, count: words(Int64(bytes.count)))
            packed.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(bytes)) }
            world.send(packed, count: packed.count, to: 0, tag: .traceEvents)
            return nil
        }
        return (0..<world.size).map { q in
            if q == 0 { return Array(bytes) }
            var packed = [Int64](repeating: 0, count: words(lengths[q]))
            world.receive(&packed, count: packed.count, from: q, tag: .traceEvents)
            return packed.withUnsafeBytes { Array($0.prefix(Int(lengths[q]))) }
        }
    }
}
