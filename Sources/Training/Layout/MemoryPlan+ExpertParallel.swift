import Core

extension LayoutDescription {
    /// `train_ep -np N --ep E'`: data parallel over all N ranks (the rows, the dense floats, the
    /// routing allgather), each mixture of experts' experts split over groups of E' ranks.
    public static func expertParallel(ranks: Int, expertGroup: Int) -> LayoutDescription {
        var layout = LayoutDescription.dataParallel(ranks: ranks, bucketBytes: 1 << 20)
        layout.shape.expertGroup = expertGroup
        return layout
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
