import Core
import Distributed

/// `train`: the whole model on one rank. The reference every other layout must reproduce.
public final class SingleRank: TrainingLayout {
    let model: Model
    public let local: LocalParameters

    public init(_ context: TrainingContext) throws(UsageError) {
        try LayoutShape.singleRank.check(worldSize: context.world.size, plan: context.plan, batchSize: context.batchSize)
        model = Model(config: context.config, batchSize: context.batchSize)
        model.load(context.initialParameters)
        local = LocalParameters(map: .contiguous(0, model.parameters.count), values: model.parameters.value,
                                gradients: model.parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: model.parameters.count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        let loss = evaluate(batch: index, from: sampler)
        model.parameters.zeroGradients()
        model.backward()
        return loss
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: 0..<model.batchSize, tokens: model.tokens.value, targets: model.targets)
        return model.forward() / Float(model.batchSize)
    }
}
