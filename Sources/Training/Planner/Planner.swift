import Core
import Distributed

/// The planner behind `plan`: every layout and factorisation of a configuration on N ranks, each
/// with its exact per-rank memory (``MemoryPlan``, the code of the pre-allocation check), its
/// bytes per step by kind (``CommunicationPlan``, the ledger's figures) and a predicted step time
/// (``CostModel``), fastest first.
public struct Planner: Sendable {
    public var plan: BlockPlan
    public var settings: PlanSettings
    public var ranks: Int
    public var model: CostModel
    /// Bytes a rank may use (`--memory-per-rank`).
    public var memoryPerRank: Int
    /// The run computes the gradient norm (`--metrics`): its 8-byte allreduce is included.
    public var gradientNorm = false
    /// DP's gradient bucket size (`--bucket-kb`).
    public var bucketBytes = 1 << 20

    public init(plan: BlockPlan, settings: PlanSettings, ranks: Int, model: CostModel, memoryPerRank: Int) {
        self.plan = plan
        self.settings = settings
        self.ranks = ranks
        self.model = model
        self.memoryPerRank = memoryPerRank
    }

    /// One layout, planned.
    public struct Entry: Sendable {
        public var layout: LayoutDescription
        /// Bytes the most demanding rank needs: what the pre-allocation check compares with the
        /// budget (``MemoryPlan/largestNeed(_:_:_:)`` plus the runtime reserve).
        public var memory: Int
        public var fits: Bool
        /// Per rank, in world rank order.
        public var communication: [CommunicationPlan]
        public var prediction: CostModel.Prediction
        /// Bytes per step by kind on the rank that moves the most (stop vote excluded).
        public var bytes: [CommunicationKind: Int]
    }

    /// A layout that cannot run this configuration on N ranks, and why.
    public struct Refusal: Sendable {
        public var layout: LayoutDescription
        public var reason: String
    }

    /// Every layout of every parallelism worth planning on ``ranks`` ranks, as each states it
    /// (``LayoutFacts/candidates(_:)``): `train` on one rank; DP; FSDP with every ZeRO stage and
    /// HSDP replica count; TP with and without sequence parallelism; PP with each schedule and
    /// micro-batch count; every 3D grid; `train_ep` for a model with experts.
    public func candidates() -> [LayoutDescription] {
        Parallelisms.candidates(CandidateContext(ranks: ranks, rows: max(1, settings.batchSize / settings.accumulation),
                                                 bucketBytes: bucketBytes, experts: plan.config.experts))
    }

    /// Plans every candidate: the layouts that can run, fastest first (ties: less memory first),
    /// and the ones that cannot, with the reason.
    public func evaluate() throws(UsageError) -> (entries: [Entry], refused: [Refusal]) {
        var entries: [Entry] = [], refused: [Refusal] = []
        for layout in candidates() {
            if let experts = plan.config.experts, let reason = layout.facts.expertsRefusal(experts, layout) {
                refused.append(Refusal(layout: layout, reason: reason))
                continue
            }
            let need: Int, communication: [CommunicationPlan]
            do {
                communication = try CommunicationPlan.perRank(plan, layout, settings, gradientNorm: gradientNorm)  // checks the shape
                need = try MemoryPlan.largestNeed(plan, layout, settings) + memoryReserve
            } catch {
                refused.append(Refusal(layout: layout, reason: error.description))
                continue
            }
            let prediction = try model.predict(plan, layout, settings, communication: communication)
            var bytes: [CommunicationKind: Int] = [:]
            for kind in CommunicationKind.allCases where kind != .stopVote {
                bytes[kind] = communication.map { $0.bytes(kind) }.max() ?? 0
            }
            entries.append(Entry(layout: layout, memory: need, fits: need <= memoryPerRank, communication: communication,
                                 prediction: prediction, bytes: bytes))
        }
        entries.sort { ($0.prediction.seconds, $0.memory) < ($1.prediction.seconds, $1.memory) }
        return (entries, refused)
    }
}
