import Core
import Distributed
import Tracing

/// One stage of a pipeline: runs its chunks of layers over the micro-batches of a step, receiving
/// each chunk's input from the stage before it and sending its output to the stage after it.
///
/// A stage knows nothing of which blocks it runs: it is one list of ``Layer``s per model chunk
/// (one chunk unless the schedule is interleaved, see ``PipelineChunk``), the (local) widths of
/// the activations between them, the hooks to run around them, and its neighbours in the
/// pipeline communicator. Each chunk keeps one ``LayerChain`` per micro-batch in flight, all over
/// the chunk's layers. The model's first chunk fills its input with token ids (as floats) from the
/// sampler; its last chunk holds the targets and its chains end with the loss. Tensor-parallel
/// layers and FSDP's hooks can be passed in unchanged (`widths` are then per-rank widths); their
/// own collectives run inside the chain.
///
/// **What moves.** For every micro-batch of `b = rows/M` rows, each chunk's forward sends
/// `b × w_out` floats to the stage holding the next chunk and its backward sends `b × w_in` floats
/// of input gradient back: per step and chunk boundary of width `w`, `2 · rows · w · 4` bytes in
/// `2M` messages, whatever `M`. Interleaved, the model has `N·V − 1` boundaries instead of
/// `N − 1`, so each stage sends about `V` times as many bytes (the boundaries' widths decide
/// exactly), in `V` times as many messages. Sends are non-blocking (a buffer is only waited on
/// before it is written again), receives block; every stage takes (micro-batch, chunk) pairs in
/// the same order in each direction, and the schedule simulator (`PipelineScheduleTests`) shows
/// that these orders cannot deadlock. At the end of a step the last stage broadcasts the summed
/// loss over the pipeline (4 bytes).
///
/// Under sequence parallelism (a chunk's `split`, in `train_3d`) an activation outside the
/// tensor-parallel pairs holds only this tp rank's `b/T` rows, and so does its message at a
/// chunk boundary: each tp rank sends its own rows to the same tp rank of the next stage, `1/T`
/// of the bytes. The model's first chunk feeds, and its last scores, only those rows.
///
/// **Memory.** One set of a chunk's activations (`b × Σ widths` floats, values and gradients) per
/// slot: `M` slots for GPipe, `min(M, N − s)` for 1F1B, `min(M, N)` for ZB-H1; interleaved, each
/// chunk its ``PipelineSchedule/chunkSlots`` (chunk 0 up to `2N`), each a `V`-th of a stage's
/// blocks. Everything is allocated in `init`.
///
/// **Recomputation** (`--recompute`). A micro-batch in flight then keeps only its chunk boundary:
/// the input it received (`b × w_in`; the first chunk re-reads its token ids) and the copies of
/// what it sent (its output, `b × w_out`, and later its input gradient, `b × w_in`, until the
/// neighbour has them). One working chain per chunk holds the activations: the backward of a
/// micro-batch first reruns its forward there from the saved input, then backpropagates.
/// Activation memory per chunk drops from `slots · b · Σ widths · 2` floats to `b · Σ widths · 2 +
/// slots · b · (2 w_in + w_out)`, for one more forward per micro-batch (with FSDP's hooks in
/// `train_3d`, one more allgather per block); the results are bit-identical, the rerun forward
/// being the same arithmetic on the same input. A chunk that holds one micro-batch at a time
/// (slots = 1, 1F1B's last stage) keeps its chain: recomputing there would only add.
///
/// **Packed weights** (`train_pp`, more than one micro-batch). Every micro-batch's forward and
/// input gradient read all of each Linear's W for only `b` rows of work, and the product packs W
/// into panels on the fly each time, reading it `depth` strided rows at a time. So the stage packs
/// each W once per run, as both products read it (``PackedWeights/packWeights()``), and the products
/// stream the packed copy: the same floats in the same order, bit for bit; two more copies of the
/// stage's Linear weights (buffers). Not in `train_3d`, whose FSDP hooks gather weights into the
/// layers inside the run.
///
/// **Tracing** (`--trace`). Each micro-batch's work on a chunk is one compute event ("F", "B",
/// "B (input)", "W") around its chain's block events, with the micro-batch and chunk attached to
/// everything recorded meanwhile, receives and sends included.
public final class PipelineStage {
    /// Every chunk's layers, chunk after chunk.
    public let layers: [Layer]
    /// The rows of the global batch the next schedule run processes. With `--accumulate` the
    /// layout moves it to each micro-step's rows in turn; its size never changes.
    public var rows: Range<Int> {
        didSet { precondition(rows.count == oldValue.count, "a pipeline's row count is fixed") }
    }
    public let schedule: PipelineSchedule
    /// Rows per micro-batch.
    public let microRows: Int
    let pp: Communicator
    let chunks: [PipelineChunk]
    /// Whether this stage holds the model's first chunk (reads token ids) or its last (targets).
    let holdsModelEnds: Bool
    /// The pipeline's rows of the batch: token ids (first stage) and targets (last stage).
    let batchTokens: UnsafeMutablePointer<Float>
    let batchTargets: UnsafeMutablePointer<Int32>
    let seqLen: Int
    /// The layers whose weights each run packs first (``PackedWeights/packWeights()``): with more
    /// than one micro-batch, those that can; else none.
    let packed: [PackedWeights]
    /// Whether each run packs the layers' weights first.
    let packsWeights: Bool

