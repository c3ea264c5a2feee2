import Core
import Distributed

/// Everything a layout needs to build itself: the world, the configuration, the data, and the
/// full initial parameters (built whole, so every layout starts from identical weights).
public struct TrainingContext {
    public let world: Communicator
    public let options: TrainingOptions
    public let config: ModelConfig
    /// The model's blocks (``ModelConfig/plan``), computed once.
    public let plan: BlockPlan
    public let optimizer: OptimizerConfig
    public let dataset: Dataset
    public let initialParameters: [Float]

    /// The global batch size.
    public var batchSize: Int { options.batchSize }
}

/// The floats of the model that one rank holds, and where they sit in the canonical vector.
///
/// This is all that checkpoints, `--dump` and sampling need to know about a layout: parameters,
/// gradients and optimizer moments share one map, so gathering any of them to rank 0, or
/// loading any of them from a canonical vector, is the same routine for every layout.
public struct LocalParameters {
    /// Every float this rank holds, in local order (used when loading).
    public let map: ParameterMap
    /// The part of `map` this rank reports when gathering: replicas that other ranks also
    /// hold (e.g. DP's copies on ranks ≠ 0) report nothing, to save traffic.
    public let reported: ParameterMap
    public let values: UnsafeMutablePointer<Float>
    public let gradients: UnsafeMutablePointer<Float>
    public let optimizer: Optimizer
    /// ZeRO-1/2 (`train_fsdp --zero 1|2`): the full parameters this rank keeps beside the shard
    /// its optimizer owns (`values` points into them), one flat copy refreshed by an allgather
    /// after every update; nil when `values` are all the rank holds. `--check-replicas` compares
    /// these copies, and loading a checkpoint's parameters fills them whole.
    public var fullCopy: (map: ParameterMap, values: UnsafeMutablePointer<Float>)?
    /// State the layout keeps beyond these floats, which no canonical vector can express (DiLoCo's
    /// outer model and momentum, and each worker's own parameters and moments); checkpoints save
    /// it as files of their own. nil for every layout whose state is the canonical one.
    public var ownState: (any LayoutState)?

    public init(map: ParameterMap, reported: ParameterMap? = nil, values: UnsafeMutablePointer<Float>,
                gradients: UnsafeMutablePointer<Float>, optimizer: Optimizer) {
        precondition(optimizer.count == map.count)
        self.map = map
        self.reported = reported ?? map
        self.values = values
        self.gradients = gradients
        self.optimizer = optimizer
    }
}

/// A layout's own checkpoint files, beside the canonical parameters and moments (``Checkpoint``'s
/// `files`): named float vectors of any length. Both methods are collective over the world.
public protocol LayoutState: AnyObject {
    /// This rank's part of the files; the whole files on world rank 0, nil elsewhere.
    func gather(_ world: Communicator) -> [String: [Float]]?
    /// Restores the state from `files` (the checkpoint's extra files on world rank 0, nil
    /// elsewhere), after the canonical parameters and moments were loaded. A checkpoint without
    /// these files (written by another layout) starts the state from the canonical floats; files
    /// that do not fit this run are refused with the same error on every rank.
    func load(_ files: [String: [Float]]?, _ world: Communicator) throws(UsageError)
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

    /// Forward only: the global-batch mean loss of batch `index`, the same on every rank.
    func evaluate(batch index: Int, from sampler: BatchSampler) -> Float

    /// This rank's parameters, gradients and optimizer state.
    var local: LocalParameters { get }

    /// Applies optimizer update number `step` (1-based) to this rank's parameters.
    func update(step: Int)

    /// Called on every rank once the training steps are done (collective): a line for rank 0 to
    /// print about how the steps went (e.g. the pipeline bubble), or nil.
    func trainingFinished() -> String?

    /// A line printed at start-up about how the layout cut the model (e.g. the pipeline's
    /// stages), or nil.
    var summary: String? { get }

    /// The last training step's mixture-of-experts figures (its aux loss, included in the loss
    /// ``forwardBackward(batch:from:)`` returned, and the load imbalance), or nil for a dense model.
    var expertStatistics: ExpertStatistics? { get }
}

extension TrainingLayout {
    public func trainingFinished() -> String? { nil }
    public var summary: String? { nil }
    public var expertStatistics: ExpertStatistics? { nil }

    /// The update every layout uses: the optimizer over this rank's floats.
    public func update(step: Int) {
        local.optimizer.step(local.values, local.gradients, t: step)
    }
}

/// Collective operations on a layout's state in canonical form.
extension LocalParameters {
    /// Every rank's `reported` floats of `pick(self)`, reassembled on world rank 0 (nil elsewhere).
    public func gather(_ world: Communicator, total: Int, _ pick: (LocalParameters) -> UnsafeMutablePointer<Float>) -> [Float]? {
        // `reported` is a prefix-free subset only for replicas, which report all or nothing.
        precondition(reported.count == 0 || reported == map)
        return assembleCanonical(world: world, map: reported, values: pick(self), total: total)
    }

    /// Loads a canonical vector (present on world rank 0 only) into `pick(self)` on every rank.
    public func load(_ canonical: [Float]?, _ world: Communicator, total: Int, _ pick: (LocalParameters) -> UnsafeMutablePointer<Float>) {
        var full = canonical ?? [Float](repeating: 0, count: total)
        precondition(full.count == total)
        full.withUnsafeMutableBufferPointer { world.broadcast($0.baseAddress!, count: total, root: 0) }
        map.extract(from: full, into: pick(self))
        // The parameters (not a moment): a full copy is current again without communicating.
        if let copy = fullCopy, pick(self) == values { copy.map.extract(from: full, into: copy.values) }
    }
}
