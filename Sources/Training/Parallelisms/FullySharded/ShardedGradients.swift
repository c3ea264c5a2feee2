import Core
import Distributed

/// ZeRO-2 (`train_fsdp --zero 2`): full parameters on every rank (never resharded after forward),
/// gradients and optimizer state sharded (``FlatShards``: rank `r` of the shard group owns the
/// flat floats `[r·s, (r+1)·s)`).
///
///     forward:             the reference chain over the full parameters, no communication
///     willRunBackward(i):  zero the block gradient buffer
///     didRunBackward(i):   reduce-scatter block i's gradient over the shard group: each rank q
///                          gets the floats of the block that fall in its shard (uneven counts,
///                          MPI_Reduce_scatter) → add them into its gradient shard
///     update:              SGD / Adam on the shard → allgather(shards) in place
///
/// The layers' gradients all point at one **block gradient buffer**, sized for the largest block
/// and reused by every block: the only full gradient a rank ever holds, counted as `buffers`
/// with the reduce-scatter's output (at most min(s, largest block) floats).
///
/// **Across micro-steps** (`--accumulate K`) the gradient is reduce-scattered into the shard
/// after every micro-step's backward, as DeepSpeed's ZeRO-2 does: adding the micro-steps up
/// locally would need the full gradient, which is ZeRO-1's memory. So the reduce-scatters run K
/// times per optimizer step, the allgather once.
///
/// **Memory per rank** (Adam, fp32, Ψ' = S·⌈Ψ/S⌉): parameters 4Ψ', gradients 4Ψ'/S, optimizer
/// 8Ψ'/S — 4Ψ + 12Ψ/N without HSDP. **Bytes per optimizer step:** reduce-scatters of Ψ floats
/// per micro-step (each block once, unpadded) and one allgather of Ψ': with K = 1, DP's allreduce.
final class ShardedGradients: ZeroStage, LayerChainHooks {
    let flat: FlatShards
    let blockGradient: FloatBuffer
    /// The reduce-scatter's output, before it is added into the gradient shard.
    let received: FloatBuffer
    /// For block i, the floats each rank of the shard group receives: `counts[i·S + q]`.
    let counts: UnsafeMutablePointer<Int32>
    /// For block i, where this rank's part starts within its shard.
    let offsets: [Int]
    let blockSizes: [Int]
    let layers: [Layer]
    var hooks: LayerChainHooks? { self }

    init(plan: BlockPlan, group: Communicator, initialParameters: [Float]) {
        let flat = FlatShards(total: plan.parameterCount, group: group, initialParameters: initialParameters,
                              gradientCategory: .gradients)
        let s = flat.shardCount, n = group.size, mine = group.rank * s
        let largest = plan.blocks.map(\.parameterCount).max() ?? 0
        let blockGradient = FloatBuffer(count: largest, category: .buffers)
        received = FloatBuffer(count: min(s, largest), category: .buffers)
        counts = .allocate(capacity: max(1, plan.count * n))
        for block in plan.blocks {
            let range = block.parameterRange
            for q in 0..<n {
                counts[block.index * n + q] = Int32(max(0, min(range.upperBound, (q + 1) * s) - max(range.lowerBound, q * s)))
            }
        }
        offsets = plan.blocks.map { max($0.parameterOffset, mine) - mine }
        blockSizes = plan.blocks.map(\.parameterCount)
        layers = plan.blocks.map { block in
            block.makeLayer(parameters: ParameterView(value: flat.parameters.pointer + block.parameterOffset,
                                                      grad: blockGradient.pointer, count: block.parameterCount))
        }
        self.flat = flat
        self.blockGradient = blockGradient
    }

    deinit { counts.deallocate() }

    func makeLocal(optimizer: OptimizerConfig, reports: Bool) -> LocalParameters { flat.makeLocal(optimizer: optimizer, reports: reports) }
    func zeroGradients() { flat.gradient.zero() }
    func reduceGradients() {}
    func gatherParameters() { flat.gather() }

    func willRunBackward(_ block: Int) { Kernels.zero(blockGradient.pointer, count: blockSizes[block]) }

    func didRunBackward(_ block: Int) {
        let group = flat.group, row = counts + block * group.size
        group.reduceScatterSum(blockGradient.pointer, into: received.pointer, counts: row)
        let mine = Int(row[group.rank])
        if mine > 0 { Kernels.add(received.pointer, into: flat.gradient.pointer + offsets[block], count: mine) }
    }
}
