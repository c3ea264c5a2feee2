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
public final class TensorParallel: TrainingLayout {
    public let plan: TensorParallelPlan
    let mesh: ProcessMesh
    let parameters: ParameterBuffer
    let chain: LayerChain
    /// All B rows, in `--accumulate` micro-steps (each allreduces its own activations).
    let steps: MicroSteps
    public let local: LocalParameters

    public init(_ context: TrainingContext) throws(UsageError) {
        mesh = try LayoutShape.tensorParallel(ranks: context.world.size).makeMesh(context)
        let tp = mesh[.tp]
        plan = try TensorParallelPlan(context.plan, blocks: 0..<context.plan.count, tpSize: tp.size, tpRank: tp.rank)
        parameters = ParameterBuffer(count: plan.parameterCount)
        plan.map.extract(from: context.initialParameters, into: parameters.value)
        steps = MicroSteps(rows: 0..<context.batchSize, count: context.options.accumulate)
        chain = LayerChain(layers: plan.makeLayers(tp: tp, buffer: parameters), widths: plan.widths,
                           rows: steps.rowsPerStep, loss: SoftmaxCrossEntropy(gradientScale: 1 / Float(context.batchSize)))
        local = LocalParameters(map: plan.map, values: parameters.value, gradients: parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: parameters.count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: chain.input.value, targets: chain.targets)
            lossSum += chain.forward()
            if j == 0 { parameters.zeroGradients() }
            chain.backward()
        }
        return lossSum / Float(steps.rows.count)
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: chain.input.value, targets: chain.targets)
            lossSum += chain.forward()
        }
        return lossSum / Float(steps.rows.count)
    }
}
