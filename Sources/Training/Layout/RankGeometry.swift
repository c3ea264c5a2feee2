import Core
import Distributed

/// One rank's place in a layout, computed once and shared by the memory plan, the
/// communication plan and the cost model: its mesh coordinates (as ``ProcessMesh`` lays them
/// out, first axis fastest), the blocks it runs chunk by chunk (one chunk unless interleaved:
/// chunks `s, s + P, …` of the pipeline's `P·V`), its rows and its pipeline schedule. Pure data,
/// no MPI: a plan can be made for any rank of any layout.
struct RankGeometry {
    let layout: LayoutDescription
    let plan: BlockPlan
    let settings: PlanSettings
    /// The world rank.
    let rank: Int
    let coordinates: [Int]
    /// World ranks between neighbours along each mesh axis.
    let strides: [Int]
    /// The blocks this rank runs, one range per chunk.
    let chunks: [Range<Int>]
    /// Each chunk's blocks as this rank holds them (tensor-parallel slices, E/E' experts).
    let blocks: [[LocalBlock]]
    /// The rank's pipeline schedule (nil for a layout without micro-batches).
    let schedule: PipelineSchedule?
    /// Rows of one micro-step: `B / D / K`.
    let rows: Int
    /// Rows of one chain run: a micro-step's, over `M` in a pipeline.
    let chainRows: Int

    /// The pipeline's cut of the model into `P·V` chunks (nil without a pipeline), computed once
    /// per layout (``PipelinePartition/stages``).
    static func cut(_ plan: BlockPlan, _ layout: LayoutDescription) -> [Range<Int>]? {
        let shape = layout.shape, pp = shape.size(.pp)
        return pp > 1 ? PipelinePartition.stages(plan, stages: pp * shape.virtualStages, override: shape.partition) : nil
    }

    /// The geometry of world rank `rank` (call ``LayoutDescription/check(worldSize:plan:batchSize:accumulation:)``
    /// first); `cut` is ``cut(_:_:)``.
    init(rank: Int, _ layout: LayoutDescription, _ plan: BlockPlan, _ settings: PlanSettings, cut: [Range<Int>]?) {
        let shape = layout.shape
        self.layout = layout
        self.plan = plan
        self.settings = settings
        self.rank = rank
        let sizes = shape.axes.map(\.size)
        let coordinates = ProcessMesh.coordinates(rank: rank, sizes: sizes)
        self.coordinates = coordinates
        strides = sizes.indices.map { sizes[..<$0].reduce(1, *) }
        let pp = shape.size(.pp), v = shape.virtualStages, stage = shape.axes.firstIndex { $0.axis == .pp }.map { coordinates[$0] } ?? 0
        let chunks = cut.map { PipelinePartition.chunks($0, stage: stage, stages: pp) } ?? [0..<plan.count]
        self.chunks = chunks
        let expertGroup = layout.facts.expertGroupInBlocks(layout)
        blocks = chunks.map { LocalBlock.blocks(plan, $0, tpSize: shape.size(.tp), expertGroup: expertGroup) }
        schedule = shape.microBatches.map {
            PipelineSchedule(layout.schedule, stage: stage, stages: pp, microBatches: $0, virtualStages: v)
        }
        let rows = settings.batchSize / shape.dataParallelDegree / settings.accumulation
        self.rows = rows
        chainRows = shape.microBatches.map { rows / $0 } ?? rows
    }

    /// The degree of `axis` (1 when the layout does not use it).
    func size(_ axis: MeshAxis) -> Int { layout.shape.size(axis) }

    /// This rank's coordinate on `axis` (0 when the layout does not use it).
    func coordinate(_ axis: MeshAxis) -> Int {
        layout.shape.axes.firstIndex { $0.axis == axis }.map { coordinates[$0] } ?? 0
    }

    /// The world-rank stride between neighbours along `axis`.
    func stride(_ axis: MeshAxis) -> Int {
        layout.shape.axes.firstIndex { $0.axis == axis }.map { strides[$0] } ?? 1
    }

    /// Chain runs per step and chunk: `K` micro-steps × `M` micro-batches.
    var runs: Int { settings.accumulation * (layout.shape.microBatches ?? 1) }

    /// This rank's index among the ranks that split the batch (the data axes, first fastest),
    /// as ``ProcessMesh/dataParallelRows(batch:)`` numbers them.
    var dataIndex: Int {
        var index = 0
        for (k, entry) in layout.shape.axes.enumerated().reversed() where MeshAxis.dataAxes.contains(entry.axis) {
            index = index * entry.size + coordinates[k]
        }
        return index
    }

    /// Per block of chunk `c`, how many more times its forward runs in backward under
    /// `--recompute` (``CommunicationPlan/reruns(_:recompute:slots:)``).
    func reruns(chunk c: Int) -> [Int] {
        CommunicationPlan.reruns(blocks[c].count, recompute: layout.recompute, slots: schedule?.chunkSlots[c])
    }

    /// Rows of each activation of chunk `c` (its input, then each block's output): under
    /// sequence parallelism those outside the tensor-parallel pairs hold `1/T` of the rows.
    func activationRows(chunk c: Int) -> [Int] {
        let local = blocks[c], tp = size(.tp)
        guard layout.sequenceParallel && tp > 1 && !local.isEmpty else { return Array(repeating: chainRows, count: local.count + 1) }
        return ([local[0].sharding != .row] + local.map { $0.sharding != .column }).map { $0 ? chainRows / tp : chainRows }
    }

    /// Each activation's width in chunk `c`: its input, then each block's output.
    func widths(chunk c: Int) -> [Int] { [blocks[c].first?.input ?? 0] + blocks[c].map(\.output) }
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

    /// Blocks `range` of `plan` on a rank of a `tpSize` tensor-parallel group, a mixture of
    /// experts holding E/E' of its experts (`expertGroup` E').
    static func blocks(_ plan: BlockPlan, _ range: Range<Int>, tpSize: Int, expertGroup: Int = 1) -> [LocalBlock] {
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
