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
    public let local: LocalParameters

    public init(_ context: TrainingContext) throws(UsageError) {
        mesh = try LayoutShape.tensorParallel(ranks: context.world.size).makeMesh(context)
        let tp = mesh[.tp]
        plan = try TensorParallelPlan(context.plan, blocks: 0..<context.plan.count, tpSize: tp.size, tpRank: tp.rank)
        parameters = ParameterBuffer(count: plan.parameterCount)
        plan.map.extract(from: context.initialParameters, into: parameters.value)
        chain = LayerChain(layers: plan.makeLayers(tp: tp, buffer: parameters), widths: plan.widths,
                           rows: context.batchSize, loss: SoftmaxCrossEntropy(gradientScale: 1 / Float(context.batchSize)))
        local = LocalParameters(map: plan.map, values: parameters.value, gradients: parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: parameters.count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        let loss = evaluate(batch: index, from: sampler)
        parameters.zeroGradients()
        chain.backward()
        return loss
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: 0..<chain.rows, tokens: chain.input.value, targets: chain.targets)
        return chain.forward() / Float(chain.rows)
    }
}
