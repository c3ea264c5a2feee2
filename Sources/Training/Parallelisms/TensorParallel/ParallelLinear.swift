import Core
import Distributed

/// `Y_t = X·W[:, cols_t] + b[cols_t]` (then ReLU): the first half of a Megatron pair.
///
/// Each of the `N` ranks of the tensor-parallel group holds `outputs / N` consecutive columns of
/// `W` (`[inputs × outputs/N]`, row-major, then its `outputs/N` floats of `b`) and reads the
/// whole, replicated input `X`. Its output is this rank's column slice of `Y`: no communication
/// forward. ReLU is elementwise, so it applies to the slice unchanged.
///
/// Backward, `dW_t = Xᵀ·dY_t` and `db_t = Σ_rows dY_t` are local, but every rank's
/// `dY_t·W_tᵀ` is only a partial sum of `dX = Σ_t dY_t·W_tᵀ`: one allreduce (**sum**) of the
/// `rows × inputs` input gradient (Megatron's `f`) makes it whole before the previous layer
/// reads it. That is `2(N−1)/N · rows · inputs · 4` bytes per rank.
public final class ColumnParallelLinear: Layer {
    public let inputs: Int
    /// Columns held here: `outputs / N`.
    public let localOutputs: Int
    let local: Linear
    let tp: Communicator

    /// - Parameters:
    ///   - parameters: `inputs · localOutputs + localOutputs` floats: `W[:, cols_t]` then `b[cols_t]`.
    public init(inputs: Int, localOutputs: Int, relu: Bool, parameters: ParameterView, tp: Communicator) {
        self.inputs = inputs
        self.localOutputs = localOutputs
        self.tp = tp
        local = Linear(inputs: inputs, outputs: localOutputs, relu: relu, parameters: parameters)
    }

    public func forward(_ input: Activation, _ output: Activation) {
        local.forward(input, output)
    }

    public func backward(_ input: Activation, _ output: Activation) {
        local.backward(input, output)
        tp.allreduceSum(input.grad, count: input.rows * inputs)
    }
}

/// `Y = Σ_t X_t·W[rows_t, :] + b` (then ReLU): the second half of a Megatron pair.
///
/// Each rank holds `inputs / N` consecutive rows of `W` (`[inputs/N × outputs]`) — the rows
/// that multiply the column slice `X_t` the previous ``ColumnParallelLinear`` produced here — and
/// the whole bias. Forward, the partial products are summed with one allreduce of
/// `rows × outputs` floats (Megatron's `g`), and only then is the bias added, once, followed by
/// ReLU: exactly the single-rank `X·W + b`. (Averaging the partials, or adding `b` on every rank
/// before the sum, as ml.c does, computes a different model.)
///
/// Backward needs no communication: `dY` is the same on every rank, so `db = Σ_rows dY` is
/// the same everywhere (the replicated bias stays replicated without a reduction), and
/// `dW_t = X_tᵀ·dY`, `dX_t = dY·W_tᵀ` are exactly this rank's slices.
public final class RowParallelLinear: Layer {
    /// Rows of `W` held here: `inputs / N`.
    public let localInputs: Int
    public let outputs: Int
    public let relu: Bool
    let local: Linear
    let bias: UnsafeMutablePointer<Float>
    let biasGrad: UnsafeMutablePointer<Float>
    let tp: Communicator

    /// - Parameters:
    ///   - parameters: `localInputs · outputs + outputs` floats: `W[rows_t, :]` then all of `b`.
    public init(localInputs: Int, outputs: Int, relu: Bool, parameters: ParameterView, tp: Communicator) {
        precondition(parameters.count == localInputs * outputs + outputs)
        self.localInputs = localInputs
        self.outputs = outputs
        self.relu = relu
        self.tp = tp
        (local, bias, biasGrad) = Self.split(localInputs: localInputs, outputs: outputs, parameters: parameters)
    }

    /// A row-parallel layer's floats (`W[rows_t, :]`, then the whole bias) as this rank's rows of
    /// W in a bias-free ``Linear`` and the bias, which is added only after the partial sums are
    /// summed (here and in ``SequenceParallelRowLinear``).
    static func split(localInputs: Int, outputs: Int, parameters: ParameterView)
        -> (weights: Linear, bias: UnsafeMutablePointer<Float>, biasGrad: UnsafeMutablePointer<Float>) {
        let weights = localInputs * outputs
        let linear = Linear(inputs: localInputs, outputs: outputs, relu: false, bias: false,
                            parameters: ParameterView(value: parameters.value, grad: parameters.grad, count: weights))
        return (linear, parameters.value + weights, parameters.grad + weights)
    }

    public func forward(_ input: Activation, _ output: Activation) {
        local.forward(input, output)
        tp.allreduceSum(output.value, count: output.rows * outputs)
        Kernels.addBias(output.value, rows: output.rows, cols: outputs, bias: bias, relu: relu)
    }

    public func backward(_ input: Activation, _ output: Activation) {
        if relu { Kernels.maskByPositive(output.grad, output.value, count: output.rows * outputs) }
        Kernels.addColumnSums(output.grad, rows: output.rows, cols: outputs, into: biasGrad)
        local.backward(input, output)
    }
}
