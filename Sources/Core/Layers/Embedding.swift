/// Token embedding followed by flatten: `[B × seq]` token ids → `[B × seq·dim]`.
///
/// The input activation carries token ids as floats (exact for ids below 2²⁴), so an embedding
/// has the same signature as every other layer. The table is `[vocab × dim]`, row per token.
public final class Embedding: SplitBackward {
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

    /// The input is token ids: there is no input gradient, only the table's.
    public func backwardInput(_ input: Activation, _ output: Activation) {}
    public func backwardWeights(_ input: Activation, _ output: Activation) { backward(input, output, accumulate: true) }

    /// As ``backward(_:_:)``, but with `accumulate: false` the table gradient is overwritten
    /// (as if it had been zeroed first).
    public func backward(_ input: Activation, _ output: Activation, accumulate: Bool) {
        if !accumulate { Kernels.zero(table.grad, count: vocab * dim) }
        Kernels.scatterAddRows(output.grad, dim: dim, ids: input.value, count: input.rows * input.cols,
                               into: table.grad, rows: vocab, scratch: scratch)
    }
}
