import Core
import Foundation
import Training
import XCTest

/// Every refusal of bad input, checked in-process: the message that the executables print as
/// `error: <message> (see --help)` comes from three pure places — the flags' parsing and
/// `validate()` (`TrainingOptions`, `PipelineOptions`), `Dataset.load`, and the layout's check
/// against the world (`LayoutShape.check`). The launch path that turns any of them into one line
/// and a non-zero exit on every rank is proved end to end, once per kind of error, by
/// `BadInputTests` and `TrainTests` (EndToEndTests).
final class InputRulesTests: XCTestCase {
    /// The message `TrainingOptions` parsing gives `arguments` (nil when they parse).
    func message<T: ParsableArguments>(_ type: T.Type, _ arguments: [String]) -> String? {
        do {
            _ = try T.parse(arguments)
            return nil
        } catch {
            return T.message(for: error)
        }
    }

    func expect(_ cases: [([String], String)], file: StaticString = #filePath, line: UInt = #line) {
        expect(TrainingOptions.self, cases, file: file, line: line)
    }

    func expect<T: ParsableArguments>(_ type: T.Type, _ cases: [([String], String)],
                                      file: StaticString = #filePath, line: UInt = #line) {
        for (arguments, expected) in cases {
            guard let text = message(type, arguments) else {
                XCTFail("\(arguments) parsed; expected a refusal naming '\(expected)'", file: file, line: line)
                continue
            }
            XCTAssertTrue(text.contains(expected), "\(arguments): expected '\(expected)' in '\(text)'", file: file, line: line)
            XCTAssertFalse(text.contains("\n"), "\(arguments): one line: '\(text)'", file: file, line: line)
        }
    }

    /// Each numeric flag names itself and the value it got.
    func testBadNumbersNameTheFlagAndTheValue() {
        expect([
            (["--lr", "nan"], "--lr must be a positive finite number (got nan)"),
            (["--lr", "inf"], "--lr must be a positive finite number (got inf)"),
            (["--lr", "0"], "--lr must be a positive finite number (got 0.0)"),
            (["--lr", "-0.1"], "--lr must be a positive finite number (got -0.1)"),
            (["--steps", "0"], "--steps must be a positive integer (got 0)"),
            (["--steps", "-3"], "--steps must be a positive integer (got -3)"),
            (["--batch-size", "-1"], "--batch-size must be a positive integer (got -1)"),
            (["--batch-size", "0"], "--batch-size must be a positive integer (got 0)"),
            (["--batch-size", "-4"], "--batch-size must be a positive integer (got -4)"),
            (["--emb", "0"], "--emb must be a positive integer (got 0)"),
            (["--hidden", "0"], "--hidden must be a positive integer (got 0)"),
            (["--seq-len", "0"], "--seq-len must be a positive integer (got 0)"),
            (["--layers", "-1"], "--layers must be a positive integer (got -1)"),
            (["--weight-decay", "nan"], "--weight-decay must be a finite number ≥ 0 (got nan)"),
            (["--eps", "0"], "--eps must be a positive finite number (got 0.0)"),
            (["--beta2", "1"], "--beta2 must be in [0, 1) (got 1.0)"),
            (["--temperature", "0"], "--temperature must be a positive finite number (got 0.0)"),
            (["--timeout", "0"], "--timeout must be a positive finite number of seconds (got 0.0)"),
            (["--timeout", "-5"], "--timeout must be a positive finite number of seconds (got -5.0)"),
            (["--timeout", "inf"], "--timeout must be a positive finite number of seconds (got inf)"),
            (["--timeout", "nan"], "--timeout must be a positive finite number of seconds (got nan)"),
            (["--clip-grad-norm", "0"], "--clip-grad-norm must be a positive finite number (got 0.0)"),
            (["--clip-grad-norm", "nan"], "--clip-grad-norm must be a positive finite number (got nan)"),
            (["--val-every", "0"], "--val-every must be a positive integer (got 0)"),
            (["--val-every", "-2"], "--val-every must be a positive integer (got -2)"),
            (["--dump-steps", "0,5", "--dump", "d"], "--dump-steps must be positive step counts separated by commas"),
            (["--dump-steps", "1", ], "--dump-steps needs --dump"),
            (["--dump-steps", "1,50", "--dump", "d", "--steps", "20"], "--dump-steps 50 is beyond --steps 20"),
        ])
    }

