import Core

extension Planner {
    /// The candidates for a mixture-of-experts model on N > 1 ranks: `train_dp` (every rank all
    /// E experts; without `--recompute`, whose rerun forwards would route again) and
    /// `train_ep --ep E'` for every E' > 1 that divides N — those whose E' does not divide E are
    /// refused with training's reason (``expertsRefusal(_:)``) — then the dense layouts, which
    /// are all refused: only `train`, `train_dp`, `train_ep` and `train_3d` train experts, and the
    /// planner does not model `train_3d`'s.
    func expertCandidates(dense: [LayoutDescription]) -> [LayoutDescription] {
        let n = ranks
        var result: [LayoutDescription] = [.dataParallel(ranks: n, bucketBytes: bucketBytes)]
        for group in 2...n where n % group == 0 { result.append(.expertParallel(ranks: n, expertGroup: group)) }
        return result + dense.filter { $0.kind != .dataParallel }
    }

    /// Why `layout` cannot train this model's experts, in the words the executable uses
    /// (`TrainingCommand.launch`, `train_ep`'s validation); nil when it can or the model is dense.
    func expertsRefusal(_ layout: LayoutDescription) -> String? {
        guard let experts = plan.config.experts else { return nil }
        if let group = layout.shape.expertGroup, experts.count % group != 0 {
            return "--experts \(experts.count) is not divisible by --ep \(group) (each rank of a group holds E/E' experts)"
        }
        switch layout.kind {
        case .singleRank, .dataParallel: return nil
        case .threeDimensional: return "the planner does not model train_3d with --experts (it trains them; plan train_dp and train_ep instead)"
        default: return "--experts is not supported by \(layout.command.split(separator: " ").first ?? ""): use train, train_dp, train_ep or train_3d"
        }
    }
}
