import Core
import Distributed

extension LayoutDescription {
    /// `train_fsdp -np N --zero Z --replicate R`: ZeRO stage `zero` over shard groups of N/R
    /// (``check(worldSize:plan:batchSize:accumulation:)`` refuses an R that does not divide N).
    public static func fullySharded(ranks: Int, zero: Int = 3, replicate: Int = 1) -> LayoutDescription {
        let shape = LayoutShape(executable: .oneAxis, axes: [(.shard, max(1, ranks / replicate)), (.replicate, replicate)],
                                microBatches: nil)
        return LayoutDescription(FullyShardedDataParallel.Facts(zero: zero, replicate: replicate), shape: shape)
    }
}

extension FullyShardedDataParallel {
    /// `train_fsdp` for the plans (``FullyShardedDataParallel`` allocates and communicates what
    /// this states), over shard groups of S ranks and R replicas.
    ///
    /// **Memory** (Ψ' = `S·⌈Ψ/S⌉`, s = Ψ'/S): ZeRO-1 the full parameters and gradients (Ψ' each)
    /// and the reduce-scatter's output shard; ZeRO-2 the full parameters, the gradient shard, and
    /// one block's full gradient with its received part; ZeRO-3 each block's shard of parameters
    /// and gradients and two gather buffers the blocks alternate between (one when recomputing),
    /// each with its reduce-scatter output. The optimizer state is the shard's.
    ///
    /// **Bytes per optimizer step** (K micro-steps): ZeRO-3 allgathers every block twice (the
    /// last two once, kept from forward into backward, unless recomputing) and reduce-scatters it
    /// once per micro-step (`S·⌈c/S⌉` floats each); ZeRO-2 reduce-scatters every block (its `c`
    /// floats) per micro-step and allgathers Ψ' once; ZeRO-1 reduce-scatters and allgathers Ψ'
    /// once. HSDP adds one allreduce of the shard over the replicas; the loss is summed over the
    /// world. With `--recompute` the rerun forwards gather again.
    struct Facts: LayoutFacts {
        /// `--zero` (1, 2 or 3) and `--replicate` (HSDP's R).
        var zero: Int
        var replicate: Int

        static let executable = "train_fsdp"
        static let trainsExperts = false

        /// Every ZeRO stage with every replica count below N, each with and without `--recompute`.
        static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
            guard context.ranks > 1 else { return [] }
            let layouts = (1...3).flatMap { zero in
                context.divisors.filter { $0 < context.ranks }.map { LayoutDescription.fullySharded(ranks: context.ranks, zero: zero, replicate: $0) }
            }
            return CandidateContext.withRecomputation(layouts)
        }

        func command(_ layout: LayoutDescription) -> String {
            "train_fsdp -np \(layout.shape.ranks)" + (zero != 3 ? " --zero \(zero)" : "") + (replicate > 1 ? " --replicate \(replicate)" : "")
                + layout.recomputeFlag
        }

        func check(_ layout: LayoutDescription, worldSize: Int) throws(UsageError) {
            _ = try LayoutShape.fullySharded(ranks: worldSize, replicate: replicate)
        }

        func holdsWholeModel(_ layout: LayoutDescription) -> Bool { layout.shape.size(.shard) == 1 }

        func holdParameters(_ memory: inout MemoryPlan, _ blocks: [LocalBlock], _ rank: RankGeometry,
                            _ checked: inout Checked) -> Int {
            let group = rank.size(.shard), counts = blocks.map(\.count)
            let held: Int
            if zero < 3 {
                // ZeRO-1/2 (``FlatShards``): the whole model padded to S·s, s = ⌈Ψ/S⌉; the optimizer owns s.
                let psi = counts.reduce(0, +), s = (psi + group - 1) / group, padded = checked.times(s, group)
                held = s
                memory[.parameters] = checked.times(4, max(1, padded))
                if zero == 1 {  // full gradients, and the reduce-scatter's output shard
                    memory[.gradients] = checked.times(4, max(1, padded))
                    memory[.buffers] = checked.times(4, max(1, s))
                } else {  // the gradient shard; one block's full gradient and its received part
                    let largest = counts.max() ?? 0
                    memory[.gradients] = checked.times(4, max(1, s))
                    memory[.buffers] = checked.plus(checked.times(4, max(1, largest)), checked.times(4, max(1, min(s, largest))))
                }
                if group > 1 { memory.largestMessage = padded }
            } else {
                held = Self.holdBlockShards(&memory, blocks, group: group, expertGroup: 1, gatherBuffers: rank.layout.recompute ? 1 : 2,
                                            &checked)
            }
            if replicate > 1 { memory.largestMessage = max(memory.largestMessage, held) }  // HSDP's allreduce
            return held
        }

