import Core
import Distributed

/// Sequence parallelism (`--sequence-parallel`) as a chain of blocks sees it: which activations a
/// rank holds only `1/T` of the rows of, and which rows those are.
///
/// Outside the tensor-parallel pairs — the token ids and the embedding's output, every
/// row-parallel output (where its bias and ReLU run, and which the next pair's column-parallel
/// layer reads), an unpaired head's output, the logits and the loss — rank t of the group of `T`
/// holds rows `t·b ..< (t+1)·b` of each micro-batch of `B` rows, `b = B/T`. Inside a pair (a
/// column-parallel output, the row-parallel input) it holds all `B` rows of its column slice, as
/// in plain tensor parallelism. So the activation memory of the regions outside the pairs is
/// divided by `T`; for this model, per micro-batch and rank, in floats (values and gradients,
/// times 2), with `H_t = hidden/T`:
///
///     plain TP:  B · (seq + seq·emb + Σ_pairs H_t + Σ_outside widths)
///     SP:        B/T · (seq + seq·emb + Σ_outside widths) + B · Σ_pairs H_t
///
/// where "outside widths" are the outputs of the row-parallel layers and of an unpaired head
/// (hidden or vocab). A ``SequenceParallelScratch`` of `B · max width` floats (twice) that all
/// layers share holds the full rows transiently.
public struct SequenceSplit: Sendable, Equatable {
    public let tpSize: Int
    public let tpRank: Int
    /// Per activation of the chain (its input, then each block's output): whether it holds only
    /// this rank's rows.
    public let splitsRows: [Bool]

    /// Rows of each activation for micro-batches of `rows` rows.
    public func activationRows(_ rows: Int) -> [Int] {
        splitsRows.map { $0 ? rows / tpSize : rows }
    }

    /// This rank's rows of the micro-batch `rows`: the `t`-th of `T` equal runs.
    public func shard(_ rows: Range<Int>) -> Range<Int> {
        let b = rows.count / tpSize, start = rows.lowerBound + tpRank * b
        return start ..< start + b
    }
}

extension TensorParallelPlan {
    /// The row split of ``widths``' activations under sequence parallelism (nil without it, or
    /// over a group of one rank, where nothing is split).
    public var sequenceSplit: SequenceSplit? {
        guard sequenceParallel, tpSize > 1, let first = blocks.first else { return nil }
        // A block's input is inside a pair exactly when the block is row-parallel; its output
        // exactly when it is column-parallel.
        return SequenceSplit(tpSize: tpSize, tpRank: tpRank,
                             splitsRows: [first.sharding != .row] + blocks.map { $0.sharding != .column })
    }

    /// Floats of the one ``SequenceParallelScratch`` for micro-batches of `rows` rows: the
    /// largest full-rows tensor a layer gathers (a column-parallel input) or scatters (a
    /// row-parallel output).
    public func scratchCapacity(rows: Int) -> Int {
        blocks.map { $0.sharding == .column ? rows * $0.inputWidth : $0.sharding == .row ? rows * $0.outputWidth : 0 }.max() ?? 0
    }

    /// The floats of `block` (local indices) whose gradients sequence parallelism leaves
    /// **partial**, because they are used on this rank's rows only: a replicated block's
    /// (embedding, unpaired head) all, a row-parallel block's bias. Summed over the group once
    /// per step (``PartialGradientSum``). Nil for a column-parallel block (its slice's gradient
    /// is complete: it saw all `B` rows) and without sequence parallelism.
    public func partialGradients(_ block: LocalBlock) -> Range<Int>? {
        guard sequenceSplit != nil else { return nil }
        switch block.sharding {
        case .replicated: return 0 ..< block.parameterCount
        case .row: return block.parameterCount - block.outputWidth ..< block.parameterCount
        case .column: return nil
        }
    }

    /// ``partialGradients(_:)`` of every block, as ranges of a buffer holding the blocks one
    /// after the other (``map`` order).
    public var partialGradientRanges: [Range<Int>] {
        var offset = 0, ranges: [Range<Int>] = []
        for block in blocks {
            if let r = partialGradients(block) { ranges.append(offset + r.lowerBound ..< offset + r.upperBound) }
            offset += block.parameterCount
        }
        return ranges
    }
}

/// Sums over the tensor-parallel group the gradients that sequence parallelism leaves partial
/// (``TensorParallelPlan/partialGradients(_:)``): each rank computed them from its `B/T` rows, and
/// the full-batch gradient is their sum — Megatron's allreduce of the sequence-parallel
/// parameters' gradients. Runs once per optimizer step, after the last micro-step's backward.
///
/// The ranges are packed into one buffer and summed in **one** allreduce of `P` floats (`4·P`
/// bytes of payload; for `--layers 1`, `P = vocab·emb + vocab`: the embedding and the head's
/// bias), then unpacked. Every rank receives the same sum, so the replicas stay bit-identical.
public final class PartialGradientSum {
    /// Where the partial gradients sit in ``gradients``.
    public let ranges: [Range<Int>]
    /// `P`, the floats summed per step.
    public let count: Int
    let gradients: UnsafeMutablePointer<Float>
    let packed: FloatBuffer
    let tp: Communicator

    public init(ranges: [Range<Int>], gradients: UnsafeMutablePointer<Float>, tp: Communicator) {
        self.ranges = ranges
        self.gradients = gradients
        self.tp = tp
        count = ranges.reduce(0) { $0 + $1.count }
        packed = FloatBuffer(count: count, category: .buffers)
    }

    /// The allreduce (collective over the tensor-parallel group).
    public func sum() {
        let packed = packed.pointer
        var offset = 0
        for r in ranges {
            (packed + offset).update(from: gradients + r.lowerBound, count: r.count)
            offset += r.count
        }
        tp.allreduceSum(packed, count: count)
        offset = 0
        for r in ranges {
            (gradients + r.lowerBound).update(from: packed + offset, count: r.count)
            offset += r.count
        }
    }
}
