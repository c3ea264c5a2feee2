import Core
import Distributed
import Foundation

/// Predicts the time of one training step of a layout from what each rank computes and
/// communicates.
///
/// **Compute.** A rank's FLOPs per step are `6 · rows · in · out` over the Linears it holds (its
/// tensor-parallel slices, its pipeline stage's blocks), for the rows it runs (B/D, in K·M chain
/// runs), plus `2 · rows · in · out` per rerun forward under `--recompute`; a mixture of experts
/// adds its router and the assignments its experts compute on the rank under uniform routing
/// (``mixtureOfExpertsFlops(rank:ranks:_:_:_:)``). They run at the
/// calibrated rate for chain runs of that many rows (``Calibration/rate(forRows:)``) or at `--flops`;
/// when more ranks than cores share a host, each gets `cores / ranks` of that rate. Apart from the
/// chain, a rank zeroes its gradients and updates its parameters every step: the calibration's
/// seconds per parameter for the run's update rule (``Calibration/update``) times the parameters
/// it updates (``MemoryPlan/updatedParameters``: all it holds, or its ZeRO/FSDP shard), at the
/// same cores share (none with `--flops`: that is a rank's own rate). With `--flops` and no
/// calibration that pass is not charged.
///
/// **Communication.** Every call of a ``Transfer`` costs, over a group of `p` ranks,
///
///     steps(p) · α  +  bytes · wire(p) / bw
///
/// with the ring's `steps` and `wire` (the fraction of the ledger's payload a rank sends):
/// allreduce 2(p−1) and 2(p−1)/p, allgather and reduce-scatter p−1 and (p−1)/p, broadcast
/// ⌈log₂ p⌉ and 1, all-to-all and all-to-all-v p−1 and 1 (pairwise exchange; the ledger counts
/// only the bytes that leave the rank), a point-to-point message 1 and 1. The calibration measured `α₂ + bytes/bw₂`
/// at p = 2, so `α = α₂ / steps(2)` and `bw = bw₂ · wire(2)`: exact at p = 2 and the ring's
/// scaling beyond. Where the calibration has measured points, `bw₂` is the bandwidth they show
/// at the transfer's mean bytes per call (``Calibration/Link/seconds(perCall:)``), so a call of
/// that size at p = 2 costs what it was measured to cost. A group whose ranks all sit on one host (its span, `stride · p`, at most
/// `--ranks-per-host`) runs at the measured shared-memory rates; any other at `--link-latency`
/// and `--link-bandwidth` (the measured rates when those are not given; without a calibration the
/// link's rates serve every group). A pipeline's message
/// is charged on the receiving side only (sends are non-blocking); the stop vote overlaps a
/// whole step and is free. A transfer made on one step in ``Transfer/period`` (DiLoCo's outer
/// step) is charged a period-th of its cost per step.
///
/// **No overlap.** Every collective the layouts run is blocking — they sit between the layers
/// that produce and consume their data, and DP's buckets are allreduced as backward completes
/// them. So a rank's time is its compute plus its communication.
///
/// **Pipeline bubble.** The schedule's ideal bubble `f` (``PipelineSchedule/idealBubble``:
/// (P−1)/(M+P−1); (P−1)/(3M+P−1) for ZB-H1; (P−1)/(V·M+P−1) interleaved) stretches the slowest rank's time by 1/(1−f).
/// The step is the slowest rank's time, stretched.
public struct CostModel: Sendable {
    public var calibration: Calibration?
    /// `--flops`: FLOP/s of one rank, instead of the calibrated rates.
    public var flops: Double?
    /// `--link-latency` (seconds per message step) and `--link-bandwidth` (bytes/s) between hosts.
    public var linkLatency: Double?
    public var linkBandwidth: Double?
    /// `--ranks-per-host` (nil: every rank on one host).
    public var ranksPerHost: Int?

    public init(calibration: Calibration?, flops: Double? = nil, linkLatency: Double? = nil, linkBandwidth: Double? = nil,
                ranksPerHost: Int? = nil) {
        self.calibration = calibration
        self.flops = flops
        self.linkLatency = linkLatency
        self.linkBandwidth = linkBandwidth
        self.ranksPerHost = ranksPerHost
    }

