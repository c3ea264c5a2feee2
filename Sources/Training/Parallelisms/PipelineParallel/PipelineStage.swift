import Core
import Distributed

/// One stage of a pipeline: runs any chain of layers over the micro-batches of a step, receiving
/// its input from the previous stage and sending its output to the next.
///
/// A stage knows nothing of which blocks it runs: it is a list of ``Layer``s, the (local)
/// widths of the `layers.count + 1` activations between them, the hooks to run around them, and
/// its neighbours in the pipeline communicator. It keeps one ``LayerChain`` per micro-batch in
/// flight, all over the same layers. The stage without a previous neighbour fills its input with
/// token ids (as floats) from the sampler; the stage without a next neighbour holds the targets
/// and its chains end with the loss. Tensor-parallel layers and FSDP's hooks can be passed in
/// unchanged (`widths` are then per-rank widths); their own collectives run inside the chain.
///
/// **What moves.** For every micro-batch of `b = rows/M` rows, the forward sends
/// `b × widths.last` floats to the next stage and the backward sends `b × widths[0]` floats of
/// input gradient to the previous one: per step and boundary of width `w`, `2 · rows · w · 4`
/// bytes in `2M` messages, whatever `M`. Sends are non-blocking (a buffer is only waited on
/// before it is written again), receives block; since every stage takes micro-batches in the
/// same order and sends never block, the schedules cannot deadlock. At the end of a step the
/// last stage broadcasts the summed loss over the pipeline (4 bytes).
///
/// Under sequence parallelism (`split`, in `train_3d`) an activation outside the
/// tensor-parallel pairs holds only this tp rank's `b/T` rows, and so does its message at a
/// stage boundary: each tp rank sends its own rows to the same tp rank of the next stage, `1/T`
/// of the bytes. The first stage feeds, and the last scores, only those rows.
///
/// **Memory.** One set of activations (`b × Σ widths` floats, values and gradients) per slot:
/// `M` slots for GPipe, `min(M, N − s)` for 1F1B, `min(M, N)` for ZB-H1. Everything is allocated
/// in `init`.
///
/// **Recomputation** (`--recompute`). A micro-batch in flight then keeps only its stage boundary:
/// the input it received (`b × w_in`; the first stage re-reads its token ids) and the copies of
/// what it sent (its output, `b × w_out`, and later its input gradient, `b × w_in`, until the
/// neighbour has them). One working chain holds the activations: the backward of a micro-batch
/// first reruns its forward there from the saved input, then backpropagates. Activation memory per
/// stage drops from `slots · b · Σ widths · 2` floats to `b · Σ widths · 2 + slots · b · (2 w_in +
/// w_out)`, for one more forward per micro-batch (with FSDP's hooks in `train_3d`, one more
/// allgather per block); the results are bit-identical, the rerun forward being the same
/// arithmetic on the same input. A stage that holds one micro-batch at a time (slots = 1, 1F1B's
/// last stage) keeps its chain: recomputing there would only add.
public final class PipelineStage {
    public let layers: [Layer]
    public let widths: [Int]
    /// The rows of the global batch the next schedule run processes. With `--accumulate` the
    /// layout moves it to each micro-step's rows in turn; its size never changes.
    public var rows: Range<Int> {
        didSet { precondition(rows.count == oldValue.count, "a pipeline's row count is fixed") }
    }
    public let schedule: PipelineSchedule
    /// Rows per micro-batch.
    public let microRows: Int
    let pp: Communicator
    let previous: Int?
    let next: Int?
    /// Micro-batch `m` runs in chain `m % chains.count` (one working chain with recomputation).
    let chains: [LayerChain]
    /// With recomputation, the per-slot stage boundaries (nil without).
    let boundaries: Boundaries?
    /// The pipeline's rows of the batch: token ids (first stage) and targets (last stage).
    let batchTokens: UnsafeMutablePointer<Float>
    let batchTargets: UnsafeMutablePointer<Int32>
    let seqLen: Int
    /// Where this rank's rows of the input (first stage) and of the targets (last stage) start
    /// within a micro-batch: 0 unless sequence parallelism splits them.
    let inputRowOffset: Int
    let targetRowOffset: Int
    var forwardSends: [Request]
    var backwardSends: [Request]

