import Tracing

/// Numbers the point-to-point messages for `--trace`, so that both ends of a message can name the
/// same flow arrow without exchanging anything.
///
/// MPI delivers the messages of one (communicator, source, tag) in the order they were sent
/// (messages do not overtake), and every receive in this suite names its source and tag. So the
/// `n`-th message a rank sends to peer `q` with tag `t` on a communicator is the `n`-th one `q`
/// receives from it with that tag: counting sends per (communicator, peer, tag) on the sender and
/// receives per (communicator, source, tag) on the receiver gives both ends the same `n`. With the
/// two world ranks and the tag, that is the flow's id (`TraceWriter`). Counting happens only while
/// the trace records; every message of a training step is received within the same step, and
/// the window is a whole number of steps on every rank, so both ends count the same messages.
public enum TraceMessages {
    nonisolated(unsafe) static var counters: UnsafeMutablePointer<Int32>?
    nonisolated(unsafe) static var ranks = 0

    /// Allocates the counters (zero) for groups of at most `worldSize` ranks.
    public static func prepare(worldSize: Int) {
        counters?.deallocate()
        let count = CommunicatorRegistry.capacity * worldSize * MessageTag.traceSlots * 2
        counters = .allocate(capacity: count)
        counters!.initialize(repeating: 0, count: count)
        ranks = worldSize
    }

    /// The number of this message among those to or from `peer` of communicator `group` with
    /// `tag` in the direction `flow`, counting from 0.
    @inline(__always)
    static func next(group: Int, peer: Int, tag: MessageTag, flow: TraceFlow) -> Int32 {
        guard let counters, group < CommunicatorRegistry.capacity, peer >= 0, peer < ranks else { return -1 }
        let slot = ((group * ranks + peer) * MessageTag.traceSlots + tag.traceSlot) * 2 + (flow == .send ? 0 : 1)
        defer { counters[slot] += 1 }
        return counters[slot]
    }

    /// The index of `tag` among the tags that are numbered (what a flow id is built from).
    public static func slot(ofTag tag: Int32) -> Int { MessageTag(rawValue: tag)?.traceSlot ?? 0 }
    public static var tagSlots: Int { MessageTag.traceSlots }
}

/// What the trace writer needs to know about the communicators events refer to by index.
public enum TraceGroups {
    /// The mesh axis of communicator `group` ("world", "tp", "dp", "pp", …).
    public static func axis(_ group: Int) -> String { CommunicatorRegistry.entry(group).axis }

    /// The world rank of rank `rank` of communicator `group` (−1 when unknown).
    public static func worldRank(_ group: Int, _ rank: Int) -> Int {
        let members = CommunicatorRegistry.entry(group).worldRanks
        return rank >= 0 && rank < members.count ? members[rank] : -1
    }

    /// This process's coordinate on each mesh axis it belongs to (every communicator but the
    /// world's, first registration of each axis name), in the order the axes were made.
    public static func coordinates() -> [(axis: String, rank: Int)] {
        var seen: Set<String> = ["world", "unknown"]
        var result: [(String, Int)] = []
        for i in 0..<CommunicatorRegistry.count {
            let entry = CommunicatorRegistry.entries[i]
            if seen.insert(entry.axis).inserted { result.append((entry.axis, entry.groupRank)) }
        }
        return result
    }
}

extension TraceGroups {
    /// The world ranks of communicator `group`'s members, in group order.
    public static func members(_ group: Int) -> [Int] { CommunicatorRegistry.entry(group).worldRanks }
}
