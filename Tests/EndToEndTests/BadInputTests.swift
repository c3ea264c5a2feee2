import Foundation
import XCTest

/// Bad input through the launch path: each kind of refusal — a flag refused while parsing, a
/// data file refused while loading, a layout refused against the world, and one that the
/// argument parser itself refuses — ends `mpirun -np 2` with one `error:` line (printed by one
/// rank, not one per rank), a non-zero exit on every rank, in bounded time, without a crash trace
/// (``Refusal``). Every message's text is checked in-process (`InputRulesTests`, TrainingTests);
/// `TrainTests` covers `train` run directly. And the inputs that look odd but are fine: CRLF
/// line endings, a one-line file.
final class BadInputTests: XCTestCase {
    static let executables = ["train_dp", "train_fsdp"]

    func testEachKindOfRefusalEndsEveryRankWithOneLine() throws {
        let good = try SmallData.write()
        let dir = try Launch.temporaryDirectory()
        let missing = dir.appendingPathComponent("nope.txt").path
        let latin1 = dir.appendingPathComponent("latin1.txt")
        try Data(Array("emma\nchlo".utf8) + [0xE9] + Array("\n".utf8)).write(to: latin1)
        // Parsing (validate()): nothing printed before the error.
        try Refusal.expect("train_fsdp", np: 2, ["--data", good, "--lr", "nan"], "--lr must be a positive finite number (got nan)",
                           stdoutEmpty: true)
        try Refusal.expect("train_dp", np: 2, ["--data", good, "--timeout", "0"],
                           "--timeout must be a positive finite number of seconds (got 0.0)", stdoutEmpty: true)
        // The argument parser's own refusal.
        try Refusal.expect("train_dp", np: 2, ["--data", good, "--frobnicate", "3"], "Unknown option '--frobnicate'", stdoutEmpty: true)
        // Loading the data (every rank loads it; the lowest failing rank speaks).
        try Refusal.expect("train_dp", np: 2, ["--data", missing], "cannot read data file '\(missing)': No such file or directory",
                           stdoutEmpty: true)
        try Refusal.expect("train_fsdp", np: 2, ["--data", latin1.path], "not valid UTF-8 (line 2)", stdoutEmpty: true)
        // The layout against the world, after the memory plan's line.
        try Refusal.expect("train_dp", np: 2, ["--data", good, "--batch-size", "33"],
                           "--batch-size 33 is not divisible by the 2 data-parallel ranks")
    }

    /// Under a plain `mpirun` (which ends the job as soon as one rank exits non-zero, as users run
    /// it) the line still gets out: the ranks meet in a barrier before exiting.
    func testPlainMpirunStillPrintsTheLine() throws {
        let args = ["--data", try SmallData.write(), "--lr", "0"]
        let run = try Launch.run("train_fsdp", np: 2, args, timeout: 60)
        Refusal.check(run, label: "mpirun -np 2 train_fsdp \(args.joined(separator: " "))",
                      expected: ["--lr must be a positive finite number (got 0.0)"], stdoutEmpty: true)
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
        try Launch.trained(executable, np: np, ["--data", data, "--steps", "\(steps)", "--val-batches", "2", "--samples", "0"],
                           timeout: 120).1.losses
    }
}
