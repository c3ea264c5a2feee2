import Core
import Distributed

/// Calls of one kind a rank makes per training step over one group of the mesh, with the payload
/// the ``Ledger`` counts for them (an allreduce's or broadcast's buffer, an allgather's whole
/// output, a reduce-scatter's whole input, one message of a send or receive).
public struct Transfer: Sendable, Equatable {
    public var kind: CommunicationKind
    /// The mesh axis the group runs along; nil for the whole world (the loss of FSDP, the
    /// gradient norm, the stop vote).
    public var axis: MeshAxis?
    /// Ranks in the group (2 for a pipeline's point-to-point messages).
    public var groupSize: Int
    /// The stride in world ranks between neighbours of the group (1 for the first mesh axis):
    /// with it the cost model tells whether the group stays on one host.
    public var stride: Int
    public var calls: Int
    public var bytes: Int

    public init(kind: CommunicationKind, axis: MeshAxis?, groupSize: Int, stride: Int, calls: Int, bytes: Int) {
        (self.kind, self.axis, self.groupSize, self.stride, self.calls, self.bytes) = (kind, axis, groupSize, stride, calls, bytes)
    }
}

/// What one rank communicates per training step, computed from the configuration and the
/// layout before anything runs, as the ``Ledger`` would count it (``Transfer``). Pure, no MPI:
/// a plan can be made for any layout on any number of ranks (the `plan` executable does, for
/// thousands). Groups of one rank communicate nothing and appear nowhere, as in the ledger.
///
/// Per optimizer step, with B the global batch, K `--accumulate`, M micro-batches, Ψ the
/// parameters and `b` the rows of one chain run (B/D/K, over M in a pipeline):
///
/// - **DP** (``DataParallel``): one allreduce per gradient bucket (Ψ floats in all, whatever K),
///   and the 4-byte loss.
/// - **FSDP** (``FullyShardedDataParallel``) over shard groups of S: ZeRO-3 allgathers every block
///   twice (the last two once, kept from forward into backward, unless recomputing) and
///   reduce-scatters it once per micro-step (`S·⌈c/S⌉` floats each); ZeRO-2
///   reduce-scatters every block (its `c` floats) per micro-step and allgathers Ψ' = `S·⌈Ψ/S⌉`
///   once; ZeRO-1 reduce-scatters and allgathers Ψ' once. HSDP adds one allreduce of the rank's
///   shard over the replicas; the loss is summed over the world.
/// - **TP** (``TensorParallel``): per chain run, an allreduce of `b × outputs` after each
///   row-parallel Linear (forward) and of `b × inputs` before each column-parallel one
///   (backward). Under sequence parallelism those become an allgather of `b × inputs` forward,
///   another and a reduce-scatter backward (column), a reduce-scatter forward and an allgather
///   backward of `b × outputs` (row); plus, per step, one allreduce of the partial gradients
///   (``PartialGradientSum``) and the 4-byte loss over tp.
/// - **PP** (``PipelineStage``): per micro-batch and chunk (V of them per stage when interleaved),
///   a boundary's activation forward and its gradient back (one send and one receive each side),
///   and per schedule run (K of them) the 4-byte loss broadcast from the last stage.
/// - **MoE** (`train_dp`, `train_ep`): see ``addExperts(rank:_:_:_:)``; `train_ep`'s rows are
///   planned for ``UniformRouting``.
/// - **3D** (``ThreeDimensional``): TP on its stage's blocks over `b` rows, ZeRO-3 of those blocks
///   over dp per micro-batch, PP at its boundaries (1/T of the rows outside the pairs under
///   sequence parallelism), the loss over dp.
///
/// With `--recompute` the forwards rerun in backward (``reruns(_:recompute:slots:)``) repeat their
/// forward collectives: TP's row allreduce (or SP's allgather and reduce-scatter) and ZeRO-3's
/// allgather.
///
/// The training loop adds, on more than one rank: the stop vote (`stop_vote`, 4 bytes, every
/// step) and, with `--metrics` or `--clip-grad-norm`, the gradient norm (an 8-byte allreduce over
/// the world) unless every rank holds the whole model (``GradientNorm``).
public struct CommunicationPlan: Sendable, Equatable {
    public var transfers: [Transfer] = []

