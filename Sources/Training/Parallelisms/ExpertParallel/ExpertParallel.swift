import Core
import Distributed

/// `train_ep --ep E'`: expert parallelism. The experts of every mixture-of-experts block are
/// split over groups of E' ranks; everything else is data parallel over all N ranks.
///
/// **Mesh** `[expert E', replicate N/E']`, the expert axis fastest: an expert group is E'
/// *consecutive* ranks (ranks g·E' … g·E' + E' − 1, so on one host its all-to-alls stay in shared
/// memory), and the `replicate` axis joins the ranks at the same place of every group, which
/// hold the same experts. Rank j of a group (its `expert` coordinate) holds experts
/// `[j·E/E', (j+1)·E/E')` of every block: E/E' experts each instead of E.
///
/// **Rows.** World rank r trains on rows `r·B/N ..< (r+1)·B/N` of the global batch (rank order is
/// row order, as in `train_dp`), whatever group it is in. Each block routes its rows like
/// `train`, with the capacity rule, f and P over the global batch through the allgather of
/// routing statistics `train_dp` uses (``DataParallelExpertExchange``, over the world); then
/// ``ExpertShards`` sends each kept assignment's input row to the rank of its group that holds
/// its expert (all-to-all of counts, then all-to-all-v of rows), the expert runs there, and the
/// output comes back with a second all-to-all-v; backward mirrors it.
///
/// **Gradients.** The local buffer is laid out as every dense float (embedding, routers, head)
/// in canonical order, then this rank's experts, block by block. The dense part is replicated on
/// all N ranks and its gradient summed over the world (one allreduce); an expert's gradient is
/// summed over the N/E' ranks that hold it (one allreduce over `replicate`). Every rank then
/// applies the same update to the same floats, so replicas stay bit-identical.
///
/// **Bytes per step and rank:** allreduces of `4·D + 4` bytes over the world (D dense floats,
/// and the loss) and `4·X` over `replicate` (X = this rank's expert floats; none when E' = N);
/// per block an allgather of `4·N·2E` bytes (``ExpertBatchExchange``), an all-to-all of
/// `4·(E'−1)·E/E'` bytes of counts, and all-to-all-v of `4·(s + r)·(in + out)` bytes, s and r the
/// kept assignments this rank sends to and receives from the other ranks of its group.
public final class ExpertParallel: TrainingLayout {
    let mesh: ProcessMesh
    let world: Communicator
    let replicas: Communicator
    let chain: LayerChain
    let mixtures: [MixtureOfExperts]
    let buffer: ParameterBuffer
    /// Floats of the dense part (the front of ``buffer``) and of this rank's experts (the rest).
    let denseCount: Int
    let expertCount: Int
    let rows: Range<Int>
    let globalBatch: Int
    public let local: LocalParameters
    let expertGroup: Int

