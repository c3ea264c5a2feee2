/// A mixture of experts' routing statistics over one step of a pipeline's micro-batches
/// (`train_pp` or `train_3d` with `--micro-batches M --schedule gpipe`, dropless): what makes f, P and the
/// load-balancing loss the whole batch's when the batch reaches the block in M pieces.
///
/// Every micro-batch's forward adds its `2E` statistics (per expert the assignments routed there
/// and the sum of the router probabilities) to ``sums``; a new pass starts after M forwards.
/// The first backward of the step — under GPipe every forward of the stage has run by then —
/// sums them over the ranks that share the batch (``ExpertBatchExchange``: an allgather of `2E`
/// floats per rank, once per step instead of once per forward) and computes the whole batch's
/// routed counts, the aux loss `α·E·Σ_e f_e·P_e` and the load; every micro-batch's backward then
/// takes its aux gradient `α·E·f_e/B` from them. Without a capacity factor no assignment depends
/// on another row's routing, so nothing else needs the whole batch; with one (and under 1F1B,
/// whose first backward comes before the last forward) this cannot be exact, and the layouts
/// refuse it.
///
/// **Memory:** `4·(2E + R·2E + E)` bytes of buffers (R the ranks of the exchange, 1 without).
public final class StepRouting {
    let experts: ExpertsConfig
    let microBatches: Int
    let exchange: ExpertBatchExchange?
    /// Forwards since the first of this pass, and rows they routed.
    var forwards = 0
    var rows = 0
    var exchanged = false
    /// `2E`: this rank's micro-batches' routed counts, then probability sums, so far.
    let sums: UnsafeMutablePointer<Float>
    /// `R·2E`: every rank's sums (with an exchange).
    let gathered: UnsafeMutablePointer<Float>
    /// `E`: the whole batch's routed counts, once exchanged.
    let routed: UnsafeMutablePointer<Int32>
    var byteCount: Int { 4 * (2 * experts.count + (exchange?.ranks ?? 1) * 2 * experts.count + experts.count) }

    /// The whole batch's rows, aux loss and load (the most assignments one expert computed over
    /// the mean), as of the last exchange.
    public private(set) var batchRows = 0
    public private(set) var auxiliaryLoss: Float = 0
    public private(set) var imbalance: Float = 0

    public init(experts: ExpertsConfig, microBatches: Int, exchange: ExpertBatchExchange?) {
        precondition(experts.capacityFactor == nil, "micro-batched routing is exact only without a capacity")
        self.experts = experts
        self.microBatches = microBatches
        self.exchange = exchange
        let e = experts.count
        sums = .allocate(capacity: 2 * e)
        sums.initialize(repeating: 0, count: 2 * e)
        gathered = .allocate(capacity: (exchange?.ranks ?? 1) * 2 * e)
        gathered.initialize(repeating: 0, count: (exchange?.ranks ?? 1) * 2 * e)
        routed = .allocate(capacity: e)
        routed.initialize(repeating: 0, count: e)
        MemoryLedger.add(.buffers, bytes: byteCount)
    }

    deinit {
        sums.deallocate()
        gathered.deallocate()
        routed.deallocate()
        MemoryLedger.add(.buffers, bytes: -byteCount)
    }

    /// One micro-batch's statistics (`2E` floats) over `rows` rows.
    func add(_ statistics: UnsafePointer<Float>, rows count: Int) {
        if forwards % microBatches == 0 {
            for i in 0..<2 * experts.count { sums[i] = 0 }
            rows = 0
            exchanged = false
        }
        forwards += 1
        rows += count
        for i in 0..<2 * experts.count { sums[i] += statistics[i] }
    }

    /// At the step's first backward: the whole batch's counts, aux loss and load.
    func exchangeIfNeeded() {
        guard !exchanged else { return }
        exchanged = true
        let e = experts.count, k = experts.topK
        if let exchange {
            exchange.allgather(sums, count: 2 * e, into: gathered)
            batchRows = exchange.batchRows
        } else {
            gathered.update(from: sums, count: 2 * e)
            batchRows = rows
        }
        let ranks = exchange?.ranks ?? 1
        var sum: Float = 0, most = 0, total = 0
        for x in 0..<e {
            var count: Float = 0, mass: Float = 0
            for r in 0..<ranks {
                count += gathered[r * 2 * e + x]
                mass += gathered[r * 2 * e + e + x]
            }
            routed[x] = Int32(count)
            sum += count / Float(batchRows * k) * (mass / Float(batchRows))
            most = max(most, Int(count))
            total += Int(count)
        }
        auxiliaryLoss = experts.auxiliaryLossCoefficient * Float(e) * sum
        imbalance = total == 0 ? 0 : Float(most) * Float(e) / Float(total)
    }
}
