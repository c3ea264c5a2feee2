import Foundation
import XCTest

/// "Every layout computes the same model as `train`": runs `train` and a parallel executable
/// with the same flags and compares what they write.
///
/// - per-step training loss and whole-model gradient norm (`grad_norm`) over `steps` steps, and the
///   validation loss: relative difference ≤ 1e-5;
/// - after one step (`--dump-steps 1`): every gathered gradient and parameter within
///   `|a − b| ≤ 1e-6 + 1e-5·|b|`;
/// - after five steps: every parameter within the same tolerance;
/// - and, since every run writes both, the layout's memory plan equals its ledger on every rank.
///
/// Each side is one launch: the dumps after steps 1 and 5 come from the same run as the losses.
enum Equivalence {
    static let lossTolerance: Float = 1e-5
    static let rtol: Float = 1e-5, atol: Float = 1e-6

    typealias Outputs = (losses: Metrics, step1: Dump, step5: Dump)

    /// `train`'s outputs for a set of flags, computed once per test process.
    nonisolated(unsafe) static var references: [[String]: Outputs] = [:]
    static let lock = NSLock()

    static func reference(_ args: [String], file: StaticString, line: UInt) throws -> Outputs {
        if let cached = lock.withLock({ references[args] }) { return cached }
        let outputs = try run("train", np: nil, args, file: file, line: line)
        lock.withLock { references[args] = outputs }
        return outputs
    }

    /// One run of `args` (which hold `--steps`, at least 5) writing its metrics and the dumps
    /// after steps 1 and 5.
    static func run(_ executable: String, np: Int?, _ args: [String], file: StaticString, line: UInt) throws -> Outputs {
        let dir = try Launch.temporaryDirectory()
        let dump = dir.appendingPathComponent("d.bin").path
        let (_, metrics) = try Launch.trained(executable, np: np, args + ["--dump", dump, "--dump-steps", "1,5"], timeout: 240,
                                              file: file, line: line)
        planEqualsLedger(metrics, ranks: np ?? 1, "\(executable) -np \(np ?? 1) \(args)", file: file, line: line)
        return (metrics, try Dump(path: dump + ".step1"), try Dump(path: dump + ".step5"))
    }

    static let memoryCategories = ["parameters", "gradients", "optimizer", "activations", "buffers"]

    /// The memory plan every run writes (`memory_plan_per_rank`, computed from the flags before
    /// anything is allocated) equals the ledger (`memory_per_rank`, counted as buffers were
    /// allocated), rank by rank and category by category; a missing rank or category fails.
    static func planEqualsLedger(_ metrics: Metrics, ranks: Int, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        guard let final = metrics.final,
              let ledger = final["memory_per_rank"] as? [[String: Int]], let plan = final["memory_plan_per_rank"] as? [[String: Int]] else {
            return XCTFail("\(label): no memory_per_rank / memory_plan_per_rank in the final record", file: file, line: line)
        }
        XCTAssertEqual(ledger.count, ranks, "\(label): ledger ranks", file: file, line: line)
        XCTAssertEqual(plan.count, ranks, "\(label): plan ranks", file: file, line: line)
        for (rank, (counted, planned)) in zip(ledger, plan).enumerated() {
            for category in memoryCategories {
                guard let a = counted[category], let b = planned[category] else {
                    XCTFail("\(label): rank \(rank) has no '\(category)' in the ledger or the plan", file: file, line: line)
                    continue
                }
                XCTAssertEqual(a, b, "\(label): rank \(rank) \(category): ledger \(a), plan \(b)", file: file, line: line)
            }
        }
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

    /// A run that must fail: ``Refusal/expect(_:np:_:_:stdoutEmpty:environment:file:line:)``.
    static func expectError(_ executable: String, np: Int, _ args: [String], _ expected: String,
                            file: StaticString = #filePath, line: UInt = #line) throws {
        try Refusal.expect(executable, np: np, args, expected, file: file, line: line)
    }
}

extension Equivalence {
    /// Runs `executable` on `np` ranks with `flags + extra` and `train` with `flags` (both with
    /// `--steps steps`), and asserts that every step reports train's aux loss (within 1e-6) and
    /// expert load: the whole batch's, in every layout.
    static func checkExpertStatistics(_ executable: String, np: Int, _ flags: [String], extra: [String], steps: Int = 20,
                                      file: StaticString = #filePath, line: UInt = #line) throws {
        let common = flags + ["--steps", "\(steps)"]
        let (_, metrics) = try Launch.trained(executable, np: np, common + extra, file: file, line: line)
        let (_, reference) = try Launch.trained("train", np: nil, common, file: file, line: line)
        let ours = metrics.records.filter { $0["loss"] != nil }
        let theirs = reference.records.filter { $0["loss"] != nil }
        XCTAssertEqual(ours.count, steps, file: file, line: line)
        XCTAssertEqual(theirs.count, steps, file: file, line: line)
        try compareExpertStatistics(ours, theirs, file: file, line: line)
    }

    /// Record by record: the same aux loss (within 1e-6) and expert load imbalance (exactly);
    /// a record without either fails.
    static func compareExpertStatistics(_ ours: [[String: Any]], _ theirs: [[String: Any]],
                                        file: StaticString = #filePath, line: UInt = #line) throws {
        for (a, b) in zip(ours, theirs) {
            XCTAssertEqual(try XCTUnwrap(a["aux_loss"] as? Double, file: file, line: line),
                           try XCTUnwrap(b["aux_loss"] as? Double, file: file, line: line), accuracy: 1e-6, file: file, line: line)
            XCTAssertEqual(try XCTUnwrap(a["expert_imbalance"] as? Double, file: file, line: line),
                           try XCTUnwrap(b["expert_imbalance"] as? Double, file: file, line: line), file: file, line: line)
        }
    }
}
