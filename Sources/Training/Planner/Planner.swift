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

    /// Micro-batch counts tried for a pipeline of `stages`: M = 1, P, 2P, 4P, 8P and the powers of
    /// two up to 8P, those that divide the rows of a micro-step, in increasing order.
    func microBatchCounts(stages: Int, rows: Int) -> [Int] {
        let powers = (0...20).map { 1 << $0 }.filter { $0 <= 8 * stages }
        let counts = Set([1, stages, 2 * stages, 4 * stages, 8 * stages] + powers).filter { $0 <= rows && rows % $0 == 0 }
        return counts.sorted()
    }

    /// Every layout of the suite on ``ranks`` ranks: `train` (one rank); DP; FSDP with ZeRO 1, 2
    /// and 3 and each HSDP replica count; TP with and without sequence parallelism (each of these
    /// with and without `--recompute`); PP with each
    /// schedule and micro-batch count (``microBatchCounts(stages:rows:)``; `--recompute` and
    /// `--batch-weight-gradients` at the most;
    /// interleaved with two chunks per stage where M is a multiple of P); every 3D
    /// factorisation T·D·P = N with T, D, P > 1 in at least two axes, with 1F1B at each M (and,
    /// at the most micro-batches that allow it, sequence parallelism without and with `--recompute`).
    /// With experts, ``expertCandidates(dense:)``.
    public func candidates() -> [LayoutDescription] {
        let n = ranks
        if n == 1 { return [.singleRank] }
        let divisors = (1...n).filter { n % $0 == 0 }
        var result: [LayoutDescription] = []
        var flat: [LayoutDescription] = [.dataParallel(ranks: n, bucketBytes: bucketBytes)]
        for zero in 1...3 {
            for r in divisors where r < n { flat.append(.fullySharded(ranks: n, zero: zero, replicate: r)) }
        }
        var sp = LayoutDescription.tensorParallel(ranks: n)
        sp.sequenceParallel = true
        flat += [.tensorParallel(ranks: n), sp]
        for layout in flat {  // each with and without --recompute (√n segments of the one chain)
            var recompute = layout
            recompute.recompute = true
            result += [layout, recompute]
        }
        let rows = max(1, settings.batchSize / settings.accumulation)
        let counts = microBatchCounts(stages: n, rows: rows)
        for kind in PipelineScheduleKind.allCases where kind != .interleaved {
            for m in counts { result.append(.pipeline(stages: n, microBatches: m, schedule: kind)) }
            if kind != .zeroBubble, let m = counts.last {
                var recompute = LayoutDescription.pipeline(stages: n, microBatches: m, schedule: kind)
                recompute.recompute = true
                result.append(recompute)
                if m > 1 {  // one weight pass per step over all the micro-batches' rows
                    var batched = LayoutDescription.pipeline(stages: n, microBatches: m, schedule: kind)
                    batched.batchWeightGradients = true
                    result.append(batched)
                }
            }
        }
        for m in counts where m % n == 0 {  // interleaved, two chunks per stage
            var interleaved = LayoutDescription.pipeline(stages: n, microBatches: m, schedule: .interleaved)
            interleaved.shape.virtualStages = 2
            result.append(interleaved)
        }
        for t in divisors {
            for d in divisors where (n / t) % d == 0 {
                let p = n / t / d
                guard [t, d, p].filter({ $0 > 1 }).count >= 2 else { continue }
                let counts = microBatchCounts(stages: p, rows: max(1, rows / d)).filter { p > 1 || $0 == 1 }
                for m in counts { result.append(.threeDimensional(tp: t, dp: d, pp: p, microBatches: m, schedule: .oneForwardOneBackward)) }
                // Sequence parallelism, and with recomputation, at the most micro-batches whose rows split over t.
                if t > 1, let m = counts.last(where: { (rows / d / $0) % t == 0 }) {
                    var sp = LayoutDescription.threeDimensional(tp: t, dp: d, pp: p, microBatches: m, schedule: .oneForwardOneBackward)
                    sp.sequenceParallel = true
                    result.append(sp)
                    if p > 1 {
                        sp.recompute = true
                        result.append(sp)
                    }
                }
            }
        }
        return plan.config.experts == nil ? result : expertCandidates(dense: result)
    }

    /// Plans every candidate: the layouts that can run, fastest first (ties: less memory first),
    /// and the ones that cannot, with the reason.
    public func evaluate() throws(UsageError) -> (entries: [Entry], refused: [Refusal]) {
        var entries: [Entry] = [], refused: [Refusal] = []
        for layout in candidates() {
            if let reason = expertsRefusal(layout) {
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

extension LayoutDescription {
    /// The command with the pipeline's micro-batches: `train_pp -np 4 --schedule 1f1b --micro-batches 8`.
    public var planCommand: String {
        if kind == .dataParallel && bucketBytes != 1 << 20 { return command + " --bucket-kb \(bucketBytes / 1024)" }
        guard let m = shape.microBatches else { return command }
        return command + " --micro-batches \(m)"
    }
}
