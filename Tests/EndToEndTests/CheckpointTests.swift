import Foundation
import XCTest

/// Checkpoints: bit-identical resume, resharding across layouts, atomic saves, refusals.
final class CheckpointTests: XCTestCase {
    static let data = try! SmallData.write()
    /// Divisible by 1, 2, 3 and 4 ranks; Adam, so the moments must survive too.
    static let flags = ["--batch-size", "36", "--optimizer", "adam", "--lr", "0.005", "--val-batches", "2", "--samples", "0",
                        "--log-every", "1000000", "--data", data]

    struct Layout {
        var executable: String
        var np: Int?
        var extra: [String] = []
    }

    /// 3D at (T, D, P) = (2, 1, 3), two micro-batches, 1F1B.
    static let threeD = Layout(executable: "train_3d", np: 6, extra: ["--tp", "2", "--dp", "1", "--pp", "3", "--micro-batches", "2"])

    /// Losses of a run (`--steps total`), optionally resuming from / saving into `directory`.
    func losses(_ layout: Layout, steps: Int, saveEvery: Int? = nil, into directory: String? = nil, resume: String? = nil,
                expectSuccess: Bool = true, environment: [String: String] = [:],
                file: StaticString = #filePath, line: UInt = #line) throws -> (Launch.Outcome, [Float]) {
        try Launch.losses(layout.executable, np: layout.np, Self.flags + layout.extra, steps: steps, saveEvery: saveEvery,
                          into: directory, resume: resume, environment: environment, expectSuccess: expectSuccess, file: file, line: line)
    }

    func testResumeIsBitIdentical() throws {
        for layout in [Layout(executable: "train", np: nil), Layout(executable: "train_fsdp", np: 2),
                       Layout(executable: "train_dp", np: 2), Self.threeD] {
            let (_, full) = try losses(layout, steps: 120)
            let dir = try Launch.temporaryDirectory().path
            let (_, first) = try losses(layout, steps: 80, saveEvery: 40, into: dir)
            XCTAssertEqual(first, Array(full[0..<80]))
            let (run, rest) = try losses(layout, steps: 120, resume: dir)
            XCTAssertTrue(run.stdout.contains("resumed from step 80"), run.stdout)
            XCTAssertEqual(rest, Array(full[80..<120]), "\(layout.executable): resumed losses must equal the uninterrupted run's exactly")
        }
    }