    /// Seconds spent waiting on a neighbour (blocked in a receive, a send's completion or the
    /// loss broadcast) and seconds in training steps, since the stage was made.
    public private(set) var waitingSeconds: Double = 0
    public private(set) var stepSeconds: Double = 0

    /// A stage of one chunk.
    public convenience init(layers: [Layer], widths: [Int], hooks: LayerChainHooks? = nil, rows: Range<Int>,
                            schedule: PipelineSchedule, pp: Communicator, seqLen: Int, lossScale: Float, recompute: Bool = false,
                            split: SequenceSplit? = nil, packsWeights: Bool = false, batchWeightGradients: Bool = false) {
        self.init(chunks: [(layers, widths, split)], hooks: hooks, rows: rows, schedule: schedule, pp: pp, seqLen: seqLen,
                  lossScale: lossScale, recompute: recompute, packsWeights: packsWeights, batchWeightGradients: batchWeightGradients)
    }

    /// - Parameters:
    ///   - chunks: each chunk's layers, the local widths of its input and of each layer's output
    ///     (`layers.count + 1`), and the activations that hold only this tp rank's rows under
    ///     sequence parallelism (or nil); `schedule.virtualStages` of them. On the model's first
    ///     chunk `widths[0]` is the context length.
    ///   - hooks: what runs around each layer (FSDP's gather and scatter in `train_3d`), addressed
    ///     by the layer's position among all the chunks' layers.
    ///   - rows: rows of the global batch this pipeline handles, split into `schedule.microBatches`.
    ///   - lossScale: the loss's gradient scale, `1 / global batch`.
    ///   - recompute: keep only each micro-batch's chunk boundary and rerun its forward in backward
    ///     (not with split backwards, whose deferred weight passes need the activations).
    ///   - packsWeights: with more than one micro-batch, pack the layers' weights once per run for
    ///     all the micro-batches' products (``PackedWeights/keepPackedWeights()``); the layers' weights must
    ///     not change during a run (no FSDP gathers into them).
    ///   - batchWeightGradients: one weight pass per run over every micro-batch's rows
    ///     (``BatchedWeightGradients``; not with zero-bubble, recomputation or sequence parallelism).
    public init(chunks parts: [(layers: [Layer], widths: [Int], split: SequenceSplit?)], hooks: LayerChainHooks? = nil, rows: Range<Int>,
                schedule: PipelineSchedule, pp: Communicator, seqLen: Int, lossScale: Float, recompute: Bool = false,
                packsWeights: Bool = false, batchWeightGradients: Bool = false) {
        precondition(!recompute || schedule.kind != .zeroBubble)
        precondition(parts.count == schedule.virtualStages)
        precondition(schedule.stages == pp.size && schedule.stage == pp.rank && rows.count % schedule.microBatches == 0)
        self.rows = rows
        self.schedule = schedule
        self.pp = pp
        self.seqLen = seqLen
        let microRows = rows.count / schedule.microBatches
        self.microRows = microRows
        var firstLayer = 0
        chunks = parts.enumerated().map { c, part in
            defer { firstLayer += part.layers.count }
            return PipelineChunk(index: c, layers: part.layers, widths: part.widths, split: part.split, hooks: hooks, firstLayer: firstLayer,
                                 schedule: schedule, microRows: microRows, seqLen: seqLen, lossScale: lossScale,
                                 recompute: recompute, batchWeightGradients: batchWeightGradients)
        }
        layers = parts.flatMap(\.layers)
        self.packsWeights = packsWeights && schedule.microBatches > 1
        packed = self.packsWeights ? layers.compactMap { $0 as? PackedWeights } : []
        for layer in packed { layer.keepPackedWeights() }
        let ends = chunks.contains { $0.previous == nil || $0.next == nil }
        holdsModelEnds = ends
        TracedPipeline.schedule = schedule
        batchTokens = .allocate(capacity: ends ? rows.count * seqLen : 1)
        batchTargets = .allocate(capacity: ends ? rows.count : 1)
        batchTokens.initialize(repeating: 0, count: ends ? rows.count * seqLen : 1)
        batchTargets.initialize(repeating: 0, count: ends ? rows.count : 1)
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
        if holdsModelEnds {
            sampler.fill(index: index, rows: rows, tokens: batchTokens, targets: batchTargets)
        }
        for layer in packed { layer.packWeights() }
        defer { for layer in packed { layer.releasePackedWeights() } }
        var total: Float = 0
        for action in actions {
            let chunk = chunks[action.chunk]
            if Trace.isRecording { (Trace.microBatch, Trace.chunk) = (Int16(action.microBatch), Int16(action.chunk)) }
            switch action.direction {
            case .forward: total += forward(action.microBatch, chunk)
            case .backward: backward(action.microBatch, chunk)
            case .inputGradient: backward(action.microBatch, chunk, split: true)
            case .weightGradient:
                let traced = Trace.begin()
                chunk.chains[action.microBatch % chunk.chains.count].backwardWeights()
                Trace.compute("W", since: traced)
            }
        }
        (Trace.microBatch, Trace.chunk) = (-1, -1)
        var start = MPI.time()
        if chunks.contains(where: { $0.batched != nil }) && actions.contains(where: { $0.direction != .forward }) {
            // The neighbours wait on the last sends (a large message moves only while its sender
            // is inside MPI): let them go before the weight pass, which makes no MPI call.
            for chunk in chunks { chunk.waitForSends() }
            waitingSeconds += MPI.time() - start
            let traced = Trace.begin()
            for chunk in chunks { chunk.batched?.weightPass(hooks: chunk.chains[0].hooks) }
            Trace.compute("W (all micro-batches)", since: traced)
            start = MPI.time()
        }
        for chunk in chunks { chunk.waitForSends() }
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
        let chunks = schedule.virtualStages > 1 ? ", \(schedule.virtualStages) chunks per stage" : ""
        return "pipeline: \(schedule.stages) stages, \(schedule.kind.rawValue)\(chunks), \(schedule.microBatches) micro-batches; "
            + "waiting on neighbours \(shares.joined(separator: " / ")) of step time by rank "
            + "(ideal bubble \(schedule.idealBubbleFormula) = \(format(Float(100 * schedule.idealBubble), 1))%)"
    }