    /// The prediction for one layout: seconds per step, and its parts on the slowest rank.
    public struct Prediction: Sendable, Equatable {
        public var seconds: Double
        public var computeSeconds: Double
        public var communicationSeconds: Double
        public var bubble: Double
        /// Of the slowest rank's compute: the FLOPs its experts compute per step (the assignments'
        /// `6·in·out`, not the router) and the seconds charged for them (0 for a dense model).
        public var expertFlops = 0.0
        public var expertSeconds = 0.0
    }

    /// Ring steps and the wire fraction of the payload, per call over `p` ranks.
    static func ring(_ kind: CommunicationKind, _ p: Int) -> (steps: Double, wire: Double) {
        let q = Double(p)
        switch kind {
        case .allreduce: return (2 * (q - 1), 2 * (q - 1) / q)
        case .allgather, .reduceScatter: return (q - 1, (q - 1) / q)
        case .allToAll, .allToAllV: return (q - 1, 1)  // pairwise exchange; the ledger counts only what leaves
        case .broadcast: return ((q > 1 ? log2(q) : 0).rounded(.up), 1)
        case .send, .receive, .stopVote: return (1, 1)
        }
    }

    /// Seconds for `transfer` on a world of `worldSize` ranks.
    public func seconds(_ transfer: Transfer, worldSize: Int) throws(UsageError) -> Double {
        if transfer.kind == .stopVote || transfer.kind == .send { return 0 }
        let (steps, wire) = Self.ring(transfer.kind, transfer.groupSize)
        let perHost = ranksPerHost ?? worldSize
        let onOneHost = transfer.stride * transfer.groupSize <= perHost
        var alpha: Double, bandwidth: Double
        let name = transfer.kind == .receive ? "send" : transfer.kind.name
        let fit = calibration?.collectives[name]
        if let linkLatency, let linkBandwidth, !onOneHost || fit == nil {
            (alpha, bandwidth) = (linkLatency, linkBandwidth)
        } else {
            guard let fit else {
                throw UsageError("no measured rate for \(name) (" + (calibration == nil ? "no calibration" : "not in the calibration: an older plan-check?")
                                 + "): run scripts/plan-check.sh, or give --link-latency and --link-bandwidth")
            }
            let (steps2, wire2) = Self.ring(transfer.kind, 2)
            alpha = fit.alphaMicroseconds * 1e-6 / steps2
            bandwidth = fit.gigabytesPerSecond * 1e9 * wire2
            if transfer.calls > 0, !fit.points.isEmpty {  // the measured bandwidth at this size
                let perCall = Double(transfer.bytes) / Double(transfer.calls)
                let moving = fit.seconds(perCall: perCall) - fit.alphaMicroseconds * 1e-6
                if perCall > 0 && moving > 0 { bandwidth = perCall / moving * wire2 }
            }
            if !onOneHost {
                alpha = linkLatency ?? alpha
                bandwidth = linkBandwidth ?? bandwidth
            }
        }
        return Double(transfer.calls) * steps * alpha + Double(transfer.bytes) * wire / bandwidth
    }

