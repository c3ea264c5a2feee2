import Core
import Distributed

/// One model chunk of a pipeline stage: its layers, the chains its micro-batches run in, and the
/// pipeline neighbours its input comes from and its output goes to.
///
/// A non-interleaved stage is one chunk. Interleaved (`--virtual-stages V`), stage `s` of `N` holds
/// chunks `c = 0 ..< V`, the model's chunks `g = c·N + s`: chunk `g` takes its input from the
/// stage holding `g − 1` (stage `s − 1`, or stage `N − 1` when `s = 0`) and sends its output to the
/// stage holding `g + 1` (stage `s + 1`, or stage 0 from the last stage), so activations leave the
/// last stage for stage 0 `V − 1` times per micro-batch, and gradients go back the same way.
///
/// **Matching messages by order, not by chunk.** All chunks use the same two tags. MPI matches a
/// receive to the oldest unmatched send with the same communicator, source and tag (messages do
/// not overtake each other), so it is enough that a receiver posts its receives from one source
/// in the order that source sends. It does: every stage runs its forwards in the same sequence of
/// (micro-batch, chunk) pairs (``PipelineSchedule``'s virtual index `k`), and its backwards in the
/// same sequence with the chunks reversed. Between stages `s` and `s + 1` the chunks correspond
/// one to one (chunk `c` feeds chunk `c`) at the same `k`; from the last stage to stage 0, chunk
/// `c` feeds chunk `c + 1`, which stage 0 reaches at `k + N`: a shift that keeps the order.
/// Forward and backward messages have different tags, so the two directions never mix, even at
/// `N = 2` where both neighbours are the same rank.
final class PipelineChunk {
    /// Position among the stage's chunks.
    let index: Int
    let layers: [Layer]
    let widths: [Int]
    /// The pipeline ranks this chunk receives its input from and sends its output to (nil: the
    /// model's first chunk, fed token ids, or its last, which ends with the loss).
    let previous: Int?
    let next: Int?
    /// Micro-batches this chunk holds at once; micro-batch `m` uses slot `m % slots`.
    let slots: Int
    /// Micro-batch `m` runs in chain `m % chains.count` (one working chain with recomputation).
    let chains: [LayerChain]
    /// With recomputation, the per-slot boundaries (nil without).
    let boundaries: Boundaries?
    /// Where this rank's rows of the input (model's first chunk) and of the targets (last chunk)
    /// start within a micro-batch: 0 unless sequence parallelism splits them.
    let inputRowOffset: Int
    let targetRowOffset: Int
    var forwardSends: [Request]
    var backwardSends: [Request]
    /// With `--batch-weight-gradients`, the staged rows of the run's one weight pass (nil otherwise).
    let batched: BatchedWeightGradients?

    /// - Parameters:
    ///   - hooks: the stage's hooks, addressed by the block's position among all the stage's
    ///     layers; `firstLayer` is this chunk's first layer's position there.
    ///   - split: the activations that hold only this tp rank's rows (sequence parallelism), or nil.
    ///   - batchWeightGradients: stage every micro-batch's rows for one weight pass per run
    ///     (``BatchedWeightGradients``; no recomputation, no split rows).
    init(index: Int, layers: [Layer], widths: [Int], split: SequenceSplit?, hooks: LayerChainHooks?, firstLayer: Int,
         schedule: PipelineSchedule, microRows: Int, seqLen: Int, lossScale: Float, recompute: Bool,
         batchWeightGradients: Bool = false) {
        precondition(!batchWeightGradients || (split == nil && !recompute && schedule.kind != .zeroBubble))
        precondition(!layers.isEmpty && widths.count == layers.count + 1)
        let n = schedule.stages, s = schedule.stage, g = index * n + s
        self.index = index
        self.layers = layers
        self.widths = widths
        let previous = g > 0 ? (s + n - 1) % n : nil, next = g < n * schedule.virtualStages - 1 ? (s + 1) % n : nil
        self.previous = previous
        self.next = next
        slots = schedule.chunkSlots[index]
        precondition(previous != nil || widths[0] == seqLen, "the first chunk's input is the token ids")
        // A chunk that holds one micro-batch at a time (1F1B's last stage) has nothing to save by recomputing.
        let recompute = recompute && slots > 1
        let chainHooks = firstLayer == 0 ? hooks : hooks.map { OffsetHooks($0, offset: firstLayer) }
        let activationRows = split?.activationRows(microRows) ?? widths.map { _ in microRows }
        let inputRows = activationRows[0], outputRows = activationRows[widths.count - 1]
        // Slot 0 runs the layers themselves, every other slot their copies (``Layer/forAnotherSlot()``:
        // the same layers, except a mixture of experts' own routing state).
        chains = (0..<(recompute ? 1 : slots)).map { slot in
            LayerChain(layers: slot == 0 ? layers : layers.map { $0.forAnotherSlot() }, widths: widths, activationRows: activationRows,
                       loss: next == nil ? SoftmaxCrossEntropy(gradientScale: lossScale) : nil, hooks: chainHooks)
        }
        inputRowOffset = inputRows < microRows ? split!.tpRank * inputRows : 0
        targetRowOffset = outputRows < microRows ? split!.tpRank * outputRows : 0
        boundaries = recompute ? Boundaries(slots: slots, input: previous == nil ? 0 : inputRows * widths[0],
                                            output: next == nil ? 0 : outputRows * widths[widths.count - 1]) : nil
        forwardSends = Array(repeating: Request(), count: slots)
        backwardSends = Array(repeating: Request(), count: slots)
        batched = batchWeightGradients
            ? BatchedWeightGradients(layers: layers, widths: widths, rows: microRows * schedule.microBatches) : nil
    }

