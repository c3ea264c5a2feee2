import Core
import Distributed
import Training
import XCTest

/// The planner's cost model in isolation: exact at the calibration's two ranks, the ring's
/// scaling beyond, link rates across hosts, the rate read off the compute points, the bubble.
final class CostModelTests: XCTestCase {
    let calibration = Calibration(
        cores: 2, ranks: 2,
        compute: [.init(rows: 2, flopsPerStep: 1e6, flopsPerSecond: 1e9), .init(rows: 200, flopsPerStep: 1e8, flopsPerSecond: 3e9)],
        collectives: ["allreduce": .init(alphaMicroseconds: 10, gigabytesPerSecond: 1),
                      "allgather": .init(alphaMicroseconds: 4, gigabytesPerSecond: 2),
                      "reduce_scatter": .init(alphaMicroseconds: 6, gigabytesPerSecond: 1),
                      "send": .init(alphaMicroseconds: 2, gigabytesPerSecond: 4)],
        update: ["sgd": 1e-9, "adam": 4e-9])

    func transfer(_ kind: CommunicationKind, p: Int, stride: Int = 1, calls: Int = 1, bytes: Int) -> Transfer {
        Transfer(kind: kind, axis: nil, groupSize: p, stride: stride, calls: calls, bytes: bytes)
    }

    func testTwoRanksReproduceTheFitAndRingsScale() throws {
        let model = CostModel(calibration: calibration)
        // p = 2: α + bytes / bw, as measured.
        XCTAssertEqual(try model.seconds(transfer(.allreduce, p: 2, calls: 3, bytes: 3_000_000), worldSize: 2), 3 * 10e-6 + 3e-3, accuracy: 1e-12)
        XCTAssertEqual(try model.seconds(transfer(.allgather, p: 2, bytes: 2_000_000), worldSize: 2), 4e-6 + 1e-3, accuracy: 1e-12)
        XCTAssertEqual(try model.seconds(transfer(.receive, p: 2, bytes: 4_000_000), worldSize: 2), 2e-6 + 1e-3, accuracy: 1e-12)
        XCTAssertEqual(try model.seconds(transfer(.send, p: 2, bytes: 4_000_000), worldSize: 2), 0, "charged on the receiver")
        // p = 4 on one host: allreduce 2(p−1) = 6 latency steps of α/2, 2(p−1)/p = 1.5 of the bytes at bw.
        XCTAssertEqual(try model.seconds(transfer(.allreduce, p: 4, bytes: 1_000_000), worldSize: 4), 6 * 5e-6 + 1.5e-3, accuracy: 1e-12)
        // Across hosts (span 4 > 2 ranks per host): the link's rates.
        let cluster = CostModel(calibration: calibration, linkLatency: 1e-6, linkBandwidth: 1e10, ranksPerHost: 2)
        XCTAssertEqual(try cluster.seconds(transfer(.allgather, p: 4, bytes: 4_000_000), worldSize: 8), 3e-6 + 3e-4, accuracy: 1e-12)
        XCTAssertEqual(try cluster.seconds(transfer(.allgather, p: 2, bytes: 2_000_000), worldSize: 8), 4e-6 + 1e-3, accuracy: 1e-12,
                       "a pair inside a host keeps the measured rate")
        XCTAssertThrowsError(try model.seconds(transfer(.broadcast, p: 2, bytes: 4), worldSize: 2), "no broadcast fit, no link rates")
    }

    func testRateIsInterpolatedInLogRows() {
        XCTAssertEqual(calibration.rate(forRows: 1), 1e9)
        XCTAssertEqual(calibration.rate(forRows: 20), 2e9, accuracy: 1)
        XCTAssertEqual(calibration.rate(forRows: 4096), 3e9)
    }

