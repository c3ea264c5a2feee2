import Core
import Distributed

extension LayoutDescription {
    /// `train_ep -np N --ep E'`: data parallel over all N ranks (the rows, the dense floats, the
    /// routing allgather), each mixture of experts' experts split over groups of E' ranks.
    public static func expertParallel(ranks: Int, expertGroup: Int) -> LayoutDescription {
        var shape = LayoutShape.dataParallel(ranks: ranks)
        shape.expertGroup = expertGroup
        return LayoutDescription(ExpertParallel.Facts(), shape: shape)
    }
}

extension ExpertParallel {
    /// `train_ep` for the plans (``ExpertParallel`` allocates and communicates what this states).
    struct Facts: LayoutFacts {
        static let executable = "train_ep"
        static let trainsExperts = true

        /// `--ep E'` for every E' > 1 dividing the ranks, for a model with experts.
        static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
            guard context.experts != nil, context.ranks > 1 else { return [] }
            return context.divisors.dropFirst().map { .expertParallel(ranks: context.ranks, expertGroup: $0) }
        }

        func command(_ layout: LayoutDescription) -> String {
            "train_ep -np \(layout.shape.ranks) --ep \(layout.shape.expertGroup ?? 1)"
        }

        func expertsRefusal(_ experts: ExpertsConfig, _ layout: LayoutDescription) -> String? {
            let group = layout.shape.expertGroup ?? 1
            return experts.count % group == 0 ? nil : "--experts \(experts.count) is not divisible by --ep \(group) (each rank of a group holds E/E' experts)"
        }

        var gathersRoutingStatistics: Bool { true }

        /// With one rank per group every rank holds every expert.
        func holdsWholeModel(_ layout: LayoutDescription) -> Bool { (layout.shape.expertGroup ?? 1) == 1 }

        func addMemory(_ memory: inout MemoryPlan, _ rank: RankGeometry, _ checked: inout Checked) {
            MemoryPlan.expertParallel(&memory, rank.plan, group: rank.layout.shape.expertGroup ?? 1, rows: rank.chainRows,
                                      rank.settings, &checked)
        }

        func communication(_ rank: RankGeometry) -> CommunicationPlan {
            var result = CommunicationPlan()
            result.addExperts(rank: rank.rank, rank.plan, rank.layout, rank.settings)
            return result
        }
    }
}

extension MemoryPlan {
    /// What `train_ep` holds beyond the data-parallel plan it starts from (`ExpertParallel`,
    /// ``ExpertShards``): the parameters, gradients, Adam moments and updated floats are the dense floats
    /// (embedding, routers, head) and this rank's E/E' experts of every block, not the whole
    /// model; each block adds its receive buffers for the worst case — R = min(E'·b·min(K, E/E'),
    /// E/E'·capacity) rows of input and output, values and gradients: `8·R·(in + out)` bytes of
    /// activations — and `4·(E'·E/E' + 8·E')` bytes of Int32 counts and offsets (buffers). `rows`
    /// is b, the rows of each rank. The largest MPI message is the larger gradient allreduce
    /// (dense floats or experts) or one all-to-all-v of R rows.
    static func expertParallel(_ memory: inout MemoryPlan, _ plan: BlockPlan, group: Int, rows: Int, _ settings: PlanSettings,
                               _ checked: inout Checked) {
        guard let experts = plan.config.experts, group >= 1 else { return }
        let m = experts.count / group
        var dense = 0, held = 0
        memory.largestMessage = 0  // not DP's buckets: the allreduces below, and the all-to-alls
        for block in plan.blocks {
            guard block.kind == .mixtureOfExperts else {
                dense = checked.plus(dense, block.parameterCount)
                continue
            }
            let inputs = block.weightRows, outputs = block.weightColumns
            dense = checked.plus(dense, checked.times(inputs, experts.count))
            held = checked.plus(held, checked.times(m, checked.plus(checked.times(inputs, outputs), outputs)))
            expertShardBuffers(&memory, block, group: group, rows: rows, settings, &checked)
        }
        let floats = checked.plus(dense, held)
        memory[.parameters] = checked.times(4, max(1, floats))
        memory[.gradients] = memory[.parameters]
        memory[.optimizer] = settings.optimizer == .adam ? checked.times(8, floats) : 0
        memory.updatedParameters = floats
        memory.largestMessage = max(memory.largestMessage, dense, held)
    }

