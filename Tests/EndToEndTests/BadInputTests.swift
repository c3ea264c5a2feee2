import Foundation
import XCTest

/// Bad input under `mpirun -np 2` for the parallel executables (TrainTests covers `train`, and
/// DataParallelTests a batch that 3 ranks do not divide): non-zero exit, exactly one `error:`
/// line naming the problem (printed by one rank, not one per rank), in bounded time, no crash
/// trace. And the inputs that look odd but are fine: CRLF line endings, a one-line file.
final class BadInputTests: XCTestCase {
    static let executables = ["train_dp", "train_fsdp"]

    func testBadDataFilesFailWithOneLine() throws {
        let dir = try Launch.temporaryDirectory()
        func file(_ name: String, _ bytes: [UInt8]) throws -> String {
            let url = dir.appendingPathComponent(name)
            try Data(bytes).write(to: url)
            return url.path
        }
        let missing = dir.appendingPathComponent("nope.txt").path
        let cases: [([String], String)] = [
            (["--data", missing], "cannot read data file '\(missing)': No such file or directory"),
            (["--data", try file("empty.txt", [])], "is empty"),
            (["--data", dir.path], "'\(dir.path)': it is a directory"),
            (["--data", try file("blank.txt", Array("\n \n\t\n\r\n\n".utf8))], "no usable examples (only blank lines)"),
            (["--data", try file("latin1.txt", Array("emma\nchlo".utf8) + [0xE9] + Array("\n".utf8))], "not valid UTF-8 (line 2)"),
            (["--data", try file("truncated.txt", Array("ava\nmia\n".utf8) + [0xE2, 0x82])], "not valid UTF-8 (line 3)"),
        ]
        try expectOneLineErrors(cases)
    }

    func testBadNumbersFailWithOneLine() throws {
        let good = try SmallData.write()
        let cases: [([String], String)] = [
            (["--lr", "nan"], "--lr must be a positive finite number (got nan)"),
            (["--lr", "inf"], "--lr must be a positive finite number (got inf)"),
            (["--lr", "0"], "--lr must be a positive finite number (got 0.0)"),
            (["--steps", "0"], "--steps must be a positive integer (got 0)"),
            (["--steps", "-3"], "--steps must be a positive integer (got -3)"),
            (["--batch-size", "-1"], "--batch-size must be a positive integer (got -1)"),
            (["--batch-size", "0"], "--batch-size must be a positive integer (got 0)"),
            (["--emb", "0"], "--emb must be a positive integer (got 0)"),
            (["--seq-len", "0"], "--seq-len must be a positive integer (got 0)"),
            (["--layers", "-1"], "--layers must be a positive integer (got -1)"),
            (["--weight-decay", "nan"], "--weight-decay"),
            (["--eps", "0"], "--eps must be a positive finite number"),
            (["--beta2", "1"], "--beta2 must be in [0, 1)"),
            (["--batch-size", "33"], "--batch-size 33 is not divisible by the 2 data-parallel ranks"),
            (["--timeout", "0"], "--timeout must be a positive finite number of seconds (got 0.0)"),
            (["--timeout", "-5"], "--timeout must be a positive finite number of seconds (got -5.0)"),
            (["--timeout", "inf"], "--timeout must be a positive finite number of seconds (got inf)"),
            (["--timeout", "nan"], "--timeout must be a positive finite number of seconds (got nan)"),
        ]
        try expectOneLineErrors(cases.map { (["--data", good] + $0.0, $0.1) })
    }

    /// The same file with `\r\n` line endings trains exactly as with `\n`.
    func testCRLFDataGivesTheSameLossesAsLF() throws {
        let lf = try SmallData.write()
        let crlf = try SmallData.write(SmallData.names.replacingOccurrences(of: "\n", with: "\r\n"))
        for executable in Self.executables {
            let a = try losses(executable, data: lf, steps: 100)
            let b = try losses(executable, data: crlf, steps: 100)
            XCTAssertEqual(a.count, 100, executable)
            XCTAssertEqual(a, b, "\(executable): CRLF and LF data train differently")
        }
    }

    /// A one-line file is small but usable: a line of n characters gives n + 1 examples (each
    /// character, then the end), so even "a" gives 2, one for training and one for validation,
    /// and batches sample with replacement. Both layouts must match `train` on it.
    ///
    /// (Fewer than 2 examples, the case `DataError.tooFewExamples` describes, cannot come from
    /// a file: every non-blank line gives at least 2; blank-only files fail as "no usable examples".)
    func testOneLineDataTrainsLikeTrain() throws {
        for text in ["a\n", "emma"] {
            let data = try SmallData.write(text)
            let reference = try losses("train", np: nil, data: data, steps: 50)
            XCTAssertEqual(reference.count, 50)
            for executable in Self.executables {
                let got = try losses(executable, data: data, steps: 50)
                XCTAssertEqual(got.count, 50, "\(executable) on \(text.debugDescription)")
                for (i, (x, y)) in zip(got, reference).enumerated() where !(abs(x - y) <= 1e-5 * abs(y)) {
                    XCTFail("\(executable) on \(text.debugDescription): step \(i) loss \(x), train \(y)")
                    break
                }
            }
        }
    }

    // MARK: helpers

    func losses(_ executable: String, np: Int? = 2, data: String, steps: Int) throws -> [Float] {
        let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
        let run = try Launch.run(executable, np: np, ["--data", data, "--steps", "\(steps)", "--val-batches", "2",
                                                      "--samples", "0", "--metrics", metrics], timeout: 120)
        XCTAssertEqual(run.status, 0, "\(executable): \(run.stderr)")
        return try Metrics(path: metrics).losses
    }

    func expectOneLineErrors(_ cases: [([String], String)], file: StaticString = #filePath, line: UInt = #line) throws {
        for executable in Self.executables {
            for (args, expected) in cases {
                let run = try Launch.run(executable, np: 2, args, timeout: 60)
                let label = "mpirun -np 2 \(executable) \(args.joined(separator: " "))"
                XCTAssertFalse(run.timedOut, label, file: file, line: line)
                XCTAssertLessThan(run.seconds, 30, label, file: file, line: line)
                XCTAssertNotEqual(run.status, 0, label, file: file, line: line)
                let errors = run.stderrLines.filter { $0.hasPrefix("error:") }
                XCTAssertEqual(errors.count, 1, "\(label): \(run.stderr)", file: file, line: line)
                XCTAssertTrue(errors.first?.contains(expected) ?? false, "\(label): expected '\(expected)' in: \(run.stderr)",
                              file: file, line: line)
                for trace in ["Fatal error", "Stack dump", "Backtrace", "Segmentation", "Aborted", "signal"] {
                    XCTAssertFalse(run.stderr.contains(trace), "\(label): \(run.stderr)", file: file, line: line)
                }
                XCTAssertEqual(run.stdout, "", "\(label): nothing on stdout before the error", file: file, line: line)
            }
        }
    }
}
