import Foundation
import XCTest

/// `--accumulate K` runs each rank's rows of the global batch as K micro-steps per optimizer
/// step: the same model as `train` with the same global batch (losses, gradient norms, gradients
/// and parameters, by the equivalence check), a K-th of the activation memory, and per layout the
/// communication its design implies (DP: one gradient allreduce per optimizer step whatever K;
/// FSDP/ZeRO-3: a gather and scatter of every block per micro-step).
final class AccumulationTests: XCTestCase {
    static let data = try! SmallData.write()
    let model = ["--layers", "2", "--batch-size", "24"]

    func testTrainAccumulatingEqualsTrain() throws {
        try Equivalence.check("train", np: 1, model, extra: ["--accumulate", "4"], data: Self.data, steps: 100)
    }

    func testDataParallelLayoutsAccumulatingEqualTrain() throws {
        try Equivalence.check("train_dp", np: 2, model, extra: ["--accumulate", "3", "--bucket-kb", "1"], data: Self.data, steps: 100)
        try Equivalence.check("train_fsdp", np: 2, model, extra: ["--accumulate", "2"], data: Self.data, steps: 100)
    }

    func testModelAndPipelineLayoutsAccumulatingEqualTrain() throws {
        try Equivalence.check("train_tp", np: 2, model, extra: ["--accumulate", "2"], data: Self.data, steps: 100)
        try Equivalence.check("train_pp", np: 2, model, extra: ["--accumulate", "2", "--micro-batches", "3"], data: Self.data, steps: 100)
        try Equivalence.check("train_3d", np: 4, model, extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--micro-batches", "2",
                                                                 "--accumulate", "3"], data: Self.data, steps: 100)
    }

    /// The final metrics record's ledger for `executable` with `--accumulate k`.
    func ledger(_ executable: String, np: Int?, k: Int) throws -> (comm: Metrics.Communication, activations: Int, steps: Int) {
        let (_, m) = try Launch.trained(executable, np: np, ["--data", Self.data, "--steps", "10", "--samples", "0", "--val-batches", "1",
                                                             "--accumulate", "\(k)"] + model, timeout: 60)
        let memory = try m.value("memory", as: [String: Int].self)
        return (try m.communication(), try XCTUnwrap(memory["activations"]), try m.value("train_steps"))
    }

    func testActivationsShrinkAndCommunicationFollowsTheDesign() throws {
        let one = try ledger("train", np: nil, k: 1), four = try ledger("train", np: nil, k: 4)
        XCTAssertEqual(four.activations * 4, one.activations, "a quarter of the rows, a quarter of the activations")

        let dp1 = try ledger("train_dp", np: 2, k: 1), dp3 = try ledger("train_dp", np: 2, k: 3)
        XCTAssertEqual(dp3.activations * 3, dp1.activations)
        for key in ["calls", "bytes"] {
            XCTAssertGreaterThan(try dp1.comm.count("allreduce", key), 0)
            XCTAssertEqual(try dp3.comm.count("allreduce", key), try dp1.comm.count("allreduce", key),
                           "DP: the same allreduces whatever K (\(key))")
        }

        let fsdp1 = try ledger("train_fsdp", np: 2, k: 1), fsdp2 = try ledger("train_fsdp", np: 2, k: 2)
        for kind in ["allgather", "reduce_scatter"] {
            XCTAssertGreaterThan(try fsdp1.comm.count(kind, "bytes"), 0, kind)
            XCTAssertEqual(try fsdp2.comm.count(kind, "bytes"), try fsdp1.comm.count(kind, "bytes") * 2,
                           "ZeRO-3 moves every block per micro-step: \(kind)")
            XCTAssertEqual(try fsdp2.comm.count(kind, "calls"), try fsdp1.comm.count(kind, "calls") * 2, kind)
        }
    }

    func testIndivisibleBatchIsRefused() throws {
        try Equivalence.expectError("train", np: 1, ["--data", Self.data, "--batch-size", "24", "--accumulate", "5"],
                                    "--batch-size 24 is not divisible by --accumulate 5")
        try Equivalence.expectError("train_dp", np: 2, ["--data", Self.data, "--batch-size", "24", "--accumulate", "5"],
                                    "--batch-size 24 is not divisible by the 2 data-parallel ranks × --accumulate 5")
        try Equivalence.expectError("train_pp", np: 2, ["--data", Self.data, "--batch-size", "24", "--micro-batches", "4", "--accumulate", "4"],
                                    "--batch-size 24 is not divisible by --micro-batches 4 × --accumulate 4")
        try Equivalence.expectError("train", np: 1, ["--data", Self.data, "--accumulate", "0"], "--accumulate must be a positive integer")
    }
}
