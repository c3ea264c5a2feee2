import Core
import Distributed

/// What one rank holds, in bytes, computed from the configuration and the layout before anything
/// is allocated.
///
/// ``ledgered`` has the categories the ``MemoryLedger`` measures when the buffers are really
/// allocated (parameters, gradients, optimizer, activations, buffers, in `MemoryCategory` order),
/// computed the way the layouts allocate them (every buffer at least one float), so plan and
/// ledger agree to the byte (tested for every layout). The rest the ledger does not see:
///
/// - ``staging``: each chain's targets (`rows` Int32), a pipeline's first and last stages' copy of
///   the batch (`rows × seq` token ids as floats and `rows` targets), and the embedding's partial
///   gradient tables (`3 · vocab · emb` floats when that is at most 2¹⁶);
/// - ``wholeModel``: canonical copies of the whole model, Ψ floats each: the initial model every
///   rank builds (or receives with `--init-from`) before cutting its part out, held for the run;
///   one more on every rank when resuming, or on rank 0 reading `--init-from`; and on rank 0 at
///   the end the gathered parameters (samples, `--dump`, `--export`), the dump's gradients, the
///   export's encoded file, and the sampling model's parameters and gradients;
/// - ``bookkeeping``: an allowance of ``bookkeepingPerBlock`` bytes per block of the model for
///   the objects that describe it (the block plan, layers, activation and chain objects);
/// - ``dataset``: the examples, `(seq + 1)` Int32 per example, in 2 MiB pages (already loaded
///   when the plan is checked, so not part of ``toAllocate``).
public struct MemoryPlan: Sendable, Equatable {
    public var ledgered: [Int] = Array(repeating: 0, count: MemoryCategory.allCases.count)
    public var staging = 0
    public var wholeModel = 0
    public var bookkeeping = 0
    public var dataset = 0
    /// The most elements one MPI call on this rank passes (MPI counts are 32-bit).
    public var largestMessage = 0
    /// The parameters this rank's optimizer updates every step: all it holds, or its shard under
    /// ZeRO and FSDP (the cost model charges the update per parameter).
    public var updatedParameters = 0

    public subscript(_ category: MemoryCategory) -> Int {
        get { ledgered[category.rawValue] }
        set { ledgered[category.rawValue] = newValue }
    }

    /// Bytes still to allocate when the plan is checked: everything but the dataset.
    public var toAllocate: Int { ledgered.reduce(0, +) + staging + wholeModel + bookkeeping }

    /// Bytes allowed per block for its descriptions and objects (see ``bookkeeping``).
    public static let bookkeepingPerBlock = 1024
    public var total: Int { toAllocate + dataset }
}

/// What the plan needs beyond the layout: the global batch and its micro-steps, the optimizer,
/// and the run's extras.
public struct PlanSettings: Sendable {
    public var batchSize: Int
    public var optimizer: OptimizerKind
    /// `--accumulate K`: every buffer sized by rows holds a K-th of the rank's rows.
    public var accumulation = 1
    public var resume = false
    /// `--init-from`: the whole model is broadcast from rank 0.
    public var initFrom = false
    public var dump = false
    public var export = false
    public var samples = 0
    /// Examples in the training and validation sets (0 when not yet known).
    public var examples = 0

    public init(batchSize: Int, optimizer: OptimizerKind, accumulation: Int = 1, resume: Bool = false,
                initFrom: Bool = false, dump: Bool = false, export: Bool = false, samples: Int = 0, examples: Int = 0) {
        self.batchSize = batchSize
        self.optimizer = optimizer
        self.accumulation = accumulation
        self.resume = resume
        self.initFrom = initFrom
        self.dump = dump
        self.export = export
        self.samples = samples
        self.examples = examples
    }

    public init(_ options: TrainingOptions, examples: Int) {
        self.init(batchSize: options.batchSize, optimizer: options.optimizer, accumulation: options.accumulate,
                  resume: options.resume != nil, initFrom: options.initFrom != nil, dump: options.dump != nil,
                  export: options.export != nil, samples: options.samples, examples: examples)
    }
}

