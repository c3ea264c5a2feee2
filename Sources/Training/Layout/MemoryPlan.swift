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

    /// Every rank's plan, in world rank order (`layout.shape.ranks` of them). Throws when the
    /// layout does not fit the model or batch (``LayoutDescription/check(worldSize:plan:batchSize:accumulation:)``)
    /// or a size overflows.
    public static func perRank(_ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings) throws(UsageError) -> [MemoryPlan] {
        let ranks = layout.shape.ranks
        try layout.check(worldSize: ranks, plan: plan, batchSize: settings.batchSize, accumulation: settings.accumulation)
        let cut = RankGeometry.cut(plan, layout)
        return try (0..<ranks).map { r throws(UsageError) in try forRank(RankGeometry(rank: r, layout, plan, settings, cut: cut)) }
    }

    /// The plan of world rank `rank` (call ``LayoutDescription/check(worldSize:plan:batchSize:accumulation:)`` first).
    public static func forRank(_ rank: Int, _ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings) throws(UsageError) -> MemoryPlan {
        try forRank(RankGeometry(rank: rank, layout, plan, settings, cut: RankGeometry.cut(plan, layout)))
    }

    /// The plan of one rank: what its chains hold (activations, one chain or one per pipeline
    /// slot), what its mixtures of experts and sequence parallelism add, and what the layout's
    /// facts say it holds (``LayoutFacts/holdParameters(_:_:_:_:)``, ``LayoutFacts/addMemory(_:_:_:)``).
    static func forRank(_ rank: RankGeometry) throws(UsageError) -> MemoryPlan {
        let layout = rank.layout, shape = layout.shape, plan = rank.plan, settings = rank.settings, c = plan.config
        let tp = shape.size(.tp), dp = shape.size(.dp), m = shape.microBatches ?? 1, chainRows = rank.chainRows
        var checked = Checked()
        var memory = MemoryPlan()

        // Parameters and gradients: one flat buffer, or ZeRO's and FSDP's shards and buffers.
        let local = Array(rank.blocks.joined())
        let held = layout.facts.holdParameters(&memory, local, rank, &checked)
        memory.updatedParameters = held
        memory[.optimizer] = settings.optimizer == .adam ? checked.times(8, held) : 0

        // Activations: one chain of `rows` rows, or one per pipeline slot of `rows / M` rows (each
        // chunk its own slots); under sequence parallelism the activations outside the pairs hold
        // 1/T of them (``SequenceSplit``).
        let sequenceParallel = layout.sequenceParallel && tp > 1 && !local.isEmpty
        for (c, range) in rank.chunks.enumerated() {
            let widths = rank.widths(chunk: c), activationRows = rank.activationRows(chunk: c)
            var chains = 1
            if let schedule = rank.schedule {
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
                if shape.size(.pp) > 1 {
                    memory.largestMessage = max(memory.largestMessage, checked.times(chainRows, max(widths[0], widths.last!)))
                }
            }
            let sizes = zip(activationRows, widths).map { checked.times($0, $1) }
            var perChain = sizes.reduce(0) { checked.plus($0, checked.times(8, max(1, $1))) }
            if layout.recompute && shape.microBatches == nil {
                // √n checkpointing of the one chain (``RecomputeSegments``): the kept boundaries, and
                // the interior slots shared by the segments.
                let segments = RecomputeSegments(blocks: local.count)
                perChain = sizes.indices.filter { segments.scratchSlot($0) == nil }.reduce(0) { checked.plus($0, checked.times(8, max(1, sizes[$1]))) }
                perChain = segments.scratchCapacities(sizes).reduce(perChain) { checked.plus($0, checked.times(8, max(1, $1))) }
            }
            memory[.activations] = checked.plus(memory[.activations], checked.times(chains, perChain))
            if layout.batchWeightGradients, let schedule = rank.schedule {
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
            let ends = rank.chunks.contains { $0.lowerBound == 0 || $0.upperBound == plan.count }
            memory.staging = checked.plus(memory.staging, ends ? checked.times(4, checked.plus(checked.times(rank.rows, c.seqLen), rank.rows)) : 8)
        }
        // A mixture of experts' own buffers (``MixtureOfExperts``; one chain, or one pipeline slot),
        // for its chain's rows: router probabilities [rows × E], gates [rows × K], packed inputs
        // [rows·K × in] and outputs [rows·K × out], values and gradients; the Int32 routing state
        // (2·rows·K + 3E + 1) and the 2E floats of routing statistics. Where the layout gathers
        // them, every dp rank's statistics (D · 2E floats); with E/E' experts per block, the
        // receive buffers of ``ExpertShards``. A pipeline keeps one copy of the block per slot
        // (each micro-batch in flight its own routing state and receive buffers), and with M > 1
        // micro-batches one ``StepRouting`` (4·(2E + D·2E + E) bytes) in place of the statistics buffer.
        let expertGroup = layout.facts.expertGroupInBlocks(layout)
        for (c, range) in rank.chunks.enumerated() {
            let slots = rank.schedule?.chunkSlots[c] ?? 1
            for i in range where plan[i].kind == .mixtureOfExperts {
                let e = plan[i].experts!.count, k = plan[i].experts!.topK, assignments = checked.times(chainRows, k)
                let floats = [checked.times(chainRows, e), assignments, checked.times(assignments, plan[i].weightRows),
                              checked.times(assignments, plan[i].weightColumns)].reduce(0) { checked.plus($0, checked.times(8, max(1, $1))) }
                let state = checked.times(4, checked.plus(checked.times(2, assignments), 5 * e + 1))
                memory[.activations] = checked.plus(memory[.activations], checked.times(slots, checked.plus(floats, state)))
                if m > 1 {
                    memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, checked.plus(3 * e, checked.times(dp, 2 * e))))
                } else if layout.facts.gathersRoutingStatistics {
                    memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, checked.times(dp, 2 * e)))
                }
                for _ in 0..<(expertGroup > 1 ? slots : 0) {
                    expertShardBuffers(&memory, plan[i], group: expertGroup, rows: chainRows, settings, &checked)
                }
            }
        }
        if sequenceParallel {
            // The shared full-rows scratch (values and gradients) and the packed partial gradients
            // summed over tp (``sequenceParallelPartials(_:)``).
            let scratch = local.map { $0.sharding == .column ? chainRows * $0.input : $0.sharding == .row ? chainRows * $0.output : 0 }.max() ?? 0
            memory[.buffers] = checked.plus(memory[.buffers], checked.times(8, max(1, scratch)))
            memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, max(1, sequenceParallelPartials(rank))))
        }
        if rank.chunks[0].lowerBound == 0 {
            let extra = checked.times(Kernels.scatterStreams - 1, checked.times(c.vocab, c.emb))
            if extra > 0 && extra <= 1 << 16 { memory.staging = checked.plus(memory.staging, 4 * extra) }
        }

        // The largest MPI message of the tensor-parallel pairs: partial outputs and input gradients.
        if tp > 1 {
            for block in local where block.sharding != .replicated {
                let width = block.sharding == .column ? block.input : block.output
                memory.largestMessage = max(memory.largestMessage, checked.times(chainRows, width))
            }
        }
        layout.facts.addMemory(&memory, rank, &checked)

        // Whole-model copies (see the type's documentation).
        let psi = plan.parameterCount
        let gathered = settings.samples > 0 || settings.dump || settings.export ? 1 : 0
        let atEnd = rank.rank == 0 ? gathered + (settings.samples > 0 ? 2 : 0) + (settings.dump ? 1 : 0) + (settings.export ? 1 : 0) : 0
        let atStart = settings.resume ? 1 : settings.initFrom && rank.rank == 0 ? 1 : 0
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
            throw UsageError("the sizes overflow: \(c) with --batch-size \(settings.batchSize) needs more than 2^63 bytes per rank")
        }
        return memory
    }

    /// Floats of sequence parallelism's partial gradients a rank sums over tp each step: whole
    /// replicated blocks and row-parallel biases (used outside the pairs, on 1/T of the rows),
    /// only the part of each block in this rank's shard over dp (`train_3d` shards its blocks
    /// over dp; elsewhere dp is one rank and the shard is the block).
    static func sequenceParallelPartials(_ rank: RankGeometry) -> Int {
        let dp = rank.size(.dp), index = rank.coordinate(.dp)
        var partial = 0
        for block in rank.blocks.joined() where block.sharding != .column {
            let r = block.sharding == .replicated ? 0..<block.count : block.count - block.output ..< block.count
            let s = (block.count + dp - 1) / dp
            partial += max(0, min(r.upperBound, (index + 1) * s) - max(r.lowerBound, index * s))
        }
        return partial
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