    /// Calls per step of `kind`, over every group.
    public func calls(_ kind: CommunicationKind) -> Int { transfers.filter { $0.kind == kind }.reduce(0) { $0 + $1.calls } }

    /// Payload bytes per step of `kind`, over every group.
    public func bytes(_ kind: CommunicationKind) -> Int { transfers.filter { $0.kind == kind }.reduce(0) { $0 + $1.bytes } }

    /// Adds `calls` calls of `bytesPerCall` each over a group of `size` ranks (nothing when the
    /// group is one rank), merged with the same kind over the same group.
    mutating func add(_ kind: CommunicationKind, _ axis: MeshAxis?, size: Int, stride: Int, calls: Int = 1, bytesPerCall: Int) {
        guard size > 1 && calls > 0 else { return }
        if let i = transfers.firstIndex(where: { $0.kind == kind && $0.axis == axis }) {
            transfers[i].calls += calls
            transfers[i].bytes += calls * bytesPerCall
        } else {
            transfers.append(Transfer(kind: kind, axis: axis, groupSize: size, stride: stride, calls: calls, bytes: calls * bytesPerCall))
        }
    }
}

extension CommunicationPlan {
    /// Per block of a chain of `blocks`, how many more times its forward runs in backward under
    /// `--recompute`: once for every block of a pipeline chunk holding more than one micro-batch
    /// (`slots`); outside pipelines, once for the blocks inside every segment but the last
    /// (``RecomputeSegments``: each earlier segment reruns all its blocks but the last).
    public static func reruns(_ blocks: Int, recompute: Bool, slots: Int?) -> [Int] {
        guard recompute else { return Array(repeating: 0, count: blocks) }
        if let slots { return Array(repeating: slots > 1 ? 1 : 0, count: blocks) }
        var result = Array(repeating: 0, count: blocks)
        let segments = RecomputeSegments(blocks: blocks).ranges
        for segment in segments.dropLast() { for i in segment.dropLast() { result[i] = 1 } }
        return result
    }

    /// Every rank's plan, in world rank order. `gradientNorm`: the run computes the gradient norm
    /// (`--metrics` or `--clip-grad-norm`). Throws as ``MemoryPlan/perRank(_:_:_:)`` does when the
    /// layout cannot run the model or batch.
    public static func perRank(_ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings,
                               gradientNorm: Bool = false) throws(UsageError) -> [CommunicationPlan] {
        var shape = layout.shape
        shape.sequenceParallel = layout.sequenceParallel
        try shape.check(worldSize: shape.ranks, plan: plan, batchSize: settings.batchSize, accumulation: settings.accumulation)
        let pp = shape.size(.pp)
        let cut = pp > 1 ? PipelinePartition.stages(plan, stages: pp * shape.virtualStages, override: shape.partition) : [0..<plan.count]
        return (0..<shape.ranks).map { forRank($0, plan, layout, settings, cut: cut, gradientNorm: gradientNorm) }
    }

