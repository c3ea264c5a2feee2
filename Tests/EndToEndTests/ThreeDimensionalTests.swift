import Foundation
import XCTest

/// `train_3d` against `train` on the layouts (T, D, P), and its layout errors.
final class ThreeDimensionalTests: XCTestCase {
    static let data = try! SmallData.write()

    func check(tp: Int, dp: Int, pp: Int, micro: Int = 2, schedule: String = "1f1b", _ model: [String] = ["--layers", "1"],
               steps: Int = 300, file: StaticString = #filePath, line: UInt = #line) throws {
        try Equivalence.check("train_3d", np: tp * dp * pp, model,
                              extra: ["--tp", "\(tp)", "--dp", "\(dp)", "--pp", "\(pp)", "--micro-batches", "\(micro)", "--schedule", schedule],
                              data: Self.data, steps: steps, file: file, line: line)
    }

    func testPipelineOnly113() throws { try check(tp: 1, dp: 1, pp: 3) }
    func testTensorAndPipeline213() throws { try check(tp: 2, dp: 1, pp: 3, schedule: "gpipe") }
    func testDataAndPipeline123() throws { try check(tp: 1, dp: 2, pp: 3) }
    func testTensorAndData221() throws { try check(tp: 2, dp: 2, pp: 1) }
    func testAllThree223() throws { try check(tp: 2, dp: 2, pp: 3) }
    /// Zero bubble with FSDP's hooks (the weight pass re-zeroes and reduce-scatters its block
    /// after other blocks used the gather buffer) and tensor-parallel layers (which do not split).
    func testZeroBubble222() throws { try check(tp: 2, dp: 2, pp: 2, micro: 4, schedule: "zb1p", ["--layers", "2"], steps: 100) }
    func testTwoLayers212OneForwardOneBackward() throws { try check(tp: 2, dp: 1, pp: 2, micro: 4, ["--layers", "2"]) }
    func testAdamAllThree222() throws {
        try check(tp: 2, dp: 2, pp: 2, micro: 2, ["--layers", "2", "--optimizer", "adam", "--lr", "0.003"], steps: 150)
    }

    func testImpossibleLayoutsFailCleanly() throws {
        let base = ["--data", Self.data, "--steps", "5"]
        try Equivalence.expectError("train_3d", np: 4, base + ["--tp", "2", "--dp", "1", "--pp", "3"],
                                    "--tp 2 × --dp 1 × --pp 3 = 6, but mpirun started 4 ranks")
        try Equivalence.expectError("train_3d", np: 3, base + ["--tp", "3", "--hidden", "64"], "--hidden divisible by 3")
        try Equivalence.expectError("train_3d", np: 4, base + ["--pp", "4"], "4 pipeline stages but the model has only 3 blocks")
        try Equivalence.expectError("train_3d", np: 4, base + ["--dp", "2", "--pp", "2", "--micro-batches", "3"],
                                    "--batch-size 32 is not divisible by --dp 2 × --micro-batches 3")
        try Equivalence.expectError("train_3d", np: 2, base + ["--tp", "0", "--dp", "2"], "--tp must be a positive integer")
    }
}