    /// Runs micro-batch `m` forward through `chunk`; on the model's last chunk returns its summed
    /// loss (else 0).
    func forward(_ m: Int, _ chunk: PipelineChunk) -> Float {
        let slot = m % chunk.slots, chain = chunk.chains[m % chunk.chains.count]
        let start = MPI.time()
        chunk.forwardSends[slot].wait()  // the slot's last output may still be on its way
        if let previous = chunk.previous {
            pp.receive(chain.input.value, count: chain.input.count, from: previous, tag: .pipelineActivation)
        }
        waitingSeconds += MPI.time() - start
        chunk.boundaries?.saveInput(chain.input, slot: slot)
        let traced = Trace.begin()
        let loss = restoreAndForward(m, chunk, chain)
        Trace.compute("F", since: traced)
        if let next = chunk.next {
            let output = chunk.boundaries?.keepOutput(chain.output, slot: slot) ?? chain.output.value
            chunk.forwardSends[slot] = pp.startSend(output, count: chain.output.count, to: next, tag: .pipelineActivation)
        }
        return loss
    }

    /// Fills the chain's token ids (model's first chunk) or targets (last chunk) for micro-batch
    /// `m` and runs it forward.
    func restoreAndForward(_ m: Int, _ chunk: PipelineChunk, _ chain: LayerChain) -> Float {
        if chunk.previous == nil {
            chain.input.value.update(from: batchTokens + (m * microRows + chunk.inputRowOffset) * seqLen, count: chain.input.rows * seqLen)
        }
        if chunk.next == nil {
            chain.targets.update(from: batchTargets + m * microRows + chunk.targetRowOffset, count: chain.rows)
        }
        return chain.forward()
    }

    /// Runs micro-batch `m` backward through `chunk` (its forward ran earlier in the same slot);
    /// `split`: only the input-gradient half (``LayerChain/backwardInput()``), the weight half
    /// comes later.
    func backward(_ m: Int, _ chunk: PipelineChunk, split: Bool = false) {
        let slot = m % chunk.slots, chain = chunk.chains[m % chunk.chains.count]
        if let boundaries = chunk.boundaries {
            // Rerun the forward from the saved boundary (the loss's too: its backward needs the probabilities).
            let traced = Trace.begin()
            boundaries.restoreInput(chain.input, slot: slot)
            _ = restoreAndForward(m, chunk, chain)
            Trace.compute("F (recompute)", since: traced)
        }
        let start = MPI.time()
        chunk.backwardSends[slot].wait()  // the slot's last input gradient may still be on its way
        if let next = chunk.next { pp.receive(chain.output.grad, count: chain.output.count, from: next, tag: .pipelineGradient) }
        waitingSeconds += MPI.time() - start
        let traced = Trace.begin()
        if split || chunk.batched != nil { chain.backwardInput() } else { chain.backward() }
        chunk.batched?.keep(chain, microBatch: m)
        if split || chunk.batched != nil { Trace.compute("B (input)", since: traced) } else { Trace.compute("B", since: traced) }
        if let previous = chunk.previous {
            let inputGradient = chunk.boundaries?.keepInputGradient(chain.input, slot: slot) ?? chain.input.grad
            chunk.backwardSends[slot] = pp.startSend(inputGradient, count: chain.input.count, to: previous, tag: .pipelineGradient)
        }
    }
}
