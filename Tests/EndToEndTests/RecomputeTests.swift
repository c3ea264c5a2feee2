import Foundation
import XCTest

/// `--recompute` (pipelines): each micro-batch in flight keeps only its stage boundary and its
/// forward is rerun inside its backward. Same model (bit-identical to the run without it, equal to
/// `train`), and the activation memory of the ledger is the formula's.
final class RecomputeTests: XCTestCase {
    static let data = try! SmallData.write()
    static let vocab = Set(SmallData.names.filter { $0 != "\n" }).count + 1
    let model = ["--seq-len", "8", "--emb", "5", "--hidden", "9", "--layers", "2", "--batch-size", "24"]

    func testRecomputingPipelinesEqualTrain() throws {
        try Equivalence.check("train_pp", np: 3, model, extra: ["--micro-batches", "4", "--schedule", "gpipe", "--recompute"],
                              data: Self.data, steps: 100)
        try Equivalence.check("train_pp", np: 2, model, extra: ["--micro-batches", "4", "--recompute"], data: Self.data, steps: 100)
        try Equivalence.check("train_3d", np: 4, model, extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--micro-batches", "2",
                                                                 "--recompute"], data: Self.data, steps: 100)
    }

    /// (per-step records, activation bytes per rank) of a `train_pp -np 2 --partition 2,2` run.
    func run(_ extra: [String]) throws -> (records: String, activations: [Int]) {
        let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
        let run = try Launch.run("train_pp", np: 2, ["--data", Self.data, "--steps", "30", "--samples", "0", "--val-batches", "1",
                                                     "--partition", "2,2", "--micro-batches", "4", "--metrics", metrics] + model + extra,
                                 timeout: 60)
        XCTAssertEqual(run.status, 0, run.stderr)
        let lines = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n")
        let last = try JSONSerialization.jsonObject(with: Data(lines.last!.utf8)) as! [String: Any]
        let memory = last["memory_per_rank"] as! [[String: Int]]
        return (lines.prefix(30).joined(separator: "\n"), memory.map { $0["activations"]! })
    }

    /// Stage 0 (embedding, fc1) has widths [8 token ids, 40, 9]; GPipe holds M = 4 micro-batches of
    /// b = 6 rows. Without recomputation: 4 chains of b · Σ w values and gradients; with it: one
    /// chain, plus per slot the output copy being sent (9 wide; the first stage re-reads its tokens).
    func testActivationMemoryFollowsTheFormula() throws {
        for schedule in ["gpipe", "1f1b"] {
            let plain = try run(["--schedule", schedule]), recomputed = try run(["--schedule", schedule, "--recompute"])
            XCTAssertEqual(plain.records, recomputed.records, "\(schedule): bit-identical per-step records")
            let (b, sumWidths, output) = (6, 8 + 40 + 9, 9)
            let slots = schedule == "gpipe" ? 4 : 2
            XCTAssertEqual(plain.activations[0], 4 * slots * b * sumWidths * 2, schedule)
            XCTAssertEqual(recomputed.activations[0], 4 * (b * sumWidths * 2 + slots * b * output), schedule)
            // The last stage: GPipe's 4 slots shrink to one chain plus boundaries; 1F1B's last stage
            // holds one micro-batch at a time and keeps its chain.
            if schedule == "gpipe" {
                XCTAssertLessThan(recomputed.activations[1], plain.activations[1])
            } else {
                XCTAssertEqual(recomputed.activations[1], plain.activations[1])
            }
        }
    }

    func testZeroBubbleRefusesRecompute() throws {
        try Equivalence.expectError("train_pp", np: 2, ["--data", Self.data, "--schedule", "zb1p", "--recompute"],
                                    "--recompute cannot be combined with --schedule zb1p")
    }

    // MARK: - One chain (train, train_dp, train_fsdp, train_tp): √n segments

    /// (per-step records, rank 0's final record) of `executable` with `flags`.
    func chainRun(_ executable: String, np: Int?, _ flags: [String]) throws -> (records: String, last: [String: Any]) {
        let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
        let run = try Launch.run(executable, np: np, ["--data", Self.data, "--steps", "30", "--samples", "0", "--val-batches", "1",
                                                      "--metrics", metrics] + model + flags, timeout: 60)
        XCTAssertEqual(run.status, 0, run.stderr)
        let lines = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n")
        return (lines.prefix(30).joined(separator: "\n"), try JSONSerialization.jsonObject(with: Data(lines.last!.utf8)) as! [String: Any])
    }

    /// The model's 4 blocks (embedding, fc1, fc2, head) make segments {0, 1} and {2, 3}: the chain
    /// keeps its input (8 token ids), fc1's output (9) and the logits (vocab); the embedding's
    /// output (40) and fc2's (9) share one scratch slot of 40. Bit-identical records in every
    /// executable, activations as that formula says, and FSDP gathers the rerun block (the
    /// embedding) once more per step, and the last two blocks again in backward.
    func testOneChainRecomputesSegments() throws {
        let b = 24, vocab = Self.vocab
        let plain = try chainRun("train", np: nil, []), recomputed = try chainRun("train", np: nil, ["--recompute"])
        XCTAssertEqual(plain.records, recomputed.records)
        let activations = { (r: [String: Any]) in (r["memory"] as! [String: Int])["activations"]! }
        XCTAssertEqual(activations(plain.last), 8 * b * (8 + 40 + 9 + 9 + vocab))
        XCTAssertEqual(activations(recomputed.last), 8 * b * (8 + 9 + vocab) + 8 * b * 40)
        for (executable, flags) in [("train_dp", [String]()), ("train_fsdp", []), ("train_fsdp", ["--zero", "2"]), ("train_tp", ["--hidden", "10"]),
                                    ("train_tp", ["--hidden", "10", "--sequence-parallel"])] {
            let a = try chainRun(executable, np: 2, flags), r = try chainRun(executable, np: 2, flags + ["--recompute"])
            XCTAssertEqual(a.records, r.records, "\(executable) \(flags)")
            XCTAssertLessThan(activations(r.last), activations(a.last), "\(executable) \(flags)")
            if executable == "train_fsdp" && flags.isEmpty {
                let gathers = { (x: [String: Any]) in ((x["comm"] as! [String: [String: Any]])["allgather"]!["calls"] as! Int) }
                // Per step (30 steps): the rerun embedding, and the last two blocks, which a recomputing
                // chain gathers again in backward (one gather buffer) where a plain one keeps them.
                XCTAssertEqual(gathers(r.last) - gathers(a.last), 30 * 3, "three more gathers per step")
            }
        }
        try Equivalence.check("train_fsdp", np: 2, model, extra: ["--recompute"], data: Self.data, steps: 100)
        try Equivalence.check("train_tp", np: 2, model + ["--hidden", "10"], extra: ["--recompute"], data: Self.data, steps: 100)
    }
}

