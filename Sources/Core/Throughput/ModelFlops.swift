/// The model FLOPs of a training step: the arithmetic the model needs, whatever the layout.
///
/// Counted: the matrix products, 2 FLOP per multiply-add. A Linear `y = x·W + b` of
/// `W [in × out]` over B rows costs `2·B·in·out` forward (`x·W`) and `4·B·in·out` backward
/// (`dW = xᵀ·dy` and `dx = dy·Wᵀ`; the first Linear's `dx` is needed too, since the embedding
/// trains), so **6·B·Σ in·out** per step over the global batch B. Not counted: the embedding's
/// row copies, bias adds, ReLU, softmax and the optimizer, all O(B·width) or O(Ψ) against the
/// products' O(B·in·out) (a few percent of the products for the default model), and nothing a layout adds
/// (communication, padding, recomputation), so every layout of one model has the same figure.
/// Default model, B = 32: 6·32·(256·64 + 64·27) = 3,477,504 FLOP.
///
/// A mixture-of-experts block counts its router (`6·B·in·E`) and K experts per row
/// (`6·B·K·in·out`, as if dropless: the products the model asks for, not the ones a capacity
/// factor leaves).
extension BlockPlan {
    /// Forward and backward FLOPs of one training step over `batchSize` rows (see above).
    public func trainingFlops(batchSize: Int) -> Double {
        blocks.reduce(0) { total, block in
            let product = 6 * Double(batchSize) * Double(block.weightRows)
            if block.kind == .mixtureOfExperts, let experts = block.experts {
                return total + product * Double(experts.count + experts.topK * block.weightColumns)
            }
            return block.kind.isLinear ? total + product * Double(block.weightColumns) : total
        }
    }
}
