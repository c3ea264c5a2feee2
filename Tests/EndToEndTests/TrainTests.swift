import Foundation
import XCTest

/// `train` end to end: under mpirun, directly, and with bad input.
final class TrainTests: XCTestCase {
    func testTrainUnderMpirunWritesOneRecordPerStep() throws {
        let data = try SmallData.write()
        let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
        let run = try Launch.run("train", np: 1, ["--data", data, "--steps", "60", "--log-every", "20", "--val-batches", "5",
                                                  "--samples", "3", "--metrics", metrics])
        XCTAssertEqual(run.status, 0, run.stderr)
        let m = try Metrics(path: metrics)
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

    /// Each bad input: non-zero exit, one line on stderr naming the problem, no crash trace.
    func testBadInputGetsOneLineError() throws {
        let dir = try Launch.temporaryDirectory()
        func file(_ name: String, _ bytes: [UInt8]) throws -> String {
            let url = dir.appendingPathComponent(name)
            try Data(bytes).write(to: url)
            return url.path
        }
        let good = try SmallData.write()
        let empty = try file("empty.txt", [])
        let blank = try file("blank.txt", Array("\n\n  \n".utf8))
        let binary = try file("bad.txt", Array("anna\n".utf8) + [0xC3, 0x28] + Array("\n".utf8))
        let unreadable = try file("locked.txt", Array("x\n".utf8))
        chmod(unreadable, 0)
        let cases: [([String], String)] = [
            (["--data", dir.appendingPathComponent("nope.txt").path], "No such file or directory"),
            (["--data", empty], "is empty"),
            (["--data", blank], "no usable examples"),
            (["--data", binary], "not valid UTF-8 (line 2)"),
            (["--data", dir.path], "is a directory"),
            (["--data", good, "--steps", "0"], "--steps must be a positive integer"),
            (["--data", good, "--batch-size", "-4"], "--batch-size must be a positive integer"),
            (["--data", good, "--hidden", "0"], "--hidden must be a positive integer"),
            (["--data", good, "--lr", "nan"], "--lr must be a positive finite number"),
            (["--data", good, "--lr", "inf"], "--lr must be a positive finite number"),
            (["--data", good, "--lr", "-0.1"], "--lr must be a positive finite number"),
            (["--data", good, "--temperature", "0"], "--temperature"),
            (["--data", good, "--frobnicate", "3"], "Unknown option '--frobnicate'"),
            (["--data", good, "--steps", "many"], "--steps"),
            (["--data", good, "--optimizer", "rmsprop"], "--optimizer"),
            (["--data", good, "--clip-grad-norm", "0"], "--clip-grad-norm must be a positive finite number"),
            (["--data", good, "--clip-grad-norm", "nan"], "--clip-grad-norm must be a positive finite number"),
        ]
        // Root can read a chmod-0 file; only check that case when not root.
        let all = getuid() == 0 ? cases : cases + [(["--data", unreadable], "Permission denied")]
        for (args, expected) in all {
            for np in [nil, 1] as [Int?] {
                let run = try Launch.run("train", np: np, args, timeout: 60)
                let label = "\(args) np \(np.map(String.init) ?? "direct")"
                XCTAssertNotEqual(run.status, 0, label)
                XCTAssertFalse(run.timedOut, label)
                let ours = run.stderrLines.filter { $0.hasPrefix("error:") }
                XCTAssertEqual(ours.count, 1, "\(label): \(run.stderr)")
                XCTAssertTrue(ours.first?.contains(expected) ?? false, "\(label): \(run.stderr)")
                XCTAssertFalse(run.stderr.contains("Fatal error") || run.stderr.contains("Stack dump"), "\(label): \(run.stderr)")
                if np == nil { XCTAssertEqual(run.stderrLines.count, 1, "\(label): \(run.stderr)") }
            }
        }
    }

    func testTrainRefusesSeveralRanks() throws {
        let run = try Launch.run("train", np: 2, ["--data", try SmallData.write(), "--steps", "5"], timeout: 60)
        XCTAssertNotEqual(run.status, 0)
        XCTAssertEqual(run.stderrLines.filter { $0.hasPrefix("error:") }.count, 1, run.stderr)
        XCTAssertTrue(run.stderr.contains("single-rank reference"), run.stderr)
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
