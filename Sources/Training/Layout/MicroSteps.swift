import Core

/// Gradient accumulation (`--accumulate K`): a rank's rows of the global batch run as `K`
/// micro-steps of equal size, one after the other, before the optimizer step.
///
/// Every layout scales its loss by 1/B for the global batch B already, so gradients that add up
/// over the micro-steps are exactly the full-batch gradient: the same model as `train` with the
/// same global batch, while activations (and every other buffer sized by rows) shrink to a K-th.
/// What a layout communicates per micro-step is its own business: DP holds its gradient
/// allreduce until the last micro-step (one per optimizer step), FSDP's ZeRO-1 likewise adds
/// them up in its full gradient and reduce-scatters once, ZeRO-2 (no full gradient) reduce-scatters
/// each micro-step's gradients into its shard, ZeRO-3 must also gather its parameters for every
/// micro-step's forward and backward, TP allreduces the activations of every micro-step, and a pipeline
/// runs its schedule once per micro-step.
public struct MicroSteps: Sendable, Equatable {
    /// The rows of the global batch this rank trains on.
    public let rows: Range<Int>
    /// `K`, the number of micro-steps.
    public let count: Int

    /// `rows` cut into `count` equal micro-steps (``LayoutShape`` checked that they divide).
    public init(rows: Range<Int>, count: Int) {
        precondition(count >= 1 && rows.count % count == 0)
        self.rows = rows
        self.count = count
    }

    /// Rows per micro-step.
    public var rowsPerStep: Int { rows.count / count }

    /// The rows of micro-step `j`.
    public func rows(_ j: Int) -> Range<Int> {
        let start = rows.lowerBound + j * rowsPerStep
        return start ..< start + rowsPerStep
    }

    /// Whether micro-step `j` is the last before the optimizer step.
    public func isLast(_ j: Int) -> Bool { j == count - 1 }
}

extension Model {
    /// The summed cross-entropy of this rank's rows of batch `index`, forward only, micro-step by
    /// micro-step (the whole-model layouts' `evaluate`; each divides and sums over ranks itself).
    func forwardLoss(batch index: Int, _ steps: MicroSteps, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: tokens.value, targets: targets)
            lossSum += forward()
        }
        return lossSum
    }
}
