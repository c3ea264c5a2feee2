import Foundation
import XCTest

/// `train --experts` (and `train_dp --experts`, equal to it): it learns, reports the aux loss and the load, dumps and exports every
/// expert, resumes bit-identically, keeps `--experts 0` the dense model exactly, and refuses bad
/// flags and the layouts that cannot take experts yet with one line.
final class MixtureOfExpertsTrainingTests: XCTestCase {
    static let data = try! SmallData.write()
    static let flags = ["--data", data, "--val-batches", "2", "--samples", "0", "--log-every", "50"]
    /// The small data's vocabulary: the boundary and its distinct letters.
    static let vocab = Set(SmallData.names.filter { $0 != "\n" }).count + 1

    func train(_ extra: [String], np: Int? = nil, executable: String = "train") throws -> (Launch.Outcome, Metrics?) {
        try Launch.runWithMetrics(executable, np: np, Self.flags + extra, timeout: 120)
    }

    func testTrainsReportsDumpsAndExportsEveryExpert() throws {
        let dir = try Launch.temporaryDirectory()
        let dump = dir.appendingPathComponent("dump").path, file = dir.appendingPathComponent("m.safetensors").path
        let (run, metrics) = try train(["--steps", "300", "--experts", "4", "--top-k", "2", "--dump", dump, "--export", file,
                                           "--samples", "3"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let m = try XCTUnwrap(metrics)
        XCTAssertEqual(m.losses.count, 300)
        let first = m.losses[0..<30].reduce(0, +) / 30, last = m.losses[270...].reduce(0, +) / 30
        XCTAssertLessThan(last, first - 0.3, "the loss decreases: \(first) → \(last)")
        let steps = m.records.filter { $0["step"] != nil && $0["loss"] != nil }
        XCTAssertEqual(steps.count, 300)
        for record in steps {
            let aux = try XCTUnwrap(record["aux_loss"] as? Double, "\(record)")
            let imbalance = try XCTUnwrap(record["expert_imbalance"] as? Double, "\(record)")
            // α · E · Σ f·P is α at perfect balance and at most α · E; the load is 1 … E/K.
            XCTAssertGreaterThan(aux, 0.005)
            XCTAssertLessThanOrEqual(aux, 0.04 + 1e-6)
            XCTAssertGreaterThanOrEqual(imbalance, 1)
            XCTAssertLessThanOrEqual(imbalance, 2)
            XCTAssertGreaterThan(record["loss"] as! Double, aux)
        }
        XCTAssertTrue(run.stdout.contains("experts 4, top-k 2"), run.stdout)
        XCTAssertTrue(run.stdout.contains("(aux "), "the progress line reports the aux loss: \(run.stdout)")
        // Sampling runs the mixture one row at a time (the last flag wins over --samples 0).
        let lines = run.stdout.split(separator: "\n")
        let samples = try XCTUnwrap(lines.firstIndex { $0.hasPrefix("samples (temperature") }, run.stdout)
        XCTAssertEqual(lines[(samples + 1)...].filter { $0.hasPrefix("  ") }.count, 3, run.stdout)

        // Every parameter: Ψ = vocab·16 + 256·4 + 4·(256·64 + 64) + 64·vocab + vocab.
        let psi = Self.vocab * 16 + 256 * 4 + 4 * (256 * 64 + 64) + 64 * Self.vocab + Self.vocab
        let dumped = try Dump(path: dump)
        XCTAssertEqual(dumped.parameters.count, psi)
        XCTAssertEqual(m.final?["parameters"] as? Int, psi)
        for e in 0..<4 {  // every expert trained: its slice of the last step's gradient is not all zero
            let start = Self.vocab * 16 + 256 * 4 + e * (256 * 64 + 64)
            XCTAssertTrue(dumped.gradients[start..<start + 256 * 64 + 64].contains { $0 != 0 }, "expert \(e) got no gradient")
        }

        let model = try SafeTensorsFile(path: file)
        var expected: [(String, [Int])] = [("embedding.weight", [Self.vocab, 16]), ("fc1.router.weight", [256, 4])]
        for e in 0..<4 { expected += [("fc1.experts.\(e).weight", [256, 64]), ("fc1.experts.\(e).bias", [64])] }
        expected += [("head.weight", [64, Self.vocab]), ("head.bias", [Self.vocab])]
        XCTAssertEqual(model.entries.map(\.name), expected.map(\.0))
        XCTAssertEqual(model.entries.map(\.shape), expected.map(\.1))
        XCTAssertEqual(model.metadata["experts"], "4")
        XCTAssertEqual(model.metadata["top_k"], "2")
        XCTAssertEqual(model.entries.flatMap { model.floats($0) }.map(\.bitPattern), dumped.parameters.map(\.bitPattern))

        // The export starts a run with the same experts, and is refused by a dense one.
        let (again, _) = try train(["--steps", "1", "--experts", "4", "--init-from", file])
        XCTAssertEqual(again.status, 0, again.stderr)
        let (dense, _) = try train(["--steps", "1", "--init-from", file])
        XCTAssertNotEqual(dense.status, 0)
        XCTAssertTrue(dense.stderr.contains("experts 4 in the file, 0 here"), dense.stderr)
    }

    func testResumeIsBitIdenticalAndReshardsIntoDataParallel() throws {
        let flags = ["--experts", "3", "--top-k", "2", "--capacity-factor", "1", "--optimizer", "adam", "--lr", "0.005", "--layers", "2"]
        let (_, whole) = try train(flags + ["--steps", "60"])
        let dir = try Launch.temporaryDirectory().path
        let (_, first) = try train(flags + ["--steps", "40", "--checkpoint-dir", dir])
        let (run, rest) = try train(flags + ["--steps", "60", "--resume", dir])
        XCTAssertEqual(run.status, 0, run.stderr)
        let full = try XCTUnwrap(whole).losses
        XCTAssertEqual(try XCTUnwrap(first).losses, Array(full[0..<40]))
        XCTAssertEqual(try XCTUnwrap(rest).losses.map(\.bitPattern), full[40..<60].map(\.bitPattern))

        // The checkpoint is layout-free: train_dp on 2 ranks continues it as its own run would.
        let (_, own) = try train(flags + ["--steps", "60"], np: 2, executable: "train_dp")
        let (resharded, continued) = try train(flags + ["--steps", "60", "--resume", dir], np: 2, executable: "train_dp")
        XCTAssertEqual(resharded.status, 0, resharded.stderr)
        let theirs = try XCTUnwrap(own).losses, ours = try XCTUnwrap(continued).losses
        XCTAssertEqual(ours.count, 20)
        for (i, (a, b)) in zip(ours, theirs[40...]).enumerated() {
            XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "train → train_dp -np 2 at step \(40 + i)")
        }

        // Other experts cannot continue it.
        for other in [["--experts", "4"], ["--experts", "3", "--top-k", "1"], ["--experts", "3"], []] {
            let (refused, _) = try train(["--steps", "60", "--resume", dir, "--optimizer", "adam", "--layers", "2"] + other)
            Refusal.check(refused, label: "train --resume with \(other)", expected: ["is from a different model: experts"])
        }
    }

    /// The trained loss is cross-entropy + aux: the first step's forward does not depend on α, so
    /// its loss at α = 1 exceeds the one at α = 0 by exactly the aux loss reported.
    func testTheLossIsCrossEntropyPlusAux() throws {
        let (_, none) = try train(["--steps", "1", "--experts", "4", "--aux-loss-coef", "0"])
        let (_, one) = try train(["--steps", "1", "--experts", "4", "--aux-loss-coef", "1"])
        let a = try XCTUnwrap(none?.records.first), b = try XCTUnwrap(one?.records.first)
        XCTAssertEqual(a["aux_loss"] as? Double, 0)
        let aux = try XCTUnwrap(b["aux_loss"] as? Double)
        XCTAssertGreaterThan(aux, 0.5)
        XCTAssertEqual((b["loss"] as! Double) - (a["loss"] as! Double), aux, accuracy: 1e-5)
    }

    /// `--experts 0` is today's dense model, bit for bit (no record gains MoE fields).
    func testZeroExpertsIsTheDenseModel() throws {
        let (_, dense) = try train(["--steps", "30"])
        let (_, zero) = try train(["--steps", "30", "--experts", "0", "--top-k", "7"])
        XCTAssertEqual(try XCTUnwrap(zero).losses.map(\.bitPattern), try XCTUnwrap(dense).losses.map(\.bitPattern))
        XCTAssertNil(zero?.records.first?["aux_loss"])
    }

    /// A capacity factor drops assignments: the run differs from the dropless one and still trains.
    func testCapacityFactorChangesTraining() throws {
        let (_, dropless) = try train(["--steps", "50", "--experts", "4", "--top-k", "1"])
        let (run, capped) = try train(["--steps", "50", "--experts", "4", "--top-k", "1", "--capacity-factor", "0.5"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let a = try XCTUnwrap(dropless).losses, b = try XCTUnwrap(capped).losses
        XCTAssertEqual(a.count, 50)
        XCTAssertEqual(b.count, 50)
        XCTAssertNotEqual(a.map(\.bitPattern), b.map(\.bitPattern))
        XCTAssertTrue(b.allSatisfy(\.isFinite), "every loss finite (a non-finite one is read as NaN): \(b)")
        // Capacity ⌈0.5 · 32 · 1 / 4⌉ = 4 of 32 assignments each: at most 16 kept, so no expert
        // computes more than 4, the mean at most 4 too; the load is at most 4 / (kept / 4).
        let steps = capped!.records.filter { $0["step"] != nil && $0["loss"] != nil }
        XCTAssertEqual(steps.count, 50)
        for record in steps {
            XCTAssertLessThanOrEqual(try XCTUnwrap(record["expert_imbalance"] as? Double, "\(record)"), 4)
        }
    }

    /// `train_dp` computes the same mixture-of-experts model as `train` (losses, gradient norms,
    /// validation, gradients after one step and parameters after five: ``Equivalence``): the
    /// capacity count continues across ranks in row order and f, P are the whole batch's.
    ///
    /// Routing is discontinuous: the gradients' summation order differs between the layouts (by
    /// float rounding), and once that moves a router probability across a top-K tie or an
    /// assignment across the capacity boundary, the runs part. With capacity 1 and two layers
    /// that happens at step 284 here (measured), so that case runs 200 steps.
    func testDataParallelMatchesTrain() throws {
        try Equivalence.check("train_dp", np: 2, ["--experts", "4", "--top-k", "2", "--capacity-factor", "1", "--layers", "2"],
                              data: Self.data, steps: 200)
        try Equivalence.check("train_dp", np: 4, ["--experts", "3", "--top-k", "1", "--aux-loss-coef", "0.1",
                                                  "--optimizer", "adam", "--lr", "0.01"], data: Self.data, steps: 300)
        try Equivalence.check("train_dp", np: 2, ["--experts", "4", "--top-k", "2", "--capacity-factor", "0.5"],
                              extra: ["--bucket-kb", "4"], data: Self.data, steps: 100)
        // One allgather per block and forward, the same aux loss and load as train's.
        let (run, metrics) = try train(["--steps", "20", "--experts", "4", "--layers", "2"], np: 2, executable: "train_dp")
        XCTAssertEqual(run.status, 0, run.stderr)
        let comm = try XCTUnwrap(metrics?.final?["comm"] as? [String: [String: Any]])
        XCTAssertEqual(comm["allgather"]?["calls"] as? Int, 20 * 2)
        // Each gathers N · 2E floats: 2 ranks × 8 floats × 4 bytes per block and step.
        XCTAssertEqual(comm["allgather"]?["bytes"] as? Int, 20 * 2 * (2 * 8 * 4))
        let (_, reference) = try train(["--steps", "20", "--experts", "4", "--layers", "2"])
        let ours = try XCTUnwrap(metrics).records.filter { $0["step"] != nil && $0["loss"] != nil }
        let theirs = try XCTUnwrap(reference).records.filter { $0["step"] != nil && $0["loss"] != nil }
        XCTAssertEqual(ours.count, 20)
        XCTAssertEqual(theirs.count, 20)
        try Equivalence.compareExpertStatistics(ours, theirs)
    }

    /// `train_pp --experts`: one micro-batch under 1F1B (the block sees the whole batch), and four
    /// under GPipe (a copy of each mixture per micro-batch, the step's statistics summed at the
    /// first backward); every step's aux loss and load are train's; 1F1B with micro-batches is
    /// refused with one line.
    func testPipelineMatchesTrain() throws {
        try Equivalence.check("train_pp", np: 2, ["--experts", "4", "--top-k", "2", "--layers", "2"], data: Self.data, steps: 300)
        try Equivalence.check("train_pp", np: 2, ["--experts", "4", "--top-k", "1", "--layers", "3"],
                              extra: ["--micro-batches", "4", "--schedule", "gpipe"], data: Self.data, steps: 300)
        try Equivalence.checkExpertStatistics("train_pp", np: 2, Self.flags + ["--experts", "4", "--layers", "3"],
                                              extra: ["--micro-batches", "4", "--schedule", "gpipe"])
        try Equivalence.expectError("train_pp", np: 2, ["--data", Self.data, "--steps", "2", "--experts", "4", "--micro-batches", "2"],
                                    "--experts with --micro-batches 2 needs --schedule gpipe")
    }

    /// The mixture flags' rules launch `train` once (one line, non-zero exit; every message's text
    /// is checked in-process by `InputRulesTests.testExpertFlagsAreRefused`), and the executables
    /// that cannot train a mixture refuse `--experts` with one line on every rank.
    func testBadFlagsFailWithOneLine() throws {
        try Refusal.expect("train", np: nil, ["--data", Self.data, "--experts", "2", "--top-k", "3"],
                           "--top-k must be between 1 and --experts 2 (got 3)", stdoutEmpty: true)
        for executable in ["train_fsdp", "train_tp"] {
            try Refusal.expect(executable, np: 2, ["--data", Self.data, "--experts", "4"],
                               "--experts is not supported by \(executable): use train, train_dp, train_ep, train_pp or train_3d",
                               stdoutEmpty: true)
        }
    }
}
