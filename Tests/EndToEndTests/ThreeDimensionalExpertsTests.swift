import Foundation
import XCTest

/// `train_3d --experts E [--ep E']`: mixtures of experts in the 3D grid, with expert parallelism
/// as a fourth axis carved out of dp. The same model as `train` (per-step loss, gradient norm,
/// aux loss and load; the gradients after one step; the parameters after one and five), for
/// (tp 1, dp 2, pp 2, ep 2), (tp 2, dp 2, pp 1, ep 2) and an expert group smaller than dp
/// (the experts then FSDP-sharded over the ranks that hold the same ones); the ledger's
/// all-to-all bytes against a routing known in advance; checkpoints into `train`; the bad
/// layouts refused with one line.
final class ThreeDimensionalExpertsTests: XCTestCase {
    static let data = try! SmallData.write()
    static let flags = ["--data", data, "--val-batches", "2", "--samples", "0", "--log-every", "1000"]

    func train(_ extra: [String], np: Int? = nil, executable: String = "train_3d") throws -> (Launch.Outcome, Metrics?) {
        try Launch.runWithMetrics(executable, np: np, Self.flags + extra, timeout: 180)
    }

    /// Pipeline × expert parallel: stage 0 holds the embedding (and a block), stage 1 the rest;
    /// each stage's dp pair is one expert group, so every rank holds half the experts.
    func testPipelineAndExpertParallelMatchTrain() throws {
        for common in [["--experts", "4", "--top-k", "2", "--layers", "2"],
                       ["--experts", "4", "--top-k", "1", "--capacity-factor", "1", "--layers", "2"]] {
            try Equivalence.check("train_3d", np: 4, common, extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2"],
                                  data: Self.data, steps: 300)
        }
    }

    /// Micro-batches under GPipe: every micro-batch in flight in its own copy of each mixture
    /// (its routing state, its all-to-all buffers), the step's routing statistics summed over
    /// the micro-batches and the dp ranks at the first backward (StepRouting).
    func testMicroBatchesUnderGPipeMatchTrain() throws {
        try Equivalence.check("train_3d", np: 4, ["--experts", "4", "--top-k", "2", "--layers", "2"],
                              extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2", "--micro-batches", "4", "--schedule", "gpipe"],
                              data: Self.data, steps: 300)
        try Equivalence.check("train_3d", np: 4, ["--experts", "2", "--top-k", "1", "--layers", "3"],
                              extra: ["--tp", "2", "--dp", "2", "--pp", "1", "--micro-batches", "2", "--schedule", "gpipe"],
                              data: Self.data, steps: 300)
        // The aux loss and load of every step are the whole batch's.
        try Equivalence.checkExpertStatistics("train_3d", np: 4, Self.flags + ["--experts", "4", "--layers", "3"],
                                              extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2", "--micro-batches", "4", "--schedule", "gpipe"])
    }

    /// Tensor × expert parallel: the tp pair computes the (replicated) mixtures on the same rows,
    /// the dp pair splits the batch and the experts; with a capacity factor, and top-1 over three blocks.
    func testTensorAndExpertParallelMatchTrain() throws {
        for common in [["--experts", "4", "--top-k", "2", "--capacity-factor", "0.5"],
                       ["--experts", "2", "--top-k", "1", "--layers", "3"]] {
            try Equivalence.check("train_3d", np: 4, common, extra: ["--tp", "2", "--dp", "2", "--pp", "1", "--ep", "2"],
                                  data: Self.data, steps: 300)
        }
    }

    /// An expert group of 2 inside dp 4: each expert is held by two ranks, which FSDP-shard it
    /// between them; and --ep 1, where every dp rank holds (its shard of) every expert.
    func testExpertGroupSmallerThanDataParallelMatchesTrain() throws {
        let common = ["--experts", "4", "--top-k", "2", "--layers", "2"]
        try Equivalence.check("train_3d", np: 4, common, extra: ["--tp", "1", "--dp", "4", "--pp", "1", "--ep", "2"], data: Self.data, steps: 300)
        try Equivalence.check("train_3d", np: 4, common, extra: ["--tp", "1", "--dp", "2", "--pp", "2"], data: Self.data, steps: 300)
    }

    /// The aux loss and load reported each step are the whole model's (every stage's blocks),
    /// as train's; the start-up summary names the expert mesh.
    func testAuxLossAndLoadAreTheWholeModels() throws {
        let flags = ["--experts", "4", "--layers", "3", "--capacity-factor", "1"], grid = ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2"]
        try Equivalence.checkExpertStatistics("train_3d", np: 4, Self.flags + flags, extra: grid)
        let (run, _) = try train(flags + grid + ["--steps", "2"], np: 4)
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("dp as the mesh [expert 2, replicate 1]"), run.stdout)
    }