    /// Seconds spent waiting on a neighbour (blocked in a receive, a send's completion or the
    /// loss broadcast) and seconds in training steps, since the stage was made.
    public private(set) var waitingSeconds: Double = 0
    public private(set) var stepSeconds: Double = 0

    /// - Parameters:
    ///   - widths: local widths of the stage's input and of each layer's output
    ///     (`layers.count + 1`); on the first stage `widths[0]` is the context length.
    ///   - hooks: what runs around each layer (FSDP's gather and scatter in `train_3d`).
    ///   - rows: rows of the global batch this pipeline handles, split into `schedule.microBatches`.
    ///   - lossScale: the loss's gradient scale, `1 / global batch`.
    ///   - recompute: keep only each micro-batch's stage boundary and rerun its forward in backward
    ///     (not with split backwards, whose deferred weight passes need the activations).
    ///   - split: the activations that hold only this tp rank's rows (sequence parallelism), or nil.
    public init(layers: [Layer], widths: [Int], hooks: LayerChainHooks? = nil, rows: Range<Int>, schedule: PipelineSchedule,
                pp: Communicator, seqLen: Int, lossScale: Float, recompute: Bool = false, split: SequenceSplit? = nil) {
        precondition(!recompute || schedule.kind != .zeroBubble)
        // A stage that holds one micro-batch at a time (1F1B's last) has nothing to save by it.
        let recompute = recompute && schedule.slots > 1
        precondition(!layers.isEmpty && widths.count == layers.count + 1)
        precondition(schedule.stages == pp.size && schedule.stage == pp.rank && rows.count % schedule.microBatches == 0)
        self.layers = layers
        self.widths = widths
        self.rows = rows
        self.schedule = schedule
        self.pp = pp
        self.seqLen = seqLen
        let microRows = rows.count / schedule.microBatches
        self.microRows = microRows
        let previous = pp.rank > 0 ? pp.rank - 1 : nil, next = pp.rank + 1 < pp.size ? pp.rank + 1 : nil
        self.previous = previous
        self.next = next
        precondition(previous != nil || widths[0] == seqLen, "the first stage's input is the token ids")
        let activationRows = split?.activationRows(microRows) ?? widths.map { _ in microRows }
        let inputRows = activationRows[0], outputRows = activationRows[widths.count - 1]
        chains = (0..<(recompute ? 1 : schedule.slots)).map { _ in
            LayerChain(layers: layers, widths: widths, activationRows: activationRows,
                       loss: next == nil ? SoftmaxCrossEntropy(gradientScale: lossScale) : nil, hooks: hooks)
        }
        inputRowOffset = inputRows < microRows ? split!.tpRank * inputRows : 0
        targetRowOffset = outputRows < microRows ? split!.tpRank * outputRows : 0
        let ends = previous == nil || next == nil
        batchTokens = .allocate(capacity: ends ? rows.count * seqLen : 1)
        batchTargets = .allocate(capacity: ends ? rows.count : 1)
        batchTokens.initialize(repeating: 0, count: ends ? rows.count * seqLen : 1)
        batchTargets.initialize(repeating: 0, count: ends ? rows.count : 1)
        boundaries = recompute ? Boundaries(slots: schedule.slots, input: previous == nil ? 0 : inputRows * widths[0],
                                            output: next == nil ? 0 : outputRows * widths[widths.count - 1]) : nil
        forwardSends = Array(repeating: Request(), count: schedule.slots)
        backwardSends = Array(repeating: Request(), count: schedule.slots)
    }

    deinit {
        batchTokens.deallocate()
        batchTargets.deallocate()
    }

    /// Forward and backward of every micro-batch of global batch `index`, adding into the
    /// layers' parameter gradients (the caller zeroes them). Returns the loss summed over
    /// ``rows``, the same on every stage.
    public func trainingStep(batch index: Int, from sampler: BatchSampler) -> Float {
        let start = MPI.time()
        let total = run(schedule.actions, batch: index, from: sampler)
        stepSeconds += MPI.time() - start
        return total
    }

