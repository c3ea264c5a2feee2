/// A batch of activations: `rows` examples of `cols` features, with a gradient of the same shape.
///
/// Allocated once, zeroed, and reused every step. Layers never own activations: the caller
/// passes them in, so a pipeline stage can keep one set per micro-batch in flight and a sharded
/// model can reuse the reference layers unchanged.
public final class Activation {
    public let rows: Int
    public let cols: Int
    public let value: UnsafeMutablePointer<Float>
    public let grad: UnsafeMutablePointer<Float>
    public var count: Int { rows * cols }
    /// False for a view of memory owned elsewhere (``init(rows:cols:borrowing:grad:)``).
    let ownsMemory: Bool

    public init(rows: Int, cols: Int) {
        self.rows = rows
        self.cols = cols
        ownsMemory = true
        value = .allocate(capacity: max(1, rows * cols))
        grad = .allocate(capacity: max(1, rows * cols))
        value.initialize(repeating: 0, count: max(1, rows * cols))
        grad.initialize(repeating: 0, count: max(1, rows * cols))
        MemoryLedger.add(.activations, bytes: 2 * 4 * max(1, rows * cols))
    }

    /// A `rows × cols` view of memory someone else owns and accounts for (a scratch buffer that
    /// several layers use in turn, such as sequence parallelism's full-rows buffer): nothing is
    /// allocated, counted in the ``MemoryLedger`` or freed here.
    public init(rows: Int, cols: Int, borrowing value: UnsafeMutablePointer<Float>, grad: UnsafeMutablePointer<Float>) {
        self.rows = rows
        self.cols = cols
        ownsMemory = false
        self.value = value
        self.grad = grad
    }

    deinit {
        guard ownsMemory else { return }
        value.deallocate()
        grad.deallocate()
        MemoryLedger.add(.activations, bytes: -2 * 4 * max(1, rows * cols))
    }
}

/// A layer's parameters: a contiguous run of floats and the matching run of gradients.
///
/// Where the floats live is the caller's choice: a slice of the model's flat buffer (`train`,
/// `train_dp`), or one gather buffer shared by every layer (`train_fsdp`). Layers just use them.
public struct ParameterView: @unchecked Sendable {
    public let value: UnsafeMutablePointer<Float>
    public let grad: UnsafeMutablePointer<Float>
    public let count: Int

    public init(value: UnsafeMutablePointer<Float>, grad: UnsafeMutablePointer<Float>, count: Int) {
        self.value = value
        self.grad = grad
        self.count = count
    }
}

/// A flat, owned buffer of parameters and their gradients, zero-initialised.
public final class ParameterBuffer {
    public let count: Int
    public let value: UnsafeMutablePointer<Float>
    public let grad: UnsafeMutablePointer<Float>
    /// Where the memory ledger files these bytes: the model's own parameters and gradients, or
    /// a scratch/communication buffer (FSDP's gather buffer).
    public let isScratch: Bool

    public init(count: Int, isScratch: Bool = false) {
        self.count = count
        self.isScratch = isScratch
        value = .allocate(capacity: max(1, count))
        grad = .allocate(capacity: max(1, count))
        value.initialize(repeating: 0, count: max(1, count))
        grad.initialize(repeating: 0, count: max(1, count))
        register(1)
    }

    deinit {
        value.deallocate()
        grad.deallocate()
        register(-1)
    }

    private func register(_ sign: Int) {
        MemoryLedger.add(isScratch ? .buffers : .parameters, bytes: sign * 4 * max(1, count))
        MemoryLedger.add(isScratch ? .buffers : .gradients, bytes: sign * 4 * max(1, count))
    }

    /// The floats `offset ..< offset + count`.
    public func view(offset: Int, count: Int) -> ParameterView {
        precondition(offset >= 0 && offset + count <= self.count)
        return ParameterView(value: value + offset, grad: grad + offset, count: count)
    }

    public func zeroGradients() { grad.update(repeating: 0, count: count) }
}

/// One step of the network. Forward and backward take the same two arguments, as in ml.c:
///
/// - `forward(input, output)` reads `input.value` and the parameters, writes `output.value`;
/// - `backward(input, output)` reads `output.grad` (and the values), **adds** the parameter
///   gradients into the parameters' `grad` (so micro-batches accumulate), and writes `input.grad`.
///
/// That is all a layer must do. Pipelines ask more of some layers, each an opt-in protocol a
/// layer adopts when it can: ``SplitBackward`` (the two halves of backward, for zero-bubble
/// schedules), ``PackedWeights`` (a packed copy of W for many small products) and
/// ``SlotCopyable`` (its own state per micro-batch in flight).
public protocol Layer: AnyObject {
    func forward(_ input: Activation, _ output: Activation)
    func backward(_ input: Activation, _ output: Activation)
}

/// A layer whose backward splits in two, for zero-bubble pipelines: ``backwardInput(_:_:)``
/// (the input gradient, which the previous stage is waiting for) and ``backwardWeights(_:_:)``
/// (the parameter gradients, which nobody waits for and can run later), together exactly
/// ``Layer/backward(_:_:)``. The split may leave `output.grad` changed in between (e.g. masked by
/// the ReLU), so the weight pass must follow its input pass before `output.grad` is written again.
/// A layer that does not adopt it does everything in `backward`.
public protocol SplitBackward: Layer {
    /// The input gradient only: writes `input.grad`, no parameter gradient.
    func backwardInput(_ input: Activation, _ output: Activation)
    /// The parameter gradients only (added in), after ``backwardInput(_:_:)``.
    func backwardWeights(_ input: Activation, _ output: Activation)
}

/// A layer that can keep a packed copy of its weights, for a caller that runs many small
/// products over the same weights: a pipeline stage's micro-batches.
public protocol PackedWeights: Layer {
    /// Allocates the packed copy (now, once).
    func keepPackedWeights()
    /// Packs the current weights into that copy; forwards and input gradients read it until
    /// ``releasePackedWeights()``. The weights must not change in between.
    func packWeights()
    /// The packed copy is stale from now on (the weights are about to change): products read the
    /// weights as stored again.
    func releasePackedWeights()
}

/// A layer that keeps state between its forward and backward (a mixture of experts' routing),
/// so a pipeline's other slots (other micro-batches in flight) each need their own copy over the
/// same parameters. Layers without such state run every slot themselves.
public protocol SlotCopyable: Layer {
    /// A layer over the same parameters with its own state.
    func copyForSlot() -> Layer
}

extension Layer {
    /// The layer a pipeline's other slot runs: its own copy when it keeps state (``SlotCopyable``),
    /// else itself.
    public func forAnotherSlot() -> Layer { (self as? SlotCopyable)?.copyForSlot() ?? self }
}
