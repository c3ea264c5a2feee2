import Core
import Distributed

/// `train_tp`: Megatron tensor parallelism over all `N` ranks of the world.
///
/// Every rank runs the whole global batch through the whole depth of the model, holding a
/// `1/N` slice of every hidden Linear (see ``TensorParallelPlan``) and a replica of the embedding
/// (and of the head when it is left unpaired). The logits are whole on every rank, so every
/// rank computes the same loss with no further communication, and every replicated parameter
/// receives the same gradient on every rank and so stays replicated through any optimizer.
///
/// Per step, each row-parallel layer allreduces its `B × outputs` output forward and each
/// column-parallel layer its `B × inputs` input gradient backward: with ml.c's sizes (B 32,
/// seq·emb 256, hidden 64, vocab 27, one hidden layer) that is 3,456 + 32,768 bytes of payload,
/// `2(N−1)/N` times that on the wire per rank, in two allreduces.
///
/// With `--sequence-parallel` (``SequenceSplit``) each rank feeds, embeds and scores only its
/// `B/N` rows of every micro-step; the pairs gather and scatter rows instead of allreducing
/// (``SequenceParallelColumnLinear``, ``SequenceParallelRowLinear``), and per step two more
/// allreduces run: the partial gradients of the parameters used outside the pairs
/// (``PartialGradientSum``) and the 4-byte loss sum.
public final class TensorParallel: TrainingLayout {
    public let plan: TensorParallelPlan
    let mesh: ProcessMesh
    let parameters: ParameterBuffer
    let chain: LayerChain
    /// All B rows, in `--accumulate` micro-steps (each allreduces its own activations).
    let steps: MicroSteps
    public let local: LocalParameters
    /// Sequence parallelism's row split, full-rows buffer and gradient sum (nil without it).
    let split: SequenceSplit?
    let scratch: SequenceParallelScratch?
    let partials: PartialGradientSum?

    public init(_ context: TrainingContext, sequenceParallel: Bool = false, recompute: Bool = false) throws(UsageError) {
        var shape = LayoutShape.tensorParallel(ranks: context.world.size)
        shape.sequenceParallel = sequenceParallel
        mesh = try shape.makeMesh(context)
        let tp = mesh[.tp]
        let plan = try TensorParallelPlan(context.plan, blocks: 0..<context.plan.count, tpSize: tp.size, tpRank: tp.rank,
                                          sequenceParallel: sequenceParallel)
        self.plan = plan
        let parameters = ParameterBuffer(count: plan.parameterCount)
        self.parameters = parameters
        plan.map.extract(from: context.initialParameters, into: parameters.value)
        steps = MicroSteps(rows: 0..<context.batchSize, count: context.options.accumulate)
        let split = plan.sequenceSplit, rows = steps.rowsPerStep
        let scratch = split.map { _ in SequenceParallelScratch(capacity: plan.scratchCapacity(rows: rows)) }
        self.split = split
        self.scratch = scratch
        chain = LayerChain(layers: plan.makeLayers(tp: tp, buffer: parameters, rows: rows, scratch: scratch), widths: plan.widths,
                           activationRows: split?.activationRows(rows) ?? plan.widths.map { _ in rows },
                           loss: SoftmaxCrossEntropy(gradientScale: 1 / Float(context.batchSize)), recompute: recompute)
        partials = split.map { _ in PartialGradientSum(ranges: plan.partialGradientRanges, gradients: parameters.grad, tp: tp) }
        local = LocalParameters(map: plan.map, values: parameters.value, gradients: parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: parameters.count))
    }

    /// The rows this rank feeds in micro-step `j`: all of them, or its share under sequence parallelism.
    func rows(_ j: Int) -> Range<Int> { split?.shard(steps.rows(j)) ?? steps.rows(j) }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: rows(j), tokens: chain.input.value, targets: chain.targets)
            lossSum += chain.forward()
            if j == 0 { parameters.zeroGradients() }
            chain.backward()
        }
        partials?.sum()
        if split != nil { lossSum = mesh[.tp].sum(lossSum) }
        return lossSum / Float(steps.rows.count)
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: rows(j), tokens: chain.input.value, targets: chain.targets)
            lossSum += chain.forward()
        }
        if split != nil { lossSum = mesh[.tp].sum(lossSum) }
        return lossSum / Float(steps.rows.count)
    }
}
