import Core

/// The all-to-all a mixture of experts uses when its experts are spread over ranks (expert
/// parallelism, `train_ep`): ``ExpertGroupExchange`` over a communicator of the expert group.
/// Arrays have one entry per rank of the group; counts and offsets are in elements.
public protocol ExpertAllToAll: AnyObject {
    /// This rank's place in the expert group, and the group's size E'.
    var rank: Int { get }
    var ranks: Int { get }
    /// `count` Int32 to each rank (block `d` of `input` to rank `d`), one block from each into `output`.
    func allToAll(_ input: UnsafePointer<Int32>, count: Int, into output: UnsafeMutablePointer<Int32>)
    /// Rows of floats: `sendCounts[d]` from `sendOffsets[d]` to rank `d`; `receiveCounts[q]` from
    /// rank `q` into `output` at `receiveOffsets[q]`.
    func allToAllV(_ input: UnsafePointer<Float>, sendCounts: UnsafePointer<Int32>, sendOffsets: UnsafePointer<Int32>,
                   into output: UnsafeMutablePointer<Float>, receiveCounts: UnsafePointer<Int32>, receiveOffsets: UnsafePointer<Int32>)
}

/// Expert parallelism inside one ``MixtureOfExperts`` block: rank j of an expert group of E'
/// ranks holds experts `[j·m, (j+1)·m)`, m = E/E', and computes them for the whole group's rows.
///
/// The block routes its own rows exactly as on one rank (the capacity rule over the global batch
/// comes from its ``ExpertBatchExchange``) and packs the kept assignments' input rows sorted by
/// expert. Since each rank holds a contiguous run of experts, the packed rows for rank d are one
/// contiguous run too, so the packed buffer is the send buffer as it is:
///
///     forward   counts:  all-to-all of the m kept counts per peer          (m Int32 to each rank)
///               rows:    packed X rows ──all-to-all-v──→ expert owners      (rows · in floats)
///               owner:   h = ReLU(X·W_e + b_e), per (source, expert) run
///               back:    h rows ──all-to-all-v──→ their packed places       (rows · out floats)
///     backward  dh rows (gate and ReLU mask applied) ──all-to-all-v──→ owners (rows · out)
///               owner:   db_e += Σ dh, dW_e += Xᵀ·dh, dX = dh·W_eᵀ
///               back:    dX rows ──all-to-all-v──→ their packed places     (rows · in)
///
/// after which the block continues exactly as the reference does (gates, combine, router). An
/// owner keeps the received rows in source order (rank 0's first), each source's rows sorted by
/// expert, and runs each expert once per source; the gradient of an expert held by several
/// groups is then summed over them by the layout (its `replicate` axis).
///
/// **Bytes per block and step, this rank**, with `s` the kept assignments it sends to the other
/// ranks of its group and `r` those it receives from them: forward `4·s·in + 4·r·out`, backward
/// `4·s·out + 4·r·in` in four all-to-all-v calls, plus `4·(E'−1)·m` bytes of counts in one
/// all-to-all. Over the group, Σs = Σr: every row that leaves for another rank carries its `in`
/// floats there and its `out` floats back, both ways.
///
/// **Memory.** The received rows, their outputs and both gradients, for the worst case: every
/// assignment of the group's rows going to this rank — at most `min(E'·b·min(K, m), m·cap)` rows
/// (b the rows per rank, cap the capacity per expert): `8·rows·(in + out)` bytes, plus
/// `4·(E'·m + 4·E')` bytes of counts and offsets. Allocated once; nothing per step.
public final class ExpertShards: ExpertPlacement {
    let exchange: ExpertAllToAll
    /// Experts per rank (m) and the group's size (E').
    let perRank: Int
    let ranks: Int
    /// The most rows this rank may receive (the buffers' size).
    public let maxReceived: Int
    /// `[maxReceived × in]`: value the received input rows X, grad their gradient dX.
    let received: Activation
    /// `[maxReceived × out]`: value the experts' outputs h, grad the received dh.
    let computed: Activation
    /// `E'·m` Int32: from each source rank, the rows it sends for each of this rank's experts.
    let receivedCounts: UnsafeMutablePointer<Int32>
    /// `4·E'` Int32: rows to send and their first packed row, rows to receive and their first
    /// received row, per rank of the group; then scaled to floats for one call (`scratch`).
    let rowsOut: UnsafeMutablePointer<Int32>
    var startsOut: UnsafeMutablePointer<Int32> { rowsOut + ranks }
    var rowsIn: UnsafeMutablePointer<Int32> { rowsOut + 2 * ranks }
    var startsIn: UnsafeMutablePointer<Int32> { rowsOut + 3 * ranks }
    let scratch: UnsafeMutablePointer<Int32>
    var integerCount: Int { ranks * perRank + 8 * ranks }

    /// Rows this rank received in the last forward (from every rank of its group, itself included).
    public private(set) var receivedRows = 0

