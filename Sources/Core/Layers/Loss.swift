#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Softmax followed by cross-entropy against integer targets.
///
/// `forward(logits, targets)` returns the **sum** over the rows of `−log softmax(logits)[target]`
/// and leaves the probabilities in `logits.grad`; `backward(logits, targets)` turns them in place
/// into `∂L/∂logits = (p − onehot(target)) · gradientScale`.
///
/// The scale is `1 / global batch size`: every rank, micro-batch and shard scales its own rows by
/// the *global* size, so gradients are summed (never averaged) across ranks and micro-batches and
/// no division loop runs anywhere. The loss is computed as `log Z + max − logit[target]`, which
/// stays finite for any finite logits (no `log(0)` when a probability underflows).
public struct SoftmaxCrossEntropy: Sendable {
    public var gradientScale: Float

    public init(gradientScale: Float) { self.gradientScale = gradientScale }

    public func forward(_ logits: Activation, _ targets: UnsafePointer<Int32>) -> Float {
        Kernels.softmaxCrossEntropy(logits.value, rows: logits.rows, cols: logits.cols, targets: targets, into: logits.grad)
    }

    public func backward(_ logits: Activation, _ targets: UnsafePointer<Int32>) {
        Kernels.crossEntropyGradient(logits.grad, rows: logits.rows, cols: logits.cols, targets: targets, scale: gradientScale)
    }
}
