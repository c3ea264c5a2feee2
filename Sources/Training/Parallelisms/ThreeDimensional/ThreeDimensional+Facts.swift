import Core
import Distributed

extension LayoutDescription {
    public static func threeDimensional(tp: Int, dp: Int, pp: Int, microBatches: Int, schedule: PipelineScheduleKind,
                                        partition: [Int]? = nil) -> LayoutDescription {
        LayoutDescription(ThreeDimensional.Facts(),
                          shape: .threeDimensional(tp: tp, dp: dp, pp: pp, microBatches: microBatches, partition: partition),
                          schedule: schedule)
    }

    /// A grid as the flags of `train_3d` describe it.
    public static func threeDimensional(tp: Int, dp: Int, pp: Int, _ options: PipelineOptions) -> LayoutDescription {
        var layout = LayoutDescription.threeDimensional(tp: tp, dp: dp, pp: pp, microBatches: options.microBatches,
                                                        schedule: options.schedule, partition: options.partition)
        layout.recompute = options.recompute
        layout.shape.virtualStages = options.virtualStages
        return layout
    }
}

extension ThreeDimensional {
    /// `train_3d` for the plans (``ThreeDimensional`` allocates and communicates what this
    /// states): a pipeline stage's blocks (``PipelineParallel/Facts``), tensor-parallel over tp
    /// (``TensorParallel/Facts``), each block ZeRO-3 over dp (``FullyShardedDataParallel/Facts``,
    /// one gather buffer), a mixture of experts' experts split over `--ep E'` ranks of dp.
    ///
    /// **Bytes per optimizer step:** the tensor-parallel pairs on `b` rows, ZeRO-3 of the
    /// stage's blocks over dp per chain run, the pipeline's boundaries, the loss over dp, and
    /// the experts' exchanges (``addExperts(_:_:)``).
    struct Facts: LayoutFacts {
        static let executable = "train_3d"
        static let trainsExperts = true

