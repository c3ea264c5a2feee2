import Core
import Distributed

extension LayoutDescription {
    /// `train_dp -np N --bucket-kb K`: the whole model on every rank, the batch split N ways.
    public static func dataParallel(ranks: Int, bucketBytes: Int) -> LayoutDescription {
        LayoutDescription(DataParallel.Facts(bucketBytes: bucketBytes), shape: .dataParallel(ranks: ranks))
    }
}

extension DataParallel {
    /// `train_dp` for the plans (``DataParallel`` allocates and communicates what this states).
    ///
    /// **Memory:** every rank the whole model, its gradients and optimizer state; one chain of
    /// B/N rows; with experts every rank's routing statistics (`D·2E` floats per block).
    ///
    /// **Bytes per optimizer step:** one allreduce per gradient bucket (Ψ floats in all, whatever
    /// `--accumulate`), the 4-byte loss, and per mixture-of-experts block and forward one
    /// allgather of every rank's 2E routing statistics (``DataParallelExpertExchange``).
    struct Facts: LayoutFacts {
        /// `--bucket-kb` in bytes.
        var bucketBytes: Int

        static let executable = "train_dp"
        static let trainsExperts = true

        /// DP, and with `--recompute` (not for experts: a rerun forward would route again).
        static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
            guard context.ranks > 1 else { return [] }
            let layout = LayoutDescription.dataParallel(ranks: context.ranks, bucketBytes: context.bucketBytes)
            return context.experts == nil ? CandidateContext.withRecomputation([layout]) : [layout]
        }

        func command(_ layout: LayoutDescription) -> String { "train_dp -np \(layout.shape.ranks)" + layout.recomputeFlag }

        var planFlags: String { bucketBytes != 1 << 20 ? " --bucket-kb \(bucketBytes / 1024)" : "" }

        var gathersRoutingStatistics: Bool { true }

        func holdsWholeModel(_ layout: LayoutDescription) -> Bool { true }

        /// The largest MPI message: the biggest bucket.
        func addMemory(_ memory: inout MemoryPlan, _ rank: RankGeometry, _ checked: inout Checked) {
            guard rank.size(.dp) > 1 else { return }
            let buckets = GradientBuckets.buckets(plan: rank.plan, bucketBytes: bucketBytes)
            memory.largestMessage = buckets.map(\.range.count).max() ?? 0
        }

        func communication(_ rank: RankGeometry) -> CommunicationPlan {
            var result = CommunicationPlan()
            let dp = rank.size(.dp)
            for bucket in GradientBuckets.buckets(plan: rank.plan, bucketBytes: bucketBytes) {
                result.add(.allreduce, .dp, size: dp, stride: 1, bytesPerCall: 4 * bucket.range.count)
            }
            result.add(.allreduce, .dp, size: dp, stride: 1, bytesPerCall: 4)
            if let experts = rank.plan.config.experts {
                for block in rank.plan.blocks where block.kind == .mixtureOfExperts {
                    result.add(.allgather, .dp, size: dp, stride: 1, bytesPerCall: 4 * dp * 2 * experts.count)
                }
            }
            return result
        }
    }
}
