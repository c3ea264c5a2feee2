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
    /// The calls happen on one step in `period` (DiLoCo's outer step, every H steps); `calls` and
    /// `bytes` are that step's. 1 for every transfer made on every step.
    public var period = 1

    public init(kind: CommunicationKind, axis: MeshAxis?, groupSize: Int, stride: Int, calls: Int, bytes: Int, period: Int = 1) {
        (self.kind, self.axis, self.groupSize, self.stride, self.calls, self.bytes) = (kind, axis, groupSize, stride, calls, bytes)
        self.period = period
    }
}

/// What one rank communicates per training step, computed from the configuration and the
/// layout before anything runs, as the ``Ledger`` would count it (``Transfer``). Pure, no MPI:
/// a plan can be made for any layout on any number of ranks (the `plan` executable does, for
/// thousands). Groups of one rank communicate nothing and appear nowhere, as in the ledger.
///
/// What each layout moves per optimizer step is its parallelism's fact, stated once beside its
/// runtime (``LayoutFacts/communication(_:)``: `DataParallel+Facts.swift`,
/// `FullyShardedDataParallel+Facts.swift`, `TensorParallel+Facts.swift`,
/// `PipelineParallel+Facts.swift`, `ThreeDimensional+Facts.swift`, `ExpertParallel+Facts.swift`);
/// this type adds them up over the rank's ``RankGeometry`` (with B the global batch, K
/// `--accumulate`, M micro-batches, Ψ the parameters and `b` the rows of one chain run: B/D/K,
/// over M in a pipeline). `train_ep`'s rows are planned for ``UniformRouting``.
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

    /// Calls per step of `kind`, over every group (a transfer of ``Transfer/period`` p counted
    /// as a p-th, rounded down).
    public func calls(_ kind: CommunicationKind) -> Int {
        transfers.filter { $0.kind == kind }.reduce(0) { $0 + $1.calls / $1.period }
    }

    /// Payload bytes per step of `kind`, over every group (a transfer of ``Transfer/period`` p
    /// counted as a p-th, rounded down).
    public func bytes(_ kind: CommunicationKind) -> Int {
        transfers.filter { $0.kind == kind }.reduce(0) { $0 + $1.bytes / $1.period }
    }

    /// Adds `calls` calls of `bytesPerCall` each over a group of `size` ranks (nothing when the
    /// group is one rank), made on one step in `period`, merged with the same kind over the same
    /// group and period.
    mutating func add(_ kind: CommunicationKind, _ axis: MeshAxis?, size: Int, stride: Int, calls: Int = 1, bytesPerCall: Int,
                      period: Int = 1) {
        guard size > 1 && calls > 0 else { return }
        if let i = transfers.firstIndex(where: { $0.kind == kind && $0.axis == axis && $0.period == period }) {
            transfers[i].calls += calls
            transfers[i].bytes += calls * bytesPerCall
        } else {
            transfers.append(Transfer(kind: kind, axis: axis, groupSize: size, stride: stride, calls: calls, bytes: calls * bytesPerCall,
                                      period: period))
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
        let ranks = layout.shape.ranks
        try layout.check(worldSize: ranks, plan: plan, batchSize: settings.batchSize, accumulation: settings.accumulation)
        let cut = RankGeometry.cut(plan, layout)
        return (0..<ranks).map { forRank(RankGeometry(rank: $0, layout, plan, settings, cut: cut), gradientNorm: gradientNorm) }
    }

    /// The plan of one rank: what its layout moves (``LayoutFacts/communication(_:)``), then the
    /// training loop's own calls.
    static func forRank(_ rank: RankGeometry, gradientNorm: Bool) -> CommunicationPlan {
        let layout = rank.layout, n = layout.shape.ranks
        var result = layout.facts.communication(rank)
        if gradientNorm && !layout.facts.holdsWholeModel(layout) { result.add(.allreduce, nil, size: n, stride: 1, bytesPerCall: 8) }
        result.add(.stopVote, nil, size: n, stride: 1, bytesPerCall: 4)
        return result
    }
}