extension MemoryPlan {
    /// Ψ in closed form with overflow checks, before a ``BlockPlan`` is built (whose offsets
    /// would trap on overflow): `vocab·emb + (seq·emb + 1)·hidden + (layers − 1)(hidden + 1)·hidden
    /// + (hidden + 1)·vocab`.
    public static func parameterCount(_ c: ModelConfig) throws(UsageError) -> Int {
        var checked = Checked()
        let flat = checked.times(c.seqLen, c.emb)
        let headInputs = c.layers >= 1 ? c.hidden : flat
        var psi = checked.times(c.vocab, c.emb)
        if let experts = c.experts, c.layers >= 1 {
            // Each hidden block: the router in·E, then E experts of (in + 1)·hidden.
            func block(_ inputs: Int) -> Int {
                checked.plus(checked.times(inputs, experts.count), checked.times(experts.count, checked.times(inputs + 1, c.hidden)))
            }
            psi = checked.plus(psi, block(flat))
            psi = checked.plus(psi, checked.times(c.layers - 1, block(c.hidden)))
        } else if c.layers >= 1 {
            psi = checked.plus(psi, checked.times(flat + 1, c.hidden))
            psi = checked.plus(psi, checked.times(c.layers - 1, checked.times(c.hidden + 1, c.hidden)))
        }
        psi = checked.plus(psi, checked.times(headInputs + 1, c.vocab))
        _ = checked.times(psi, 4 * 8)  // the byte counts below multiply Ψ by up to 32
        if checked.overflowed {
            throw UsageError("the model is too large to count: \(c) has more than 2^63 parameter bytes")
        }
        return psi
    }

    /// Every rank's plan, in world rank order (`description.shape.ranks` of them). Throws when the
    /// layout does not fit the model or batch (``LayoutShape/check``) or a size overflows.
    public static func perRank(_ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings) throws(UsageError) -> [MemoryPlan] {
        let ranks = layout.shape.ranks
        try layout.shape.check(worldSize: ranks, plan: plan, batchSize: settings.batchSize, accumulation: settings.accumulation)
        let pp = layout.shape.size(.pp)
        let cut = pp > 1 ? PipelinePartition.stages(plan, stages: pp * layout.shape.virtualStages, override: layout.shape.partition) : nil
        return try (0..<ranks).map { r throws(UsageError) in try forRank(r, plan, layout, settings, cut: cut) }
    }