    /// What the argument parser itself refuses: an unknown flag, a value of the wrong type, an
    /// unknown optimizer.
    func testMalformedCommandLinesAreRefused() {
        expect([
            (["--frobnicate", "3"], "Unknown option '--frobnicate'"),
            (["--steps", "many"], "--steps"),
            (["--optimizer", "rmsprop"], "--optimizer"),
        ])
    }

    func testExpertFlagsAreRefused() {
        expect([
            (["--experts", "2", "--top-k", "3"], "--top-k must be between 1 and --experts 2 (got 3)"),
            (["--experts", "4", "--top-k", "0"], "--top-k must be between 1 and --experts 4 (got 0)"),
            (["--experts", "-1"], "--experts must be 0 (dense) or a positive number of experts (got -1)"),
            (["--experts", "4", "--capacity-factor", "0"], "--capacity-factor must be a positive finite number (got 0.0)"),
            (["--experts", "4", "--capacity-factor", "-2"], "--capacity-factor must be a positive finite number (got -2.0)"),
            (["--experts", "4", "--capacity-factor", "nan"], "--capacity-factor must be a positive finite number (got nan)"),
            (["--capacity-factor", "1"], "--capacity-factor needs --experts"),
            (["--experts", "4", "--aux-loss-coef", "-1"], "--aux-loss-coef must be a finite number ≥ 0 (got -1.0)"),
            (["--experts", "4", "--accumulate", "2"], "--experts cannot be combined with --accumulate 2: the load-balancing loss and the capacity count the whole batch"),
        ])
    }

    func testPipelineFlagsAreRefused() {
        expect(PipelineOptions.self, [
            (["--micro-batches", "0"], "--micro-batches must be a positive integer (got 0)"),
            (["--schedule", "interleaved"], "--schedule interleaved needs --virtual-stages"),
            (["--partition", "2,x"], "--partition must be positive block counts"),
        ])
    }

    /// `train_pp --batch-weight-gradients` with the schedules and flags it cannot work with, and
    /// `train_3d`'s pipeline flags do not offer it at all.
    func testBatchedWeightGradientsRules() throws {
        func refusal(_ arguments: [String]) -> String? {
            do {
                let batching = try BatchedWeightGradientsOption.parse(["--batch-weight-gradients"])
                try batching.applied(to: try PipelineOptions.parse(arguments)).checkBatchedWeightGradients()
                return nil
            } catch {
                return "\(error)"
            }
        }
        XCTAssertTrue(refusal(["--schedule", "zb1p"])?.contains("--batch-weight-gradients cannot be combined with --schedule zb1p") ?? false)
        XCTAssertTrue(refusal(["--recompute"])?.contains("--batch-weight-gradients cannot be combined with --recompute") ?? false)
        XCTAssertNil(refusal(["--micro-batches", "4", "--schedule", "gpipe"]))
        XCTAssertTrue(message(PipelineOptions.self, ["--batch-weight-gradients"])?.contains("Unknown option") ?? false,
                      "the pipeline flags that train_3d shares do not offer it")
    }

    /// Flags that parse are not refused (the checks above are not refusing everything).
    func testGoodFlagsParse() {
        XCTAssertNil(message(TrainingOptions.self, ["--lr", "0.5", "--steps", "5", "--timeout", "10", "--dump", "d", "--dump-steps", "1,5"]))
        XCTAssertNil(message(PipelineOptions.self, ["--micro-batches", "4", "--schedule", "interleaved", "--virtual-stages", "2"]))
    }

