import Distributed
import Tracing

/// One rank's part of the Chrome Trace Event file (`"traceEvents"`): its metadata, its step
/// markers, one complete event (`"ph":"X"`) per recorded ``TraceEvent`` and one flow event per
/// message end.
///
/// Times are microseconds (three decimals: nanoseconds) since rank 0's start of the window: each
/// reading converted to `CLOCK_MONOTONIC` (``Trace/nanoseconds(_:)``) and moved by the rank's
/// ``ClockAlignment`` offset. `pid` is the world rank,
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

    /// Bytes reserved per event: its complete event and flow event with every argument (a
    /// collective lists its group's other ranks).
    var bytesPerEvent: Int { 640 + 12 * worldSize }

    /// A clock reading (``Trace/now()``'s ticks) on the common axis.
    func appendTime(_ clock: UInt64, to text: inout TraceText) { text.appendMicroseconds(Trace.nanoseconds(clock) &+ shift) }

    /// `,"pid":R,"tid":T`
    func appendThread(_ thread: TraceThread, to text: inout TraceText) {
        text.append(",\"pid\":")
        text.append(rank)
        text.append(",\"tid\":")
        text.append(Int(thread.rawValue))
    }

    /// An instant event marking the start of training step `step` (0-based; named as the progress
    /// line counts), then a comma.
    func appendStepMarker(_ step: Int, at clock: UInt64, to text: inout TraceText) {
        text.append("{\"name\":\"step ")
        text.append(step + 1)
        text.append("\",\"cat\":\"step\",\"ph\":\"i\",\"s\":\"p\",\"ts\":")
        appendTime(clock, to: &text)
        appendThread(.compute, to: &text)
        text.append("},\n")
    }

    /// The complete event of `event`, then its flow event if it is a message's end, each followed
    /// by a comma.
    func append(_ event: TraceEvent, to text: inout TraceText) {
        guard text.fits(bytesPerEvent) else { return }
        text.append("{\"name\":\"")
        text.append(event.name)
        if event.thread == .compute {
            if event.block >= 0 {
                text.append(" L")
                text.append(Int(event.block))
            }
            if event.microBatch >= 0 {
                text.append(" mb")
                text.append(Int(event.microBatch))
            }
            if namesChunks && event.chunk >= 0 {
                text.append(" c")
                text.append(Int(event.chunk))
            }
            text.append("\",\"cat\":\"")
            text.append(Self.category(event.name))
        } else {
            let peer = event.peer >= 0 ? TraceGroups.worldRank(Int(event.group), Int(event.peer)) : -1
            if event.flow != .none {
                text.append(event.flow == .send ? " → " : " ← ")
                text.append(peer)
            }
            text.append("\",\"cat\":\"")
            text.append(kindName(event))
        }
        text.append("\",\"ph\":\"X\",\"ts\":")
        appendTime(event.start, to: &text)
        text.append(",\"dur\":")
        text.appendMicroseconds(Trace.nanoseconds(event.end) - Trace.nanoseconds(event.start))
        appendThread(event.thread, to: &text)
        text.append(",\"args\":{")
        if event.thread == .compute { appendComputeArguments(event, to: &text) } else { appendCommunicationArguments(event, to: &text) }
        text.append("}},\n")
        appendFlow(event, to: &text)
    }

    /// `"block":B,"micro_batch":M,"chunk":C,"level":…`: the pipeline stage's events (capitalised
    /// names) span a micro-batch's blocks; the update is the step's.
    func appendComputeArguments(_ event: TraceEvent, to text: inout TraceText) {
        if event.block >= 0 {
            text.append("\"block\":")
            text.append(Int(event.block))
            text.append(",")
        }
        text.append("\"micro_batch\":")
        text.append(Int(event.microBatch))
        text.append(",\"chunk\":")
        text.append(Int(event.chunk))
        text.append(",\"level\":\"")
        let first = event.name.utf8Start.pointee
        text.append(first >= UInt8(ascii: "A") && first <= UInt8(ascii: "Z") ? "micro-batch" : first == UInt8(ascii: "u") ? "step" : "block")
        text.append("\"")
    }

    /// `"kind","axis","bytes"`, then `"peer"` (world rank), `"tag"` and `"message"` for a message,
    /// `"peers"` (the group's other world ranks) for a collective, and the micro-batch and chunk.
    func appendCommunicationArguments(_ event: TraceEvent, to text: inout TraceText) {
        let group = Int(event.group)
        text.append("\"kind\":\"")
        text.append(kindName(event))
        text.append("\",\"axis\":\"")
        text.append(TraceGroups.axis(group))
        text.append("\",\"bytes\":")
        text.append(event.bytes)
        if event.peer >= 0 {
            text.append(",\"peer\":")
            text.append(TraceGroups.worldRank(group, Int(event.peer)))
        } else {
            text.append(",\"peers\":[")
            var first = true
            for member in TraceGroups.members(group) where member != rank {
                if !first { text.append(",") }
                text.append(member)
                first = false
            }
            text.append("]")
        }
        if event.flow != .none && event.sequence >= 0 {
            text.append(",\"tag\":")
            text.append(Int(event.tag))
            text.append(",\"message\":")
            text.append(Int(event.sequence))
        }
        text.append(",\"micro_batch\":")
        text.append(Int(event.microBatch))
        text.append(",\"chunk\":")
        text.append(Int(event.chunk))
    }

    /// The ledger's name of the event's kind ("other" for uncounted calls: barriers, ring exchanges).
    func kindName(_ event: TraceEvent) -> String {
        event.kind >= 0 ? CommunicationKind(rawValue: Int(event.kind))?.name ?? "other" : "other"
    }

    /// The flow event of a message's end (and a comma), or nothing.
    func appendFlow(_ event: TraceEvent, to text: inout TraceText) {
        guard event.flow != .none, event.sequence >= 0 else { return }
        let peer = TraceGroups.worldRank(Int(event.group), Int(event.peer))
        guard peer >= 0 else { return }
        let (sender, receiver) = event.flow == .send ? (rank, peer) : (peer, rank)
        let slot = TraceMessages.slot(ofTag: event.tag)
        text.append("{\"name\":\"message\",\"cat\":\"message\",\"id\":")
        text.append(((sender * worldSize + receiver) * TraceMessages.tagSlots + slot) << 24 + Int(event.sequence))
        appendThread(.communication, to: &text)
        if event.flow == .send {
            text.append(",\"ph\":\"s\",\"ts\":")
            appendTime(event.start, to: &text)
        } else {
            text.append(",\"ph\":\"f\",\"bp\":\"e\",\"ts\":")
            let start = Trace.nanoseconds(event.start), end = Trace.nanoseconds(event.end)
            text.appendMicroseconds((end > start ? end - 1 : end) &+ shift)
        }
        text.append("},\n")
    }

    /// The colour group of a compute event: forward, backward, weight, loss or update.
    static func category(_ name: StaticString) -> StaticString {
        let first = name.utf8Start.pointee
        switch first {
        case UInt8(ascii: "F"), UInt8(ascii: "f"): return "forward"
        case UInt8(ascii: "W"), UInt8(ascii: "w"): return "weight"
        case UInt8(ascii: "u"): return "update"
        case UInt8(ascii: "l") where name.utf8CodeUnitCount == 4: return "loss"
        default: return "backward"
        }
    }
}
