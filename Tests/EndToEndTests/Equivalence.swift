import Foundation
import XCTest

/// "Every layout computes the same model as `train`": runs `train` and a parallel executable
/// with the same flags and compares what they write.
///
/// - per-step training loss and whole-model gradient norm (`grad_norm`) over `steps` steps, and the
///   validation loss: relative difference ≤ 1e-5;
/// - after one step (`--steps 1 --dump`): every gathered gradient and parameter within
///   `|a − b| ≤ 1e-6 + 1e-5·|b|`;
/// - after five steps: every parameter within the same tolerance.
enum Equivalence {
    static let lossTolerance: Float = 1e-5
    static let rtol: Float = 1e-5, atol: Float = 1e-6

    /// `train`'s outputs for a set of flags, computed once per test process.
    nonisolated(unsafe) static var references: [[String]: (losses: Metrics, step1: Dump, step5: Dump)] = [:]

    static func reference(_ args: [String], file: StaticString, line: UInt) throws -> (losses: Metrics, step1: Dump, step5: Dump) {
        if let cached = references[args] { return cached }
        let outputs = try run("train", np: nil, args, file: file, line: line)
        references[args] = outputs
        return outputs
    }

    static func run(_ executable: String, np: Int?, _ args: [String], file: StaticString, line: UInt) throws
        -> (losses: Metrics, step1: Dump, step5: Dump) {
        let dir = try Launch.temporaryDirectory()
        let metrics = dir.appendingPathComponent("m.jsonl").path
        let long = try Launch.run(executable, np: np, args + ["--metrics", metrics], timeout: 240, file: file, line: line)
        XCTAssertEqual(long.status, 0, "\(executable) \(args): \(long.stderr)", file: file, line: line)
        XCTAssertFalse(long.timedOut, "\(executable) \(args) timed out", file: file, line: line)
        var dumps: [Dump] = []
        for steps in ["1", "5"] {
            let path = dir.appendingPathComponent("d\(steps).bin").path
            let short = try Launch.run(executable, np: np, args + ["--steps", steps, "--dump", path], timeout: 120, file: file, line: line)
            XCTAssertEqual(short.status, 0, "\(executable) \(args) --steps \(steps): \(short.stderr)", file: file, line: line)
            dumps.append(try Dump(path: path))
        }
        return (try Metrics(path: metrics), dumps[0], dumps[1])
    }

    /// Runs `executable` under `mpirun -np np` with `common + extra` and `train` with `common`,
    /// and asserts they computed the same model.
    static func check(_ executable: String, np: Int, _ common: [String], extra: [String] = [], data: String, steps: Int = 300,
                      file: StaticString = #filePath, line: UInt = #line) throws {
        let base = ["--data", data, "--val-batches", "2", "--samples", "0", "--log-every", "\(steps)", "--steps", "\(steps)"] + common
        let label = "\(executable) -np \(np) \(common + extra)"
        let ours = try run(executable, np: np, base + extra, file: file, line: line)
        let reference = try reference(base, file: file, line: line)

        let a = ours.losses.losses, b = reference.losses.losses
        XCTAssertEqual(a.count, steps, label, file: file, line: line)
        XCTAssertEqual(b.count, steps, label, file: file, line: line)
        var worst: (diff: Float, step: Int) = (0, -1)
        for (step, (x, y)) in zip(a, b).enumerated() {
            let diff = abs(x - y) / abs(y)
            if !(diff <= worst.diff) { worst = (diff, step) }
        }
        XCTAssertLessThanOrEqual(worst.diff, lossTolerance, "\(label): loss differs by \(worst.diff) (relative) at step \(worst.step)",
                                 file: file, line: line)
        let na = ours.losses.gradientNorms, nb = reference.losses.gradientNorms
        XCTAssertEqual(na.count, steps, "\(label): grad_norm per step", file: file, line: line)
        XCTAssertEqual(nb.count, steps, "\(label): train's grad_norm per step", file: file, line: line)
        var worstNorm: (diff: Float, step: Int) = (0, -1)
        for (step, (x, y)) in zip(na, nb).enumerated() {
            let diff = abs(x - y) / abs(y)
            if !(diff <= worstNorm.diff) { worstNorm = (diff, step) }
        }
        XCTAssertLessThanOrEqual(worstNorm.diff, lossTolerance,
                                 "\(label): grad_norm differs by \(worstNorm.diff) (relative) at step \(worstNorm.step)", file: file, line: line)
        let va = try XCTUnwrap(ours.losses.valLoss), vb = try XCTUnwrap(reference.losses.valLoss)
        XCTAssertLessThanOrEqual(abs(va - vb) / vb, lossTolerance, "\(label): validation loss \(va) vs \(vb)", file: file, line: line)

        compare(ours.step1.gradients, reference.step1.gradients, "\(label): gradients after 1 step", file: file, line: line)
        compare(ours.step1.parameters, reference.step1.parameters, "\(label): parameters after 1 step", file: file, line: line)
        compare(ours.step5.parameters, reference.step5.parameters, "\(label): parameters after 5 steps", file: file, line: line)
    }