    public init(_ context: TrainingContext, expertGroup: Int) throws(UsageError) {
        let n = context.world.size, plan = context.plan
        guard let experts = context.config.experts else { throw UsageError("--ep needs --experts (train_ep shards the experts)") }
        if n % expertGroup != 0 {
            throw UsageError("--ep \(expertGroup) does not divide the \(n) ranks (expert groups × group size must equal the ranks)")
        }
        if experts.count % expertGroup != 0 {
            throw UsageError("--experts \(experts.count) is not divisible by --ep \(expertGroup) (each rank of a group holds E/E' experts)")
        }
        try LayoutShape.dataParallel(ranks: n).check(worldSize: n, plan: plan, batchSize: context.batchSize,
                                                    accumulation: context.options.accumulate)
        world = context.world
        self.expertGroup = expertGroup
        mesh = ProcessMesh(world: world, axes: [(.expert, expertGroup), (.replicate, n / expertGroup)])
        replicas = mesh[.replicate]
        globalBatch = context.batchSize
        let perRank = globalBatch / n
        rows = world.rank * perRank ..< (world.rank + 1) * perRank
        let m = experts.count / expertGroup, position = mesh.coordinates[0]
        let owned = position * m ..< (position + 1) * m

        // Local layout: the dense floats in canonical order, then this rank's experts.
        var dense = ParameterMap(), held = ParameterMap()
        for block in plan.blocks {
            if block.kind == .mixtureOfExperts {
                let router = block.weightRows * experts.count, expert = block.weightRows * block.weightColumns + block.weightColumns
                dense.append(start: block.parameterOffset, count: router)
                held.append(start: block.parameterOffset + router + owned.lowerBound * expert, count: m * expert)
            } else {
                dense.append(start: block.parameterOffset, count: block.parameterCount)
            }
        }
        denseCount = dense.count
        expertCount = held.count
        let buffer = ParameterBuffer(count: denseCount + expertCount)
        self.buffer = buffer
        var denseOffset = 0, expertOffset = denseCount
        let exchange = DataParallelExpertExchange(group: world, batchRows: globalBatch)
        let group = ExpertGroupExchange(group: mesh[.expert])
        // The most rows one rank may have to compute per block: every assignment of its group's
        // rows (a row picks a rank at most min(K, m) times), or m experts filled to capacity.
        let maxReceived = max(1, min(expertGroup * perRank * min(experts.topK, m), m * experts.capacity(rows: globalBatch)))
        let layers: [Layer] = plan.blocks.map { block in
            guard block.kind == .mixtureOfExperts else {
                defer { denseOffset += block.parameterCount }
                return block.makeLayer(parameters: buffer.view(offset: denseOffset, count: block.parameterCount))
            }
            let router = block.weightRows * experts.count, expert = m * (block.weightRows * block.weightColumns + block.weightColumns)
            defer { denseOffset += router; expertOffset += expert }
            let mixture = MixtureOfExperts(inputs: block.weightRows, outputs: block.weightColumns, experts: experts, rows: perRank,
                                           router: buffer.view(offset: denseOffset, count: router), localExperts: owned,
                                           expertParameters: buffer.view(offset: expertOffset, count: expert))
            mixture.attach(exchange)
            mixture.shard(over: group, maxReceived: maxReceived)
            return mixture
        }
        mixtures = layers.compactMap { $0 as? MixtureOfExperts }
        chain = LayerChain(layers: layers, widths: plan.widths(0..<plan.count), rows: perRank,
                           loss: SoftmaxCrossEntropy(gradientScale: 1 / Float(globalBatch)))
        let map = dense + held
        // The first group reports the whole model when gathering (its dense floats E' times, equal).
        local = LocalParameters(map: map, reported: mesh.coordinates[1] == 0 ? map : ParameterMap(),
                                values: buffer.value, gradients: buffer.grad,
                                optimizer: Optimizer(config: context.optimizer, count: map.count))
        map.extract(from: context.initialParameters, into: buffer.value)
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: rows, tokens: chain.input.value, targets: chain.targets)
        let lossSum = chain.forward()
        buffer.zeroGradients()
        chain.backward()
        world.allreduceSum(buffer.grad, count: denseCount)
        replicas.allreduceSum(buffer.grad + denseCount, count: expertCount)
        // The aux loss comes from the whole batch's statistics: the same on every rank.
        return world.sum(lossSum) / Float(globalBatch) + auxiliaryLoss
    }

    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        sampler.fill(index: index, rows: rows, tokens: chain.input.value, targets: chain.targets)
        return world.sum(chain.forward()) / Float(globalBatch)
    }

    var auxiliaryLoss: Float { mixtures.reduce(0) { $0 + $1.auxiliaryLoss } }

    public var expertStatistics: ExpertStatistics? {
        guard !mixtures.isEmpty else { return nil }
        return ExpertStatistics(auxiliaryLoss: auxiliaryLoss, imbalance: mixtures.reduce(0) { max($0, $1.imbalance) })
    }

    public var summary: String? {
        let n = world.size, e = mixtures.first?.experts.count ?? 0
        let m = e / expertGroup
        return "expert parallel: mesh [expert \(expertGroup), replicate \(n / expertGroup)]: \(n / expertGroup) group(s) of "
            + "\(expertGroup) consecutive ranks; rank j of a group holds experts \(m)j ..< \(m)(j+1) of \(e) in every block"
    }
}

/// The all-to-alls of one expert group (the mesh's `expert` axis), for ``ExpertShards``.
final class ExpertGroupExchange: ExpertAllToAll {
    let group: Communicator

    init(group: Communicator) { self.group = group }

    var rank: Int { group.rank }
    var ranks: Int { group.size }

    func allToAll(_ input: UnsafePointer<Int32>, count: Int, into output: UnsafeMutablePointer<Int32>) {
        group.allToAll(input, count: count, into: output)
    }

    func allToAllV(_ input: UnsafePointer<Float>, sendCounts: UnsafePointer<Int32>, sendOffsets: UnsafePointer<Int32>,
                   into output: UnsafeMutablePointer<Float>, receiveCounts: UnsafePointer<Int32>, receiveOffsets: UnsafePointer<Int32>) {
        group.allToAllV(input, sendCounts: sendCounts, sendOffsets: sendOffsets, into: output,
                        receiveCounts: receiveCounts, receiveOffsets: receiveOffsets)
    }
}
