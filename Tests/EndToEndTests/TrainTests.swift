import Foundation
import XCTest

/// `train` end to end: under mpirun, directly, and with bad input.
final class TrainTests: XCTestCase {
    func testTrainUnderMpirunWritesOneRecordPerStep() throws {
        let data = try SmallData.write()
        let (run, m) = try Launch.trained("train", np: 1, ["--data", data, "--steps", "60", "--log-every", "20", "--val-batches", "5",
                                                           "--samples", "3"])
        XCTAssertEqual(m.losses.count, 60)
        XCTAssertTrue(m.losses.allSatisfy(\.isFinite))
        XCTAssertLessThan(m.losses.suffix(10).reduce(0, +) / 10, m.losses[0], "training lowers the loss")
        XCTAssertNotNil(m.valLoss)
        XCTAssertTrue(run.stdout.contains("step 60/60"), run.stdout)
        XCTAssertTrue(run.stdout.contains("validation loss"), run.stdout)
        let samples = run.stdout.components(separatedBy: "samples (temperature 1.0):\n").last!
        XCTAssertEqual(samples.split(separator: "\n").count, 3, run.stdout)
    }

    func testDirectRunMatchesMpirunExactly() throws {
        let data = try SmallData.write()
        let dir = try Launch.temporaryDirectory()
        let a = dir.appendingPathComponent("a.jsonl").path, b = dir.appendingPathComponent("b.jsonl").path
        let args = ["--data", data, "--steps", "30", "--val-batches", "2", "--samples", "0", "--layers", "2"]
        XCTAssertEqual(try Launch.run("train", args + ["--metrics", a]).status, 0)
        XCTAssertEqual(try Launch.run("train", np: 1, args + ["--metrics", b]).status, 0)
        XCTAssertEqual(try Metrics(path: a).losses, try Metrics(path: b).losses)
        // A different seed is a different run.
        let c = dir.appendingPathComponent("c.jsonl").path
        XCTAssertEqual(try Launch.run("train", args + ["--metrics", c, "--seed", "7"]).status, 0)
        XCTAssertNotEqual(try Metrics(path: a).losses, try Metrics(path: c).losses)
    }

    /// `train` run directly (and under `mpirun -np 1`): a refused flag, a refused data file and
    /// a malformed command line each end it with exactly one line on stderr (nothing else) and a
    /// non-zero exit, without a crash trace. (Every message's text: `InputRulesTests`.)
    func testBadInputGetsOneLineError() throws {
        let dir = try Launch.temporaryDirectory()
        let binary = dir.appendingPathComponent("bad.txt")
        try Data(Array("anna\n".utf8) + [0xC3, 0x28] + Array("\n".utf8)).write(to: binary)
        let good = try SmallData.write()
        let cases: [([String], String)] = [
            (["--data", good, "--lr", "-0.1"], "--lr must be a positive finite number"),
            (["--data", binary.path], "not valid UTF-8 (line 2)"),
            (["--data", good, "--steps", "many"], "--steps"),
        ]
        for (args, expected) in cases {
            let line = try Refusal.expect("train", np: nil, args, [expected], stdoutEmpty: true)
            XCTAssertFalse(line.isEmpty)
            let run = try Launch.run("train", args, timeout: 60)
            XCTAssertEqual(run.stderrLines.count, 1, "train \(args): only the error line: \(run.stderr)")
        }
        try Refusal.expect("train", np: 1, ["--data", binary.path], "not valid UTF-8 (line 2)", stdoutEmpty: true)
        try Refusal.expect("train", np: 1, ["--data", good, "--hidden", "0"], "--hidden must be a positive integer", stdoutEmpty: true)
        // A file only root can read (not checkable as root, who reads it anyway).
        if getuid() != 0 {
            let unreadable = dir.appendingPathComponent("locked.txt")
            try Data("x\n".utf8).write(to: unreadable)
            chmod(unreadable.path, 0)
            try Refusal.expect("train", np: nil, ["--data", unreadable.path], "Permission denied", stdoutEmpty: true)
        }
    }

    func testTrainRefusesSeveralRanks() throws {
        try Refusal.expect("train", np: 2, ["--data", try SmallData.write(), "--steps", "5"], "single-rank reference")
    }

    /// `--lr 1e30`: step 0 runs on the initial weights, so its loss is finite, and its update
    /// moves every weight by 1e30 × its gradient; step 1's forward pass then overflows (products
    /// of weights ~1e27 exceed Float's range, ∞ − ∞ in the softmax) and its loss is NaN. Nothing
    /// here is random beyond the fixed seed and data, so the step is always 1. Proves that
    /// training stops at the first non-finite loss — exit status 1, one error line naming step 1
    /// — and that the steps before it were recorded (step 0 only).
    func testNonFiniteLossStopsNamingTheStep() throws {
        let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
        let run = try Launch.run("train", ["--data", try SmallData.write(), "--lr", "1e30", "--steps", "50", "--seed", "42",
                                           "--metrics", metrics], timeout: 60)
        XCTAssertEqual(run.status, 1)
        XCTAssertEqual(run.stderrLines.count, 1, run.stderr)
        let line = run.stderrLines.first ?? ""
        XCTAssertTrue(line.hasPrefix("error: loss became "), run.stderr)
        XCTAssertEqual(Self.failingStep(line), 1, run.stderr)
        XCTAssertEqual(try Metrics(path: metrics).losses.count, 1, "step 0 was recorded, nothing after")
    }

    /// The step named by "error: loss became X at step S; …".
    static func failingStep(_ line: String) -> Int? {
        guard let range = line.range(of: " at step ") else { return nil }
        let digits = line[range.upperBound...].prefix { $0.isNumber }
        guard line[range.upperBound...].dropFirst(digits.count).hasPrefix(";") else { return nil }
        return Int(digits)
    }
}
