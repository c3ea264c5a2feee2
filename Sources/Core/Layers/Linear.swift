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

    public var splitsBackward: Bool { true }

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
        Kernels.gemm(m: input.rows, n: inputs, k: outputs,
                     a: output.grad, rowStride: outputs, depthStride: 1,
                     transposedB: weight, ldb: outputs, c: input.grad, ldc: inputs)
    }
}