    /// The plan of world rank `rank` (call ``LayoutShape/check`` first); `cut` is the pipeline's
    /// chunks, `P·V` of them (one of every block without a pipeline).
    static func forRank(_ rank: Int, _ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings,
                        cut: [Range<Int>], gradientNorm: Bool) -> CommunicationPlan {
        let shape = layout.shape, n = shape.ranks, k = settings.accumulation
        var coordinate: [MeshAxis: Int] = [:], strides: [MeshAxis: Int] = [:]
        var rest = rank, stride = 1
        for (axis, size) in shape.axes {
            coordinate[axis] = rest % size
            strides[axis] = stride
            rest /= size
            stride *= size
        }
        let ppStride = strides[.pp] ?? 1
        let tp = shape.size(.tp), dp = shape.size(.dp), pp = shape.size(.pp), m = shape.microBatches ?? 1
        let rows = settings.batchSize / shape.dataParallelDegree / k
        let chainRows = shape.microBatches == nil ? rows : rows / m
        var result = CommunicationPlan()

        switch layout.kind {
        case .singleRank:
            break
        case .dataParallel:
            if shape.expertGroup == nil {
                for bucket in GradientBuckets.buckets(plan: plan, bucketBytes: layout.bucketBytes) {
                    result.add(.allreduce, .dp, size: dp, stride: 1, bytesPerCall: 4 * bucket.range.count)
                }
                result.add(.allreduce, .dp, size: dp, stride: 1, bytesPerCall: 4)
            }
            result.addExperts(rank: rank, plan, layout, settings)  // train_ep's calls; train_dp's routing statistics
        case .fullySharded:
            let s = shape.size(.shard), r = shape.size(.replicate)
            let counts = plan.blocks.map(\.parameterCount)
            let held: Int
            switch layout.zero {
            case 1, 2:
                let psi = counts.reduce(0, +), shard = (psi + s - 1) / s
                held = shard
                if layout.zero == 1 {
                    result.add(.reduceScatter, .shard, size: s, stride: 1, bytesPerCall: 4 * s * shard)
                } else {
                    for c in counts { result.add(.reduceScatter, .shard, size: s, stride: 1, calls: k, bytesPerCall: 4 * c) }
                }
                result.add(.allgather, .shard, size: s, stride: 1, bytesPerCall: 4 * s * shard)
            default:
                let shards = counts.map { ($0 + s - 1) / s }
                let reruns = Self.reruns(plan.count, recompute: layout.recompute, slots: nil)
                held = shards.reduce(0, +)
                for (i, shard) in shards.enumerated() {
                    // Without recomputation the last two blocks stay gathered from forward into backward.
                    let kept = !layout.recompute && i >= shards.count - 2 ? 1 : 0
                    result.add(.allgather, .shard, size: s, stride: 1, calls: (2 + reruns[i] - kept) * k, bytesPerCall: 4 * s * shard)
                    result.add(.reduceScatter, .shard, size: s, stride: 1, calls: k, bytesPerCall: 4 * s * shard)
                }
            }
            result.add(.allreduce, .replicate, size: r, stride: s, bytesPerCall: 4 * held)
            result.add(.allreduce, nil, size: n, stride: 1, bytesPerCall: 4)
        case .tensorParallel, .pipeline, .threeDimensional:
            let stage = coordinate[.pp] ?? 0, v = shape.virtualStages
            let ranges = pp > 1 ? (0..<v).map { cut[$0 * pp + stage] } : [0..<plan.count]
            let schedule = shape.microBatches.map {
                PipelineSchedule(layout.schedule, stage: stage, stages: pp, microBatches: $0, virtualStages: v)
            }
            let sequenceParallel = layout.sequenceParallel && tp > 1
            let runs = k * m  // chain runs per step and chunk: micro-steps × micro-batches
            var partial = 0  // sequence parallelism's partial gradients
            let expertGroup = layout.kind == .threeDimensional ? shape.expertGroup ?? 1 : 1
            for (c, range) in ranges.enumerated() {
                let local = MemoryPlan.localBlocks(plan, range, tpSize: tp, expertGroup: expertGroup)
                let reruns = Self.reruns(local.count, recompute: layout.recompute, slots: schedule?.chunkSlots[c])
                for (i, block) in local.enumerated() where tp > 1 && block.sharding != .replicated {
                    let bytes = 4 * chainRows * (block.sharding == .column ? block.input : block.output)
                    let forwards = runs * (1 + reruns[i])
                    switch (block.sharding, sequenceParallel) {
                    case (.column, false): result.add(.allreduce, .tp, size: tp, stride: 1, calls: runs, bytesPerCall: bytes)
                    case (.row, false): result.add(.allreduce, .tp, size: tp, stride: 1, calls: forwards, bytesPerCall: bytes)
                    case (.column, true):
                        result.add(.allgather, .tp, size: tp, stride: 1, calls: forwards + runs, bytesPerCall: bytes)
                        result.add(.reduceScatter, .tp, size: tp, stride: 1, calls: runs, bytesPerCall: bytes)
                    default:
                        result.add(.reduceScatter, .tp, size: tp, stride: 1, calls: forwards, bytesPerCall: bytes)
                        result.add(.allgather, .tp, size: tp, stride: 1, calls: runs, bytesPerCall: bytes)
                    }
                }
                if layout.kind == .threeDimensional {  // ZeRO-3 of the local blocks over dp, per chain run
                    for (i, block) in local.enumerated() {
                        // A mixture of experts in two parts: the router over dp, the experts over `replicate`.
                        let parts = block.router.map { [($0, dp, MeshAxis.dp, tp), (block.count - $0, dp / expertGroup, .replicate, tp * expertGroup)] }
                            ?? [(block.count, dp, .dp, tp)]
                        for (count, size, axis, stride) in parts {
                            let bytes = 4 * size * ((count + size - 1) / size)
                            result.add(.allgather, axis, size: size, stride: stride, calls: runs * (2 + reruns[i]), bytesPerCall: bytes)
                            result.add(.reduceScatter, axis, size: size, stride: stride, calls: runs, bytesPerCall: bytes)
                        }
                    }
                    result.addExperts3D(plan, range, layout, settings, dp: coordinate[.dp] ?? 0, runs: runs, reruns: reruns)
                }
                if pp > 1 {  // the chunk's boundaries: activation forward, its gradient back
                    let activationRows: [Int] = sequenceParallel
                        ? ([local[0].sharding != .row] + local.map { $0.sharding != .column }).map { $0 ? chainRows / tp : chainRows }
                        : Array(repeating: chainRows, count: local.count + 1)
                    let input = 4 * activationRows[0] * local[0].input, output = 4 * activationRows[local.count] * local[local.count - 1].output
                    if range.lowerBound > 0 {
                        result.add(.receive, .pp, size: pp, stride: ppStride, calls: runs, bytesPerCall: input)
                        result.add(.send, .pp, size: pp, stride: ppStride, calls: runs, bytesPerCall: input)
                    }
                    if range.upperBound < plan.count {
                        result.add(.send, .pp, size: pp, stride: ppStride, calls: runs, bytesPerCall: output)
                        result.add(.receive, .pp, size: pp, stride: ppStride, calls: runs, bytesPerCall: output)
                    }
                }
                if sequenceParallel {
                    partial += MemoryPlan.sequenceParallelPartials(local, layout, dp: dp, dpIndex: coordinate[.dp] ?? 0)
                }
            }
            if pp > 1 { result.add(.broadcast, .pp, size: pp, stride: ppStride, calls: k, bytesPerCall: 4) }
            if sequenceParallel {  // the partial gradients of what is used outside the pairs, and the loss
                if partial > 0 { result.add(.allreduce, .tp, size: tp, stride: 1, bytesPerCall: 4 * partial) }
                result.add(.allreduce, .tp, size: tp, stride: 1, bytesPerCall: 4)
            }
            if layout.kind == .threeDimensional { result.add(.allreduce, .dp, size: dp, stride: tp, bytesPerCall: 4) }
            // Every stage's aux loss and load, gathered over pp (``PipelineExpertStatistics``).
            if plan.config.experts != nil { result.add(.allgather, .pp, size: pp, stride: ppStride, bytesPerCall: 4 * 2 * pp) }
        }

        // The training loop's own calls.
        let everyRankHoldsAll = (layout.kind == .dataParallel && (shape.expertGroup ?? 1) == 1) || (layout.kind == .fullySharded && shape.size(.shard) == 1)
        if gradientNorm && !everyRankHoldsAll { result.add(.allreduce, nil, size: n, stride: 1, bytesPerCall: 8) }
        result.add(.stopVote, nil, size: n, stride: 1, bytesPerCall: 4)
        return result
    }
}