    /// Buffers for `block`, whose experts are `exchange.ranks` runs of equal length, this rank's
    /// the block's ``MixtureOfExperts/localExperts``; `maxReceived` is the worst case above.
    public init(block: MixtureOfExperts, exchange: ExpertAllToAll, maxReceived: Int) {
        ranks = exchange.ranks
        perRank = block.experts.count / ranks
        precondition(perRank * ranks == block.experts.count && block.localExperts == exchange.rank * perRank ..< (exchange.rank + 1) * perRank)
        self.exchange = exchange
        self.maxReceived = maxReceived
        received = Activation(rows: maxReceived, cols: block.inputs)
        computed = Activation(rows: maxReceived, cols: block.outputs)
        let count = ranks * perRank + 8 * ranks
        receivedCounts = .allocate(capacity: count)
        receivedCounts.initialize(repeating: 0, count: count)
        rowsOut = receivedCounts + ranks * perRank
        scratch = rowsOut + 4 * ranks
        MemoryLedger.add(.buffers, bytes: 4 * count)
    }

    deinit {
        receivedCounts.deallocate()
        MemoryLedger.add(.buffers, bytes: -4 * integerCount)
    }

    /// Sends every kept assignment's packed input row to its expert's rank, runs this rank's
    /// experts on what arrives, and brings the outputs back into `block.packedOutput.value`.
    public func forward(_ block: MixtureOfExperts) {
        let m = perRank
        exchange.allToAll(block.kept, count: m, into: receivedCounts)
        var total = 0
        for d in 0..<ranks {
            var sent = 0, arriving = 0
            for i in 0..<m {
                sent += Int(block.kept[d * m + i])
                arriving += Int(receivedCounts[d * m + i])
            }
            rowsOut[d] = Int32(sent)
            startsOut[d] = block.starts[d * m]
            rowsIn[d] = Int32(arriving)
            startsIn[d] = Int32(total)
            total += arriving
        }
        precondition(total <= maxReceived, "expert parallelism: \(total) rows arrived, the buffers hold \(maxReceived)")
        receivedRows = total
        exchangeRows(block.packedInput.value, width: block.inputs, into: received.value, outbound: true)
        forEachArrivedRun { expert, rows, first in
            block.runExpert(block.localExperts.lowerBound + expert, rows: rows, input: received.value + first * block.inputs,
                            output: computed.value + first * block.outputs)
        }
        exchangeRows(computed.value, width: block.outputs, into: block.packedOutput.value, outbound: false)
    }

    /// Sends the packed output gradients (`block.packedOutput.grad`) to the experts' ranks, runs
    /// this rank's experts' backward on what arrives, and brings the input gradients back into
    /// `block.packedInput.grad`. Uses the last forward's counts.
    public func backward(_ block: MixtureOfExperts) {
        exchangeRows(block.packedOutput.grad, width: block.outputs, into: computed.grad, outbound: true)
        forEachArrivedRun { expert, rows, first in
            block.backwardExpert(block.localExperts.lowerBound + expert, rows: rows, input: received.value + first * block.inputs,
                                 outputGrad: computed.grad + first * block.outputs, inputGrad: received.grad + first * block.inputs)
        }
        exchangeRows(received.grad, width: block.inputs, into: block.packedInput.grad, outbound: false)
    }

    /// The received rows as runs, in the order they arrived: source rank by source rank, and within
    /// one source this rank's experts in order — `body(expert, rows, firstRow)` for each non-empty
    /// run (`expert` counted from the first this rank holds). Forward and backward walk the same runs.
    @inline(__always)
    func forEachArrivedRun(_ body: (_ expert: Int, _ rows: Int, _ first: Int) -> Void) {
        let m = perRank
        var row = 0
        for q in 0..<ranks {
            for i in 0..<m {
                let count = Int(receivedCounts[q * m + i])
                if count > 0 { body(i, count, row) }
                row += count
            }
        }
    }

    /// One all-to-all-v of rows `width` floats wide: outbound from the packed buffer to the
    /// owners (`rowsOut`/`startsOut` sent, `rowsIn`/`startsIn` received), or back the other way.
    func exchangeRows(_ input: UnsafePointer<Float>, width: Int, into output: UnsafeMutablePointer<Float>, outbound: Bool) {
        let sendRows = outbound ? rowsOut : rowsIn, sendStarts = outbound ? startsOut : startsIn
        let receiveRows = outbound ? rowsIn : rowsOut, receiveStarts = outbound ? startsIn : startsOut
        let w = Int32(width)
        for d in 0..<ranks {
            scratch[d] = sendRows[d] * w
            scratch[ranks + d] = sendStarts[d] * w
            scratch[2 * ranks + d] = receiveRows[d] * w
            scratch[3 * ranks + d] = receiveStarts[d] * w
        }
        exchange.allToAllV(input, sendCounts: scratch, sendOffsets: scratch + ranks, into: output,
                           receiveCounts: scratch + 2 * ranks, receiveOffsets: scratch + 3 * ranks)
    }
}

extension ExpertShards {
    /// The same exchange with its own buffers, for a copy of the block in another pipeline slot.
    public func copy(for block: MixtureOfExperts) -> ExpertPlacement {
        ExpertShards(block: block, exchange: exchange, maxReceived: maxReceived)
    }
}

extension MixtureOfExperts {
    /// Makes this block compute its experts where they are held (`train_ep`, `train_3d --ep`): the
    /// block holds ``localExperts``, the other ranks of `exchange`'s group the rest (see
    /// ``ExpertShards``). `maxReceived` rows are allocated for what may arrive, once, here.
    public func shard(over exchange: ExpertAllToAll, maxReceived: Int) {
        place(ExpertShards(block: self, exchange: exchange, maxReceived: maxReceived))
    }
}