    /// A checkpoint saved by one layout continues in another, matching that layout's own run.
    func testReshardingAcrossLayouts() throws {
        let pairs: [(Layout, Layout)] = [
            (Layout(executable: "train_fsdp", np: 2), Layout(executable: "train", np: nil)),
            (Layout(executable: "train", np: nil), Layout(executable: "train_fsdp", np: 3)),
            (Layout(executable: "train_dp", np: 4), Layout(executable: "train_fsdp", np: 4)),
            (Layout(executable: "train_fsdp", np: 3), Layout(executable: "train_dp", np: 2)),
            (Layout(executable: "train_tp", np: 2), Layout(executable: "train_pp", np: 3, extra: ["--micro-batches", "2"])),
            (Layout(executable: "train", np: nil), Self.threeD),
            (Self.threeD, Layout(executable: "train_tp", np: 2)),
        ]
        for (source, target) in pairs {
            let dir = try Launch.temporaryDirectory().path
            _ = try losses(source, steps: 60, into: dir)
            let (_, reference) = try losses(target, steps: 100)
            let (_, continued) = try losses(target, steps: 100, resume: dir)
            XCTAssertEqual(continued.count, 40)
            for (i, (a, b)) in zip(continued, reference[60...]).enumerated() {
                XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "\(source.executable)-\(source.np ?? 1) → \(target.executable)-\(target.np ?? 1) at step \(60 + i)")
            }
        }
    }

    func testCheckpointReadableAsDocumented() throws {
        let dir = try Launch.temporaryDirectory().path
        _ = try losses(Layout(executable: "train_fsdp", np: 2), steps: 10, into: dir)
        let folder = dir + "/step-00000010"
        let state = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/state.json"))) as! [String: Any]
        XCTAssertEqual(state["step"] as? Int, 10)
        let tensors = state["tensors"] as! [[String: Any]]
        XCTAssertEqual(tensors.map { $0["name"] as! String }, ["embedding", "fc1.weight", "fc1.bias", "head.weight", "head.bias"])
        let count = state["parameter_count"] as! Int
        let size = try FileManager.default.attributesOfItem(atPath: folder + "/parameters.f32")[.size] as! Int
        XCTAssertEqual(size, 4 * count)
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/adam_m.f32"))
    }

    /// The job is killed after the temporary folder is written and before the rename: the
    /// previous checkpoint stays the newest complete one, and resuming from it is exact.
    func testKilledWhileSavingLosesNothing() throws {
        let layout = Layout(executable: "train_fsdp", np: 2)
        let dir = try Launch.temporaryDirectory().path
        let (killed, _) = try losses(layout, steps: 80, saveEvery: 40, into: dir, expectSuccess: false,
                                     environment: ["PARALLELISMS_TEST_KILL_BEFORE_RENAME": "80"])
        XCTAssertNotEqual(killed.status, 0)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        XCTAssertTrue(names.contains("step-00000040"), "\(names)")
        XCTAssertFalse(names.contains("step-00000080"), "\(names)")
        XCTAssertTrue(names.contains { $0.hasPrefix(".step-00000080.tmp") }, "the temporary folder was written: \(names)")
        let (run, rest) = try losses(layout, steps: 80, resume: dir)
        XCTAssertTrue(run.stdout.contains("resumed from step 40"), run.stdout)
        let (_, full) = try losses(layout, steps: 80)
        XCTAssertEqual(rest, Array(full[40..<80]))
    }

    func testCorruptMissingAndMismatchedCheckpointsAreRefused() throws {
        let layout = Layout(executable: "train_fsdp", np: 2)
        func refuse(_ resume: String, _ extra: [String] = [], _ expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
            try Refusal.expect("train_fsdp", np: 2, Self.flags + extra + ["--steps", "20", "--resume", resume, "--metrics", metrics],
                               [expected], file: file, line: line)
            let trained = FileManager.default.fileExists(atPath: metrics) ? try Metrics(path: metrics).losses : []
            XCTAssertTrue(trained.isEmpty, "nothing trained", file: file, line: line)
        }
        try refuse("/nonexistent/checkpoints", [], "does not exist")
        let empty = try Launch.temporaryDirectory().path
        try refuse(empty, [], "no complete checkpoint")

        let dir = try Launch.temporaryDirectory().path
        _ = try losses(layout, steps: 10, into: dir)
        try refuse(dir, ["--hidden", "32"], "hidden 64 in the checkpoint, 32 here")
        try refuse(dir, ["--layers", "2", "--emb", "8"], "emb 16 in the checkpoint, 8 here; layers 1 in the checkpoint, 2 here")

        let parameters = URL(fileURLWithPath: dir + "/step-00000010/parameters.f32")
        var bytes = try Data(contentsOf: parameters)
        bytes[100] ^= 0x40
        try bytes.write(to: parameters)
        try refuse(dir, [], "parameters.f32 fails its checksum")
        try bytes.prefix(bytes.count - 8).write(to: parameters)
        try refuse(dir, [], "parameters.f32 has")
    }

    /// SGD at `--lr 1e30` on two FSDP ranks: step 0's loss is finite, its update blows the
    /// weights up, and step 1's loss is NaN (see `TrainTests.testNonFiniteLossStopsNamingTheStep`).
    /// With `--save-every 1`, step 0's checkpoint (`step-00000001`) exists and nothing after it.
    func testNonFiniteLossSavesNothing() throws {
        let dir = try Launch.temporaryDirectory().path
        let (run, _) = try losses(Layout(executable: "train_fsdp", np: 2, extra: ["--lr", "1e30", "--optimizer", "sgd"]), steps: 50,
                                  saveEvery: 1, into: dir, expectSuccess: false)
        XCTAssertNotEqual(run.status, 0)
        let errors = run.stderrLines.filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors.count, 1, run.stderr)
        XCTAssertTrue(errors.first?.hasPrefix("error: loss became ") ?? false, run.stderr)
        // "loss became nan at step S": steps before S completed (and were saved); nothing at or after S.
        let failing = try XCTUnwrap(TrainTests.failingStep(errors.first ?? ""), run.stderr)
        XCTAssertEqual(failing, 1, run.stderr)
        let saved = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap { name -> Int? in
            name.hasPrefix("step-") ? Int(name.dropFirst(5)) : nil
        }
        XCTAssertFalse(saved.contains { $0 > failing }, "saved \(saved) after the loss failed at step \(failing)")
        XCTAssertEqual(saved.max() ?? 0, failing, "every healthy step before it was saved (--save-every 1)")
    }

    func testSaveEveryNeedsADirectory() throws {
        let run = try Launch.run("train", ["--data", Self.data, "--save-every", "5"], timeout: 30)
        XCTAssertNotEqual(run.status, 0)
        XCTAssertEqual(run.stderrLines, ["error: --save-every needs --checkpoint-dir (see --help)"])
    }
}
