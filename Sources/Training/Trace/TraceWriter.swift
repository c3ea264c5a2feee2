import Distributed
import Tracing

/// One rank's part of the Chrome Trace Event file (`"traceEvents"`): its metadata, its step
/// markers, one complete event (`"ph":"X"`) per recorded ``TraceEvent`` and one flow event per
/// message end.
///
/// Times are microseconds (three decimals: the clock's nanoseconds) since rank 0's start of the
/// window, each rank's clock moved by its ``ClockAlignment`` offset. `pid` is the world rank,
/// `tid` 0 the compute row and 1 the communication row.
///
/// **Flows.** A message from world rank `s` to world rank `d` with tag slot `t` that is the
/// `n`-th of its (peer, tag) on both ends (``TraceMessages``) gets the id
/// `((s·W + d)·T + t)·2²⁴ + n` (`W` ranks, `T` tag slots), which both ends compute alone. The
/// sender's `"ph":"s"` sits at the start of its send; the receiver's `"ph":"f"` with `"bp":"e"`
/// one nanosecond before the end of its receive, inside it, when the message has arrived.
struct TraceWriter {
    let rank: Int
    let worldSize: Int
    /// Added to this rank's clock readings, minus rank 0's window start: ns on the common axis.
    let shift: Int64
    /// Whether names carry the pipeline chunk (interleaved schedules).
    let namesChunks: Bool

    /// `ns` as microseconds with three decimals.
    static func micros(_ ns: Int64) -> String {
        let magnitude = ns.magnitude, fraction = String(magnitude % 1000)
        return (ns < 0 ? "-" : "") + "\(magnitude / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }

    func time(_ clock: UInt64) -> String { Self.micros(Int64(bitPattern: clock) + shift) }

    /// "rank 3 (tp 1, dp 1, pp 0)": the world rank and its mesh coordinates.
    var processName: String {
        let coordinates = TraceGroups.coordinates().map { "\($0.axis) \($0.rank)" }.joined(separator: ", ")
        return "rank \(rank)" + (coordinates.isEmpty ? "" : " (\(coordinates))")
    }

    /// The metadata events naming this rank's process (with its mesh coordinates and host) and rows.
    func metadata(host: String) -> [String] {
        let name = processName
        return ["{\"name\":\"process_name\",\"ph\":\"M\",\"ts\":0,\"pid\":\(rank),\"tid\":0,\"args\":{\"name\":\"\(name)\"}}",
                "{\"name\":\"process_sort_index\",\"ph\":\"M\",\"ts\":0,\"pid\":\(rank),\"tid\":0,\"args\":{\"sort_index\":\(rank)}}",
                "{\"name\":\"process_labels\",\"ph\":\"M\",\"ts\":0,\"pid\":\(rank),\"tid\":0,\"args\":{\"labels\":\"\(host)\"}}",
                "{\"name\":\"thread_name\",\"ph\":\"M\",\"ts\":0,\"pid\":\(rank),\"tid\":0,\"args\":{\"name\":\"compute\"}}",
                "{\"name\":\"thread_name\",\"ph\":\"M\",\"ts\":0,\"pid\":\(rank),\"tid\":1,\"args\":{\"name\":\"communication\"}}"]
    }

    /// An instant event marking the start of training step `step` (0-based; named as the progress line counts).
    func stepMarker(_ step: Int, at clock: UInt64) -> String {
        "{\"name\":\"step \(step + 1)\",\"cat\":\"step\",\"ph\":\"i\",\"s\":\"p\",\"ts\":\(time(clock)),\"pid\":\(rank),\"tid\":0}"
    }

    /// The complete event of `event`, then its flow end if it is a message's end.
    func lines(_ event: TraceEvent) -> [String] {
        let start = time(event.start), duration = Self.micros(Int64(event.end &- event.start))
        let base = "\"ph\":\"X\",\"ts\":\(start),\"dur\":\(duration),\"pid\":\(rank),\"tid\":\(event.thread.rawValue)"
        guard event.thread == .communication else {
            let name = "\(event.name)"
            var label = name + (event.block >= 0 ? " L\(event.block)" : "")
            if event.microBatch >= 0 { label += " mb\(event.microBatch)" }
            if namesChunks && event.chunk >= 0 { label += " c\(event.chunk)" }
            var args = ["\"micro_batch\":\(event.microBatch)", "\"chunk\":\(event.chunk)"]
            if event.block >= 0 { args.insert("\"block\":\(event.block)", at: 0) }
            // The pipeline stage's events (capitalised) span a micro-batch's blocks; the update, the step's end.
            let level = name.first?.isUppercase == true ? "micro-batch" : name == "update" ? "step" : "block"
            args.append("\"level\":\"\(level)\"")
            return ["{\"name\":\"\(label)\",\"cat\":\"\(Self.category(name))\",\(base),\"args\":{\(args.joined(separator: ","))}}"]
        }
        let kind = event.kind >= 0 ? CommunicationKind(rawValue: Int(event.kind))?.name ?? "other" : "other"
        let group = Int(event.group), axis = TraceGroups.axis(group)
        var args = ["\"kind\":\"\(kind)\"", "\"axis\":\"\(axis)\"", "\"bytes\":\(event.bytes)"]
        if event.peer >= 0 {
            args.append("\"peer\":\(TraceGroups.worldRank(group, Int(event.peer)))")
        } else {
            let members = TraceGroups.members(group).filter { $0 != rank }
            args.append("\"peers\":[\(members.map(String.init).joined(separator: ","))]")
        }
        if event.microBatch >= 0 { args.append("\"micro_batch\":\(event.microBatch)") }
        if event.chunk >= 0 { args.append("\"chunk\":\(event.chunk)") }
        var label = "\(event.name)"
        if event.flow != .none, event.sequence >= 0 {
            args.append("\"tag\":\(event.tag)")
            args.append("\"message\":\(event.sequence)")
            label += event.flow == .send ? " → \(TraceGroups.worldRank(group, Int(event.peer)))" : " ← \(TraceGroups.worldRank(group, Int(event.peer)))"
        }
        var result = ["{\"name\":\"\(label)\",\"cat\":\"\(kind)\",\(base),\"args\":{\(args.joined(separator: ","))}}"]
        if let flow = flowLine(event) { result.append(flow) }
        return result
    }

    /// The flow event of a message's end, or nil.
    func flowLine(_ event: TraceEvent) -> String? {
        guard event.flow != .none, event.sequence >= 0 else { return nil }
        let peer = TraceGroups.worldRank(Int(event.group), Int(event.peer))
        guard peer >= 0 else { return nil }
        let (sender, receiver) = event.flow == .send ? (rank, peer) : (peer, rank)
        let slot = TraceMessages.slot(ofTag: event.tag)
        let id = ((sender * worldSize + receiver) * TraceMessages.tagSlots + slot) << 24 + Int(event.sequence)
        let common = "\"name\":\"message\",\"cat\":\"message\",\"id\":\(id),\"pid\":\(rank),\"tid\":1"
        if event.flow == .send { return "{\(common),\"ph\":\"s\",\"ts\":\(time(event.start))}" }
        let end = event.end > event.start ? event.end - 1 : event.end
        return "{\(common),\"ph\":\"f\",\"bp\":\"e\",\"ts\":\(time(end))}"
    }

    /// The colour group of a compute event: forward, backward, weight, loss or update.
    static func category(_ name: String) -> String {
        if name == "loss" || name == "update" { return name }
        if name.hasPrefix("F") || name.hasPrefix("forward") { return "forward" }
        if name.hasPrefix("W") || name.hasPrefix("weight") { return "weight" }
        return "backward"
    }
}
