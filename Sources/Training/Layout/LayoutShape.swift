import Core
import Distributed

/// How a layout divides the work: its degree along each axis of the process mesh, and the
/// micro-batches of a pipeline. The one place where a layout is checked against the world, the
/// model and the batch, with the messages users see; flags that are wrong on their own (a zero
/// `--tp`, a negative `--micro-batches`) are refused earlier, when the command line is parsed.
public struct LayoutShape: Sendable {
    /// What the executable is, for its messages.
    public enum Executable: Sendable {
        /// `train`: one rank.
        case singleRank
        /// One axis as large as the world (`train_dp`, `train_fsdp`, `train_tp`, `train_pp`).
        case oneAxis
        /// Degrees given by flags (`train_3d --tp T --dp D --pp P`).
        case flags
    }

    public let executable: Executable
    /// The mesh axes in rank order (first fastest) with their sizes.
    public let axes: [(axis: MeshAxis, size: Int)]
    /// Micro-batches per step, or nil when the layout runs no pipeline schedule.
    public let microBatches: Int?
    /// Blocks per pipeline stage given by `--partition` (nil: balanced by cost).
    public var partition: [Int]? = nil
    /// Model chunks per pipeline stage (`--virtual-stages`, interleaved schedule; 1 otherwise).
    public var virtualStages = 1
    /// `--sequence-parallel`: each micro-batch's rows are split over the tensor-parallel group
    /// outside the pairs (``SequenceSplit``), so they must divide by its size.
    public var sequenceParallel = false
    /// `train_ep --ep E'`: data parallel over the `dp` axis, with every mixture of experts' experts
    /// split over groups of E' consecutive ranks (nil for every other layout).
    public var expertGroup: Int? = nil

    public static var singleRank: LayoutShape { LayoutShape(executable: .singleRank, axes: [], microBatches: nil) }

    /// Data parallel (replicated or sharded) over all `ranks`.
    public static func dataParallel(ranks: Int) -> LayoutShape {
        LayoutShape(executable: .oneAxis, axes: [(.dp, ranks)], microBatches: nil)
    }

    /// Fully sharded data parallel over all `ranks` (`train_fsdp`): the parameters sharded within
    /// groups of `ranks / replicate` neighbouring ranks (the `shard` axis), the groups replicas of
    /// each other (the `replicate` axis: HSDP when `replicate` > 1). Every rank trains on its own
    /// rows of the batch.
    public static func fullySharded(ranks: Int, replicate: Int) throws(UsageError) -> LayoutShape {
        guard ranks % replicate == 0 else {
            throw UsageError("--replicate \(replicate) does not divide the \(ranks) ranks (replicas × shard group size must equal the ranks)")
        }
        return LayoutShape(executable: .oneAxis, axes: [(.shard, ranks / replicate), (.replicate, replicate)], microBatches: nil)
    }

    /// Tensor parallel over all `ranks`.
    public static func tensorParallel(ranks: Int) -> LayoutShape {
        LayoutShape(executable: .oneAxis, axes: [(.tp, ranks)], microBatches: nil)
    }

    /// One pipeline stage per rank.
    public static func pipeline(stages: Int, microBatches: Int, partition: [Int]?, virtualStages: Int = 1) -> LayoutShape {
        LayoutShape(executable: .oneAxis, axes: [(.pp, stages)], microBatches: microBatches, partition: partition,
                    virtualStages: virtualStages)
    }

    /// `tp × dp × pp`, tensor-parallel ranks neighbours in rank order, then data, then pipeline.
    public static func threeDimensional(tp: Int, dp: Int, pp: Int, microBatches: Int, partition: [Int]?,
                                        virtualStages: Int = 1) -> LayoutShape {
        LayoutShape(executable: .flags, axes: [(.tp, tp), (.dp, dp), (.pp, pp)], microBatches: microBatches, partition: partition,
                    virtualStages: virtualStages)
    }

    /// The degree along `axis` (1 when the layout does not use it).
    public func size(_ axis: MeshAxis) -> Int { axes.first { $0.axis == axis }?.size ?? 1 }

    /// Ranks that train on different rows of the batch: the product of the data axes' degrees.
    public var dataParallelDegree: Int { MeshAxis.dataAxes.reduce(1) { $0 * size($1) } }

    /// Ranks the layout needs.
    public var ranks: Int { axes.reduce(1) { $0 * $1.size } }

