import Core
import Distributed

/// `train_3d`: tensor × data × pipeline parallelism, composed from the three pieces with no new
/// math. On the ``ProcessMesh`` `[tp, dp, pp]` (tp fastest, then dp, then pp), a rank
///
/// 1. takes its pipeline stage's run of blocks (``PipelinePartition``, over the pp axis);
/// 2. lays those blocks out tensor-parallel over its tp group (``TensorParallelPlan``: Megatron
///    column/row pairs, allreduce-sum of partial outputs and of input gradients);
/// 3. shards each of those (tensor-parallel) blocks over its dp group (``ShardedParameters``,
///    ZeRO-3: hooks that allgather before forward and backward and reduce-scatter the gradients);
/// 4. runs the resulting layers and hooks as a ``PipelineStage`` over its dp group's rows of the
///    global batch, in `M` micro-batches with the GPipe, 1F1B, ZB-H1 or interleaved schedule
///    (interleaved: steps 1–3 for each of the stage's `V` chunks `s, s + P, …`, FSDP sharding
///    all their blocks together).
///
/// So every rank of a tp group holds a slice of each hidden Linear of its stage, of which its
/// dp rank holds 1/D; the optimizer (and Adam's moments) covers exactly those floats. The loss
/// is each pipeline's summed loss, added over the dp groups (one 4-byte allreduce).
///
/// Any `T·D·P = N` works, including T = 1 or D = 1 (every axis is a real communicator; ml.c
/// crashed on both and needed ≥ 12 ranks). Per step and rank: the TP activations of its
/// stage's blocks, the FSDP allgathers and reduce-scatters of its (1/T) blocks once per
/// micro-batch, and the PP activations and gradients at its stage's boundaries.
///
/// With `--sequence-parallel` the tensor-parallel blocks run as in `train_tp --sequence-parallel`
/// (``SequenceSplit``), stage boundaries outside the pairs carry `1/T` of the rows, and per step
/// the partial gradients of the parameters used outside the pairs — this rank's FSDP shards of
/// them, after the dp reduce-scatter — are summed over tp (``PartialGradientSum``), as is the
/// loss (4 bytes).
///
/// **Mixtures of experts** (`--experts E`) are replicated blocks of the tensor-parallel pairing
/// (the tp ranks of a (dp, pp) position compute the same block on the same rows), routed, capped
/// and balanced over the whole batch through an allgather of 2E floats over dp
/// (``DataParallelExpertExchange``, as in `train_dp`). With `--micro-batches M > 1` (GPipe,
/// dropless) each micro-batch in flight runs in its own copy of the block, and the copies sum
/// the step's statistics and exchange them once, at the first backward (``StepRouting``).
/// With `--ep E'` expert parallelism is a fourth axis carved out of dp, as Megatron-Core carves
/// expert-parallel groups out of data parallelism: the dp group is itself the mesh `[expert E', replicate D/E']`
/// (`train_ep`'s mesh, over dp instead of the world). Rank j of an expert group holds experts
/// `[j·E/E', (j+1)·E/E')` of every block and computes them for the group's rows
/// (``ExpertShards``: all-to-all-v there and back, forward and backward). FSDP shards the
/// router over dp like every dense float and the experts over `replicate`, the D/E' ranks that
/// hold the same ones (``ShardedParameters/Part``). Per step the stages' load-balancing losses
/// and loads are allgathered over pp (8 bytes per stage).
public final class ThreeDimensional: TrainingLayout {
    public let mesh: ProcessMesh
    /// The data-parallel group, over which the pipelines' losses are summed.
    let dp: Communicator
    /// The tensor-parallel layout of each of this stage's chunks (one unless interleaved).
    public let plans: [TensorParallelPlan]
    let sharded: ShardedParameters
    let stage: PipelineStage
    public let local: LocalParameters
    let globalBatch: Int
    /// This dp group's rows in `--accumulate` micro-steps (each one a full schedule run).
    let steps: MicroSteps
    /// Every stage's blocks, and the model they cut.
    let cut: [Range<Int>]
    let modelPlan: BlockPlan
    /// Sequence parallelism's tp group, full-rows buffer and gradient sum (nil without it).
    let sequenceGroup: Communicator?
    let scratch: SequenceParallelScratch?
    let partials: PartialGradientSum?
    /// Every stage's aux loss and load, gathered over pp after each step (nil for a dense model).
    let expertFigures: PipelineExpertStatistics?
    public var expertStatistics: ExpertStatistics? { expertFigures?.last }
    /// How the experts are laid out, for the start-up summary (nil for a dense model).
    let expertLayout: String?

