import Core

extension Planner {
    /// The candidates for a mixture-of-experts model on N > 1 ranks: `train_dp` (every rank all
    /// E experts; without `--recompute`, whose rerun forwards would route again),
    /// `train_ep --ep E'` for every E' > 1 that divides N, and every `train_3d` grid of the dense
    /// candidates, each with `--ep E'` for every E' dividing D (E' = 1: every dp rank holds all
    /// experts) — with more than one micro-batch under GPipe, and only when dropless; `train_pp`
    /// with one micro-batch, or under GPipe (its own candidates); an E' that does not divide E,
    /// and every pipeline those rules refuse, is refused with training's reason
    /// (``expertsRefusal(_:)``). Then the other dense layouts, which are refused: only `train`,
    /// `train_dp`, `train_ep`, `train_pp` and `train_3d` train experts.
    func expertCandidates(dense: [LayoutDescription]) -> [LayoutDescription] {
        let n = ranks
        var result: [LayoutDescription] = [.dataParallel(ranks: n, bucketBytes: bucketBytes)]
        for group in 2...n where n % group == 0 { result.append(.expertParallel(ranks: n, expertGroup: group)) }
        var refused: [LayoutDescription] = []
        for layout in dense where layout.kind != .dataParallel {
            guard layout.kind == .threeDimensional || layout.kind == .pipeline, !layout.sequenceParallel, !layout.recompute else {
                refused.append(layout)
                continue
            }
            var grid = layout
            if (layout.shape.microBatches ?? 1) > 1 && layout.schedule != .gpipe {  // refused; dropless, GPipe runs them
                refused.append(layout)
                guard plan.config.experts?.capacityFactor == nil, layout.kind == .threeDimensional else { continue }
                grid.schedule = .gpipe
            }
            guard layout.kind == .threeDimensional else {
                result.append(grid)
                continue
            }
            let d = layout.shape.size(.dp)
            for group in 1...d where d % group == 0 {
                grid.shape.expertGroup = group
                result.append(grid)
            }
        }
        return result + refused
    }

    /// Why `layout` cannot train this model's experts, in the words the executable uses
    /// (`TrainingCommand.launch`, `train_ep`'s and `train_3d`'s validation); nil when it can or
    /// the model is dense.
    func expertsRefusal(_ layout: LayoutDescription) -> String? {
        guard let experts = plan.config.experts else { return nil }
        if let group = layout.shape.expertGroup, experts.count % group != 0 {
            return "--experts \(experts.count) is not divisible by --ep \(group) (each rank of a group holds E/E' experts)"
        }
        switch layout.kind {
        case .singleRank, .dataParallel: return nil
        case .pipeline:  // train_pp's own checks
            var pipeline = PipelineOptions()
            pipeline.microBatches = layout.shape.microBatches ?? 1
            pipeline.schedule = layout.schedule
            pipeline.recompute = layout.recompute
            do { try pipeline.checkExperts(experts) } catch { return error.description }
            return nil
        case .threeDimensional:  // train_3d's own checks
            var pipeline = PipelineOptions()
            pipeline.microBatches = layout.shape.microBatches ?? 1
            pipeline.schedule = layout.schedule
            pipeline.recompute = layout.recompute
            do {
                try ThreeDimensional.checkExperts(experts, expertGroup: layout.shape.expertGroup ?? 1, dp: layout.shape.size(.dp),
                                                  pipeline: pipeline, sequenceParallel: layout.sequenceParallel)
            } catch {
                return error.description
            }
            return nil
        default: return "--experts is not supported by \(layout.command.split(separator: " ").first ?? ""): use train, train_dp, train_ep, train_pp or train_3d"
        }
    }
}
