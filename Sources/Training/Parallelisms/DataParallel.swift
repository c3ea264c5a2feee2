import Core
import Distributed

/// `train_dp`: data parallel. Every rank holds the whole model and the whole optimizer state.
///
/// Each step, every rank draws the same global batch and runs the reference forward and backward
/// on its own B/N rows. The loss is scaled by 1/B (the global batch), so the full-batch gradient
/// is the **sum** of the ranks' gradients: one allreduce-sum over one flat buffer, and no division
/// anywhere. Then every rank applies the same update to the same weights, and they stay equal.
///
/// **Buckets.** The flat gradient buffer is in canonical (forward) order, and backward fills it
/// from the end. It is cut at block boundaries into buckets of at least `bucketBytes`; as soon as
/// backward has finished the blocks of a bucket, a non-blocking allreduce of that bucket starts,
/// while backward carries on with the earlier blocks (PyTorch DDP's overlap). The batch's loss sum
/// rides in one spare float at the end of the buffer, in the first bucket, so a step with one
/// bucket (the default model: 18,635 floats = 74.5 KB) costs exactly one collective. With a
/// single bucket there is nothing left to overlap, so that collective is the blocking
/// `MPI_Allreduce`: OpenMPI's tuned blocking algorithm beats its non-blocking (libnbc) one here,
/// 26 against 32 µs per DP-2 step (median of 5, slope 5,000 → 25,000 steps, names data).
///
/// **Bytes per step and rank:** an allreduce of (Ψ + 1) floats: 2·(N−1)/N·4·(Ψ+1) bytes with
/// MPI's ring algorithm (≈ 74.5 KB each way at N = 2 for the default model).
public final class DataParallel: TrainingLayout {
    let world: Communicator
    let group: Communicator
    let model: Model
    public let local: LocalParameters
    let rows: Range<Int>
    let globalBatch: Int

    /// A run of blocks whose gradients are allreduced together, in the order backward finishes them.
    struct Bucket {
        /// Backward finishes this bucket when it finishes this block.
        var firstBlock: Int
        /// Floats of the gradient buffer (the first bucket includes the loss slot at Ψ).
        var range: Range<Int>
    }
    let buckets: [Bucket]
    var requests: [Request]

    public init(_ context: TrainingContext, group: Communicator, bucketBytes: Int) throws(UsageError) {
        let batch = context.batchSize
        rows = try dataParallelRows(batch: batch, group: group)
        world = context.world
        self.group = group
        globalBatch = batch
        model = Model(config: context.config, batchSize: rows.count, lossScale: 1 / Float(batch), spareGradients: 1)
        model.load(context.initialParameters)
        // Every rank holds the same full model; when gathering, rank 0's copy is the answer.
        let everything = ParameterMap.contiguous(0, model.parameters.count)
        local = LocalParameters(map: everything, reported: group.rank == 0 ? everything : ParameterMap(),
                                values: model.parameters.value, gradients: model.parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: model.parameters.count))

        let config = context.config
        var buckets: [Bucket] = []
        var end = config.parameterCount + 1
        for block in stride(from: config.blockCount - 1, through: 0, by: -1) {
            let start = config.parameterOffset(block: block)
            if (end - start) * 4 >= bucketBytes || block == 0 {
                buckets.append(Bucket(firstBlock: block, range: start..<end))
                end = start
            }
        }
        self.buckets = buckets
        requests = Array(repeating: Request(), count: buckets.count)
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: rows, tokens: model.tokens.value, targets: model.targets)
        let lossSum = model.forward()

        let grad = model.parameters.grad
        model.parameters.zeroGradients()
        grad[model.parameters.count] = lossSum
        model.loss.backward(model.logits, model.targets)
        var next = 0
        for i in stride(from: model.layers.count - 1, through: 0, by: -1) {
            model.layers[i].backward(model.activations[i], model.activations[i + 1])
            if next < buckets.count && buckets[next].firstBlock == i {
                let range = buckets[next].range
                if buckets.count == 1 {
                    group.allreduceSum(grad + range.lowerBound, count: range.count)
                } else {
                    requests[next] = group.startAllreduceSum(grad + range.lowerBound, count: range.count)
                }
                next += 1
            }
        }
        for i in requests.indices { requests[i].wait() }
        return grad[model.parameters.count] / Float(globalBatch)
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: rows, tokens: model.tokens.value, targets: model.targets)
        return group.sum(model.forward()) / Float(globalBatch)
    }
}