        /// ZeRO-3 of `blocks` over a group of `group` ranks (`train_fsdp --zero 3`, and `train_3d`
        /// over dp): each block's shards, part by part (``ShardedParameters/Part``: a mixture of
        /// experts' router over the group, its experts over the group's `group / expertGroup`
        /// `replicate` ranks), parameters and gradients, and `gatherBuffers` gather buffers the
        /// blocks alternate between, each with its reduce-scatter output. Returns the shards' floats.
        static func holdBlockShards(_ memory: inout MemoryPlan, _ blocks: [LocalBlock], group: Int, expertGroup: Int,
                                    gatherBuffers count: Int, _ checked: inout Checked) -> Int {
            let parts = blocks.map { block in
                block.router.map { [($0, group), (block.count - $0, group / expertGroup)] } ?? [(block.count, group)]
            }
            let shards = parts.map { $0.map { ($0.0 + $0.1 - 1) / $0.1 } }
            let held = shards.joined().reduce(0, +)
            let gathered = zip(shards, parts).map { zip($0, $1).reduce(0) { checked.plus($0, checked.times($1.0, $1.1.1)) } }
            memory[.parameters] = checked.times(4, max(1, held))
            memory[.gradients] = memory[.parameters]
            for b in 0..<count {
                let mine = blocks.indices.filter { $0 % count == b }
                let full = mine.map { gathered[$0] }.max() ?? 0, shard = mine.flatMap { shards[$0] }.max() ?? 0
                memory[.buffers] = checked.plus(memory[.buffers], checked.plus(checked.times(8, max(1, full)), checked.times(4, max(1, shard))))
            }
            for (s, part) in zip(shards.joined(), parts.joined()) where part.1 > 1 {
                memory.largestMessage = max(memory.largestMessage, checked.times(s, part.1))
            }
            return held
        }

        func communication(_ rank: RankGeometry) -> CommunicationPlan {
            var result = CommunicationPlan()
            let s = rank.size(.shard), r = rank.size(.replicate), k = rank.settings.accumulation
            let counts = rank.plan.blocks.map(\.parameterCount)
            let held: Int
            if zero < 3 {
                let psi = counts.reduce(0, +), shard = (psi + s - 1) / s
                held = shard
                if zero == 1 {
                    result.add(.reduceScatter, .shard, size: s, stride: 1, bytesPerCall: 4 * s * shard)
                } else {
                    for c in counts { result.add(.reduceScatter, .shard, size: s, stride: 1, calls: k, bytesPerCall: 4 * c) }
                }
                result.add(.allgather, .shard, size: s, stride: 1, bytesPerCall: 4 * s * shard)
            } else {
                let shards = counts.map { ($0 + s - 1) / s }
                let reruns = rank.reruns(chunk: 0)
                held = shards.reduce(0, +)
                for (i, shard) in shards.enumerated() {
                    // Without recomputation the last two blocks stay gathered from forward into backward.
                    let kept = !rank.layout.recompute && i >= shards.count - 2 ? 1 : 0
                    result.add(.allgather, .shard, size: s, stride: 1, calls: (2 + reruns[i] - kept) * k, bytesPerCall: 4 * s * shard)
                    result.add(.reduceScatter, .shard, size: s, stride: 1, calls: k, bytesPerCall: 4 * s * shard)
                }
            }
            result.add(.allreduce, .replicate, size: r, stride: s, bytesPerCall: 4 * held)
            result.add(.allreduce, nil, size: rank.layout.shape.ranks, stride: 1, bytesPerCall: 4)
            return result
        }
    }
}