    public init(_ context: TrainingContext, tp: Int, dp: Int, pp: Int, pipeline: PipelineOptions,
                sequenceParallel: Bool = false, expertGroup: Int = 1) throws(UsageError) {
        let v = pipeline.virtualStages
        var shape = LayoutShape.threeDimensional(tp: tp, dp: dp, pp: pp, microBatches: pipeline.microBatches,
                                                 partition: pipeline.partition, virtualStages: v)
        shape.sequenceParallel = sequenceParallel
        let experts = context.config.experts
        if experts != nil { shape.expertGroup = expertGroup }
        try Self.checkExperts(experts, expertGroup: expertGroup, dp: dp, pipeline: pipeline, sequenceParallel: sequenceParallel)
        let mesh = try shape.makeMesh(context)
        self.mesh = mesh
        self.dp = mesh[.dp]
        globalBatch = context.batchSize
        let cut = PipelinePartition.stages(context.plan, stages: pp * v, override: pipeline.partition)
        self.cut = cut
        modelPlan = context.plan
        // This stage's chunks (one unless interleaved: chunks s, s + P, …), each laid out tensor-parallel;
        // FSDP shards all their blocks, chunk after chunk, and its hooks address them in that order.
        let chunkPlans = try PipelinePartition.chunks(cut, stage: mesh[.pp].rank, stages: pp).map { blocks throws(UsageError) in
            try TensorParallelPlan(context.plan, blocks: blocks, tpSize: tp, tpRank: mesh[.tp].rank,
                                   sequenceParallel: sequenceParallel)
        }
        plans = chunkPlans
        let steps = mesh.microSteps(batch: globalBatch, accumulation: context.options.accumulate)
        self.steps = steps
        let splits = chunkPlans.map(\.sequenceSplit), microRows = steps.rowsPerStep / pipeline.microBatches
        // One scratch for every chunk's layers (they run one at a time).
        let scratch = splits[0].map { _ in
            SequenceParallelScratch(capacity: chunkPlans.map { $0.scratchCapacity(rows: microRows) }.max()!)
        }
        self.scratch = scratch
        // Expert parallelism: the dp group as the mesh [expert E', replicate D/E'] (collective over dp).
        let expertMesh = experts.map { _ in ProcessMesh(world: mesh[.dp], axes: [(.expert, expertGroup), (.replicate, dp / expertGroup)]) }
        let batchRows = globalBatch
        let batchExchange = experts.map { _ in DataParallelExpertExchange(group: mesh[.dp], batchRows: batchRows) }
        expertLayout = experts.map { experts in
            let m = experts.count / expertGroup
            return "mixtures of experts replicated over tp, routed over the \(dp) dp rank(s); "
                + (expertGroup == 1 ? "every dp rank holds all \(experts.count) experts of each block, sharded over dp"
                   : "dp as the mesh [expert \(expertGroup), replicate \(dp / expertGroup)]: rank j of an expert group holds experts "
                     + "\(m)j ..< \(m)(j+1) of \(experts.count), sharded over replicate")
        }
        let sharded = ShardedParameters(
            blocks: chunkPlans.flatMap { plan in
                plan.blocks.map { block in
                    if let experts, let expertMesh, let batchExchange, block.block.kind == .mixtureOfExperts {
                        return Self.mixture(block.block, experts, mesh: expertMesh, rows: microRows, exchange: batchExchange,
                                            microBatches: pipeline.microBatches)
                    }
                    return ShardedParameters.Block(count: block.parameterCount, map: block.map,
                                                   make: { plan.makeLayer(block, tp: mesh[.tp], parameters: $0, rows: microRows, scratch: scratch) })
                }
            },
            group: mesh[.dp], initialParameters: context.initialParameters)
        self.sharded = sharded
        sequenceGroup = splits[0].map { _ in mesh[.tp] }
        partials = splits[0].map { _ in
            PartialGradientSum(ranges: Self.shardRanges(chunkPlans, dp: mesh[.dp]), gradients: sharded.shards.grad, tp: mesh[.tp])
        }
        var firstLayer = 0
        let chunks = zip(chunkPlans, splits).map { plan, split in
            defer { firstLayer += plan.blocks.count }
            return (layers: Array(sharded.layers[firstLayer ..< firstLayer + plan.blocks.count]), widths: plan.widths, split: split)
        }
        stage = PipelineStage(chunks: chunks, hooks: sharded, rows: steps.rows(0),
                              schedule: PipelineSchedule(pipeline.schedule, stage: mesh[.pp].rank, stages: pp,
                                                         microBatches: pipeline.microBatches, virtualStages: v),
                              pp: mesh[.pp], seqLen: context.config.seqLen, lossScale: 1 / Float(globalBatch), recompute: pipeline.recompute)
        local = LocalParameters(map: sharded.map, values: sharded.shards.value, gradients: sharded.shards.grad,
                                optimizer: Optimizer(config: context.optimizer, count: sharded.shards.count))
        expertFigures = PipelineExpertStatistics(layers: sharded.layers, model: context.config, pp: mesh[.pp])
    }

