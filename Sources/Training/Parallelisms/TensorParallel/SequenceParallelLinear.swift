import Core
import Distributed

// Megatron's sequence-parallel pair (Korthikanti et al., "Reducing Activation Recomputation in
// Large Transformer Models"): the same two layers as ``ColumnParallelLinear`` and
// ``RowParallelLinear``, but outside the pair each of the `T` ranks holds only its `b = B/T`
// consecutive rows of the activations (rank t: rows `t·b ..< (t+1)·b`).
//
// The paper's `g` (forward allgather over rows, backward reduce-scatter) sits before the
// column-parallel Linear, its `ḡ` (forward reduce-scatter over rows, backward allgather) after
// the row-parallel one, replacing the two allreduces of plain tensor parallelism. The full-rows
// tensors those collectives need live only for the duration of one layer call, in a
// ``SequenceParallelScratch`` that every such layer (and every pipeline slot) shares.

/// `Y_t = allgather_rows(X)·W[:, cols_t] + b[cols_t]` (then ReLU), input held by rows.
///
/// **Forward:** allgather the `T` row shards of `X` (`b × inputs` each) into the scratch's full
/// `B × inputs`, then the local column slice as in ``ColumnParallelLinear``: the output is this
/// rank's column slice of `Y` for **all** `B` rows (the region inside the pair).
///
/// **Backward:** allgather `X` again (Megatron re-gathers rather than keep the full input: that
/// is what makes the stored activation `1/T`), `dW_t = Xᵀ·dY_t`, `db_t = Σ_rows dY_t` locally,
/// and `dY_t·W_tᵀ` — this rank's partial sum of the full `B × inputs` input gradient — is
/// reduce-scattered over rows: rank t receives rows `t·b ..< (t+1)·b` of `Σ_t dY_t·W_tᵀ`.
///
/// Per call and rank the ledger counts `B·inputs·4` bytes for each allgather (forward and
/// backward) and for the reduce-scatter, `(T−1)/T` of each on the wire.
public final class SequenceParallelColumnLinear: Layer {
    public let inputs: Int
    public let localOutputs: Int
    let local: Linear
    let tp: Communicator
    /// The full `B × inputs` input and its gradient, in the shared scratch.
    let gathered: Activation

    /// - Parameters:
    ///   - parameters: `inputs · localOutputs + localOutputs` floats: `W[:, cols_t]` then `b[cols_t]`.
    ///   - rows: `B`, the rows of the whole micro-batch (the layer's input holds `B / tp.size`).
    public init(inputs: Int, localOutputs: Int, relu: Bool, parameters: ParameterView, tp: Communicator, rows: Int,
                scratch: SequenceParallelScratch) {
        precondition(rows % tp.size == 0)
        self.inputs = inputs
        self.localOutputs = localOutputs
        self.tp = tp
        local = Linear(inputs: inputs, outputs: localOutputs, relu: relu, parameters: parameters)
        gathered = scratch.activation(rows: rows, cols: inputs)
    }

    public func forward(_ input: Activation, _ output: Activation) {
        tp.allgather(input.value, count: input.rows * inputs, into: gathered.value)
        local.forward(gathered, output)
    }

    public func backward(_ input: Activation, _ output: Activation) {
        tp.allgather(input.value, count: input.rows * inputs, into: gathered.value)
        local.backward(gathered, output)
        tp.reduceScatterSum(gathered.grad, into: input.grad, count: input.rows * inputs)
    }
}

/// `Y = reduce_scatter_rows(Σ_t X_t·W[rows_t, :]) + b` (then ReLU), output held by rows.
///
/// **Forward:** the local partial product `X_t·W_t` for all `B` rows goes to the scratch, and a
/// reduce-scatter over rows leaves rank t rows `t·b ..< (t+1)·b` of the sum; the bias (whole on
/// every rank) and ReLU then run on those `b` rows only: exactly the single-rank `X·W + b` there.
///
/// **Backward:** ReLU's mask and `db = Σ_rows dY` on this rank's `b` rows — a **partial** bias
/// gradient, which the layout sums over the group once per step (``PartialGradientSum``) — then
/// an allgather of the `b × outputs` output gradients into the full `B × outputs`, from which
/// `dW_t = X_tᵀ·dY` and `dX_t = dY·W_tᵀ` are exactly this rank's slices, as in
/// ``RowParallelLinear``.
///
/// Per call and rank the ledger counts `B·outputs·4` bytes for the reduce-scatter (forward) and
/// the allgather (backward).
public final class SequenceParallelRowLinear: Layer {
    public let localInputs: Int
    public let outputs: Int
    public let relu: Bool
    let local: Linear
    let bias: UnsafeMutablePointer<Float>
    let biasGrad: UnsafeMutablePointer<Float>
    let tp: Communicator
    /// The full `B × outputs` partial product (forward) and output gradient (backward), in the
    /// shared scratch.
    let full: Activation

    /// - Parameters:
    ///   - parameters: `localInputs · outputs + outputs` floats: `W[rows_t, :]` then all of `b`.
    ///   - rows: `B`, the rows of the whole micro-batch (the layer's output holds `B / tp.size`).
    public init(localInputs: Int, outputs: Int, relu: Bool, parameters: ParameterView, tp: Communicator, rows: Int,
                scratch: SequenceParallelScratch) {
        precondition(parameters.count == localInputs * outputs + outputs && rows % tp.size == 0)
        self.localInputs = localInputs
        self.outputs = outputs
        self.relu = relu
        self.tp = tp
        (local, bias, biasGrad) = RowParallelLinear.split(localInputs: localInputs, outputs: outputs, parameters: parameters)
        full = scratch.activation(rows: rows, cols: outputs)
    }

    public func forward(_ input: Activation, _ output: Activation) {
        local.forward(input, full)
        tp.reduceScatterSum(full.value, into: output.value, count: output.rows * outputs)
        Kernels.addBias(output.value, rows: output.rows, cols: outputs, bias: bias, relu: relu)
    }

    public func backward(_ input: Activation, _ output: Activation) {
        if relu { Kernels.maskByPositive(output.grad, output.value, count: output.rows * outputs) }
        Kernels.addColumnSums(output.grad, rows: output.rows, cols: outputs, into: biasGrad)
        tp.allgather(output.grad, count: output.rows * outputs, into: full.grad)
        local.backward(input, full)
    }
}

/// The one full-rows buffer of a sequence-parallel rank: values and gradients of
/// `capacity` floats each, sized for the largest gathered tensor (`B × width` for the widest
/// column-parallel input or row-parallel output), shared by every sequence-parallel layer and
/// every pipeline slot, since each layer uses it only within one forward or backward call.
/// Counted as ``MemoryCategory/buffers`` (communication space), `2·4·capacity` bytes.
public final class SequenceParallelScratch {
    public let capacity: Int
    let value: FloatBuffer
    let grad: FloatBuffer

    public init(capacity: Int) {
        self.capacity = capacity
        value = FloatBuffer(count: capacity, category: .buffers)
        grad = FloatBuffer(count: capacity, category: .buffers)
    }

    /// A `rows × cols` view of the buffer (made once, when a layer is built).
    public func activation(rows: Int, cols: Int) -> Activation {
        precondition(rows * cols <= capacity)
        return Activation(rows: rows, cols: cols, borrowing: value.pointer, grad: grad.pointer)
    }
}
