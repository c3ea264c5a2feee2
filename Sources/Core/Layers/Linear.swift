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

    public init(rows: Int, cols: Int) {
        self.rows = rows
        self.cols = cols
        value = .allocate(capacity: max(1, rows * cols))
        grad = .allocate(capacity: max(1, rows * cols))
        value.initialize(repeating: 0, count: max(1, rows * cols))
        grad.initialize(repeating: 0, count: max(1, rows * cols))
        MemoryLedger.add(.activations, bytes: 2 * 4 * max(1, rows * cols))
    }

    deinit {
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
///
/// `spare` extra floats after the `count` gradients travel with them in a flat gradient
/// collective: `train_dp` puts the batch's loss sum there, so one allreduce per step carries both.
public final class ParameterBuffer {
    public let count: Int
    public let spare: Int
    public let value: UnsafeMutablePointer<Float>
    public let grad: UnsafeMutablePointer<Float>
    /// Where the memory ledger files these bytes: the model's own parameters and gradients, or
    /// a scratch/communication buffer (FSDP's gather buffer).
    public let isScratch: Bool

    public init(count: Int, spare: Int = 0, isScratch: Bool = false) {
        self.count = count
        self.spare = spare
        self.isScratch = isScratch
        value = .allocate(capacity: max(1, count))
        grad = .allocate(capacity: max(1, count + spare))
        value.initialize(repeating: 0, count: max(1, count))
        grad.initialize(repeating: 0, count: max(1, count + spare))
        register(1)
    }

    deinit {
        value.deallocate()
        grad.deallocate()
        register(-1)
    }

    private func register(_ sign: Int) {
        MemoryLedger.add(isScratch ? .buffers : .parameters, bytes: sign * 4 * max(1, count))
        MemoryLedger.add(isScratch ? .buffers : .gradients, bytes: sign * 4 * max(1, count + spare))
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
public protocol Layer: AnyObject {
    func forward(_ input: Activation, _ output: Activation)
    func backward(_ input: Activation, _ output: Activation)
}

/// Token embedding followed by flatten: `[B × seq]` token ids → `[B × seq·dim]`.
///
/// The input activation carries token ids as floats (exact for ids below 2²⁴), so an embedding
/// has the same signature as every other layer. The table is `[vocab × dim]`, row per token.
public final class Embedding: Layer {
    public let vocab: Int
    public let dim: Int
    public let table: ParameterView
    /// Private partial gradient tables for the scatter (see ``Kernels/scatterAddRows``), or nil
    /// when the table is too large to keep extra copies of.
    let scratch: UnsafeMutablePointer<Float>?

    public static func parameterCount(vocab: Int, dim: Int) -> Int { vocab * dim }

    public init(vocab: Int, dim: Int, parameters: ParameterView) {
        precondition(parameters.count == vocab * dim)
        self.vocab = vocab
        self.dim = dim
        table = parameters
        let extra = (Kernels.scatterStreams - 1) * vocab * dim
        if extra > 0 && extra <= 1 << 16 {
            scratch = .allocate(capacity: extra)
            scratch!.initialize(repeating: 0, count: extra)
        } else {
            scratch = nil
        }
    }

    deinit { scratch?.deallocate() }

    /// Copies one table row per token (whole-row vector copies).
    public func forward(_ input: Activation, _ output: Activation) {
        Kernels.gatherRows(table.value, dim: dim, ids: input.value, count: input.rows * input.cols, into: output.value)
    }

    /// Adds each position's output gradient into its token's row of the table gradient.
    /// A token that appears twice gets both contributions (ml.c overwrote the first).
    public func backward(_ input: Activation, _ output: Activation) {
        backward(input, output, accumulate: true)
    }

    /// As ``backward(_:_:)``, but with `accumulate: false` the table gradient is overwritten
    /// (as if it had been zeroed first).
    public func backward(_ input: Activation, _ output: Activation, accumulate: Bool) {
        if !accumulate { Kernels.zero(table.grad, count: vocab * dim) }
        Kernels.scatterAddRows(output.grad, dim: dim, ids: input.value, count: input.rows * input.cols,
                               into: table.grad, rows: vocab, scratch: scratch)
    }
}

/// `y = x·W + b`, optionally followed by ReLU, for `W` of shape `[inputs × outputs]` (row-major,
/// as in ml.c) stored first in the parameter view, then `b` (`outputs` floats) if present.
///
/// With ReLU fused, only the post-activation output is kept: `y > 0` exactly where the
/// pre-activation was positive, so backward masks the gradient by `y` alone.
public final class Linear: Layer {
    public let inputs: Int
    public let outputs: Int
    public let relu: Bool
    public let hasBias: Bool
    public let weight: UnsafeMutablePointer<Float>
    public let weightGrad: UnsafeMutablePointer<Float>
    public let bias: UnsafeMutablePointer<Float>?
    public let biasGrad: UnsafeMutablePointer<Float>?

    public static func parameterCount(inputs: Int, outputs: Int, bias: Bool = true) -> Int {
        inputs * outputs + (bias ? outputs : 0)
    }

    /// `dy · Wᵀ` needs no scratch: the product transposes W 16 × 16 at a time while it packs it
    /// (see ``Kernels/gemm(m:n:k:a:rowStride:depthStride:transposedB:ldb:c:ldc:epilogue:)``).
    public init(inputs: Int, outputs: Int, relu: Bool, bias: Bool = true, parameters: ParameterView) {
        precondition(parameters.count == Self.parameterCount(inputs: inputs, outputs: outputs, bias: bias))
        self.inputs = inputs
        self.outputs = outputs
        self.relu = relu
        self.hasBias = bias
        weight = parameters.value
        weightGrad = parameters.grad
        self.bias = bias ? parameters.value + inputs * outputs : nil
        self.biasGrad = bias ? parameters.grad + inputs * outputs : nil
    }

    public func forward(_ input: Activation, _ output: Activation) {
        Kernels.gemm(m: input.rows, n: outputs, k: inputs,
                     a: input.value, rowStride: inputs, depthStride: 1,
                     b: weight, ldb: outputs, c: output.value, ldc: outputs,
                     epilogue: .init(bias: bias.map { UnsafePointer($0) }, relu: relu))
    }

    public func backward(_ input: Activation, _ output: Activation) {
        backward(input, output, accumulate: true)
    }

    /// As ``backward(_:_:)``, but with `accumulate: false` the parameter gradients are
    /// overwritten (as if they had been zeroed first), which saves zeroing and re-reading them.
    public func backward(_ input: Activation, _ output: Activation, accumulate: Bool) {
        let rows = input.rows
        if relu { Kernels.maskByPositive(output.grad, output.value, count: rows * outputs) }
        if let biasGrad {
            Kernels.columnSums(output.grad, rows: rows, cols: outputs, into: biasGrad, accumulate: accumulate)
        }
        // dW (+)= xᵀ · dy
        Kernels.gemm(m: inputs, n: outputs, k: rows,
                     a: input.value, rowStride: 1, depthStride: inputs,
                     b: output.grad, ldb: outputs, c: weightGrad, ldc: outputs,
                     epilogue: .init(accumulate: accumulate))
        // dx = dy · Wᵀ (W transposed on the fly, 16 × 16 at a time, as the kernel packs it)
        Kernels.gemm(m: rows, n: inputs, k: outputs,
                     a: output.grad, rowStride: outputs, depthStride: 1,
                     transposedB: weight, ldb: outputs, c: input.grad, ldc: inputs)
    }
}