    /// The plan of world rank `rank` (no MPI: the mesh coordinates are computed as ``ProcessMesh``
    /// lays them out, first axis fastest). Call ``LayoutShape/check`` first.
    ///
    /// - Parameter cut: the pipeline's stages (interleaved: its `P·V` chunks), if already computed
    ///   (``PipelinePartition/stages``).
    public static func forRank(_ rank: Int, _ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings,
                               cut: [Range<Int>]? = nil) throws(UsageError) -> MemoryPlan {
        let shape = layout.shape, c = plan.config, batch = settings.batchSize
        var coordinate: [MeshAxis: Int] = [:]
        var rest = rank
        for (axis, size) in shape.axes {
            coordinate[axis] = rest % size
            rest /= size
        }
        let tp = shape.size(.tp), dp = shape.size(.dp), pp = shape.size(.pp), m = shape.microBatches ?? 1
        let stage = coordinate[.pp] ?? 0
        var checked = Checked()
        var memory = MemoryPlan()

        // The blocks this rank runs, chunk by chunk (one chunk unless interleaved: chunks s, s + P, …),
        // with their local float counts.
        let v = shape.virtualStages
        let stageCut = pp > 1 ? cut ?? PipelinePartition.stages(plan, stages: pp * v, override: shape.partition) : nil
        let ranges = stageCut.map { cut in (0..<v).map { cut[$0 * pp + stage] } } ?? [0..<plan.count]
        // `train_3d --ep E'` holds E/E' experts of each block (`train_ep` is planned apart, below).
        let expertGroup = layout.kind == .threeDimensional ? shape.expertGroup ?? 1 : 1
        let local = ranges.flatMap { localBlocks(plan, $0, tpSize: tp, expertGroup: expertGroup) }
        let rows = batch / shape.dataParallelDegree / settings.accumulation  // one micro-step's rows (``MicroSteps``)
        // The group the model is sharded over: `train_3d`'s dp axis, `train_fsdp`'s shard axis.
        let group = layout.kind == .threeDimensional ? dp : shape.size(.shard)

        // Parameters and gradients: one flat buffer, or ZeRO's and FSDP's shards and buffers.
        let held = heldParameters(&memory, local, layout, group: group, expertGroup: expertGroup, &checked)
        if layout.replicate > 1 { memory.largestMessage = max(memory.largestMessage, held) }  // HSDP's allreduce
        memory.updatedParameters = held
        memory[.optimizer] = settings.optimizer == .adam ? checked.times(8, held) : 0

        // Activations: one chain of `rows` rows, or one per pipeline slot of `rows / M` rows (each
        // chunk its own slots); under sequence parallelism the activations outside the pairs hold
        // 1/T of them (``SequenceSplit``).
        let chainRows = shape.microBatches == nil ? rows : rows / m
        let sequenceParallel = layout.sequenceParallel && tp > 1 && !local.isEmpty
        let schedule = shape.microBatches.map {
            PipelineSchedule(layout.schedule, stage: stage, stages: pp, microBatches: $0, virtualStages: v)
        }
        for (c, range) in ranges.enumerated() {
            let chunk = localBlocks(plan, range, tpSize: tp)
            let widths = [chunk.first?.input ?? 0] + chunk.map(\.output)
            let activationRows: [Int] = sequenceParallel
                ? ([chunk[0].sharding != .row] + chunk.map { $0.sharding != .column }).map { $0 ? chainRows / tp : chainRows }
                : widths.map { _ in chainRows }
            var chains = 1
            if let schedule {
                chains = schedule.chunkSlots[c]
                if layout.recompute && chains > 1 {
                    // One working chain, and per slot the chunk's boundary: its input and input
                    // gradient (not on the model's first chunk) and its output (not on the last).
                    let input = range.lowerBound == 0 ? 0 : checked.times(activationRows[0], widths[0])
                    let output = range.upperBound == plan.count ? 0 : checked.times(activationRows.last!, widths.last!)
                    memory[.activations] = checked.plus(memory[.activations],
                                                        checked.times(checked.times(4, chains), checked.plus(2 * input, output)))
                    chains = 1
                }
                if pp > 1 { memory.largestMessage = max(memory.largestMessage, checked.times(chainRows, max(widths[0], widths.last!))) }
            }
            var perChain = zip(activationRows, widths).reduce(0) { checked.plus($0, checked.times(8, max(1, checked.times($1.0, $1.1)))) }
        if layout.recompute && shape.microBatches == nil {
            // √n checkpointing of the one chain (``RecomputeSegments``): the kept boundaries, and
            // the interior slots shared by the segments.
            let segments = RecomputeSegments(blocks: local.count)
            let sizes = zip(activationRows, widths).map { checked.times($0, $1) }
            perChain = sizes.indices.filter { segments.scratchSlot($0) == nil }.reduce(0) { checked.plus($0, checked.times(8, max(1, sizes[$1]))) }
            perChain = segments.scratchCapacities(sizes).reduce(perChain) { checked.plus($0, checked.times(8, max(1, $1))) }
        }
            memory[.activations] = checked.plus(memory[.activations], checked.times(chains, perChain))
            if layout.batchWeightGradients, let schedule {
                // ``BatchedWeightGradients``: each splitting layer's (not a mixture's) input and
                // output gradient over all of the run's micro-batches.
                let runRows = checked.times(schedule.microBatches, chainRows)
                let staged = (0..<range.count).filter { plan[range.lowerBound + $0].kind != .mixtureOfExperts }
                    .reduce(0) { checked.plus($0, checked.times(runRows, widths[$1] + widths[$1 + 1])) }
                memory[.activations] = checked.plus(memory[.activations], checked.times(4, staged))
            }
            memory.staging = checked.plus(memory.staging, checked.times(chains, checked.times(4, max(1, activationRows.last!))))
        }
        if shape.microBatches != nil {
            let ends = ranges.contains { $0.lowerBound == 0 || $0.upperBound == plan.count }
            memory.staging = checked.plus(memory.staging, ends ? checked.times(4, checked.plus(checked.times(rows, c.seqLen), rows)) : 8)
        }
        // A mixture of experts' own buffers (``MixtureOfExperts``; one chain, or one pipeline slot),
        // for its chain's rows: router probabilities [rows × E], gates [rows × K], packed inputs
        // [rows·K × in] and outputs [rows·K × out], values and gradients; the Int32 routing state
        // (2·rows·K + 3E + 1) and the 2E floats of routing statistics. Under DP and 3D, every dp
        // rank's statistics (D · 2E floats); under `train_3d --ep E'`, the receive buffers of
        // ``ExpertShards``.
        // A pipeline keeps one copy of the block per slot (each micro-batch in flight its own
        // routing state and receive buffers), and with M > 1 micro-batches one ``StepRouting``
        // (4·(2E + D·2E + E) bytes) in place of the statistics buffer.
        for (c, range) in ranges.enumerated() {
            let slots = schedule?.chunkSlots[c] ?? 1
            for i in range where plan[i].kind == .mixtureOfExperts {
                let e = plan[i].experts!.count, k = plan[i].experts!.topK, assignments = checked.times(chainRows, k)
                let floats = [checked.times(chainRows, e), assignments, checked.times(assignments, plan[i].weightRows),
                              checked.times(assignments, plan[i].weightColumns)].reduce(0) { checked.plus($0, checked.times(8, max(1, $1))) }
                let state = checked.times(4, checked.plus(checked.times(2, assignments), 5 * e + 1))
                memory[.activations] = checked.plus(memory[.activations], checked.times(slots, checked.plus(floats, state)))
                if m > 1 {
                    memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, checked.plus(3 * e, checked.times(dp, 2 * e))))
                } else if layout.kind == .dataParallel || layout.kind == .threeDimensional {
                    memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, checked.times(dp, 2 * e)))
                }
                for _ in 0..<(expertGroup > 1 ? slots : 0) {
                    expertShardBuffers(&memory, plan[i], group: expertGroup, rows: chainRows, settings, &checked)
                }
            }
        }
        if layout.kind == .pipeline && m > 1 {
            // `train_pp` packs each Linear's weights once per run for its micro-batches
            // (``Linear/keepPackedWeights()``): two packed copies of W.
            for i in ranges.joined() where plan[i].kind == .dense || plan[i].kind == .head {
                let copies = Linear.packedCount(inputs: plan[i].weightRows, outputs: plan[i].weightColumns)
                memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, copies))
            }
        }
        if sequenceParallel {
            // The shared full-rows scratch (values and gradients) and the packed partial gradients
            // summed over tp: whole replicated blocks and row-parallel biases (in 3D, the part of
            // them in this rank's FSDP shard of each block).
            let scratch = local.map { $0.sharding == .column ? chainRows * $0.input : $0.sharding == .row ? chainRows * $0.output : 0 }.max() ?? 0
            memory[.buffers] = checked.plus(memory[.buffers], checked.times(8, max(1, scratch)))
            let partial = sequenceParallelPartials(local, layout, dp: dp, dpIndex: coordinate[.dp] ?? 0)
            memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, max(1, partial)))
        }
        if ranges[0].lowerBound == 0 {
            let extra = checked.times(Kernels.scatterStreams - 1, checked.times(c.vocab, c.emb))
            if extra > 0 && extra <= 1 << 16 { memory.staging = checked.plus(memory.staging, 4 * extra) }
        }

        // The largest MPI message: DP's biggest bucket; TP's partial outputs and input gradients.
        if layout.kind == .dataParallel && dp > 1 {
            let buckets = GradientBuckets.buckets(plan: plan, bucketBytes: layout.bucketBytes)
            memory.largestMessage = buckets.map(\.range.count).max() ?? 0
        }
        if tp > 1 {
            for block in local where block.sharding != .replicated {
                let width = block.sharding == .column ? block.input : block.output
                memory.largestMessage = max(memory.largestMessage, checked.times(chainRows, width))
            }
        }

        if let group = shape.expertGroup, layout.kind == .dataParallel { expertParallel(&memory, plan, group: group, rows: chainRows, settings, &checked) }
        // Whole-model copies (see the type's documentation).
        let psi = plan.parameterCount
        let gathered = settings.samples > 0 || settings.dump || settings.export ? 1 : 0
        let atEnd = rank == 0 ? gathered + (settings.samples > 0 ? 2 : 0) + (settings.dump ? 1 : 0) + (settings.export ? 1 : 0) : 0
        let atStart = settings.resume ? 1 : settings.initFrom && rank == 0 ? 1 : 0
        memory.wholeModel = checked.times(checked.times(4, psi), 1 + max(atStart, atEnd))
        if (settings.resume || settings.initFrom) && shape.ranks > 1 {
            memory.largestMessage = max(memory.largestMessage, psi)  // the whole model, broadcast
        }
        memory.bookkeeping = checked.times(plan.count, Self.bookkeepingPerBlock)
        let huge = 2 << 20
        let datasetBytes = checked.times(checked.times(settings.examples, c.seqLen + 1), 4)
        memory.dataset = checked.plus(datasetBytes, 2 * huge - 1) / huge * huge  // two sets, each rounded up
        // Every sum the properties form, checked here so that reading them cannot trap.
        let parts = memory.ledgered + [memory.staging, memory.wholeModel, memory.bookkeeping, memory.dataset]
        _ = parts.reduce(0) { checked.plus($0, $1) }
        if checked.overflowed {
            throw UsageError("the sizes overflow: \(c) with --batch-size \(batch) needs more than 2^63 bytes per rank")
        }
        return memory
    }

    /// Floats of sequence parallelism's partial gradients a rank sums over tp each step: whole
    /// replicated blocks and row-parallel biases (used outside the pairs, on 1/T of the rows), in
    /// 3D only the part in this rank's FSDP shard (index `dpIndex` of `dp`) of each block.
    static func sequenceParallelPartials(_ local: [LocalBlock], _ layout: LayoutDescription, dp: Int, dpIndex: Int) -> Int {
        var partial = 0
        for block in local where block.sharding != .column {
            let r = block.sharding == .replicated ? 0..<block.count : block.count - block.output ..< block.count
            if layout.kind == .threeDimensional {
                let s = (block.count + dp - 1) / dp
                partial += max(0, min(r.upperBound, (dpIndex + 1) * s) - max(r.lowerBound, dpIndex * s))
            } else {
                partial += r.count
            }
        }
        return partial
    }

    /// One block as a rank holds it: floats, local activation widths, and its tensor-parallel
    /// sharding (``TensorParallelPlan``'s pairing; counts only, no maps).
    struct LocalBlock {
        var count: Int
        var input: Int
        var output: Int
        var sharding: TensorParallelPlan.Sharding
        /// A mixture of experts' router floats (the first `router` of `count`; nil for other kinds).
        var router: Int? = nil
    }

    /// - Parameter expertGroup: E' of `train_3d --ep`: a mixture of experts holds E/E' experts.
    static func localBlocks(_ plan: BlockPlan, _ range: Range<Int>, tpSize: Int, expertGroup: Int = 1) -> [LocalBlock] {
        let shardings = TensorParallelPlan.shardings(plan, tpSize: tpSize)
        return range.map { i in
            let block = plan[i], inputs = block.weightRows, outputs = block.weightColumns
            switch shardings[i] {
            case .replicated:
                if let experts = block.experts {
                    let router = inputs * experts.count, held = experts.count / expertGroup * (inputs * outputs + outputs)
                    return LocalBlock(count: router + held, input: block.inputWidth, output: block.outputWidth,
                                      sharding: .replicated, router: router)
                }
                return LocalBlock(count: block.parameterCount, input: block.inputWidth, output: block.outputWidth,
                                  sharding: .replicated)
            case .column:
                let o = outputs / tpSize
                return LocalBlock(count: inputs * o + o, input: inputs, output: o, sharding: .column)
            case .row:
                let k = inputs / tpSize
                return LocalBlock(count: k * outputs + outputs, input: k, output: outputs, sharding: .row)
            }
        }
    }
}