    /// With K = E every row goes to every expert: the ledger's all-to-all-v bytes per rank are
    /// 4·(s + r)·(in + out) per block and step, s = r = its dp rows × E/E' × (E' − 1), in 4 calls,
    /// whatever the tp and pp coordinates (tp ranks each run the block).
    func testLedgerCountsTheRowsTheRoutingSends() throws {
        let steps = 5, hidden = 64, flat = 16 * 16, batch = 32, experts = 4, layers = 2
        for grid in [["--tp", "1", "--dp", "2", "--pp", "2"], ["--tp", "2", "--dp", "2", "--pp", "1"]] {
            let args = grid + ["--ep", "2", "--steps", "\(steps)", "--experts", "\(experts)", "--top-k", "\(experts)", "--layers", "\(layers)"]
            let (run, metrics) = try train(args, np: 4)
            XCTAssertEqual(run.status, 0, run.stderr)
            let perRank = try XCTUnwrap(metrics?.final?["comm_per_rank"] as? [[String: [String: Any]]], "\(args)")
            let tp = Int(grid[1])!, pp = Int(grid[5])!, rows = batch / 2, m = experts / 2
            for rank in 0..<4 {
                // The blocks this rank's stage holds: with two stages, stage 0 has the embedding and fc1.
                let stage = rank / (tp * 2), blocks = pp == 1 ? [1, 2] : stage == 0 ? [1] : [2]
                let widths = blocks.map { ($0 == 1 ? flat : hidden) + hidden }.reduce(0, +)
                let label = "rank \(rank), \(args)"
                XCTAssertEqual(perRank[rank]["all_to_all_v"]?["bytes"] as? Int, steps * 4 * 2 * rows * m * widths, label)
                XCTAssertEqual(perRank[rank]["all_to_all_v"]?["calls"] as? Int, steps * 4 * blocks.count, label)
                XCTAssertEqual(perRank[rank]["all_to_all"]?["calls"] as? Int, steps * blocks.count, label)
            }
        }
    }

    /// A train_3d --ep checkpoint resumes bit-identically in train_3d and continues in train as
    /// train's own run does.
    func testCheckpointsResumeInTrain3DAndTrain() throws {
        let model = ["--experts", "4", "--top-k", "2", "--optimizer", "adam", "--lr", "0.005", "--layers", "2"]
        let grid = ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2"]
        let (wholeRun, whole) = try train(model + grid + ["--steps", "40"], np: 4)
        XCTAssertEqual(wholeRun.status, 0, wholeRun.stderr)
        let dir = try Launch.temporaryDirectory().path
        let (firstRun, _) = try train(model + grid + ["--steps", "25", "--checkpoint-dir", dir], np: 4)
        XCTAssertEqual(firstRun.status, 0, firstRun.stderr)
        let (run, rest) = try train(model + grid + ["--steps", "40", "--resume", dir], np: 4)
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertEqual(try XCTUnwrap(rest).losses.map(\.bitPattern), try XCTUnwrap(whole).losses[25..<40].map(\.bitPattern))

        let (_, own) = try train(model + ["--steps", "40"], executable: "train")
        let (continuedRun, continued) = try train(model + ["--steps", "40", "--resume", dir], executable: "train")
        XCTAssertEqual(continuedRun.status, 0, continuedRun.stderr)
        let theirs = try XCTUnwrap(own).losses, ours = try XCTUnwrap(continued).losses
        XCTAssertEqual(ours.count, 15)
        for (i, (a, b)) in zip(ours, theirs[25...]).enumerated() {
            XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "train_3d --ep 2 → train at step \(25 + i)")
        }
    }

    func testBadLayoutsFailWithOneLine() throws {
        let grid = ["--tp", "1", "--dp", "2", "--pp", "2"]
        let cases: [([String], String)] = [
            (grid + ["--experts", "4", "--ep", "4"], "--ep 4 does not divide --dp 2"),
            (["--tp", "1", "--dp", "4", "--pp", "1", "--experts", "6", "--ep", "4", "--batch-size", "32"], "--experts 6 is not divisible by --ep 4"),
            (grid + ["--ep", "2"], "--ep needs --experts"),
            (grid + ["--experts", "4", "--ep", "0"], "--ep must be a positive integer (got 0)"),
            (grid + ["--experts", "4", "--micro-batches", "2"], "--experts with --micro-batches 2 needs --schedule gpipe"),
            (grid + ["--experts", "4", "--micro-batches", "2", "--schedule", "gpipe", "--capacity-factor", "1"],
             "--capacity-factor needs --micro-batches 1 in a pipeline"),
            (grid + ["--experts", "4", "--micro-batches", "2", "--schedule", "gpipe", "--recompute"],
             "--experts with --micro-batches 2 cannot be combined with --recompute"),
            (["--tp", "2", "--dp", "2", "--pp", "1", "--experts", "4", "--sequence-parallel"], "--experts cannot be combined with --sequence-parallel"),
        ]
        for (args, expected) in cases {
            try Equivalence.expectError("train_3d", np: 4, ["--data", Self.data, "--steps", "2"] + args, expected)
        }
    }
}
