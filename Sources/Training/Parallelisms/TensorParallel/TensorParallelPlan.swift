import Core
import Distributed

/// How a range of the model's blocks is laid out on one rank of a tensor-parallel group of `N`:
/// each block's sharding, its local parameters (count and ``ParameterMap``), and the local widths
/// of the activations it reads and writes. Pure: no MPI until ``makeLayer(_:tp:parameters:)``.
///
/// **The pairing rule, over block kinds.** Walking the chain, a dense block (Linear + ReLU) whose
/// successor is also a Linear (dense or head) becomes column-parallel, and that successor
/// row-parallel: Megatron's pair, whose inner activation stays split and needs no communication.
/// Every other block — the embedding, a head left without a partner — is replicated. For this
/// model that pairs (fc1, fc2), (fc3, fc4), …, and the head when `layers` is odd. A group of one
/// rank replicates everything: the plan is then the reference model's blocks.
///
/// The pairing is decided over the whole chain, so a pipeline stage can take any range of
/// blocks (even one that cuts a pair: the activation it sends is then a per-rank slice, and
/// ``widths`` says so). `train_3d` composes this with ``PipelineStage`` and FSDP without new math.
public struct TensorParallelPlan: Sendable {
    public enum Sharding: Sendable, Equatable {
        case replicated
        /// Column slice of `W` and `b`: ``ColumnParallelLinear``.
        case column
        /// Row slice of `W`, the whole `b`: ``RowParallelLinear``.
        case row
    }

    /// One block on this rank.
    public struct LocalBlock: Sendable {
        /// The block of the model.
        public let block: Block
        public let sharding: Sharding
        /// Where this rank's floats of the block sit in the canonical vector, in local order.
        public let map: ParameterMap
        /// Local width of the activation the block reads, and of the one it writes.
        public let inputWidth: Int
        public let outputWidth: Int
        public var index: Int { block.index }
        public var parameterCount: Int { map.count }
    }

    public let tpSize: Int
    public let tpRank: Int
    public let blocks: [LocalBlock]
    /// Megatron's sequence parallelism outside the pairs (``SequenceSplit``): the layers of the
    /// pairs become ``SequenceParallelColumnLinear`` and ``SequenceParallelRowLinear``.
    public let sequenceParallel: Bool

    /// The sharding of every block of `plan` over a group of `tpSize` ranks (the pairing rule).
    public static func shardings(_ plan: BlockPlan, tpSize: Int) -> [Sharding] {
        var result: [Sharding] = []
        for block in plan.blocks {
            let next = block.index + 1 < plan.count ? plan[block.index + 1] : nil
            if tpSize > 1, result.last == .column {
                result.append(.row)
            } else if tpSize > 1, block.kind == .dense, let next, next.kind.isLinear {
                result.append(.column)
            } else {
                result.append(.replicated)
            }
        }
        return result
    }

    /// Throws unless every width the pairing splits is divisible by `tpSize`.
    public static func check(_ plan: BlockPlan, tpSize: Int) throws(UsageError) {
        for (block, sharding) in zip(plan.blocks, shardings(plan, tpSize: tpSize)) {
            let split = sharding == .column ? block.weightColumns : sharding == .row ? block.weightRows : 0
            if split % tpSize != 0 {
                throw UsageError("tensor parallelism over \(tpSize) ranks needs --hidden divisible by \(tpSize) (got --hidden \(plan.config.hidden)); use a rank count that divides it")
            }
        }
    }