/// Integer arithmetic that records an overflow instead of trapping (the result is then
/// meaningless and the caller refuses the configuration).
struct Checked {
    var overflowed = false

    mutating func times(_ a: Int, _ b: Int) -> Int {
        let (value, overflow) = a.multipliedReportingOverflow(by: b)
        if overflow { overflowed = true }
        return overflow ? Int.max : value
    }

    mutating func plus(_ a: Int, _ b: Int) -> Int {
        let (value, overflow) = a.addingReportingOverflow(b)
        if overflow { overflowed = true }
        return overflow ? Int.max : value
    }
}

extension MemoryPlan {
    /// `"memory_plan_per_rank":[{"parameters":…,"buffers":…,"staging":…,"whole_model":…,"bookkeeping":…,"dataset":…},…]`:
    /// the plan beside the ledger's `"memory_per_rank"` in the final `--metrics` record.
    public static func json(_ plans: [MemoryPlan]) -> String {
        let items = plans.map { plan in
            "{" + (MemoryCategory.allCases.map { "\"\($0.name)\":\(plan[$0])" }
                + ["\"staging\":\(plan.staging)", "\"whole_model\":\(plan.wholeModel)", "\"bookkeeping\":\(plan.bookkeeping)",
                   "\"dataset\":\(plan.dataset)"]).joined(separator: ",") + "}"
        }
        return "\"memory_plan_per_rank\":[" + items.joined(separator: ",") + "]"
    }
}