    /// Waits for every send still on its way.
    func waitForSends() {
        for k in forwardSends.indices {
            forwardSends[k].wait()
            backwardSends[k].wait()
        }
    }
}

/// A stage's hooks seen from one of its chunks: the chunk's block `i` is the stage's block
/// `offset + i` (FSDP's shards in `train_3d` are laid out over all the stage's blocks).
final class OffsetHooks: LayerChainHooks {
    let base: LayerChainHooks
    let offset: Int
    init(_ base: LayerChainHooks, offset: Int) { (self.base, self.offset) = (base, offset) }
    func willRunForward(_ block: Int) { base.willRunForward(offset + block) }
    func willRunBackward(_ block: Int) { base.willRunBackward(offset + block) }
    func willRunWeightPass(_ block: Int) { base.willRunWeightPass(offset + block) }
    func didRunBackward(_ block: Int) { base.didRunBackward(offset + block) }
}

extension PipelineChunk {
    /// What recomputation keeps per slot: the received input, and the copies of the output and of
    /// the input gradient while they are being sent (the working chain is overwritten meanwhile).
    /// Counted in the memory ledger as activations.
    final class Boundaries {
        /// Floats per slot of the input (`rows × width`) and of the output.
        let input: Int, output: Int, slots: Int
        /// `slots × input` floats each, and `slots × output`.
        let inputs: UnsafeMutablePointer<Float>
        let inputGradients: UnsafeMutablePointer<Float>
        let outputs: UnsafeMutablePointer<Float>
        var bytes: Int { 4 * slots * (2 * input + output) }

        /// `input`: floats of the stage's input activation (0 on the first stage, which re-reads
        /// its token ids); `output`: of its output (0 on the last stage, which sends nothing forward).
        init(slots: Int, input: Int, output: Int) {
            (self.slots, self.input, self.output) = (slots, input, output)
            inputs = .allocate(capacity: Swift.max(1, slots * input))
            inputGradients = .allocate(capacity: Swift.max(1, slots * input))
            outputs = .allocate(capacity: Swift.max(1, slots * output))
            inputs.initialize(repeating: 0, count: Swift.max(1, slots * input))
            inputGradients.initialize(repeating: 0, count: Swift.max(1, slots * input))
            outputs.initialize(repeating: 0, count: Swift.max(1, slots * output))
            MemoryLedger.add(.activations, bytes: bytes)
        }

        deinit {
            inputs.deallocate()
            inputGradients.deallocate()
            outputs.deallocate()
            MemoryLedger.add(.activations, bytes: -bytes)
        }

        func saveInput(_ activation: Activation, slot: Int) {
            guard input > 0 else { return }
            Kernels.copy(activation.value, into: inputs + slot * input, count: input)
        }

        func restoreInput(_ activation: Activation, slot: Int) {
            guard input > 0 else { return }
            Kernels.copy(inputs + slot * input, into: activation.value, count: input)
        }

        func keepOutput(_ activation: Activation, slot: Int) -> UnsafeMutablePointer<Float> {
            let copy = outputs + slot * output
            Kernels.copy(activation.value, into: copy, count: output)
            return copy
        }

        func keepInputGradient(_ activation: Activation, slot: Int) -> UnsafeMutablePointer<Float> {
            let copy = inputGradients + slot * input
            Kernels.copy(activation.grad, into: copy, count: input)
            return copy
        }
    }
}