        /// Every grid T·D·P = N with at least two axes above one, 1F1B at each micro-batch count;
        /// at the most micro-batches whose rows split over T, sequence parallelism, and with a
        /// pipeline also with `--recompute`. For experts each grid also with `--ep E'` for every
        /// E' dividing D, under GPipe when M > 1 (dropless only).
        static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
            let n = context.ranks, divisors = context.divisors
            guard n > 1 else { return [] }
            var result: [LayoutDescription] = []
            for t in divisors {
                for d in divisors where (n / t) % d == 0 {
                    let p = n / t / d
                    guard [t, d, p].filter({ $0 > 1 }).count >= 2 else { continue }
                    let counts = CandidateContext.microBatchCounts(stages: p, rows: max(1, context.rows / d)).filter { p > 1 || $0 == 1 }
                    for m in counts {
                        result += withExperts(.threeDimensional(tp: t, dp: d, pp: p, microBatches: m, schedule: .oneForwardOneBackward), context)
                    }
                    if t > 1, let m = counts.last(where: { (context.rows / d / $0) % t == 0 }) {
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
            return result
        }

        /// `grid` as planned for the model: itself when dense; with experts each `--ep E'`
        /// dividing D, and with M > 1 under 1F1B itself (refused) and, dropless, those under GPipe.
        static func withExperts(_ grid: LayoutDescription, _ context: CandidateContext) -> [LayoutDescription] {
            guard let experts = context.experts else { return [grid] }
            var result: [LayoutDescription] = [], variant = grid
            if (grid.shape.microBatches ?? 1) > 1 && grid.schedule != .gpipe {
                result.append(grid)
                guard experts.capacityFactor == nil else { return result }
                variant.schedule = .gpipe
            }
            let d = grid.shape.size(.dp)
            for group in 1...d where d % group == 0 {
                variant.shape.expertGroup = group
                result.append(variant)
            }
            return result
        }

        func command(_ layout: LayoutDescription) -> String {
            let shape = layout.shape
            return "train_3d -np \(shape.ranks) --tp \(shape.size(.tp)) --dp \(shape.size(.dp)) --pp \(shape.size(.pp))"
                + (layout.schedule != .oneForwardOneBackward ? layout.scheduleFlags : "")
                + layout.recomputeFlag + (layout.sequenceParallel ? " --sequence-parallel" : "")
                + (shape.expertGroup.map { $0 > 1 ? " --ep \($0)" : "" } ?? "")
        }

        func expertsRefusal(_ experts: ExpertsConfig, _ layout: LayoutDescription) -> String? {
            let group = layout.shape.expertGroup ?? 1
            if experts.count % group != 0 {
                return "--experts \(experts.count) is not divisible by --ep \(group) (each rank of a group holds E/E' experts)"
            }
            do {
                try ThreeDimensional.checkExperts(experts, expertGroup: group, dp: layout.shape.size(.dp),
                                                  pipeline: PipelineOptions(layout), sequenceParallel: layout.sequenceParallel)
            } catch {
                return error.description
            }
            return nil
        }

        func expertGroupInBlocks(_ layout: LayoutDescription) -> Int { layout.shape.expertGroup ?? 1 }

        var gathersRoutingStatistics: Bool { true }

        func holdParameters(_ memory: inout MemoryPlan, _ blocks: [LocalBlock], _ rank: RankGeometry,
                            _ checked: inout Checked) -> Int {
            FullyShardedDataParallel.Facts.holdBlockShards(&memory, blocks, group: rank.size(.dp),
                                                           expertGroup: expertGroupInBlocks(rank.layout), gatherBuffers: 1, &checked)
        }

        func communication(_ rank: RankGeometry) -> CommunicationPlan {
            var result = CommunicationPlan()
            let dp = rank.size(.dp), tp = rank.size(.tp)
            TensorParallel.Facts.addPairs(&result, rank)
            for (c, local) in rank.blocks.enumerated() {
                Self.addBlockShards(&result, local, group: dp, stride: tp, expertGroup: expertGroupInBlocks(rank.layout),
                                    runs: rank.runs, reruns: rank.reruns(chunk: c))
            }
            Self.addExperts(&result, rank)
            PipelineParallel.Facts.addBoundaries(&result, rank)
            result.add(.allreduce, .dp, size: dp, stride: tp, bytesPerCall: 4)
            return result
        }

        /// ZeRO-3's calls for `blocks` over a group along `axis` (`train_3d`'s dp), per chain run
        /// (`runs` of them, each block's forward `1 + reruns[i]` times): each block's parts
        /// allgathered before forward and backward and reduce-scattered after, a mixture of
        /// experts' router over the group and its experts over the `replicate` ranks that hold
        /// the same ones (`group / expertGroup` of them, stride `stride · expertGroup`).
        static func addBlockShards(_ result: inout CommunicationPlan, _ blocks: [LocalBlock], group: Int, stride: Int, expertGroup: Int,
                                   runs: Int, reruns: [Int]) {
            for (i, block) in blocks.enumerated() {
                let parts = block.router.map { [($0, group, MeshAxis.dp, stride), (block.count - $0, group / expertGroup, .replicate, stride * expertGroup)] }
                    ?? [(block.count, group, .dp, stride)]
                for (count, size, axis, stride) in parts {
                    let bytes = 4 * size * ((count + size - 1) / size)
                    result.add(.allgather, axis, size: size, stride: stride, calls: runs * (2 + reruns[i]), bytesPerCall: bytes)
                    result.add(.reduceScatter, axis, size: size, stride: stride, calls: runs, bytesPerCall: bytes)
                }
            }
        }

        /// The experts' calls of every chunk (``CommunicationPlan/addExperts3D(_:_:_:_:dp:runs:reruns:)``).
        static func addExperts(_ result: inout CommunicationPlan, _ rank: RankGeometry) {
            for (c, range) in rank.chunks.enumerated() {
                result.addExperts3D(rank.plan, range, rank.layout, rank.settings, dp: rank.coordinate(.dp), runs: rank.runs,
                                    reruns: rank.reruns(chunk: c))
            }
        }
    }
}

extension CommunicationPlan {
    /// The mixture-of-experts calls of `train_3d` in one chunk of blocks `range`, for a rank at
    /// dp coordinate `dp` (the FSDP gathers of the two parts are the caller's): per block and
    /// forward (`runs·(1 + reruns)` of them), the routing-statistics allgather over dp (`4·D·2E`
    /// bytes; with M > 1 micro-batches once per step, by ``StepRouting``); with `--ep E'` per
    /// forward the counts' all-to-all over the `expert` axis and per run four all-to-all-v, as
    /// `train_ep` counts them (``CommunicationPlan/addExperts(rank:_:_:_:)``), with the dp group in place of the
    /// world (``UniformRouting`` over D ranks: its rows per step, whatever M). The expert group is
    /// E' consecutive dp ranks: world stride T.
    mutating func addExperts3D(_ plan: BlockPlan, _ range: Range<Int>, _ layout: LayoutDescription, _ settings: PlanSettings,
                               dp rank: Int, runs: Int, reruns: [Int]) {
        guard let experts = plan.config.experts else { return }
        let shape = layout.shape, d = shape.size(.dp), tp = shape.size(.tp), group = shape.expertGroup ?? 1
        let e = experts.count, m = e / group
        let routing = UniformRouting(experts: experts, batchRows: settings.batchSize, ranks: d)
        let first = rank / group * group
        let sent = Double((group - 1) * m) * routing.kept(rank: rank)
        let received = (first ..< first + group).filter { $0 != rank }.reduce(0.0) { $0 + Double(m) * routing.kept(rank: $1) }
        var rows = 0.0, mixtures = 0
        let micro = shape.microBatches ?? 1, steps = runs / micro
        for (i, index) in range.enumerated() where plan[index].kind == .mixtureOfExperts {
            let block = plan[index], forwards = runs * (1 + reruns[i])
            add(.allgather, .dp, size: d, stride: tp, calls: micro > 1 ? steps : forwards, bytesPerCall: 4 * d * 2 * e)
            guard group > 1 else { continue }
            add(.allToAll, .expert, size: group, stride: tp, calls: forwards, bytesPerCall: 4 * (group - 1) * m)
            mixtures += runs
            rows += Double(steps) * 4 * (sent + received) * Double(block.weightRows + block.weightColumns)
        }
        if mixtures > 0 {
            if let i = transfers.firstIndex(where: { $0.kind == .allToAllV && $0.axis == .expert }) {
                transfers[i].calls += 4 * mixtures
                transfers[i].bytes += Int(rows.rounded())
            } else {
                transfers.append(Transfer(kind: .allToAllV, axis: .expert, groupSize: group, stride: tp, calls: 4 * mixtures,
                                          bytes: Int(rows.rounded())))
            }
        }
    }
}
