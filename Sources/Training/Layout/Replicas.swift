import Core
import Distributed

extension LocalParameters {
    /// Checks that every canonical float held by more than one rank (DP's and ZeRO-1/2's full
    /// copies, HSDP's replicated shards, TP's replicated embedding, head and row-parallel biases)
    /// has the same bits on all of them — the invariant that replicated parameters receive
    /// identical gradients and updates (Megatron checks the same with weight hashes across
    /// data-parallel replicas). Collective over `world`: every rank sends its whole map and
    /// values to rank 0 (not a hot path: once, after training).
    ///
    /// - Returns: on rank 0, a line saying how many floats are replicated and that they agree;
    ///   nil elsewhere.
    /// - Throws: on rank 0, naming the first float that differs between two ranks.
    public func checkReplicas(_ world: Communicator, total: Int) throws(UsageError) -> String? {
        // ZeRO-1/2 hold the whole model: its full copies are the replicas to compare.
        guard let parts = gatherParts(world: world, map: fullCopy?.map ?? map, values: fullCopy?.values ?? values) else { return nil }
        var first = [Float](repeating: 0, count: total)
        var holder = [Int](repeating: -1, count: total)
        var replicated = 0
        for (rank, part) in parts.enumerated() {
            var offset = 0
            for run in part.map.runs {
                defer { offset += run.count }
                guard let start = run.start else { continue }
                for i in 0..<run.count {
                    let value = part.values[offset + i], c = start + i
                    if holder[c] < 0 {
                        holder[c] = rank
                        first[c] = value
                    } else {
                        if holder[c] == rank { continue }
                        if value.bitPattern != first[c].bitPattern {
                            throw UsageError("replicas differ: canonical parameter \(c) is \(first[c]) on rank \(holder[c]) but \(value) on rank \(rank)")
                        }
                        replicated += 1
                    }
                }
            }
        }
        let held = holder.filter { $0 >= 0 }.count
        if held != total { throw UsageError("replica check: only \(held) of \(total) parameters are held by any rank") }
        return "replicas: \(replicated) extra copies of parameters across \(world.size) rank(s), all bit-identical"
    }
}
