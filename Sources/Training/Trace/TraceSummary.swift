import Core
import Tracing

/// The schedule of the pipeline stage this process runs (set when the stage is made), so that a
/// traced run can print its theoretical bubble beside the measured one; nil without a pipeline.
enum TracedPipeline {
    nonisolated(unsafe) static var schedule: PipelineSchedule?
}

/// Where one rank's time went over the traced window: computing, communicating, or neither.
///
/// Over the window `[start, end)` of length `T`, let `C` be the union of the compute events'
/// intervals and `M` the union of the communication events' (each MPI call, waits included).
/// Then `communication = |M| / T`, `compute = |C \ M| / T` (a tensor-parallel block that
/// communicates inside its forward counts as communicating for that part), and
/// `idle = 1 − compute − communication`: time in neither, e.g. the training loop's own
/// bookkeeping between events. A pipeline stage waiting for its neighbour is inside a receive,
/// so its bubble shows as communication, not idle: the figure to hold against the schedule's
/// ideal bubble is ``notComputing``, `1 − compute`.
struct TimeShares: Equatable {
    var compute: Double
    var communication: Double
    var idle: Double { max(0, 1 - compute - communication) }
    var notComputing: Double { 1 - compute }

    /// The shares of `events` over `[start, end)` (clock ns).
    init(_ events: UnsafeBufferPointer<TraceEvent>, start: UInt64, end: UInt64) {
        let window = Double(end &- start)
        guard window > 0 else { compute = 0; communication = 0; return }
        // Reserved to size: the same few allocations whatever the number of events.
        func clipped(_ thread: TraceThread?) -> [(UInt64, UInt64)] {
            var intervals: [(UInt64, UInt64)] = []
            intervals.reserveCapacity(events.count)
            for event in events where thread == nil || event.thread == thread {
                let a = max(event.start, start), b = min(event.end, end)
                if a < b { intervals.append((a, b)) }
            }
            return intervals
        }
        let communicating = Self.unionLength(clipped(.communication))
        let busy = Self.unionLength(clipped(nil))
        communication = Double(communicating) / window
        compute = Double(busy - communicating) / window
    }

    init(compute: Double, communication: Double) {
        self.compute = compute
        self.communication = communication
    }

    /// The length of the union of the intervals `[a, b)`.
    static func unionLength(_ intervals: [(UInt64, UInt64)]) -> UInt64 {
        var total: UInt64 = 0, reach: UInt64 = 0
        var intervals = intervals
        intervals.sort { $0.0 < $1.0 }
        for (a, b) in intervals where b > reach {
            total += b - max(a, reach)
            reach = b
        }
        return total
    }
}

/// The lines rank 0 prints after a traced run and the `"trace"` object of the final metrics record.
struct TraceReport {
    let path: String
    let window: ClosedRange<Int>
    /// Per world rank, with the process's mesh coordinates.
    let shares: [TimeShares]
    let names: [String]
    let events: Int
    let dropped: Int
    let residualSkewMicroseconds: Double

    var lines: [String] {
        var lines = ["trace: steps \(window.lowerBound + 1)-\(window.upperBound + 1) of every rank written to \(path) "
                     + "(\(events) events\(dropped > 0 ? ", \(dropped) DROPPED: buffer full" : ""); "
                     + "clock skew after alignment ≤ \(format(Float(residualSkewMicroseconds), 1)) µs)"]
        for (name, share) in zip(names, shares) {
            lines.append("  \(name): compute \(percent(share.compute))  communication \(percent(share.communication))  "
                         + "idle \(percent(share.idle))")
        }
        if let schedule = TracedPipeline.schedule {
            let chunks = schedule.virtualStages > 1 ? ", \(schedule.virtualStages) chunks per stage" : ""
            lines.append("  pipeline \(schedule.kind.rawValue), \(schedule.stages) stages\(chunks), \(schedule.microBatches) micro-batches: "
                         + "ideal bubble \(schedule.idealBubbleFormula) = \(percent(schedule.idealBubble)); measured not computing "
                         + shares.map { percent($0.notComputing) }.joined(separator: " / ") + " by rank")
        }
        return lines
    }

    func percent(_ x: Double) -> String { format(Float(100 * x), 1) + "%" }

    /// `"trace":{…}` for the final metrics record.
    var json: String {
        let perRank = shares.map {
            "{\"compute\":\($0.compute),\"communication\":\($0.communication),\"idle\":\($0.idle),\"not_computing\":\($0.notComputing)}"
        }
        var json = "\"trace\":{\"file\":\"\(path)\",\"steps\":[\(window.lowerBound + 1),\(window.upperBound + 1)],\"events\":\(events),"
            + "\"dropped\":\(dropped),\"residual_skew_us\":\(residualSkewMicroseconds),\"per_rank\":[\(perRank.joined(separator: ","))]"
        if let schedule = TracedPipeline.schedule {
            json += ",\"pipeline\":{\"schedule\":\"\(schedule.kind.rawValue)\",\"stages\":\(schedule.stages),"
                + "\"micro_batches\":\(schedule.microBatches),\"virtual_stages\":\(schedule.virtualStages),"
                + "\"ideal_bubble\":\(schedule.idealBubble),\"ideal_bubble_formula\":\"\(schedule.idealBubbleFormula)\","
                + "\"measured_not_computing\":[\(shares.map { "\($0.notComputing)" }.joined(separator: ","))]}"
        }
        return json + "}"
    }
}