    /// - Throws: `UsageError` when `tpSize` does not divide a width the pairing splits.
    public init(_ plan: BlockPlan, blocks range: Range<Int>, tpSize: Int, tpRank: Int, sequenceParallel: Bool = false) throws(UsageError) {
        precondition(tpRank >= 0 && tpRank < tpSize && range.lowerBound >= 0 && range.upperBound <= plan.count)
        try Self.check(plan, tpSize: tpSize)
        self.tpSize = tpSize
        self.tpRank = tpRank
        self.sequenceParallel = sequenceParallel
        let shardings = Self.shardings(plan, tpSize: tpSize)
        blocks = range.map { i in
            let block = plan[i], offset = block.parameterOffset
            let inputs = block.weightRows, outputs = block.weightColumns
            switch shardings[i] {
            case .replicated:
                return LocalBlock(block: block, sharding: .replicated, map: .contiguous(offset, block.parameterCount),
                                  inputWidth: block.inputWidth, outputWidth: block.outputWidth)
            case .column:
                // One run per input row: W[r, t·o ..< (t+1)·o], then b[t·o ..< (t+1)·o].
                let o = outputs / tpSize, first = tpRank * o
                var map = ParameterMap()
                for r in 0..<inputs { map.append(start: offset + r * outputs + first, count: o) }
                map.append(start: offset + inputs * outputs + first, count: o)
                return LocalBlock(block: block, sharding: .column, map: map, inputWidth: inputs, outputWidth: o)
            case .row:
                // Rows t·k ..< (t+1)·k of W are contiguous; then the whole bias.
                let k = inputs / tpSize
                let map = ParameterMap.contiguous(offset + tpRank * k * outputs, k * outputs)
                    + .contiguous(offset + inputs * outputs, outputs)
                return LocalBlock(block: block, sharding: .row, map: map, inputWidth: k, outputWidth: outputs)
            }
        }
    }

    /// Local parameters of all the blocks.
    public var parameterCount: Int { blocks.reduce(0) { $0 + $1.parameterCount } }
    /// The blocks' maps one after the other: the map of a buffer laid out block after block.
    public var map: ParameterMap { blocks.reduce(ParameterMap()) { $0 + $1.map } }
    /// Local activation widths: the input of the first block, then every block's output.
    public var widths: [Int] { [blocks.first?.inputWidth ?? 0] + blocks.map(\.outputWidth) }

    /// The layer of one block over `parameters` (``LocalBlock/parameterCount`` floats, in
    /// ``LocalBlock/map`` order). The sharded layers communicate over `tp` (`tpSize` ranks).
    /// With ``sequenceSplit`` they also need the micro-batch's `rows` (all `B` of them) and the
    /// shared `scratch` (``scratchCapacity(rows:)`` floats).
    public func makeLayer(_ local: LocalBlock, tp: Communicator, parameters view: ParameterView,
                          rows: Int = 0, scratch: SequenceParallelScratch? = nil) -> Layer {
        precondition(tp.size == tpSize && tp.rank == tpRank)
        precondition(view.count == local.parameterCount)
        let relu = local.block.kind.appliesReLU
        if sequenceSplit != nil, local.sharding != .replicated {
            guard let scratch else { preconditionFailure("sequence-parallel layers need the scratch buffer") }
            return local.sharding == .column
                ? SequenceParallelColumnLinear(inputs: local.inputWidth, localOutputs: local.outputWidth, relu: relu,
                                               parameters: view, tp: tp, rows: rows, scratch: scratch)
                : SequenceParallelRowLinear(localInputs: local.inputWidth, outputs: local.outputWidth, relu: relu,
                                            parameters: view, tp: tp, rows: rows, scratch: scratch)
        }
        switch local.sharding {
        case .replicated:
            return local.block.makeLayer(parameters: view)
        case .column:
            return ColumnParallelLinear(inputs: local.inputWidth, localOutputs: local.outputWidth, relu: relu,
                                        parameters: view, tp: tp)
        case .row:
            return RowParallelLinear(localInputs: local.inputWidth, outputs: local.outputWidth, relu: relu,
                                     parameters: view, tp: tp)
        }
    }

    /// The layers over one flat buffer holding the blocks one after the other (``map`` order).
    public func makeLayers(tp: Communicator, buffer: ParameterBuffer, rows: Int = 0, scratch: SequenceParallelScratch? = nil) -> [Layer] {
        precondition(buffer.count == parameterCount)
        var offset = 0
        return blocks.map { local in
            defer { offset += local.parameterCount }
            return makeLayer(local, tp: tp, parameters: buffer.view(offset: offset, count: local.parameterCount),
                             rows: rows, scratch: scratch)
        }
    }
}
