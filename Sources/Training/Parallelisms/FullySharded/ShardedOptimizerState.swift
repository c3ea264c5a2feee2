import Core
import Distributed

/// ZeRO-1 (`train_fsdp --zero 1`): DP's full parameters and full gradients on every rank; only
/// the optimizer state is sharded (``FlatShards``: rank `r` of the shard group owns the flat
/// floats `[r·s, (r+1)·s)`).
///
///     forward, backward:  the reference chain over the full parameters and gradients, no hooks;
///                         the gradients add up locally over the micro-steps
///     after the last:     reduce-scatter(full ∇, Ψ' floats) over the shard group → this rank's
///                         shard of Σ_ranks ∇ (one call)
///     update:             SGD / Adam on the shard, in place in the full parameters
///                         → allgather(shards) in place → every rank's full parameters current
///
/// **Memory per rank** (Adam, fp32, Ψ' = S·⌈Ψ/S⌉): parameters 4Ψ', gradients 4Ψ', optimizer
/// 8Ψ'/S — 8Ψ + 8Ψ/N without HSDP; plus, as `buffers`, the reduce-scatter's output 4Ψ'/S (the
/// summed gradient shard the optimizer reads). **Bytes per optimizer step:** one reduce-scatter
/// and one allgather of Ψ' floats, whatever `--accumulate`: DP's allreduce, since an allreduce
/// is a reduce-scatter followed by an allgather.
final class ShardedOptimizerState: ZeroStage {
    let flat: FlatShards
    /// The full gradient, in the flat layout of the parameters (4Ψ', filed as `gradients`).
    let gradients: FloatBuffer
    let layers: [Layer]
    var hooks: LayerChainHooks? { nil }

    init(plan: BlockPlan, group: Communicator, initialParameters: [Float]) {
        let flat = FlatShards(total: plan.parameterCount, group: group, initialParameters: initialParameters,
                              gradientCategory: .buffers)
        let gradients = FloatBuffer(count: flat.parameters.count, category: .gradients)
        layers = plan.blocks.map { block in
            block.makeLayer(parameters: ParameterView(value: flat.parameters.pointer + block.parameterOffset,
                                                      grad: gradients.pointer + block.parameterOffset, count: block.parameterCount))
        }
        self.flat = flat
        self.gradients = gradients
    }

    func makeLocal(optimizer: OptimizerConfig, reports: Bool) -> LocalParameters { flat.makeLocal(optimizer: optimizer, reports: reports) }
    func zeroGradients() { gradients.zero() }

    func reduceGradients() {
        flat.group.reduceScatterSum(gradients.pointer, into: flat.gradient.pointer, count: flat.shardCount)
    }

    func gatherParameters() { flat.gather() }
}
