import Distributed
import Foundation
import Tracing

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

    /// Collective over `world`; throws (on rank 0) when `path` cannot be written.
    init(path: String, window: ClosedRange<Int>, options: TrainingOptions, world: Communicator) throws(UsageError) {
        self.path = path
        self.window = window
        stepStarts = .allocate(capacity: window.count)
        stepStarts.initialize(repeating: 0, count: window.count)
        if world.rank == 0 && !FileManager.default.createFile(atPath: path, contents: Data()) {
            throw UsageError("cannot write trace file '\(path)'")
        }
        Trace.reserve(capacity: Self.capacity(options, window: window))
        TraceMessages.prepare(worldSize: world.size)
        start = ClockAlignment(world: world)
    }

    deinit { stepStarts.deallocate() }

    /// Events reserved for the window: per step, a fixed 2,048 plus 32 per block (its passes,
    /// their hooks' collectives, a pipeline's messages) for each row of the batch, which bounds
    /// the micro-batches a step can be cut into, for each accumulation micro-step. The
    /// buffer holds ~80 bytes per event.
    static func capacity(_ options: TrainingOptions, window: ClosedRange<Int>) -> Int {
        let blocks = options.layers + 2
        return window.count * (2048 + 32 * blocks * options.accumulate * min(options.batchSize, 256))
    }

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
        let end = ClockAlignment(world: world)
        let r = world.rank
        // Rank 0's window start on the common axis: time 0 of the file.
        var origin = [Int64(bitPattern: began) + start.applied(r)]
        world.broadcast(&origin, count: 1, root: 0)
        let writer = TraceWriter(rank: r, worldSize: world.size, shift: start.applied(r) - origin[0],
                                 namesChunks: (TracedPipeline.schedule?.virtualStages ?? 1) > 1)
        var lines = writer.metadata(host: ClockAlignment.hostName())
        for k in 0..<window.count where stepStarts[k] != 0 { lines.append(writer.stepMarker(window.lowerBound + k, at: stepStarts[k])) }
        for event in Trace.recorded.sorted(by: { ($0.start, $1.end) < ($1.start, $0.end) }) { lines += writer.lines(event) }
        let shares = TimeShares(Trace.recorded, start: began, end: ended)
        let figures = LedgerReport.allgather([shares.compute, shares.communication, Double(Trace.count), Double(Trace.dropped)], world)
        let names = Self.gatherText(writer.processName, world)
        let parts = Self.gatherText(lines.joined(separator: ",\n"), world)
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
        let text = "{\"traceEvents\":[\n" + parts.joined(separator: ",\n") + "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{"
            + "\"clock\":\"CLOCK_MONOTONIC, aligned to rank 0 (ClockAlignment)\",\"ranks\":\(world.size),"
            + "\"residual_skew_us\":\(report.residualSkewMicroseconds),\"clocks\":[\(clocks.joined(separator: ","))],\(report.json)}}\n"
        do { try text.write(toFile: path, atomically: false, encoding: .utf8) } catch {
            throw UsageError("cannot write trace file '\(path)': \(error.localizedDescription)")
        }
        return report
    }

    /// Every rank's `text`, in rank order, on rank 0 (nil elsewhere): lengths by allgather, then
    /// each rank's bytes (packed into Int64s) by a message to rank 0.
    static func gatherText(_ text: String, _ world: Communicator) -> [String]? {
        let bytes = Array(text.utf8)
        let lengths = LedgerReport.allgather([Int64(bytes.count)], world)
        func words(_ n: Int64) -> Int { (Int(n) + 7) / 8 }
        if world.rank != 0 {
            var packed = [Int64](repeating: 0, count: max(1, words(Int64(bytes.count))))
            packed.withUnsafeMutableBytes { out in bytes.withUnsafeBytes { out.copyMemory(from: $0) } }
            world.send(packed, count: packed.count, to: 0, tag: .traceEvents)
            return nil
        }
        return (0..<world.size).map { q in
            if q == 0 { return text }
            var packed = [Int64](repeating: 0, count: max(1, words(lengths[q])))
            world.receive(&packed, count: packed.count, from: q, tag: .traceEvents)
            return packed.withUnsafeBytes { String(decoding: $0.prefix(Int(lengths[q])), as: UTF8.self) }
        }
    }
}