    /// Measured points win over the fit inside their range: a call's time is read off them
    /// (log–log between points), and the cost model charges a transfer at the bandwidth the
    /// points show at its mean bytes per call — exactly the measured time at p = 2.
    func testMeasuredPointsPriceCallsInsideTheirRange() throws {
        var curved = calibration
        // 1 MB in 100 µs (10 GB/s: in cache), 4 MB in 1000 µs (4 GB/s); the fit says 1 GB/s.
        curved.collectives["allgather"]!.points = [[1e6, 100e-6], [4e6, 1000e-6]]
        let link = curved.collectives["allgather"]!
        XCTAssertEqual(link.seconds(perCall: 1e6), 100e-6, accuracy: 1e-15)
        XCTAssertEqual(link.seconds(perCall: 2e6), 100e-6 * pow(10, 0.5), accuracy: 1e-12, "half way in log bytes: half way in log time")
        XCTAssertEqual(link.seconds(perCall: 8e6), 4e-6 + 8e6 / 2e9, accuracy: 1e-15, "beyond the points: the fit")
        let model = CostModel(calibration: curved)
        XCTAssertEqual(try model.seconds(transfer(.allgather, p: 2, calls: 3, bytes: 3_000_000), worldSize: 2), 3 * 100e-6, accuracy: 1e-12)
        XCTAssertEqual(try CostModel(calibration: calibration).seconds(transfer(.allgather, p: 2, calls: 3, bytes: 3_000_000), worldSize: 2),
                       3 * 4e-6 + 3e6 / 2e9, accuracy: 1e-12, "without points: the fit")
    }

