import Foundation
import XCTest

/// `train_pp` against `train`: same losses every step, same gradients, same parameters, for
/// both schedules and several stage and micro-batch counts.
final class PipelineParallelTests: XCTestCase {
    /// One block per stage: embedding | fc1 | head.
    func testThreeStagesOneMicroBatchMatchesTrain() throws {
        try Equivalence.check("train_pp", np: 3, ["--layers", "1"], extra: ["--micro-batches", "1"], data: try SmallData.write())
    }

    func testTwoStagesFourMicroBatchesGPipeMatchesTrain() throws {
        try Equivalence.check("train_pp", np: 2, ["--layers", "1"], extra: ["--micro-batches", "4", "--schedule", "gpipe"],
                              data: try SmallData.write())
    }

    func testTwoStagesFourMicroBatches1F1BMatchesTrain() throws {
        try Equivalence.check("train_pp", np: 2, ["--layers", "1"], extra: ["--micro-batches", "4", "--schedule", "1f1b"],
                              data: try SmallData.write())
    }

    func testThreeStagesFourMicroBatchesGPipeMatchesTrain() throws {
        try Equivalence.check("train_pp", np: 3, ["--layers", "1"], extra: ["--micro-batches", "4", "--schedule", "gpipe"],
                              data: try SmallData.write())
    }

    func testThreeStagesFourMicroBatches1F1BMatchesTrain() throws {
        try Equivalence.check("train_pp", np: 3, ["--layers", "1"], extra: ["--micro-batches", "4", "--schedule", "1f1b"],
                              data: try SmallData.write())
    }

    func testFourStagesTwoLayers1F1BMatchesTrain() throws {
        try Equivalence.check("train_pp", np: 4, ["--layers", "2"], extra: ["--micro-batches", "4", "--schedule", "1f1b"],
                              data: try SmallData.write())
    }

    /// Adam, with more micro-batches than stages and a stage holding two blocks.
    func testAdamMatchesTrain() throws {
        try Equivalence.check("train_pp", np: 2, ["--layers", "2", "--optimizer", "adam", "--lr", "0.003"],
                              extra: ["--micro-batches", "8"], data: try SmallData.write())
    }

