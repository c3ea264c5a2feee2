import Distributed
import Foundation
import Training

/// `plan --trace FILE`: the planner's predicted step of one layout as a Chrome trace, in the format
/// of the training executables' `--trace` (one process per rank, rows `compute` and
/// `communication`, complete events in µs, flows for a pipeline's messages), so that the measured
/// and the predicted timelines open side by side.
///
/// What is laid out is what the ``CostModel`` adds up, nothing more:
/// - every rank computes for the slowest rank's predicted compute time `C` (the prediction keeps
///   only that one), split as the model's FLOPs are: forward `C/3`, backward `2C/3`;
/// - without a pipeline, a rank's forward then backward, then each of its transfers end to end
///   (``CostModel/seconds(_:worldSize:)``; the model does not overlap them with compute);
/// - with a pipeline of `N` stages, `M` micro-batches and `V` chunks, each stage runs its
///   ``PipelineSchedule/actions`` in order, a forward of one micro-batch and chunk taking
///   `f = C/(3·M·V)` and a backward `2f` (ZB-H1: input and weight halves of `f` each), each waiting
///   for its input: the previous chunk's forward or the next chunk's backward, plus one message's
///   predicted time. The other transfers follow the stage's last action. The idle gaps are the
///   schedule's bubble as this simulation gives it.
struct PredictedTimeline {
    let entry: Planner.Entry
    let model: CostModel
    static let maximumRanks = 64

    /// One event on a rank's row.
    struct Event {
        var name: String
        var category: String
        var start: Double
        var duration: Double
        var thread: Int
        var arguments: String
    }

    /// The file's text.
    func json() throws(UsageError) -> String {
        let layout = entry.layout, ranks = layout.shape.ranks
        guard ranks <= Self.maximumRanks else {
            throw UsageError("--trace draws at most \(Self.maximumRanks) ranks (the layout has \(ranks))")
        }
        let compute = entry.prediction.computeSeconds
        let pp = layout.shape.size(.pp)
        // World-rank stride between neighbouring stages: the product of the axes before pp.
        var stride = 1
        for (axis, size) in layout.shape.axes { if axis == .pp { break } else { stride *= size } }
        let pipeline = pp > 1 ? try simulatePipeline(stages: pp, compute: compute) : nil
        var lines: [String] = []
        var flowId = 0
        for r in 0..<ranks {
            let stage = (r / stride) % pp
            var events: [Event]
            var end: Double
            if let pipeline {
                events = pipeline.events[stage]
                end = pipeline.ends[stage]
            } else {
                events = [Event(name: "forward", category: "forward", start: 0, duration: compute / 3, thread: 0, arguments: ""),
                          Event(name: "backward", category: "backward", start: compute / 3, duration: 2 * compute / 3, thread: 0,
                                arguments: "")]
                end = compute
            }
            for transfer in entry.communication[r].transfers where pipeline == nil || (transfer.kind != .send && transfer.kind != .receive) {
                let seconds = try model.seconds(transfer, worldSize: ranks)
                events.append(Event(name: "\(transfer.kind.name) ×\(transfer.calls)", category: transfer.kind.name, start: end,
                                    duration: seconds, thread: 1,
                                    arguments: "\"kind\":\"\(transfer.kind.name)\",\"axis\":\"\(transfer.axis?.name ?? "world")\","
                                        + "\"bytes\":\(transfer.bytes),\"calls\":\(transfer.calls),\"group_size\":\(transfer.groupSize)"))
                end += seconds
            }
            lines.append(contentsOf: metadata(rank: r, stage: pp > 1 ? stage : nil))
            lines.append(contentsOf: events.map { line($0, rank: r) })
            for flow in pipeline?.flows ?? [] where flow.fromStage == stage {
                let peer = r + (flow.toStage - stage) * stride
                lines.append("{\"name\":\"message\",\"cat\":\"message\",\"ph\":\"s\",\"id\":\(flowId),\"ts\":\(micros(flow.sent)),\"pid\":\(r),\"tid\":0}")
                lines.append("{\"name\":\"message\",\"cat\":\"message\",\"ph\":\"f\",\"bp\":\"e\",\"id\":\(flowId),"
                             + "\"ts\":\(micros(flow.received)),\"pid\":\(peer),\"tid\":0}")
                flowId += 1
            }
        }
        let other = "\"predicted\":true,\"layout\":\"\(layout.planCommand)\",\"step_seconds\":\(entry.prediction.seconds),"
            + "\"compute_seconds\":\(compute),\"communication_seconds\":\(entry.prediction.communicationSeconds),"
            + "\"ideal_bubble\":\(entry.prediction.bubble)"
        return "{\"traceEvents\":[\n" + lines.joined(separator: ",\n") + "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\(other)}}\n"
    }

    func micros(_ seconds: Double) -> String { String(format: "%.3f", seconds * 1e6) }

    /// The complete event; its start and end are rounded to the nanosecond first, so that an
    /// event that begins where another ends still does after rounding.
    func line(_ event: Event, rank: Int) -> String {
        let start = (event.start * 1e9).rounded(), end = ((event.start + event.duration) * 1e9).rounded()
        return "{\"name\":\"\(event.name)\",\"cat\":\"\(event.category)\",\"ph\":\"X\",\"ts\":\(micros(start / 1e9)),"
            + "\"dur\":\(micros((end - start) / 1e9)),\"pid\":\(rank),\"tid\":\(event.thread),\"args\":{\(event.arguments)}}"
    }

    func metadata(rank: Int, stage: Int?) -> [String] {
        let name = "rank \(rank) (predicted\(stage.map { ", pp \($0)" } ?? ""))"
        return ["{\"name\":\"process_name\",\"ph\":\"M\",\"ts\":0,\"pid\":\(rank),\"tid\":0,\"args\":{\"name\":\"\(name)\"}}",
                "{\"name\":\"thread_name\",\"ph\":\"M\",\"ts\":0,\"pid\":\(rank),\"tid\":0,\"args\":{\"name\":\"compute\"}}",
                "{\"name\":\"thread_name\",\"ph\":\"M\",\"ts\":0,\"pid\":\(rank),\"tid\":1,\"args\":{\"name\":\"communication\"}}"]
    }
}