    /// One mixture of experts' ``ExpertShards`` over an expert group of E' ranks, each with `rows`
    /// rows (`train_ep`, `train_3d --ep`): receive buffers for R = min(E'·b·min(K, E/E'),
    /// E/E'·capacity) rows of input and output, values and gradients (`8·R·(in + out)` bytes of
    /// activations), `4·(E'·E/E' + 8·E')` bytes of counts and offsets (buffers), and an
    /// all-to-all-v of up to R rows.
    static func expertShardBuffers(_ memory: inout MemoryPlan, _ block: Block, group: Int, rows: Int, _ settings: PlanSettings,
                                   _ checked: inout Checked) {
        guard let experts = block.experts else { return }
        let m = experts.count / group, inputs = block.weightRows, outputs = block.weightColumns
        let received = max(1, min(checked.times(group, checked.times(rows, min(experts.topK, m))),
                                  checked.times(m, experts.capacity(rows: settings.batchSize))))
        let buffers = checked.plus(checked.times(8, max(1, checked.times(received, inputs))),
                                   checked.times(8, max(1, checked.times(received, outputs))))
        memory[.activations] = checked.plus(memory[.activations], buffers)
        memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, checked.plus(checked.times(group, m), 8 * group)))
        memory.largestMessage = max(memory.largestMessage, checked.times(received, max(inputs, outputs)))
    }
}

extension CommunicationPlan {
    /// What `train_ep` moves per step on world rank `rank`:
    ///
    /// - per block, the allgather of routing statistics over the world
    ///   (``DataParallelExpertExchange``): 2E floats per rank, `4·N·2E` bytes;
    /// - with `--ep E'` > 1 (mesh `[expert E', replicate N/E']`, ``ExpertParallel``): one allreduce
    ///   of the D dense floats and one of the 4-byte loss over the world, one of this rank's X
    ///   expert floats over `replicate` (N/E' ranks, stride E'); per block over its expert group,
    ///   the counts' all-to-all (`4·(E'−1)·E/E'` bytes) and four all-to-all-v of rows — inputs out
    ///   and outputs back forward, output gradients out and input gradients back backward:
    ///   `4·(s + r)·(in + out)` bytes, s and r the assignments sent to and received from the
    ///   other ranks of the group, under ``UniformRouting`` `s = (E'−1)·m·kept(rank)` and
    ///   `r = Σ_{q ≠ rank in the group} m·kept(q)`, m = E/E' (the step's total rounded to whole bytes).
    mutating func addExperts(rank: Int, _ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings) {
        guard let experts = plan.config.experts else { return }
        let n = layout.shape.ranks, group = layout.shape.expertGroup ?? 1, e = experts.count, m = e / group
        let routing = UniformRouting(experts: experts, batchRows: settings.batchSize, ranks: n)
        let first = rank / group * group
        let sent = Double((group - 1) * m) * routing.kept(rank: rank)
        let received = (first ..< first + group).filter { $0 != rank }.reduce(0.0) { $0 + Double(m) * routing.kept(rank: $1) }
        var dense = 0, held = 0, mixtures = 0, rows = 0.0
        for block in plan.blocks {
            guard block.kind == .mixtureOfExperts else {
                dense += block.parameterCount
                continue
            }
            let inputs = block.weightRows, outputs = block.weightColumns
            dense += inputs * e
            held += m * (inputs * outputs + outputs)
            add(.allgather, group > 1 ? nil : .dp, size: n, stride: 1, bytesPerCall: 4 * n * 2 * e)
            guard group > 1 else { continue }
            add(.allToAll, .expert, size: group, stride: 1, bytesPerCall: 4 * (group - 1) * m)
            mixtures += 1
            rows += 4 * (sent + received) * Double(inputs + outputs)
        }
        guard group > 1 else { return }
        if mixtures > 0 {
            transfers.append(Transfer(kind: .allToAllV, axis: .expert, groupSize: group, stride: 1, calls: 4 * mixtures,
                                      bytes: Int(rows.rounded())))
        }
        add(.allreduce, nil, size: n, stride: 1, bytesPerCall: 4 * dense)
        add(.allreduce, nil, size: n, stride: 1, bytesPerCall: 4)
        add(.allreduce, .replicate, size: n / group, stride: group, bytesPerCall: 4 * held)
    }
}
