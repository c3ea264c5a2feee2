import Foundation
import XCTest

/// `--schedule interleaved --virtual-stages V`: the blocks cut into `N·V` chunks, stage `s`
/// holding chunks `s, s + N, …`. Same model as `train` (`train_pp` and `train_3d`, with Adam,
/// `--recompute` and `--accumulate`), bit-identical to 1F1B, and its bad inputs are one line.
final class InterleavedPipelineTests: XCTestCase {
    static let data = try! SmallData.write()

    func interleaved(_ v: Int, micro: Int) -> [String] {
        ["--schedule", "interleaved", "--virtual-stages", "\(v)", "--micro-batches", "\(micro)"]
    }

    /// N = 2, V = 2: four chunks, so with `--layers 2` one block each (activations go from stage 1
    /// back to stage 0 between chunks 1 and 2), with `--layers 3` one stage holds two blocks in a chunk.
    func testTwoStagesTwoChunksMatchTrain() throws {
        try Equivalence.check("train_pp", np: 2, ["--layers", "2"], extra: interleaved(2, micro: 4), data: Self.data)
        try Equivalence.check("train_pp", np: 2, ["--layers", "3"], extra: interleaved(2, micro: 2), data: Self.data)
    }

    /// N = 3, V = 2: six chunks of the six blocks of `--layers 4`, Adam, M = 3 and 6.
    func testThreeStagesAdamMatchesTrain() throws {
        let model = ["--layers", "4", "--batch-size", "24", "--optimizer", "adam", "--lr", "0.003"]
        try Equivalence.check("train_pp", np: 3, model, extra: interleaved(2, micro: 6), data: Self.data)
        try Equivalence.check("train_pp", np: 3, model, extra: interleaved(2, micro: 3), data: Self.data, steps: 100)
    }

    /// `train_3d` with pp 2 and V = 2 over tensor-parallel layers (tp 2) and over FSDP's hooks
    /// (dp 2; the hooks address the stage's blocks across both chunks), with `--sequence-parallel`,
    /// and with `--recompute` and `--accumulate`.
    func testThreeDimensionalMatchesTrain() throws {
        let model = ["--layers", "2"]
        try Equivalence.check("train_3d", np: 4, model, extra: ["--tp", "2", "--dp", "1", "--pp", "2"] + interleaved(2, micro: 2),
                              data: Self.data, steps: 150)
        try Equivalence.check("train_3d", np: 4, model, extra: ["--tp", "1", "--dp", "2", "--pp", "2"] + interleaved(2, micro: 2),
                              data: Self.data, steps: 150)
        // Sequence parallelism: each chunk's own row split; the boundaries outside the pairs carry 1/T of the rows.
        try Equivalence.check("train_3d", np: 4, model,
                              extra: ["--tp", "2", "--dp", "1", "--pp", "2", "--sequence-parallel"] + interleaved(2, micro: 4),
                              data: Self.data, steps: 150)
        try Equivalence.check("train_3d", np: 4, ["--layers", "3", "--accumulate", "2"],
                              extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--recompute"] + interleaved(2, micro: 2),
                              data: Self.data, steps: 100)
    }

    /// Per-step losses (as printed) of a `train_pp -np 2 --layers 2` run. Not the gradient norms:
    /// each rank sums the squares of the blocks it holds before they are added over the ranks, so
    /// a different assignment of blocks to ranks rounds the norm differently in its last bit.
    func records(_ extra: [String], file: StaticString = #filePath, line: UInt = #line) throws -> (records: String, stdout: String) {
        let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
        let run = try Launch.run("train_pp", np: 2, ["--data", Self.data, "--steps", "40", "--layers", "2", "--samples", "0",
                                                     "--val-batches", "1", "--metrics", metrics] + extra, timeout: 60)
        XCTAssertEqual(run.status, 0, run.stderr, file: file, line: line)
        let lines = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n")
        XCTAssertTrue(lines[39].contains("\"step\":39"), file: file, line: line)
        let losses = lines.prefix(40).map { $0.split(separator: ",").prefix(2).joined(separator: ",") }
        XCTAssertTrue(losses[0].hasPrefix("{\"step\":0,\"loss\":3."), losses[0], file: file, line: line)
        return (losses.joined(separator: "\n"), run.stdout)
    }

