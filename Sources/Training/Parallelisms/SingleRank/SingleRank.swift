import Core
import Distributed

/// `train`: the whole model on one rank. The reference every other layout must reproduce.
public final class SingleRank: TrainingLayout {
    let model: Model
    let steps: MicroSteps
    public let local: LocalParameters

    public init(_ context: TrainingContext, recompute: Bool = false) throws(UsageError) {
        try LayoutShape.singleRank.check(worldSize: context.world.size, plan: context.plan, batchSize: context.batchSize,
                                         accumulation: context.options.accumulate)
        steps = MicroSteps(rows: 0..<context.batchSize, count: context.options.accumulate)
        model = Model(config: context.config, batchSize: steps.rowsPerStep, lossScale: 1 / Float(context.batchSize), recompute: recompute)
        model.load(context.initialParameters)
        local = LocalParameters(map: .contiguous(0, model.parameters.count), values: model.parameters.value,
                                gradients: model.parameters.grad,
                                optimizer: Optimizer(config: context.optimizer, count: model.parameters.count))
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: model.tokens.value, targets: model.targets)
            lossSum += model.forward()
            if j == 0 { model.parameters.zeroGradients() }
            model.backward()
        }
        // The mixture of experts' load-balancing loss is part of the trained loss (with experts
        // there is one micro-step: the aux loss is the whole batch's).
        return lossSum / Float(steps.rows.count) + model.auxiliaryLoss
    }

    /// The aux loss and load of the last step (nil for a dense model).
    public var expertStatistics: ExpertStatistics? { ExpertStatistics(model) }

    /// The cross-entropy alone: the aux loss regularises training, it is not a validation figure.
    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        let lossSum = model.forwardLoss(batch: index, steps, from: sampler)
        return lossSum / Float(steps.rows.count)
    }
}
