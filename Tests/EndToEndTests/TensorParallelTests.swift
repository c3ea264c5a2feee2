import Foundation
import XCTest

/// `train_tp` against `train`: same losses every step, same gradients, same parameters.
final class TensorParallelTests: XCTestCase {
    func testTwoRanksOneLayerMatchesTrain() throws {
        try Equivalence.check("train_tp", np: 2, ["--layers", "1"], data: try SmallData.write())
    }

    func testFourRanksOneLayerMatchesTrain() throws {
        try Equivalence.check("train_tp", np: 4, ["--layers", "1"], data: try SmallData.write())
    }

    /// Two hidden layers: one pair (fc1 column, fc2 row) and a replicated head.
    func testTwoRanksTwoLayersMatchesTrain() throws {
        try Equivalence.check("train_tp", np: 2, ["--layers", "2"], data: try SmallData.write())
    }

    /// Three hidden layers: two pairs, the second one ending in the row-parallel head.
    func testTwoRanksThreeLayersMatchesTrain() throws {
        try Equivalence.check("train_tp", np: 2, ["--layers", "3"], data: try SmallData.write())
    }

    func testAdamMatchesTrain() throws {
        try Equivalence.check("train_tp", np: 2, ["--layers", "2", "--optimizer", "adam", "--lr", "0.003"],
                              data: try SmallData.write())
    }

    func testRankCountNotDividingHiddenIsOneError() throws {
        let data = try SmallData.write()
        try Equivalence.expectError("train_tp", np: 3, ["--data", data, "--steps", "5"], "--hidden divisible by 3")
        try Equivalence.expectError("train_tp", np: 2, ["--data", data, "--steps", "5", "--hidden", "33"], "--hidden divisible by 2")
    }
}
