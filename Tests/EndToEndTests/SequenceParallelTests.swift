import Foundation
import XCTest

/// `--sequence-parallel` in `train_tp` and `train_3d` against `train` (same losses, gradient
/// norms, gradients and parameters; see ``Equivalence``), its one-line refusal of batches whose
/// rows do not split, and its replicas.
final class SequenceParallelTests: XCTestCase {
    static let data = try! SmallData.write()
    static let vocab = Set(SmallData.names.filter { $0 != "\n" }).count + 1

    func tp(_ np: Int, _ model: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        try Equivalence.check("train_tp", np: np, model, extra: ["--sequence-parallel"], data: Self.data, file: file, line: line)
    }

    func testTwoRanksOneLayer() throws { try tp(2, ["--layers", "1"]) }
    func testFourRanksOneLayer() throws { try tp(4, ["--layers", "1"]) }
    /// One pair, then the unpaired head, replicated and run on each rank's rows only.
    func testTwoRanksTwoLayers() throws { try tp(2, ["--layers", "2"]) }
    /// Two pairs: a row-parallel output (bias and ReLU on each rank's rows) feeds the next pair.
    func testTwoRanksThreeLayers() throws { try tp(2, ["--layers", "3"]) }
    func testAdam() throws { try tp(2, ["--layers", "2", "--optimizer", "adam", "--lr", "0.003"]) }
    func testAccumulation() throws { try tp(2, ["--layers", "3", "--accumulate", "2"]) }

    func threeD(tp: Int, dp: Int, pp: Int, micro: Int, schedule: String = "1f1b", _ model: [String],
                file: StaticString = #filePath, line: UInt = #line) throws {
        try Equivalence.check("train_3d", np: tp * dp * pp, model,
                              extra: ["--tp", "\(tp)", "--dp", "\(dp)", "--pp", "\(pp)", "--micro-batches", "\(micro)",
                                      "--schedule", schedule, "--sequence-parallel"],
                              data: Self.data, file: file, line: line)
    }

    /// T × D × P = 2 × 2 × 2: FSDP shards of the sequence-parallel blocks, a pipeline boundary
    /// outside the pairs (each tp rank sends its own rows).
    func testThreeDimensional222() throws { try threeD(tp: 2, dp: 2, pp: 2, micro: 2, ["--layers", "2"]) }

    /// 2 × 1 × 3 with `--layers 3` (stages: embedding + fc1 | fc2 + fc3 | head): both boundaries
    /// cut a pair, so the middle stage starts with a row-parallel and ends with a column-parallel
    /// layer, and the messages are column slices of all rows; GPipe.
    func testThreeDimensionalCutPairs213() throws {
        try threeD(tp: 2, dp: 1, pp: 3, micro: 2, schedule: "gpipe", ["--layers", "3"])
    }

    /// The zero-bubble schedule (the replicated embedding and head split their backward, the
    /// sequence-parallel layers do not) and `--recompute` (stage boundaries saved with each tp
    /// rank's rows only), 2 × 1 × 3, `--layers 3`, M = 4.
    func testThreeDimensionalZeroBubbleAndRecompute() throws {
        try threeD(tp: 2, dp: 1, pp: 3, micro: 4, schedule: "zb1p", ["--layers", "3"])
        try Equivalence.check("train_3d", np: 6, ["--layers", "3"],
                              extra: ["--tp", "2", "--dp", "1", "--pp", "3", "--micro-batches", "4", "--recompute", "--sequence-parallel"],
                              data: Self.data)
    }

    func testRowsThatDoNotSplitAreOneError() throws {
        let base = ["--data", Self.data, "--steps", "5", "--sequence-parallel"]
        try Equivalence.expectError("train_tp", np: 2, base + ["--batch-size", "31"],
                                    "--sequence-parallel splits each micro-batch's rows over the 2 tensor-parallel ranks, but --batch-size 31 is not divisible by 2")
        try Equivalence.expectError("train_tp", np: 2, base + ["--batch-size", "30", "--accumulate", "2"],
                                    "--batch-size 30 / --accumulate 2 = 15 rows is not divisible by 2")
        try Equivalence.expectError("train_3d", np: 4, base + ["--tp", "2", "--dp", "2", "--micro-batches", "3", "--batch-size", "18"],
                                    "--sequence-parallel splits each micro-batch's rows over --tp 2, but --batch-size 18 / (--dp 2 × --micro-batches 3) = 3 rows is not divisible by 2")
    }

    /// The embedding and the head's bias, used on each rank's rows, are summed over the group
    /// every step in one allreduce: they stay bit-identical (60 Adam steps, `--check-replicas`).
    func testReplicasStayBitIdentical() throws {
        let emb = 16
        for (executable, np, flags) in [("train_tp", 2, [String]()), ("train_3d", 4, ["--tp", "2", "--dp", "2"])] {
            let run = try Launch.run(executable, np: np, ["--data", Self.data, "--steps", "60", "--samples", "0", "--val-batches", "1",
                                                          "--optimizer", "adam", "--lr", "0.01", "--check-replicas",
                                                          "--sequence-parallel"] + flags, timeout: 120)
            XCTAssertEqual(run.status, 0, "\(executable): \(run.stderr)")
            let line = try XCTUnwrap(run.stdout.split(separator: "\n").first { $0.hasPrefix("replicas: ") }, run.stdout)
            XCTAssertTrue(line.hasSuffix("all bit-identical"), String(line))
            XCTAssertEqual(Int(line.split(separator: " ")[1]), Self.vocab * emb + Self.vocab, "\(executable): \(line)")
        }
    }
}