    /// Interleaving moves work, not arithmetic: every parameter belongs to one chunk, whose
    /// backwards add the micro-batches in ascending order as 1F1B's do, so every step's loss is
    /// bit-identical to 1F1B's; recomputing reruns the same forward, so it is too. With
    /// `--accumulate 2`, the same against 1F1B with `--accumulate 2`. The end-of-run report names
    /// the schedule, the chunks and the interleaved bubble, and the start-up line the chunks.
    func testBitIdenticalToOneForwardOneBackward() throws {
        let plain = try records(["--schedule", "1f1b", "--micro-batches", "4"])
        let mixed = try records(interleaved(2, micro: 4))
        XCTAssertEqual(plain.records, mixed.records)
        XCTAssertEqual(plain.records, try records(interleaved(2, micro: 4) + ["--recompute"]).records)
        XCTAssertEqual(try records(["--schedule", "1f1b", "--micro-batches", "2", "--accumulate", "2"]).records,
                       try records(interleaved(2, micro: 2) + ["--accumulate", "2"]).records)
        XCTAssertTrue(mixed.stdout.contains("pipeline: 2 stages, interleaved, 2 chunks per stage, 4 micro-batches; waiting on neighbours"),
                      mixed.stdout)
        XCTAssertTrue(mixed.stdout.contains("(ideal bubble (N−1)/(V·M+N−1) = 11.1%)"), mixed.stdout)
        XCTAssertTrue(mixed.stdout.contains("pipeline cut: chunk 0 (stage 0): embedding (0 FLOP/row); chunk 1 (stage 1): fc1 ("),
                      mixed.stdout)
        XCTAssertTrue(mixed.stdout.contains("chunk 3 (stage 1): head ("), mixed.stdout)
    }

    /// Per-step losses of a run of `steps` steps (Adam, `--layers 2`), saving into or resuming from `directory`.
    func losses(_ executable: String, np: Int?, _ extra: [String], steps: Int, save: String? = nil, resume: String? = nil,
                file: StaticString = #filePath, line: UInt = #line) throws -> [Float] {
        let args = ["--data", Self.data, "--layers", "2", "--optimizer", "adam", "--lr", "0.005", "--samples", "0", "--val-batches", "1",
                    "--log-every", "1000000"] + extra
        return try Launch.losses(executable, np: np, args, steps: steps, into: save, resume: resume, file: file, line: line).1
    }

    /// A checkpoint holds the canonical parameters whatever the chunks: an interleaved run resumes
    /// its own checkpoint bit-identically, and `train` continues it as `train` would have.
    func testCheckpointsResumeAcrossLayouts() throws {
        let mixed = interleaved(2, micro: 4)
        let full = try losses("train_pp", np: 2, mixed, steps: 50)
        let dir = try Launch.temporaryDirectory().path
        XCTAssertEqual(try losses("train_pp", np: 2, mixed, steps: 30, save: dir), Array(full[0..<30]))
        XCTAssertEqual(try losses("train_pp", np: 2, mixed, steps: 50, resume: dir), Array(full[30..<50]))
        let reference = try losses("train", np: nil, [], steps: 50)
        let continued = try losses("train", np: nil, [], steps: 50, resume: dir)
        XCTAssertEqual(continued.count, 20)
        for (a, b) in zip(continued, reference[30...]) { XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5) }
    }

    func testBadInputIsOneError() throws {
        let base = ["--data", Self.data, "--steps", "5", "--layers", "2"]
        try Equivalence.expectError("train_pp", np: 2, base + ["--virtual-stages", "2", "--micro-batches", "2"],
                                    "--virtual-stages 2 needs --schedule interleaved (got --schedule 1f1b)")
        try Equivalence.expectError("train_pp", np: 2, base + ["--schedule", "zb1p", "--virtual-stages", "2"],
                                    "--virtual-stages cannot be combined with --schedule zb1p")
        try Equivalence.expectError("train_pp", np: 2, base + ["--schedule", "interleaved", "--micro-batches", "2"],
                                    "--schedule interleaved needs --virtual-stages V")
        try Equivalence.expectError("train_pp", np: 2, base + interleaved(1, micro: 2), "--virtual-stages must be at least 2")
        try Equivalence.expectError("train_pp", np: 2, base + interleaved(2, micro: 1),
                                    "--micro-batches 1 is not a multiple of the 2 pipeline stages")
        try Equivalence.expectError("train_3d", np: 4, base + ["--dp", "2", "--pp", "2"] + interleaved(2, micro: 3),
                                    "--micro-batches 3 is not a multiple of the 2 pipeline stages")
        try Equivalence.expectError("train_pp", np: 2, base + ["--layers", "1"] + interleaved(2, micro: 2),
                                    "2 stages × --virtual-stages 2 = 4 chunks but the model has only 3 blocks")
        try Equivalence.expectError("train_pp", np: 2, base + interleaved(2, micro: 2) + ["--partition", "2,2"],
                                    "--partition 2,2 has 2 chunk(s) but 2 stages × --virtual-stages 2 make 4")
        try Equivalence.expectError("train_3d", np: 2, base + ["--dp", "2"] + interleaved(2, micro: 2),
                                    "--schedule interleaved needs at least 2 pipeline stages")
    }
}
