import Core
import Distributed

/// Everything a layout needs to build itself: the world, the configuration, the data, and the
/// full initial parameters (built whole, so every layout starts from identical weights).
public struct TrainingContext {
    public let world: Communicator
    public let options: TrainingOptions
    public let config: ModelConfig
    public let optimizer: OptimizerConfig
    public let dataset: Dataset
    public let initialParameters: [Float]

    /// The global batch size.
    public var batchSize: Int { options.batchSize }
}

/// One way of laying the model out over ranks. The training loop is the same for all of them:
///
///     for step in 0..<steps {
///         loss = layout.forwardBackward(batch: step, from: sampler)   // grads ready
///         layout.update(step: step + 1)
///     }
///
/// Every method is collective: all ranks of the world call it together.
public protocol TrainingLayout: AnyObject {
    /// Draws global batch `index` (only the rows this rank needs), runs forward and backward,
    /// and leaves the gradients of this rank's parameters ready for `update`. Returns the
    /// global-batch mean loss, the same on every rank.
    func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float

    /// Applies optimizer update number `step` (1-based) to this rank's parameters.
    func update(step: Int)

    /// Forward only: the global-batch mean loss of batch `index`, the same on every rank.
    func evaluate(batch index: Int, from sampler: BatchSampler) -> Float

    /// The full parameters in canonical layout on world rank 0; nil on the other ranks.
    func gatherParameters() -> [Float]?

    /// The full gradients of the last `forwardBackward`, canonical layout, on world rank 0.
    func gatherGradients() -> [Float]?
}

/// `train`: the whole model on one rank. The reference every other layout must reproduce.
public final class SingleRank: TrainingLayout {
    let model: Model
    let optimizer: Optimizer

    public init(_ context: TrainingContext) throws(UsageError) {
        if context.world.size != 1 {
            throw UsageError("train is the single-rank reference: run it with one process (got \(context.world.size)); use train_dp or train_fsdp for more")
        }
        model = Model(config: context.config, batchSize: context.batchSize)
        model.load(context.initialParameters)
        optimizer = Optimizer(config: context.optimizer, count: model.parameters.count)
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: 0..<model.batchSize, tokens: model.tokens.value, targets: model.targets)
        let loss = model.forward()
        model.backward(accumulate: false)  // = zero the gradients, then backward
        return loss / Float(model.batchSize)
    }

    public func update(step: Int) {
        optimizer.step(model.parameters.value, model.parameters.grad, t: step)
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: 0..<model.batchSize, tokens: model.tokens.value, targets: model.targets)
        return model.forward() / Float(model.batchSize)
    }

    public func gatherParameters() -> [Float]? {
        Array(UnsafeBufferPointer(start: model.parameters.value, count: model.parameters.count))
    }

    public func gatherGradients() -> [Float]? {
        Array(UnsafeBufferPointer(start: model.parameters.grad, count: model.parameters.count))
    }
}