    /// The refusals of `--experts` and `--ep` (one line each; the flags' own checks ran when parsed).
    public static func checkExperts(_ experts: ExpertsConfig?, expertGroup: Int, dp: Int, pipeline: PipelineOptions,
                                    sequenceParallel: Bool) throws(UsageError) {
        guard let experts else {
            if expertGroup > 1 { throw UsageError("--ep needs --experts E (expert parallelism shards the experts of a mixture-of-experts model)") }
            return
        }
        try pipeline.checkExperts(experts)
        if sequenceParallel {
            throw UsageError("--experts cannot be combined with --sequence-parallel: a mixture of experts routes, caps and balances whole rows, and outside the tensor-parallel pairs each tp rank holds only 1/T of them")
        }
        if dp % expertGroup != 0 {
            throw UsageError("--ep \(expertGroup) does not divide --dp \(dp) (expert groups are carved out of the data-parallel ranks)")
        }
        if experts.count % expertGroup != 0 {
            throw UsageError("--experts \(experts.count) is not divisible by --ep \(expertGroup) (each rank of a group holds E/E' experts)")
        }
    }

    /// A mixture of experts in two parts: the router, sharded over dp like every dense float, and
    /// this rank's experts (its place on the `expert` axis), sharded over `replicate`, the ranks
    /// holding the same experts. With E' > 1 the block computes its experts where they are held.
    static func mixture(_ block: Block, _ experts: ExpertsConfig, mesh: ProcessMesh, rows: Int,
                        exchange: DataParallelExpertExchange, microBatches: Int) -> ShardedParameters.Block {
        let group = mesh.size(.expert), m = experts.count / group, first = mesh.coordinates[0] * m
        let router = block.weightRows * experts.count, stride = block.weightRows * block.weightColumns + block.weightColumns
        let expertGroup = group > 1 ? ExpertGroupExchange(group: mesh[.expert]) : nil
        // The most rows one rank may compute: every assignment of its group's rows, or m experts at capacity.
        let maxReceived = max(1, min(group * rows * min(experts.topK, m), m * experts.capacity(rows: exchange.batchRows)))
        // With micro-batches the block and its slot copies route the step as one batch (StepRouting).
        let routing = microBatches > 1 ? StepRouting(experts: experts, microBatches: microBatches, exchange: exchange) : nil
        return ShardedParameters.Block(
            parts: [.init(count: router, map: .contiguous(block.parameterOffset, router)),
                    .init(count: m * stride, map: .contiguous(block.parameterOffset + router + first * stride, m * stride),
                          group: mesh[.replicate])],
            make: { views in
                let mixture = MixtureOfExperts(inputs: block.weightRows, outputs: block.weightColumns, experts: experts, rows: rows,
                                               router: views[0], localExperts: first ..< first + m, expertParameters: views[1])
                if let routing { mixture.shareStepRouting(routing) } else { mixture.attach(exchange) }
                if let expertGroup { mixture.shard(over: expertGroup, maxReceived: maxReceived) }
                return mixture
            })
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        sharded.shards.zeroGradients()
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.trainingStep(batch: index, from: sampler)
        }
        partials?.sum()
        if let sequenceGroup { lossSum = sequenceGroup.sum(lossSum) }
        // The aux loss is the whole batch's, from every stage's blocks (PipelineExpertStatistics).
        return dp.sum(lossSum) / Float(globalBatch) + (expertFigures?.gather() ?? 0)
    }

    /// Where ``TensorParallelPlan/partialGradients(_:)`` of each block fall in this rank's FSDP
    /// shards: block `i` (`c` floats) is cut into `D` shards of `s = ⌈c/D⌉`, laid back to back;
    /// dp rank `d` holds the block's floats `d·s ..< (d+1)·s`. Every tp rank of a (dp, pp)
    /// position holds the same replicated blocks and row-parallel biases at the same places, so
    /// the ranges agree over the tp group, as the allreduce needs.
    /// Interleaved, the stage's chunks' blocks lie back to back in the same way, chunk after chunk.
    static func shardRanges(_ plans: [TensorParallelPlan], dp: Communicator) -> [Range<Int>] {
        var offset = 0, ranges: [Range<Int>] = []
        for plan in plans {
            for block in plan.blocks {
                let s = (block.parameterCount + dp.size - 1) / dp.size, first = dp.rank * s
                if let r = plan.partialGradients(block) {
                    let lower = max(r.lowerBound, first), upper = min(r.upperBound, first + s)
                    if lower < upper { ranges.append(offset + lower - first ..< offset + upper - first) }
                }
                offset += s
            }
        }
        return ranges
    }

    public func trainingFinished() -> String? { stage.waitingReport(world: mesh.world) }

    public var summary: String? {
        let stages = PipelinePartition.describe(modelPlan, cut, stages: mesh[.pp].size)
        guard let expertLayout else { return stages }
        return stages + "\n" + expertLayout
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            stage.rows = steps.rows(j)
            lossSum += stage.evaluate(batch: index, from: sampler)
        }
        if let sequenceGroup { lossSum = sequenceGroup.sum(lossSum) }
        return dp.sum(lossSum) / Float(globalBatch)
    }
}