    /// Asserts `|a − b| ≤ atol + rtol·|b|` elementwise, naming the worst element.
    static func compare(_ a: [Float], _ b: [Float], _ label: String, file: StaticString, line: UInt) {
        XCTAssertEqual(a.count, b.count, label, file: file, line: line)
        var worst: (ratio: Float, index: Int) = (0, -1)
        for i in 0..<min(a.count, b.count) {
            let ratio = abs(a[i] - b[i]) / (atol + rtol * abs(b[i]))
            if !(ratio <= worst.ratio) { worst = (ratio, i) }
        }
        if worst.index >= 0 {
            XCTAssertLessThanOrEqual(worst.ratio, 1, "\(label): worst at \(worst.index): \(a[worst.index]) vs \(b[worst.index])",
                                     file: file, line: line)
        }
        XCTAssertTrue(b.allSatisfy(\.isFinite), "\(label): reference has non-finite values", file: file, line: line)
    }

    /// A run that must fail: non-zero status, no hang, exactly one `error:` line containing `expected`.
    static func expectError(_ executable: String, np: Int, _ args: [String], _ expected: String,
                            file: StaticString = #filePath, line: UInt = #line) throws {
        let run = try Launch.run(executable, np: np, args, timeout: 60, file: file, line: line)
        let label = "\(executable) -np \(np) \(args)"
        XCTAssertFalse(run.timedOut, "\(label) hung", file: file, line: line)
        XCTAssertNotEqual(run.status, 0, label, file: file, line: line)
        let errors = run.stderrLines.filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors.count, 1, "\(label): \(run.stderr)", file: file, line: line)
        XCTAssertTrue(errors.first?.contains(expected) ?? false, "\(label): \(run.stderr)", file: file, line: line)
    }
}

extension Launch {
    /// Runs `executable` with `arguments` and `--metrics` into a fresh file: the outcome and the
    /// records (nil when the run wrote none).
    static func runWithMetrics(_ executable: String, np: Int?, _ arguments: [String], timeout: Double = 180) throws -> (Outcome, Metrics?) {
        let metrics = try temporaryDirectory().appendingPathComponent("m.jsonl").path
        let run = try run(executable, np: np, arguments + ["--metrics", metrics], timeout: timeout)
        return (run, try? Metrics(path: metrics))
    }
}

extension Equivalence {
    /// Runs `executable` on `np` ranks with `flags + extra` and `train` with `flags` (both with
    /// `--steps steps`), and asserts that every step reports train's aux loss (within 1e-6) and
    /// expert load: the whole batch's, in every layout.
    static func checkExpertStatistics(_ executable: String, np: Int, _ flags: [String], extra: [String], steps: Int = 20,
                                      file: StaticString = #filePath, line: UInt = #line) throws {
        let common = flags + ["--steps", "\(steps)"]
        let (run, metrics) = try Launch.runWithMetrics(executable, np: np, common + extra)
        XCTAssertEqual(run.status, 0, run.stderr, file: file, line: line)
        let (_, reference) = try Launch.runWithMetrics("train", np: nil, common)
        let ours = try XCTUnwrap(metrics, file: file, line: line).records.filter { $0["loss"] != nil }
        let theirs = try XCTUnwrap(reference, file: file, line: line).records.filter { $0["loss"] != nil }
        XCTAssertEqual(ours.count, steps, file: file, line: line)
        XCTAssertEqual(theirs.count, steps, file: file, line: line)
        for (a, b) in zip(ours, theirs) {
            XCTAssertEqual(try XCTUnwrap(a["aux_loss"] as? Double, file: file, line: line),
                           try XCTUnwrap(b["aux_loss"] as? Double, file: file, line: line), accuracy: 1e-6, file: file, line: line)
            XCTAssertEqual(a["expert_imbalance"] as? Double, b["expert_imbalance"] as? Double, file: file, line: line)
        }
    }
}
