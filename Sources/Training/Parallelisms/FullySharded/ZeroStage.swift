import Core
import Distributed

/// What one ZeRO stage adds to the reference chain in `train_fsdp --zero 1|2|3`
/// (``FullyShardedDataParallel``): where the full parameters live, the hooks around the blocks,
/// and the collectives before and after the optimizer. Every stage shards the optimizer state
/// over the shard group of S ranks; they differ in what else is sharded (Adam, fp32, Ψ
/// parameters; padding aside):
///
///     stage  type                       parameters  gradients  optimizer  memory per rank  moves per optimizer step
///     1      ShardedOptimizerState      4Ψ full     4Ψ full    8Ψ/S       8Ψ + 8Ψ/S        RS Ψ + AG Ψ, once (= DP's allreduce)
///     2      ShardedGradients           4Ψ full     4Ψ/S       8Ψ/S       4Ψ + 12Ψ/S       RS Ψ per micro-step + AG Ψ once
///     3      ShardedParameters          4Ψ/S        4Ψ/S       8Ψ/S       16Ψ/S            AG 2Ψ + RS Ψ per micro-step (1.5× DP)
///
/// (RS: reduce-scatter, AG: allgather; DP holds 16Ψ and allreduces Ψ.) Each stage also holds
/// communication buffers, counted as `buffers` in the memory ledger: see each type.
protocol ZeroStage: AnyObject {
    /// The reference layers in chain order, over the full parameters wherever this stage keeps them.
    var layers: [Layer] { get }
    /// What runs around each block of the chain (nil: nothing).
    var hooks: LayerChainHooks? { get }
    /// This rank's part: the floats its optimizer owns (parameters, summed gradient, moments),
    /// plus the full copy of the parameters when the stage keeps one. A rank that `reports`
    /// nothing holds only what others hold too (an HSDP replica other than the first).
    func makeLocal(optimizer: OptimizerConfig, reports: Bool) -> LocalParameters
    /// Zeroes the gradients that add up over the micro-steps of one optimizer step.
    func zeroGradients()
    /// After the last micro-step's backward: leaves this rank's shard of the gradient, summed
    /// over the shard group, in `local.gradients`.
    func reduceGradients()
    /// After the optimizer updated this rank's shard: makes the full parameters current again.
    func gatherParameters()
}

/// ZeRO-3: ``ShardedParameters`` (shared with `train_3d`) as a stage; its hooks do all of its
/// communication, during forward and backward.
extension ShardedParameters: ZeroStage {
    var hooks: LayerChainHooks? { self }

    func makeLocal(optimizer: OptimizerConfig, reports: Bool) -> LocalParameters {
        LocalParameters(map: map, reported: reports ? map : ParameterMap(), values: shards.value, gradients: shards.grad,
                        optimizer: Optimizer(config: optimizer, count: shards.count))
    }

    func zeroGradients() { shards.zeroGradients() }
    func reduceGradients() {}
    func gatherParameters() {}
}

/// ZeRO-1/2's parameters: the whole model on every rank, in one flat buffer in canonical order
/// padded to Ψ' = S·s floats (s = ⌈Ψ/S⌉), cut into S contiguous shards. This rank's optimizer owns
/// shard `r` (its rank in the shard group), floats `[r·s, (r+1)·s)`: their parameters in place in
/// the flat buffer, their summed gradient in ``gradient``, and Adam's moments. After the update,
/// one in-place allgather of the shards over the shard group (4Ψ' bytes of payload) makes every
/// rank's full copy current again, bit-identical on all of them.
final class FlatShards {
    let group: Communicator
    /// The full parameters, filed as `parameters`: 4Ψ' bytes.
    let parameters: FloatBuffer
    /// The gradient of this rank's shard, summed over the shard group: what the optimizer reads.
    let gradient: FloatBuffer
    /// s, the floats of one shard.
    let shardCount: Int
    /// Ψ, the model's floats (the rest of the flat buffer is padding).
    let total: Int

    /// - Parameter gradientCategory: where the memory ledger files the gradient shard (ZeRO-1:
    ///   `buffers`, the reduce-scatter's output beside the full gradient; ZeRO-2: `gradients`,
    ///   the only gradient the rank keeps).
    init(total: Int, group: Communicator, initialParameters: [Float], gradientCategory: MemoryCategory) {
        self.group = group
        self.total = total
        shardCount = (total + group.size - 1) / group.size
        parameters = FloatBuffer(count: shardCount * group.size, category: .parameters)
        gradient = FloatBuffer(count: shardCount, category: gradientCategory)
        ParameterMap.contiguous(0, total).extract(from: initialParameters, into: parameters.pointer)
    }

    /// This rank's shard of the parameters, inside the flat buffer.
    var shard: UnsafeMutablePointer<Float> { parameters.pointer + group.rank * shardCount }

    /// The allgather after the update.
    func gather() { group.allgather(shard, count: shardCount, into: parameters.pointer) }

    func makeLocal(optimizer: OptimizerConfig, reports: Bool) -> LocalParameters {
        let start = group.rank * shardCount
        let mine = ParameterMap.contiguous(0, total).slice(start ..< start + shardCount)
        var local = LocalParameters(map: mine, reported: reports ? mine : ParameterMap(), values: shard,
                                    gradients: gradient.pointer, optimizer: Optimizer(config: optimizer, count: shardCount))
        local.fullCopy = (ParameterMap.contiguous(0, total).slice(0 ..< parameters.count), parameters.pointer)
        return local
    }
}
