import Core
import Distributed

extension LayoutDescription {
    /// `train_diloco -np N --inner-steps H`: N workers with whole replicas, each on B/N rows,
    /// averaging their progress every H steps.
    public static func diloco(ranks: Int, settings: OuterSettings) -> LayoutDescription {
        LayoutDescription(DiLoCo.Facts(settings: settings), shape: .dataParallel(ranks: ranks))
    }
}

extension DiLoCo {
    /// `train_diloco` for the plans (``DiLoCo`` allocates and communicates what this states).
    ///
    /// **Memory:** DP's (the whole model, its gradients and inner optimizer state on every
    /// worker, one chain of B/N rows) plus θ (Ψ floats, parameters) and the outer momentum u
    /// (Ψ floats, optimizer state).
    ///
    /// **Bytes per optimizer step:** the 4-byte loss every step; once every H steps, one
    /// allreduce of each fragment's floats, Ψ in all (a ``Transfer`` of period H: the plan of
    /// the steps that exchange, which the ledger matches over any multiple of H steps).
    struct Facts: LayoutFacts {
        var settings: OuterSettings

        static let executable = "train_diloco"
        static let trainsExperts = false

        /// DiLoCo with H = 10, 50 and 500, one fragment.
        static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
            guard context.ranks > 1, context.experts == nil else { return [] }
            return [10, 50, 500].map {
                .diloco(ranks: context.ranks, settings: OuterSettings(innerSteps: $0, learningRate: 0.7, momentum: 0.9, fragments: 1))
            }
        }

        func command(_ layout: LayoutDescription) -> String {
            "train_diloco -np \(layout.shape.ranks) --inner-steps \(settings.innerSteps)"
                + (settings.fragments > 1 ? " --fragments \(settings.fragments)" : "")
        }

        /// Each worker's gradient is its own: no allreduce makes them whole, so the gradient
        /// norm (and `--clip-grad-norm`) is each worker's, computed alone.
        func holdsWholeModel(_ layout: LayoutDescription) -> Bool { true }

        /// The worker's parameters and gradients, and θ beside them.
        func holdParameters(_ memory: inout MemoryPlan, _ blocks: [LocalBlock], _ rank: RankGeometry,
                            _ checked: inout Checked) -> Int {
            let held = blocks.reduce(0) { checked.plus($0, $1.count) }
            memory[.gradients] = checked.times(4, max(1, held))
            memory[.parameters] = checked.times(2, memory[.gradients])
            return held
        }

        /// The outer momentum; the largest message is a fragment.
        func addMemory(_ memory: inout MemoryPlan, _ rank: RankGeometry, _ checked: inout Checked) {
            memory[.optimizer] = checked.plus(memory[.optimizer], checked.times(4, max(1, rank.plan.parameterCount)))
            guard rank.size(.dp) > 1 else { return }
            let fragments = OuterSettings.fragmentRanges(count: rank.plan.parameterCount, fragments: settings.fragments)
            memory.largestMessage = max(memory.largestMessage, fragments.map(\.count).max() ?? 0)
        }

        func communication(_ rank: RankGeometry) -> CommunicationPlan {
            var result = CommunicationPlan()
            let workers = rank.size(.dp)
            for fragment in OuterSettings.fragmentRanges(count: rank.plan.parameterCount, fragments: settings.fragments) {
                result.add(.allreduce, .dp, size: workers, stride: 1, bytesPerCall: 4 * fragment.count, period: settings.innerSteps)
            }
            result.add(.allreduce, .dp, size: workers, stride: 1, bytesPerCall: 4)
            return result
        }
    }
}
