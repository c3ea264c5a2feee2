import Core

extension MemoryPlan {
    /// The parameters and gradients of one rank (and ZeRO's and FSDP's buffers, and their largest
    /// message): one flat buffer of its local blocks; under ZeRO-1/2 the whole model padded and
    /// this rank's shard; under ZeRO-3 (`train_fsdp`, `train_3d`) each block's shards, part by
    /// part (``ShardedParameters/Part``: a mixture of experts' router over the group, its experts
    /// over the group's D/E' `replicate` ranks), and the gather buffers. Returns the floats this
    /// rank's optimizer updates.
    static func heldParameters(_ memory: inout MemoryPlan, _ local: [LocalBlock], _ layout: LayoutDescription,
                               group: Int, expertGroup: Int, _ checked: inout Checked) -> Int {
        let counts = local.map(\.count)
        let held: Int
        if layout.kind == .fullySharded && layout.zero < 3 {
            // ZeRO-1/2 (``FlatShards``): the whole model padded to S·s, s = ⌈Ψ/S⌉; the optimizer owns s.
            let psi = counts.reduce(0, +), s = (psi + group - 1) / group, padded = checked.times(s, group)
            held = s
            memory[.parameters] = checked.times(4, max(1, padded))
            if layout.zero == 1 {  // full gradients, and the reduce-scatter's output shard
                memory[.gradients] = checked.times(4, max(1, padded))
                memory[.buffers] = checked.times(4, max(1, s))
            } else {  // the gradient shard; one block's full gradient and its received part
                let largest = counts.max() ?? 0
                memory[.gradients] = checked.times(4, max(1, s))
                memory[.buffers] = checked.plus(checked.times(4, max(1, largest)), checked.times(4, max(1, min(s, largest))))
            }
            if group > 1 { memory.largestMessage = padded }
        } else if layout.kind == .fullySharded || layout.kind == .threeDimensional {
            // Each block's parts (``ShardedParameters/Part``): a mixture of experts' router over the
            // group, its experts over the group's `replicate` ranks (D/E'); one part otherwise.
            let parts = local.map { block in
                block.router.map { [($0, group), (block.count - $0, group / expertGroup)] } ?? [(block.count, group)]
            }
            let shards = parts.map { $0.map { ($0.0 + $0.1 - 1) / $0.1 } }
            held = shards.joined().reduce(0, +)
            let gathered = zip(shards, parts).map { zip($0, $1).reduce(0) { checked.plus($0, checked.times($1.0, $1.1.1)) } }
            memory[.parameters] = checked.times(4, max(1, held))
            memory[.gradients] = memory[.parameters]
            // The gather buffers: one, or under train_fsdp without recomputation two that the
            // blocks alternate between (``ShardedParameters``), each with its reduce-scatter output.
            let count = layout.kind == .fullySharded && !layout.recompute ? 2 : 1
            for b in 0..<count {
                let mine = local.indices.filter { $0 % count == b }
                let full = mine.map { gathered[$0] }.max() ?? 0, shard = mine.flatMap { shards[$0] }.max() ?? 0
                memory[.buffers] = checked.plus(memory[.buffers], checked.plus(checked.times(8, max(1, full)), checked.times(4, max(1, shard))))
            }
            for (s, part) in zip(shards.joined(), parts.joined()) where part.1 > 1 {
                memory.largestMessage = max(memory.largestMessage, checked.times(s, part.1))
            }
        } else {
            held = counts.reduce(0, +)
            memory[.parameters] = checked.times(4, max(1, held))
            memory[.gradients] = memory[.parameters]
        }
        return held
    }
}
