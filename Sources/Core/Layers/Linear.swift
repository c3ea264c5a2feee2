/// `y = x·W + b`, optionally followed by ReLU, for `W` of shape `[inputs × outputs]` (row-major,
/// as in ml.c) stored first in the parameter view, then `b` (`outputs` floats) if present.
///
/// With ReLU fused, only the post-activation output is kept: `y > 0` exactly where the
/// pre-activation was positive, so backward masks the gradient by `y` alone.
public final class Linear: SplitBackward, PackedWeights {
    public let inputs: Int
    public let outputs: Int
    public let relu: Bool
    public let hasBias: Bool
    public let weight: UnsafeMutablePointer<Float>
    public let weightGrad: UnsafeMutablePointer<Float>
    public let bias: UnsafeMutablePointer<Float>?
    public let biasGrad: UnsafeMutablePointer<Float>?
    /// W packed for the forward (`x·W`) and for the input gradient (`dy·Wᵀ`), both as the
    /// products read it (``Kernels/packPanels(_:ldb:n:k:transposed:into:)``), or nil; `current`
    /// while they hold the weights as they are.
    var packed: (forward: UnsafeMutablePointer<Float>, backward: UnsafeMutablePointer<Float>, current: Bool)?

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

    deinit {
        if let packed {
            packed.forward.deallocate()
            packed.backward.deallocate()
            MemoryLedger.add(.buffers, bytes: -4 * Self.packedCount(inputs: inputs, outputs: outputs))
        }
    }

    // MARK: Packed weights

    /// Floats of the two packed copies of a `[inputs × outputs]` W (each rounded up to whole
    /// 16-float vectors across).
    public static func packedCount(inputs: Int, outputs: Int) -> Int {
        Kernels.panelsCount(n: outputs, k: inputs) + Kernels.panelsCount(n: inputs, k: outputs)
    }

    public func keepPackedWeights() {
        guard packed == nil else { return }
        packed = (.allocate(capacity: Kernels.panelsCount(n: outputs, k: inputs)),
                  .allocate(capacity: Kernels.panelsCount(n: inputs, k: outputs)), false)
        MemoryLedger.add(.buffers, bytes: 4 * Self.packedCount(inputs: inputs, outputs: outputs))
    }

    public func packWeights() {
        guard let copy = packed else { return }
        Kernels.packPanels(weight, ldb: outputs, n: outputs, k: inputs, transposed: false, into: copy.forward)
        Kernels.packPanels(weight, ldb: outputs, n: inputs, k: outputs, transposed: true, into: copy.backward)
        packed!.current = true
    }

    public func releasePackedWeights() {
        if packed != nil { packed!.current = false }
    }

    // MARK: Forward and backward

    public func forward(_ input: Activation, _ output: Activation) {
        if let packed, packed.current {
            Kernels.gemm(m: input.rows, n: outputs, k: inputs, a: input.value, rowStride: inputs, depthStride: 1,
                         panels: packed.forward, c: output.value, ldc: outputs,
                         epilogue: .init(bias: bias.map { UnsafePointer($0) }, relu: relu))
            return
        }
        Kernels.gemm(m: input.rows, n: outputs, k: inputs,
                     a: input.value, rowStride: inputs, depthStride: 1,
                     b: weight, ldb: outputs, c: output.value, ldc: outputs,
                     epilogue: .init(bias: bias.map { UnsafePointer($0) }, relu: relu))
    }

    public func backward(_ input: Activation, _ output: Activation) {
        backward(input, output, accumulate: true)
    }

    /// The ReLU mask, then dx = dy · Wᵀ.
    public func backwardInput(_ input: Activation, _ output: Activation) {
        if relu { Kernels.maskByPositive(output.grad, output.value, count: input.rows * outputs) }
        inputGradient(input, output)
    }

    /// db += Σ_rows dy, dW += xᵀ · dy, with dy already masked by ``backwardInput(_:_:)``.
    public func backwardWeights(_ input: Activation, _ output: Activation) {
        weightGradients(input, output, accumulate: true)
    }

    /// As ``backward(_:_:)``, but with `accumulate: false` the parameter gradients are
    /// overwritten (as if they had been zeroed first), which saves zeroing and re-reading them.
    public func backward(_ input: Activation, _ output: Activation, accumulate: Bool) {
        if relu { Kernels.maskByPositive(output.grad, output.value, count: input.rows * outputs) }
        weightGradients(input, output, accumulate: accumulate)
        inputGradient(input, output)
    }

    @inline(__always)
    func weightGradients(_ input: Activation, _ output: Activation, accumulate: Bool) {
        let rows = input.rows
        if let biasGrad {
            Kernels.columnSums(output.grad, rows: rows, cols: outputs, into: biasGrad, accumulate: accumulate)
        }
        // dW (+)= xᵀ · dy
        Kernels.gemm(m: inputs, n: outputs, k: rows,
                     a: input.value, rowStride: 1, depthStride: inputs,
                     b: output.grad, ldb: outputs, c: weightGrad, ldc: outputs,
                     epilogue: .init(accumulate: accumulate))
    }

    @inline(__always)
    func inputGradient(_ input: Activation, _ output: Activation) {
        // dx = dy · Wᵀ (W transposed on the fly, 16 × 16 at a time, as the kernel packs it)
        if let packed, packed.current {
            Kernels.gemm(m: input.rows, n: inputs, k: outputs, a: output.grad, rowStride: outputs, depthStride: 1,
                         panels: packed.backward, c: input.grad, ldc: inputs)
            return
        }
        Kernels.gemm(m: input.rows, n: inputs, k: outputs,
                     a: output.grad, rowStride: outputs, depthStride: 1,
                     transposedB: weight, ldb: outputs, c: input.grad, ldc: inputs)
    }
}