    /// Each bad data file: the message names the file and the problem.
    func testBadDataFilesNameTheProblem() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ps-rules-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func file(_ name: String, _ bytes: [UInt8]) throws -> String {
            let url = dir.appendingPathComponent(name)
            try Data(bytes).write(to: url)
            return url.path
        }
        let missing = dir.appendingPathComponent("nope.txt").path
        let cases: [(String, String)] = [
            (missing, "cannot read data file '\(missing)': No such file or directory"),
            (try file("empty.txt", []), "is empty"),
            (dir.path, "'\(dir.path)': it is a directory"),
            (try file("blank.txt", Array("\n \n\t\n\r\n\n".utf8)), "no usable examples (only blank lines)"),
            (try file("latin1.txt", Array("emma\nchlo".utf8) + [0xE9] + Array("\n".utf8)), "not valid UTF-8 (line 2)"),
            (try file("truncated.txt", Array("ava\nmia\n".utf8) + [0xE2, 0x82]), "not valid UTF-8 (line 3)"),
            (try file("bad.txt", Array("anna\n".utf8) + [0xC3, 0x28] + Array("\n".utf8)), "not valid UTF-8 (line 2)"),
        ]
        for (path, expected) in cases {
            do {
                _ = try Dataset.load(path: path, seqLen: 16)
                XCTFail("\(path) loaded; expected '\(expected)'")
            } catch {
                XCTAssertTrue("\(error)".contains(expected), "\(path): expected '\(expected)' in '\(error)'")
            }
        }
        XCTAssertNoThrow(try Dataset.load(path: try file("good.txt", Array("emma\nava\n".utf8)), seqLen: 16))
    }

    /// What depends on the world: a batch the data-parallel ranks do not divide, a pipeline
    /// longer than the model, a tensor-parallel group that does not divide the hidden width,
    /// a partition that does not cover the model.
    func testLayoutsThatCannotRunNameTheReason() {
        let plan = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 1).plan
        func refusal(_ shape: LayoutShape, world: Int, batch: Int = 32, accumulation: Int = 1) -> String? {
            do {
                try shape.check(worldSize: world, plan: plan, batchSize: batch, accumulation: accumulation)
                return nil
            } catch {
                return error.description
            }
        }
        let cases: [(String?, String)] = [
            (refusal(.dataParallel(ranks: 2), world: 2, batch: 33), "--batch-size 33 is not divisible by the 2 data-parallel ranks"),
            (refusal(.dataParallel(ranks: 3), world: 3), "--batch-size 32 is not divisible by the 3 data-parallel ranks"),
            (refusal(.singleRank, world: 2), "train is the single-rank reference"),
            (refusal(.pipeline(stages: 4, microBatches: 1, partition: nil), world: 4),
             "4 pipeline stages but the model has only 3 blocks"),
            (refusal(.pipeline(stages: 2, microBatches: 5, partition: nil), world: 2), "--batch-size 32 is not divisible by --micro-batches 5"),
            (refusal(.pipeline(stages: 2, microBatches: 1, partition: [1, 1]), world: 2),
             "--partition 1,1 covers 2 blocks but the model has 3"),
            (refusal(.pipeline(stages: 2, microBatches: 1, partition: [3]), world: 2), "--partition 3 has 1 stage(s) but the pipeline has 2"),
            (refusal(.tensorParallel(ranks: 3), world: 3), "--hidden divisible by 3"),
            (refusal(.threeDimensional(tp: 1, dp: 2, pp: 1, microBatches: 1, partition: nil), world: 4), "but mpirun started 4 ranks"),
        ]
        for (got, expected) in cases {
            XCTAssertTrue(got?.contains(expected) ?? false, "expected '\(expected)', got \(got ?? "no refusal")")
        }
        XCTAssertNil(refusal(.dataParallel(ranks: 2), world: 2), "a good layout is not refused")
    }
}
