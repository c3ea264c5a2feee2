import Core

/// `--batch-weight-gradients`: each chunk's weight gradients once per schedule run, over all its
/// micro-batches' rows, instead of once per micro-batch.
///
/// A weight gradient `dW += Xᵀ·dY` over a micro-batch of `b` rows reads and writes all of dW for
/// a depth of only `b`: with 1024 × 1024 weights and `b = 32`, 8 MiB of memory traffic for
/// 67 MFLOP, once per micro-batch. So each micro-batch's backward runs only its input-gradient
/// half (``LayerChain/backwardInput()``, which the previous stage is waiting for) and copies what
/// the weight half needs — each splitting layer's input X and its output gradient dY, ReLU mask
/// applied — into rows `m·b ..< (m+1)·b` of a staging buffer per layer. After the run's last
/// backward, every layer that splits its backward (Linear, the embedding) computes its parameter
/// gradient once over the `M·b` rows: the sum `train` computes over its whole batch, in the same
/// order (the micro-batches' rows in order, the product's depth blocks over all of them).
///
/// The stage first waits for its sends (``PipelineStage``): the previous stage is blocked on the
/// last input gradient, and a large message may only move while its sender is inside MPI.
///
/// **Memory:** `4·M·b·(w_in + w_out)` bytes per splitting layer (activations), allocated once:
/// GPipe's activations for those layers, which 1F1B otherwise saves. **Communication:** none.
final class BatchedWeightGradients {
    /// For each layer: its staged inputs (`value`) and output gradients (`grad`), or nil when
    /// the layer does not split its backward.
    let staged: [(input: Activation, output: Activation)?]
    /// Each layer as a ``SplitBackward`` (nil where `staged` is).
    let split: [SplitBackward?]
    let storage: UnsafeMutablePointer<Float>?
    let count: Int

    /// Floats staged for `layers` with activation `widths` over `rows` rows: one input and one
    /// output gradient per layer that splits its backward.
    static func count(layers: [Layer], widths: [Int], rows: Int) -> Int {
        layers.indices.filter { layers[$0] is SplitBackward }.reduce(0) { $0 + rows * (widths[$1] + widths[$1 + 1]) }
    }

    init(layers: [Layer], widths: [Int], rows: Int) {
        count = Self.count(layers: layers, widths: widths, rows: rows)
        let storage: UnsafeMutablePointer<Float>? = count > 0 ? .allocate(capacity: count) : nil
        storage?.initialize(repeating: 0, count: count)
        self.storage = storage
        var offset = 0
        staged = layers.indices.map { i in
            guard let storage, layers[i] is SplitBackward else { return nil }
            let input = storage + offset, output = input + rows * widths[i]
            offset += rows * (widths[i] + widths[i + 1])
            // Only the input's values and the output's gradients are read: each view's other
            // pointer aliases its own floats and is never written.
            return (Activation(rows: rows, cols: widths[i], borrowing: input, grad: input),
                    Activation(rows: rows, cols: widths[i + 1], borrowing: output, grad: output))
        }
        split = layers.map { $0 as? SplitBackward }
        MemoryLedger.add(.activations, bytes: 4 * count)
    }

    deinit {
        storage?.deallocate()
        MemoryLedger.add(.activations, bytes: -4 * count)
    }

    /// After micro-batch `m`'s input-gradient pass in `chain`: its inputs and masked output
    /// gradients into rows `m·b ..< (m+1)·b`.
    func keep(_ chain: LayerChain, microBatch m: Int) {
        for i in staged.indices {
            guard let pair = staged[i] else { continue }
            let input = chain.activations[i], output = chain.activations[i + 1]
            Kernels.copy(input.value, into: pair.input.value + m * input.count, count: input.count)
            Kernels.copy(output.grad, into: pair.output.grad + m * output.count, count: output.count)
        }
    }

    /// The weight pass over every staged row, last layer first, with the chain's hooks around each.
    func weightPass(hooks: LayerChainHooks?) {
        for i in staged.indices.reversed() {
            guard let pair = staged[i], let layer = split[i] else { continue }
            hooks?.willRunWeightPass(i)
            layer.backwardWeights(pair.input, pair.output)
            hooks?.didRunBackward(i)
        }
    }
}