    /// `--partition` overrides the cost-balanced cut (here the embedding alone, then fc1 and
    /// the head), prints it at start-up, and still computes `train`'s model.
    func testExplicitPartitionMatchesTrain() throws {
        let data = try SmallData.write()
        try Equivalence.check("train_pp", np: 2, ["--layers", "1"], extra: ["--micro-batches", "2", "--partition", "1,2"], data: data)
        let run = try Launch.run("train_pp", np: 2, ["--data", data, "--steps", "2", "--samples", "0", "--val-batches", "1",
                                                     "--partition", "1,2"], timeout: 60)
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("pipeline cut: stage 0: embedding (0 FLOP/row); stage 1: fc1 head ("), run.stdout)
        let balanced = try Launch.run("train_pp", np: 2, ["--data", data, "--steps", "2", "--samples", "0", "--val-batches", "1"],
                                      timeout: 60)
        XCTAssertTrue(balanced.stdout.contains("pipeline cut: stage 0: embedding fc1 ("), balanced.stdout)
        try Equivalence.expectError("train_pp", np: 2, ["--data", data, "--partition", "1,1"],
                                    "--partition 1,1 covers 2 blocks but the model has 3")
        try Equivalence.expectError("train_pp", np: 2, ["--data", data, "--partition", "3"], "--partition 3 has 1 stage(s) but the pipeline has 2")
        try Equivalence.expectError("train_pp", np: 2, ["--data", data, "--partition", "2,x"], "--partition must be positive block counts")
        try Equivalence.expectError("train_3d", np: 2, ["--data", data, "--pp", "2", "--partition", "2,2"],
                                    "--partition 2,2 covers 4 blocks but the model has 3")
    }

    /// Zero bubble (ZB-H1): the backward split into input and weight passes, weight passes
    /// deferred; more micro-batches than stages and fewer, and several blocks per stage.
    func testZeroBubbleMatchesTrain() throws {
        let data = try SmallData.write()
        try Equivalence.check("train_pp", np: 3, ["--layers", "1"], extra: ["--micro-batches", "4", "--schedule", "zb1p"], data: data)
        try Equivalence.check("train_pp", np: 4, ["--layers", "3"], extra: ["--micro-batches", "2", "--schedule", "zb1p"], data: data)
        try Equivalence.check("train_pp", np: 2, ["--layers", "2", "--optimizer", "adam", "--lr", "0.003"],
                              extra: ["--micro-batches", "8", "--schedule", "zb1p"], data: data)
    }

    /// The split moves work, not arithmetic: each parameter's gradient adds up the same products
    /// in the same micro-batch order as 1F1B, so every step's record is bit-identical.
    func testZeroBubbleIsBitIdenticalTo1F1B() throws {
        let data = try SmallData.write()
        var records: [String] = []
        for schedule in ["1f1b", "zb1p"] {
            let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
            let run = try Launch.run("train_pp", np: 3, ["--data", data, "--steps", "50", "--layers", "2", "--batch-size", "24", "--micro-batches", "6",
                                                         "--schedule", schedule, "--samples", "0", "--val-batches", "1",
                                                         "--metrics", metrics], timeout: 60)
            XCTAssertEqual(run.status, 0, run.stderr)
            XCTAssertTrue(run.stdout.contains("pipeline: 3 stages, \(schedule), 6 micro-batches"), run.stdout)
            records.append(try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").prefix(50).joined(separator: "\n"))
        }
        XCTAssertEqual(records[0], records[1])
        XCTAssertTrue(records[0].contains("\"step\":49"))
    }

    /// `--batch-weight-gradients`: each micro-batch runs only its input-gradient pass and one
    /// weight pass per step covers every row. Under 1F1B with Adam, GPipe on three stages,
    /// interleaved, and with a mixture of experts (which does not split its backward).
    func testBatchedWeightGradientsMatchTrain() throws {
        let data = try SmallData.write()
        try Equivalence.check("train_pp", np: 2, ["--layers", "2", "--optimizer", "adam", "--lr", "0.003"],
                              extra: ["--micro-batches", "8", "--batch-weight-gradients"], data: data)
        try Equivalence.check("train_pp", np: 3, ["--layers", "1"],
                              extra: ["--micro-batches", "4", "--schedule", "gpipe", "--batch-weight-gradients"], data: data)
        try Equivalence.check("train_pp", np: 2, ["--layers", "3"],
                              extra: ["--micro-batches", "4", "--schedule", "interleaved", "--virtual-stages", "2",
                                      "--batch-weight-gradients"], data: data)
        try Equivalence.check("train_pp", np: 2, ["--layers", "2", "--experts", "4", "--top-k", "2"],
                              extra: ["--micro-batches", "2", "--schedule", "gpipe", "--batch-weight-gradients"], data: data)
    }

    func testBadLayoutsAreOneError() throws {
        let data = try SmallData.write()
        let base = ["--data", data, "--steps", "5"]
        try Equivalence.expectError("train_pp", np: 4, base + ["--layers", "1"], "4 pipeline stages but the model has only 3 blocks")
        try Equivalence.expectError("train_pp", np: 2, base + ["--micro-batches", "5"], "--batch-size 32 is not divisible by --micro-batches 5")
        try Equivalence.expectError("train_pp", np: 2, base + ["--micro-batches", "0"], "--micro-batches must be a positive integer")
        try Equivalence.expectError("train_pp", np: 3, base + ["--schedule", "interleaved"], "--schedule interleaved needs --virtual-stages")
        try Equivalence.expectError("train_pp", np: 2, base + ["--micro-batches", "4", "--schedule", "zb1p", "--batch-weight-gradients"],
                                    "--batch-weight-gradients cannot be combined with --schedule zb1p")
        try Equivalence.expectError("train_pp", np: 2, base + ["--micro-batches", "4", "--recompute", "--batch-weight-gradients"],
                                    "--batch-weight-gradients cannot be combined with --recompute")
        try Equivalence.expectError("train_3d", np: 2, base + ["--pp", "2", "--micro-batches", "4", "--batch-weight-gradients"],
                                    "Unknown option '--batch-weight-gradients'")
    }
}