    /// Throws the first reason this layout cannot run `plan` with a global batch of `batchSize`
    /// on `worldSize` ranks, each rank's rows in `accumulation` micro-steps (`--accumulate`).
    public func check(worldSize: Int, plan: BlockPlan, batchSize: Int, accumulation: Int = 1) throws(UsageError) {
        let tp = size(.tp), dp = dataParallelDegree, pp = size(.pp), m = microBatches ?? 1, k = accumulation
        switch executable {
        case .singleRank where worldSize != 1:
            throw UsageError("train is the single-rank reference: run it with one process (got \(worldSize)); use train_dp or train_fsdp for more")
        case .flags where ranks != worldSize:
            throw UsageError("--tp \(tp) × --dp \(dp) × --pp \(pp) = \(ranks), but mpirun started \(worldSize) ranks")
        default:
            precondition(ranks == worldSize || executable == .singleRank)
        }
        try TensorParallelPlan.check(plan, tpSize: tp)
        if pp > plan.count {
            let fix = executable == .flags ? "use --pp ≤ \(plan.count)" : "use at most \(plan.count) ranks"
            throw UsageError("\(pp) pipeline stages but the model has only \(plan.count) blocks (embedding, \(plan.config.layers) hidden, head); \(fix) or more --layers")
        }
        try checkInterleaving(plan: plan)
        if let partition {
            let text = partition.map(String.init).joined(separator: ",")
            if virtualStages > 1 && partition.count != pp * virtualStages {
                throw UsageError("--partition \(text) has \(partition.count) chunk(s) but \(pp) stages × --virtual-stages \(virtualStages) make \(pp * virtualStages)")
            }
            if virtualStages == 1 && partition.count != pp {
                throw UsageError("--partition \(text) has \(partition.count) stage(s) but the pipeline has \(pp)")
            }
            if partition.reduce(0, +) != plan.count {
                throw UsageError("--partition \(text) covers \(partition.reduce(0, +)) blocks but the model has \(plan.count) (embedding, \(plan.config.layers) hidden, head)")
            }
        }
        if batchSize % (dp * m * k) != 0 {
            let accumulating = k > 1 ? " × --accumulate \(k)" : ""
            switch (executable, microBatches) {
            case (.flags, _):
                throw UsageError("--batch-size \(batchSize) is not divisible by --dp \(dp) × --micro-batches \(m)\(accumulating)")
            case (_, .some):
                throw UsageError("--batch-size \(batchSize) is not divisible by --micro-batches \(m)\(accumulating)")
            case (_, nil) where dp == 1:
                throw UsageError("--batch-size \(batchSize) is not divisible by --accumulate \(k)")
            default:
                throw UsageError("--batch-size \(batchSize) is not divisible by the \(dp) data-parallel ranks\(accumulating)")
            }
        }
        let microRows = batchSize / (dp * m * k)
        if sequenceParallel && microRows % tp != 0 {
            let accumulating = k > 1 ? " × --accumulate \(k)" : ""
            let cut = switch (executable, k) {
            case (.flags, _): "--batch-size \(batchSize) / (--dp \(dp) × --micro-batches \(m)\(accumulating)) = \(microRows) rows"
            case (_, 1): "--batch-size \(batchSize)"
            default: "--batch-size \(batchSize) / --accumulate \(k) = \(microRows) rows"
            }
            let group = executable == .flags ? "--tp \(tp)" : "the \(tp) tensor-parallel ranks"
            throw UsageError("--sequence-parallel splits each micro-batch's rows over \(group), but \(cut) is not divisible by \(tp)")
        }
    }

    /// The interleaved schedule's rules: two stages or more, `M` a multiple of them (Megatron's),
    /// and a block for each of the `N·V` chunks.
    func checkInterleaving(plan: BlockPlan) throws(UsageError) {
        guard virtualStages > 1 else { return }
        let pp = size(.pp), m = microBatches ?? 1, chunks = pp * virtualStages
        if pp < 2 {
            throw UsageError("--schedule interleaved needs at least 2 pipeline stages (got \(pp))")
        }
        if m % pp != 0 {
            throw UsageError("--micro-batches \(m) is not a multiple of the \(pp) pipeline stages, as --schedule interleaved needs")
        }
        if chunks > plan.count {
            throw UsageError("\(pp) stages × --virtual-stages \(virtualStages) = \(chunks) chunks but the model has only \(plan.count) blocks (embedding, \(plan.config.layers) hidden, head); use fewer --virtual-stages or more --layers")
        }
    }

    /// Checks the shape against `context`, then builds its mesh (collective over the world).
    public func makeMesh(_ context: TrainingContext) throws(UsageError) -> ProcessMesh {
        try check(worldSize: context.world.size, plan: context.plan, batchSize: context.batchSize,
                  accumulation: context.options.accumulate)
        return ProcessMesh(world: context.world, axes: axes.map { ($0.axis, $0.size) })
    }
}

extension ProcessMesh {
    /// The rows of the global batch that this rank trains on: slice `r` of the `D` equal slices,
    /// `D` the product of the data axes' sizes (``MeshAxis/dataAxes``: `dp`, or `shard` ×
    /// `replicate`) and `r` this rank's coordinate over them, first axis fastest (all rows when
    /// the mesh has no data axis).
    public func dataParallelRows(batch: Int) -> Range<Int> {
        var index = 0, degree = 1
        for k in axes.indices.reversed() where MeshAxis.dataAxes.contains(axes[k]) {
            index = index * sizes[k] + coordinates[k]
            degree *= sizes[k]
        }
        let rows = batch / degree
        precondition(rows * degree == batch)
        return index * rows ..< (index + 1) * rows
    }

    /// This rank's rows (``dataParallelRows(batch:)``) as `accumulation` micro-steps.
    public func microSteps(batch: Int, accumulation: Int) -> MicroSteps {
        MicroSteps(rows: dataParallelRows(batch: batch), count: accumulation)
    }
}
