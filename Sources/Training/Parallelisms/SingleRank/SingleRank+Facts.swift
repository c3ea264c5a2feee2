import Core
import Distributed

extension LayoutDescription {
    /// `train`: the whole model on one rank.
    public static var singleRank: LayoutDescription { LayoutDescription(SingleRank.Facts(), shape: .singleRank) }
}

extension SingleRank {
    /// `train` for the plans: one rank holds everything and communicates nothing.
    struct Facts: LayoutFacts {
        static let executable = "train"
        static let trainsExperts = true

        /// The only layout on one rank.
        static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
            context.ranks == 1 ? [.singleRank] : []
        }

        func command(_ layout: LayoutDescription) -> String { "train" + layout.recomputeFlag }

        func communication(_ rank: RankGeometry) -> CommunicationPlan { CommunicationPlan() }

        func holdsWholeModel(_ layout: LayoutDescription) -> Bool { true }
    }
}