    /// DP over 2 ranks: the compute is each rank's half batch at the given rate; a
    /// pipeline is stretched by its ideal bubble.
    func testPredictionIsComputePlusCommunicationStretchedByTheBubble() throws {
        let config = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 1)
        let plan = config.plan, settings = PlanSettings(batchSize: 32, optimizer: .sgd)
        let model = CostModel(calibration: nil, flops: 1e9, linkLatency: 0, linkBandwidth: 1e9)  // the link's rates everywhere
        let dp = LayoutDescription.dataParallel(ranks: 2, bucketBytes: 1 << 20)
        let comm = try CommunicationPlan.perRank(plan, dp, settings)
        let predicted = try model.predict(plan, dp, settings, communication: comm)
        XCTAssertEqual(predicted.computeSeconds, plan.trainingFlops(batchSize: 16) / 1e9, accuracy: 1e-12)
        XCTAssertEqual(predicted.communicationSeconds, Double(4 * plan.parameterCount + 4) / 1e9, accuracy: 1e-12)
        XCTAssertEqual(predicted.bubble, 0)
        let pp = LayoutDescription.pipeline(stages: 3, microBatches: 4, schedule: .gpipe)
        let piped = try model.predict(plan, pp, settings, communication: try CommunicationPlan.perRank(plan, pp, settings))
        XCTAssertEqual(piped.bubble, 2.0 / 6.0, accuracy: 1e-12)
        XCTAssertEqual(piped.seconds, (piped.computeSeconds + piped.communicationSeconds) * 1.5, accuracy: 1e-12)
    }

    /// `--batch-weight-gradients`: a third of each Linear's FLOPs (the weight gradient) runs once
    /// per step over all M micro-batches' rows, so at the calibrated rate for M times the rows;
    /// the rest at the micro-batch's. At one rate (`--flops`) nothing changes.
    func testBatchedWeightGradientsRunAtTheRateOfTheWholeBatch() throws {
        let config = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 2)
        let plan = config.plan, settings = PlanSettings(batchSize: 32, optimizer: .sgd)
        var layouts = [LayoutDescription.pipeline(stages: 2, microBatches: 8, schedule: .oneForwardOneBackward)]
        layouts.append(layouts[0])
        layouts[1].batchWeightGradients = true
        XCTAssertTrue(layouts[1].command.hasSuffix("--batch-weight-gradients"), layouts[1].command)
        var calibrated = calibration
        calibrated.update = [:]
        calibrated.collectives["broadcast"] = .init(alphaMicroseconds: 1, gigabytesPerSecond: 1)
        let model = CostModel(calibration: calibrated), flat = CostModel(calibration: nil, flops: 1e9, linkLatency: 0, linkBandwidth: 1e9)
        let seconds = try layouts.map { try model.predict(plan, $0, settings, communication: CommunicationPlan.perRank(plan, $0, settings)).computeSeconds }
        let flatSeconds = try layouts.map { try flat.predict(plan, $0, settings, communication: CommunicationPlan.perRank(plan, $0, settings)).computeSeconds }
        XCTAssertEqual(flatSeconds[0], flatSeconds[1], accuracy: 1e-15)
        // Stage 0 (the embedding and fc1, 256 → 64, cut by cost) is the busier: fc1's FLOPs over 32 rows.
        let flops = 6 * 32 * Double(256 * 64)
        XCTAssertEqual(seconds[0], flops / calibrated.rate(forRows: 4), accuracy: 1e-12)
        XCTAssertEqual(seconds[1], flops * 2 / 3 / calibrated.rate(forRows: 4) + flops / 3 / calibrated.rate(forRows: 32), accuracy: 1e-12)
    }

    /// The pass over the parameters is charged apart from the chain, per parameter a rank
    /// updates: DP updates all Ψ, ZeRO-1 its shard ⌈Ψ/2⌉; Adam at its own rate. The chain's
    /// FLOPs run at the rate of their chain-run size, the same in both.
    func testUpdateIsChargedPerUpdatedParameter() throws {
        let config = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 1)
        let plan = config.plan, psi = Double(plan.parameterCount)
        let model = CostModel(calibration: calibration)
        let chain = plan.trainingFlops(batchSize: 16) / calibration.rate(forRows: 16)
        for (optimizer, perParameter) in [(OptimizerKind.sgd, 1e-9), (.adam, 4e-9)] {
            let settings = PlanSettings(batchSize: 32, optimizer: optimizer)
            let dp = LayoutDescription.dataParallel(ranks: 2, bucketBytes: 1 << 20)
            let zero = LayoutDescription.fullySharded(ranks: 2, zero: 1)
            let replicated = try model.predict(plan, dp, settings, communication: try CommunicationPlan.perRank(plan, dp, settings))
            let sharded = try model.predict(plan, zero, settings, communication: try CommunicationPlan.perRank(plan, zero, settings))
            XCTAssertEqual(replicated.computeSeconds, chain + psi * perParameter, accuracy: 1e-12)
            XCTAssertEqual(sharded.computeSeconds, chain + (psi / 2).rounded(.up) * perParameter, accuracy: 1e-12)
        }
    }

    /// Mixture of experts with K = E (the routing forced: every row to every expert): a rank's
    /// FLOPs are the model FLOPs of its B/N rows (router and K experts per row) in `train_dp` and
    /// in `train_ep`, whose rank computes its E/E' experts for the whole group's rows; the
    /// all-to-alls are priced by their own fits (one latency step and the ledger's bytes at
    /// p = 2), and without such a fit the planner fails with one line instead of guessing.
    func testMixtureOfExpertsFlopsAndAllToAllPricing() throws {
        let config = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 2,
                                 experts: ExpertsConfig(count: 4, topK: 4))
        let plan = config.plan, settings = PlanSettings(batchSize: 32, optimizer: .sgd)
        let flat = CostModel(calibration: nil, flops: 1e9, linkLatency: 0, linkBandwidth: 1e9)
        for layout in [LayoutDescription.dataParallel(ranks: 2, bucketBytes: 1 << 20), .expertParallel(ranks: 2, expertGroup: 2),
                       .expertParallel(ranks: 4, expertGroup: 2)] {
            let predicted = try flat.predict(plan, layout, settings, communication: try CommunicationPlan.perRank(plan, layout, settings))
            XCTAssertEqual(predicted.computeSeconds, plan.trainingFlops(batchSize: 32 / layout.shape.ranks) / 1e9, accuracy: 1e-12,
                           layout.command)
        }
        XCTAssertEqual(try flat.seconds(transfer(.allToAllV, p: 2, calls: 4, bytes: 2_000), worldSize: 2), 2e-6, accuracy: 1e-15)
        var measured = calibration
        measured.collectives["all_to_all"] = .init(alphaMicroseconds: 3, gigabytesPerSecond: 2)
        measured.collectives["all_to_all_v"] = .init(alphaMicroseconds: 5, gigabytesPerSecond: 1)
        let model = CostModel(calibration: measured)
        XCTAssertEqual(try model.seconds(transfer(.allToAll, p: 2, calls: 2, bytes: 2_000_000), worldSize: 2), 2 * 3e-6 + 1e-3, accuracy: 1e-12)
        XCTAssertEqual(try model.seconds(transfer(.allToAllV, p: 4, calls: 1, bytes: 1_000_000), worldSize: 4), 3 * 5e-6 + 1e-3, accuracy: 1e-12,
                       "p − 1 pairwise steps, the bytes that leave the rank once")
        let ep = LayoutDescription.expertParallel(ranks: 2, expertGroup: 2)
        XCTAssertThrowsError(try CostModel(calibration: calibration).predict(plan, ep, settings,
                                                                             communication: try CommunicationPlan.perRank(plan, ep, settings))) {
            XCTAssertTrue("\($0)".contains("no measured rate for all_to_all"), "\($0)")
        }
    }

    /// A calibration file without the update costs (written before they were measured) is refused
    /// with one line that says to calibrate again.
    func testCalibrationWithoutUpdateCostIsRefused() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("calibration-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: file) }
        var partial = calibration
        partial.update = ["sgd": 1e-9]
        try JSONEncoder().encode(partial).write(to: file)
        XCTAssertThrowsError(try Calibration.load(path: file.path)) { error in
            XCTAssertTrue("\(error)".contains("no update cost for adam"), "\(error)")
        }
        try JSONEncoder().encode(calibration).write(to: file)
        XCTAssertEqual(try Calibration.load(path: file.path), calibration)
    }

    /// With expert points in the calibration, the experts' products (and only they) run at the
    /// expert rate for the rows each expert computes: under DP-2 with K = 4 of 4 every expert sees
    /// the rank's 16 rows, under EP with E' = 2 the group's 32. The router and the other blocks
    /// stay at the chain's rate; without the points nothing changes.
    func testExpertProductsRunAtTheirOwnRateByRowsPerExpert() throws {
        let config = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 2, experts: ExpertsConfig(count: 4, topK: 4))
        let plan = config.plan, settings = PlanSettings(batchSize: 32, optimizer: .sgd)
        var measured = calibration
        measured.collectives["all_to_all"] = .init(alphaMicroseconds: 3, gigabytesPerSecond: 2)
        measured.collectives["all_to_all_v"] = .init(alphaMicroseconds: 5, gigabytesPerSecond: 1)
        measured.update = ["sgd": 0, "adam": 0]
        let chainOnly = CostModel(calibration: measured)
        measured.experts = [.init(rows: 16, flopsPerStep: 1, flopsPerSecond: 1e8), .init(rows: 32, flopsPerStep: 1, flopsPerSecond: 4e8)]
        let withExperts = CostModel(calibration: measured)
        for (layout, rowsPerExpert) in [(LayoutDescription.dataParallel(ranks: 2, bucketBytes: 1 << 20), 16.0),
                                        (.expertParallel(ranks: 2, expertGroup: 2), 32.0)] {
            let comm = try CommunicationPlan.perRank(plan, layout, settings)
            let before = try chainOnly.predict(plan, layout, settings, communication: comm)
            let after = try withExperts.predict(plan, layout, settings, communication: comm)
            XCTAssertGreaterThan(after.expertFlops, 0)
            XCTAssertEqual(before.expertFlops, after.expertFlops)
            // The calibration's own points: 1e8 FLOP/s at 16 rows per expert, 4e8 at 32.
            let rate = rowsPerExpert == 16 ? 1e8 : 4e8
            XCTAssertEqual(after.expertSeconds, after.expertFlops / rate, accuracy: 1e-15, layout.command)
            XCTAssertEqual(after.computeSeconds - after.expertSeconds, before.computeSeconds - before.expertSeconds, accuracy: 1e-12,
                           "everything but the experts' products is priced as before")
        }
    }
}
