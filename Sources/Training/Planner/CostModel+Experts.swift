import Core

extension CostModel {
    /// FLOPs of one mixture-of-experts block on world rank `rank` per step, as `train_dp` and
    /// `train_ep` run it: the router `6·in·E` per row (`x·W_r` forward, its two products
    /// backward; returned per row, the caller multiplies by the rank's rows), and `6·in·out` per
    /// (row, slot) assignment an expert computes on this rank (returned in total). Assignments
    /// follow ``UniformRouting``: under `train_dp` a rank computes its own rows' kept
    /// assignments, `E·kept(rank)`; under `train_ep --ep E'` its E/E' experts' share of its
    /// group's, `Σ_q (E/E')·kept(q)` — without a capacity `b·K` either way (with K = E exactly what runs),
    /// the experts' term of ``BlockPlan/trainingFlops(batchSize:)`` for a rank's share of the batch.
    /// Also the rows each of the rank's experts computes (what sets their products' rate).
    ///
    /// `rank` is the rank's place among the `ranks` that split the batch: its world rank among all
    /// N (`train_dp`, `train_ep`), or its dp coordinate among D (`train_3d`, whose tp ranks all
    /// compute the block).
    static func mixtureOfExpertsFlops(rank: Int, ranks: Int, _ block: Block, _ layout: LayoutDescription,
                                      _ settings: PlanSettings) -> (routerPerRow: Double, experts: Double, rowsPerExpert: Double) {
        guard let experts = block.experts else { return (0, 0, 0) }
        let inputs = Double(block.weightRows), outputs = Double(block.weightColumns)
        let routing = UniformRouting(experts: experts, batchRows: settings.batchSize, ranks: ranks)
        let group = layout.shape.expertGroup ?? 1
        let assignments = routing.computed(rank: rank, group: group)
        return (6 * inputs * Double(experts.count), 6 * inputs * outputs * assignments, assignments / Double(experts.count / group))
    }
}