    /// Forward only: the loss summed over ``rows``, the same on every stage.
    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        let saved = waitingSeconds
        defer { waitingSeconds = saved }
        return run(schedule.forwardOnly, batch: index, from: sampler)
    }

    func run(_ actions: [PipelineAction], batch index: Int, from sampler: BatchSampler) -> Float {
        if previous == nil || next == nil {
            sampler.fill(index: index, rows: rows, tokens: batchTokens, targets: batchTargets)
        }
        var total: Float = 0
        for action in actions {
            switch action.direction {
            case .forward: total += forward(action.microBatch)
            case .backward: backward(action.microBatch)
            case .inputGradient: backward(action.microBatch, split: true)
            case .weightGradient: chains[action.microBatch % chains.count].backwardWeights()
            }
        }
        let start = MPI.time()
        for k in forwardSends.indices {
            forwardSends[k].wait()
            backwardSends[k].wait()
        }
        pp.broadcast(&total, count: 1, root: pp.size - 1)
        waitingSeconds += MPI.time() - start
        return total
    }

    /// Collective over `world`: each rank's share of training-step time spent waiting on a pipeline
    /// neighbour, by world rank, next to the schedule's ideal bubble; the text on world rank 0.
    public func waitingReport(world: Communicator) -> String? {
        var mine = [waitingSeconds, stepSeconds]
        var all = [Double](repeating: 0, count: 2 * world.size)
        world.allgather(&mine, count: 2, into: &all)
        guard world.rank == 0 else { return nil }
        let shares = (0..<world.size).map { format(Float(100 * all[2 * $0] / Swift.max(all[2 * $0 + 1], 1e-12)), 1) + "%" }
        return "pipeline: \(schedule.stages) stages, \(schedule.kind.rawValue), \(schedule.microBatches) micro-batches; "
            + "waiting on neighbours \(shares.joined(separator: " / ")) of step time by rank "
            + "(ideal bubble \(schedule.idealBubbleFormula) = \(format(Float(100 * schedule.idealBubble), 1))%)"
    }

    /// Runs micro-batch `m` forward; on the last stage returns its summed loss (else 0).
    func forward(_ m: Int) -> Float {
        let slot = m % schedule.slots, chain = chains[m % chains.count]
        let start = MPI.time()
        forwardSends[slot].wait()  // the slot's last output may still be on its way
        if let previous {
            pp.receive(chain.input.value, count: chain.input.count, from: previous, tag: .pipelineActivation)
        }
        waitingSeconds += MPI.time() - start
        boundaries?.saveInput(chain.input, slot: slot)
        let loss = restoreAndForward(m, chain)
        if let next {
            let output = boundaries?.keepOutput(chain.output, slot: slot) ?? chain.output.value
            forwardSends[slot] = pp.startSend(output, count: chain.output.count, to: next, tag: .pipelineActivation)
        }
        return loss
    }

    /// Fills the chain's token ids (first stage) or targets (last stage) for micro-batch `m` and
    /// runs it forward.
    func restoreAndForward(_ m: Int, _ chain: LayerChain) -> Float {
        if previous == nil {
            chain.input.value.update(from: batchTokens + (m * microRows + inputRowOffset) * seqLen, count: chain.input.rows * seqLen)
        }
        if next == nil {
            chain.targets.update(from: batchTargets + m * microRows + targetRowOffset, count: chain.rows)
        }
        return chain.forward()
    }

    /// Runs micro-batch `m` backward (its forward ran earlier in the same slot); `split`: only
    /// the input-gradient half (``LayerChain/backwardInput()``), the weight half comes later.
    func backward(_ m: Int, split: Bool = false) {
        let slot = m % schedule.slots, chain = chains[m % chains.count]
        if let boundaries {
            // Rerun the forward from the saved boundary (the loss's too: its backward needs the probabilities).
            boundaries.restoreInput(chain.input, slot: slot)
            _ = restoreAndForward(m, chain)
        }
        let start = MPI.time()
        backwardSends[slot].wait()  // the slot's last input gradient may still be on its way
        if let next { pp.receive(chain.output.grad, count: chain.output.count, from: next, tag: .pipelineGradient) }
        waitingSeconds += MPI.time() - start
        if split { chain.backwardInput() } else { chain.backward() }
        if let previous {
            let inputGradient = boundaries?.keepInputGradient(chain.input, slot: slot) ?? chain.input.grad
            backwardSends[slot] = pp.startSend(inputGradient, count: chain.input.count, to: previous, tag: .pipelineGradient)
        }
    }
}

extension PipelineStage {
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
