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

    func testBadLayoutsAreOneError() throws {
        let data = try SmallData.write()
        let base = ["--data", data, "--steps", "5"]
        try Equivalence.expectError("train_pp", np: 4, base + ["--layers", "1"], "4 pipeline stages but the model has only 3 blocks")
        try Equivalence.expectError("train_pp", np: 2, base + ["--micro-batches", "5"], "--batch-size 32 is not divisible by --micro-batches 5")
        try Equivalence.expectError("train_pp", np: 2, base + ["--micro-batches", "0"], "--micro-batches must be a positive integer")
        try Equivalence.expectError("train_pp", np: 3, base + ["--schedule", "interleaved"], "The value 'interleaved' is invalid for '--schedule <schedule>'")
    }
}