    /// FLOPs per step of `rank` (its experts' assignments apart), and the rows of its chain runs:
    /// `6·in·out` per row for each Linear it holds, `2·in·out` more for each forward rerun under
    /// `--recompute` (``CommunicationPlan/reruns(_:recompute:slots:)``).
    ///
    /// With `--batch-weight-gradients` the Linears' weight gradients (`2·in·out` of the 6) run once
    /// per schedule run over all its micro-batches' rows: they are returned apart, as `weights`,
    /// for the rate of `M` times the rows.
    static func flops(_ rank: RankGeometry) -> (step: Double, rows: Double, experts: Double, expertRows: Double, weights: Double) {
        let layout = rank.layout, plan = rank.plan, runs = Double(rank.runs)
        let rows = Double(rank.chainRows)
        var perRow = 0.0, experts = 0.0, expertRows = 0.0, weightsPerRow = 0.0
        for (c, range) in rank.chunks.enumerated() {
            let reruns = rank.reruns(chunk: c)
            for (i, (index, block)) in zip(range, rank.blocks[c]).enumerated() {
                if plan[index].kind.isLinear {
                    let batched = layout.batchWeightGradients ? 2.0 : 0
                    perRow += (Double(6 + 2 * reruns[i]) - batched) * Double(block.input) * Double(block.output)
                    weightsPerRow += batched * Double(block.input) * Double(block.output)
                } else if plan[index].kind == .mixtureOfExperts {
                    let (router, assignments, rowsPerExpert) = mixtureOfExpertsFlops(rank: rank.dataIndex, ranks: layout.shape.dataParallelDegree,
                                                                                     plan[index], layout, rank.settings)
                    perRow += router
                    experts += assignments
                    expertRows = rowsPerExpert
                }
            }
        }
        return (perRow * rows * runs, rows, experts, expertRows, weightsPerRow * rows * runs)
    }

    /// Predicts one step of `layout` from the ranks' communication plans.
    public func predict(_ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings,
                        communication: [CommunicationPlan]) throws(UsageError) -> Prediction {
        let n = layout.shape.ranks
        let perHost = min(n, ranksPerHost ?? n)
        var worst = Prediction(seconds: 0, computeSeconds: 0, communicationSeconds: 0, bubble: 0)
        let cut = RankGeometry.cut(plan, layout)
        let memory = try MemoryPlan.perRank(plan, layout, settings)
        for (rank, comm) in communication.enumerated() {
            let work = Self.flops(RankGeometry(rank: rank, layout, plan, settings, cut: cut))
            // Ranks beyond the calibrated cores share them — unless `--flops` gives a rank's own rate.
            let share = flops == nil ? calibration.map { min(1, Double($0.cores) / Double(perHost)) } ?? 1 : 1
            var rate: Double
            if let flops {
                rate = flops
            } else if let calibration {
                rate = calibration.rate(forRows: max(1, work.rows)) * share
            } else {
                throw UsageError("no calibration: run scripts/plan-check.sh (it writes .build/plan-calibration.json), or pass --flops")
            }
            let perParameter = calibration?.update[settings.optimizer.rawValue] ?? 0
            // The experts' products at their own calibrated rate where there is one (``Calibration/experts``).
            var expertRate = rate
            if flops == nil, let calibration, !calibration.experts.isEmpty {
                expertRate = Calibration.interpolate(calibration.experts, rows: max(1, work.expertRows)) * share
            }
            let expertSeconds = work.experts > 0 ? work.experts / expertRate : 0
            // Batched weight gradients: one product per run over its M micro-batches' rows.
            var weightRate = rate
            if work.weights > 0, flops == nil, let calibration {
                weightRate = calibration.rate(forRows: max(1, work.rows) * Double(layout.shape.microBatches ?? 1)) * share
            }
            let weightSeconds = work.weights > 0 ? work.weights / weightRate : 0
            let compute = work.step / rate + weightSeconds + expertSeconds + Double(memory[rank].updatedParameters) * perParameter / share
            var communication = 0.0
            for transfer in comm.transfers { communication += try seconds(transfer, worldSize: n) / Double(transfer.period) }
            if compute + communication > worst.computeSeconds + worst.communicationSeconds {
                (worst.computeSeconds, worst.communicationSeconds) = (compute, communication)
                (worst.expertFlops, worst.expertSeconds) = (work.experts, expertSeconds)
            }
        }
        if let m = layout.shape.microBatches, layout.shape.size(.pp) > 1 {
            worst.bubble = PipelineSchedule(layout.schedule, stage: 0, stages: layout.shape.size(.pp), microBatches: m,
                                            virtualStages: layout.shape.virtualStages).idealBubble
        }
        worst.seconds = (worst.computeSeconds + worst.communicationSeconds) / (1 - worst.bubble)
        return worst
    }
}
