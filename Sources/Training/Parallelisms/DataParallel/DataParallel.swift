import Core
import Distributed

/// `train_dp`: data parallel. Every rank holds the whole model and the whole optimizer state.
///
/// Each step, every rank draws the same global batch and runs the reference chain on its own
/// B/N rows. The loss is scaled by 1/B (the global batch), so the full-batch gradient is the
/// **sum** of the ranks' gradients: allreduce-sum, no division anywhere. Then every rank applies
/// the same update to the same weights, and they stay equal.
///
/// The communication is a hook on the reference chain (``GradientBuckets``): as soon as backward
/// has finished the blocks of a bucket, that bucket is allreduced (PyTorch DDP's buckets).
/// The loss is summed separately, after backward: a 4-byte allreduce.
///
/// With `--accumulate K` the rank's rows run as K micro-steps and the hooks are attached for
/// the last one only: the gradients add up locally and travel once per optimizer step.
///
/// **Bytes per step and rank:** allreduces of Ψ floats in all (2·(N−1)/N·4Ψ on the wire with a
/// ring), plus the 4-byte loss, whatever K; with `--experts E`, one allgather of 2E floats per
/// mixture-of-experts block and forward (``ExpertBatchExchange``).
public final class DataParallel: TrainingLayout {
    let mesh: ProcessMesh
    /// The data-parallel group (the mesh's `dp` axis: all ranks).
    let dp: Communicator
    let model: Model
    let buckets: GradientBuckets
    public let local: LocalParameters
    let steps: MicroSteps
    let globalBatch: Int

    public init(_ context: TrainingContext, bucketBytes: Int, recompute: Bool = false) throws(UsageError) {
        mesh = try LayoutShape.dataParallel(ranks: context.world.size).makeMesh(context)
        steps = mesh.microSteps(batch: context.batchSize, accumulation: context.options.accumulate)
        let plan = context.plan
        dp = mesh[.dp]
        globalBatch = context.batchSize
        model = Model(config: context.config, batchSize: steps.rowsPerStep, lossScale: 1 / Float(globalBatch), recompute: recompute)
        model.load(context.initialParameters)
        buckets = GradientBuckets(plan: plan, gradients: model.parameters.grad, bucketBytes: bucketBytes, group: dp)
        // A mixture of experts routes, caps and balances over the global batch (DataParallelExperts.swift).
        if context.config.experts != nil {
            let exchange = DataParallelExpertExchange(group: dp, batchRows: globalBatch)
            for block in model.mixtures { block.attach(exchange) }
        }
        // Every rank holds the same full model; when gathering, rank 0's copy is the answer.
        let everything = ParameterMap.contiguous(0, plan.parameterCount)
        local = LocalParameters(map: everything, reported: dp.rank == 0 ? everything : ParameterMap(),
                                values: model.parameters.value, gradients: model.parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: plan.parameterCount))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: model.tokens.value, targets: model.targets)
            lossSum += model.forward()
            if j == 0 { model.parameters.zeroGradients() }
            model.chain.hooks = steps.isLast(j) ? buckets : nil
            model.backward()
        }
        buckets.finish()
        // The aux loss is computed from the whole batch's statistics: the same on every rank.
        return dp.sum(lossSum) / Float(globalBatch) + model.auxiliaryLoss
    }

    /// The aux loss and the load of the last step, the whole batch's (nil for a dense model).
    public var expertStatistics: ExpertStatistics? { ExpertStatistics(model) }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        let lossSum = model.forwardLoss(batch: index, steps, from: sampler)
        return dp.sum(lossSum) / Float(globalBatch)
    }
}

/// DP's communication, as hooks on the reference chain: gradient buckets allreduced as soon as
/// backward completes them.
///
/// The flat gradient buffer is in canonical (forward) order and backward fills it from the end.
/// It is cut at block boundaries into buckets of at least `bucketBytes`; when backward finishes a
/// bucket's first block (``didRunBackward(_:)``), the bucket is allreduced (PyTorch DDP's buckets).
///
/// The allreduce is the blocking `MPI_Allreduce`. A non-blocking one started there and waited after
/// backward would overlap only where the MPI library progresses it on its own (an asynchronous
/// progress thread, an offloading network card): OpenMPI over shared memory moves it only inside
/// MPI calls, and here neither polling nor a communication thread hid any of it, while OpenMPI's
/// non-blocking allreduce is slower than its blocking one (README: "Overlap" and the DP section).
public final class GradientBuckets: LayerChainHooks {
    /// A run of blocks whose gradients are allreduced together, in the order backward finishes them.
    public struct Bucket: Sendable, Equatable {
        /// Backward finishes this bucket when it finishes this block.
        public var firstBlock: Int
        /// Floats of the gradient buffer.
        public var range: Range<Int>
    }

    public let buckets: [Bucket]
    let gradients: UnsafeMutablePointer<Float>
    let group: Communicator
    var next = 0

    /// The buckets of `plan` for a bucket size of `bucketBytes`, last blocks first.
    public static func buckets(plan: BlockPlan, bucketBytes: Int) -> [Bucket] {
        var buckets: [Bucket] = []
        var end = plan.parameterCount
        for block in plan.blocks.reversed() {
            let start = block.parameterOffset
            if (end - start) * 4 >= bucketBytes || block.index == 0 {
                buckets.append(Bucket(firstBlock: block.index, range: start..<end))
                end = start
            }
        }
        return buckets
    }

    init(plan: BlockPlan, gradients: UnsafeMutablePointer<Float>, bucketBytes: Int, group: Communicator) {
        buckets = Self.buckets(plan: plan, bucketBytes: bucketBytes)
        self.gradients = gradients
        self.group = group
    }

    public func didRunBackward(_ block: Int) {
        guard next < buckets.count && buckets[next].firstBlock == block else { return }
        let range = buckets[next].range
        group.allreduceSum(gradients + range.lowerBound, count: range.count)
        next += 1
    }

    /// Checks that backward completed every bucket, and rearms for the next backward pass.
    func finish() {
        precondition(next == buckets.count, "backward did not complete every bucket")
        next = 0
    }
}
