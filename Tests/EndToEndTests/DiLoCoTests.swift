import Foundation
import XCTest

/// `train_diloco`: DiLoCo's one exact case against `train`, its checkpoints, its ledger against
/// the communication formula, its memory plan, its allocations and its refusals.
final class DiLoCoTests: XCTestCase {
    static let data = try! SmallData.write()
    /// The exact case: one inner SGD step per outer step, outer lr 1, no momentum.
    static let exact = ["--inner-steps", "1", "--outer-lr", "1", "--outer-momentum", "0"]

    /// With H = 1, η = 1, μ = 0 and SGD inside, the outer step is the mean of the workers'
    /// SGD steps on their own mean losses: DP's step on the global batch's mean loss (see
    /// `DiLoCo`). Equal to float rounding, not bit for bit (θ − θᵢ is taken after θᵢ was
    /// rounded), so with `train`'s tolerances (``Equivalence``): losses, validation loss, and
    /// the parameters after 1 and 5 steps. The gradients are not compared: a worker holds the
    /// gradient of its own rows (the dump's and `grad_norm`'s are rank 0's), never the global one.
    func testOneInnerStepWithoutMomentumMatchesTrain() throws {
        for (np, batch) in [(2, 32), (4, 32), (3, 30)] {
            let flags = ["--batch-size", "\(batch)", "--layers", "2", "--seq-len", "6", "--emb", "5", "--hidden", "9", "--lr", "0.2"]
            let base = ["--data", Self.data, "--val-batches", "2", "--samples", "0", "--log-every", "100", "--steps", "100"] + flags
            let label = "train_diloco -np \(np) \(flags)"
            let ours = try Equivalence.run("train_diloco", np: np, base + Self.exact, file: #filePath, line: #line)
            let reference = try Equivalence.reference(base, file: #filePath, line: #line)
            let a = ours.losses.losses, b = reference.losses.losses
            XCTAssertEqual(a.count, 100, label)
            let worst = zip(a, b).map { abs($0 - $1) / abs($1) }.max() ?? .nan
            XCTAssertLessThanOrEqual(worst, Equivalence.lossTolerance, "\(label): losses differ by \(worst) (relative)")
            let va = try XCTUnwrap(ours.losses.valLoss), vb = try XCTUnwrap(reference.losses.valLoss)
            XCTAssertLessThanOrEqual(abs(va - vb) / vb, Equivalence.lossTolerance, "\(label): validation loss \(va) vs \(vb)")
            Equivalence.compare(ours.step1.parameters, reference.step1.parameters, "\(label): parameters after 1 step",
                                file: #filePath, line: #line)
            Equivalence.compare(ours.step5.parameters, reference.step5.parameters, "\(label): parameters after 5 steps",
                                file: #filePath, line: #line)
        }
    }

    /// The test above can fail: with momentum the outer step is no longer DP's.
    func testOuterMomentumDeparts() throws {
        let base = ["--data", Self.data, "--val-batches", "2", "--samples", "0", "--steps", "20", "--batch-size", "32"]
        let (_, ours) = try Launch.trained("train_diloco", np: 2, base + ["--inner-steps", "1", "--outer-lr", "1", "--outer-momentum", "0.5"])
        let (_, reference) = try Launch.trained("train", np: nil, base)
        XCTAssertGreaterThan(abs(ours.losses[19] - reference.losses[19]) / reference.losses[19], 1e-3)
    }

    static let adam = ["--batch-size", "32", "--optimizer", "adam", "--lr", "0.005", "--val-batches", "2", "--samples", "0",
                       "--log-every", "1000000", "--data", data, "--inner-steps", "20", "--fragments", "2"]
    /// The same flags without DiLoCo's, for the other layouts.
    static let dense = Array(adam.dropLast(4))

    /// Saved 10 steps after an outer step (workers apart, fragment 1 just synchronised), resumed:
    /// the same losses bit for bit as the uninterrupted run; the checkpoint holds θ, u and every
    /// worker's parameters and moments.
    func testResumeBetweenOuterStepsIsBitIdentical() throws {
        let (_, full) = try Launch.losses("train_diloco", np: 2, Self.adam, steps: 60)
        let dir = try Launch.temporaryDirectory().path
        let (_, first) = try Launch.losses("train_diloco", np: 2, Self.adam, steps: 40, saveEvery: 30, into: dir)
        XCTAssertEqual(first, Array(full[0..<40]))
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/step-00000030")
        for name in ["diloco_outer_parameters.f32", "diloco_outer_momentum.f32", "diloco_worker_parameters.f32",
                     "diloco_worker_adam_m.f32", "diloco_worker_adam_v.f32"] {
            XCTAssertTrue(files.contains(name), "\(name) in \(files)")
        }
        let worker = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: dir + "/step-00000030/diloco_worker_parameters.f32")[.size] as? Int)
        let canonical = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: dir + "/step-00000030/parameters.f32")[.size] as? Int)
        XCTAssertEqual(worker, 2 * canonical, "two workers' parameters")
        try FileManager.default.removeItem(atPath: dir + "/step-00000040")
        let (run, rest) = try Launch.losses("train_diloco", np: 2, Self.adam, steps: 60, resume: dir)
        XCTAssertTrue(run.stdout.contains("resumed from step 30"), run.stdout)
        XCTAssertEqual(rest, Array(full[30..<60]), "resumed losses must equal the uninterrupted run's exactly")
        // Another layout reads worker 0's model; DiLoCo on 3 workers refuses 2 workers' state.
        let (other, _) = try Launch.losses("train_dp", np: 2, Self.dense, steps: 60, resume: dir)
        XCTAssertTrue(other.stdout.contains("resumed from step 30"), other.stdout)
        try Refusal.expect("train_diloco", np: 3, Self.adam.map { $0 == "32" ? "30" : $0 } + ["--steps", "60", "--resume", dir],
                           "the checkpoint holds 2 workers' state (diloco_worker_parameters.f32), this run has 3")
    }

    /// A checkpoint of `train` starts every worker and θ from its parameters and moments.
    func testResumesAnotherLayoutsCheckpoint() throws {
        let dir = try Launch.temporaryDirectory().path
        _ = try Launch.losses("train", np: nil, Self.dense, steps: 20, into: dir)
        let (run, losses) = try Launch.losses("train_diloco", np: 2, Self.adam, steps: 40, resume: dir)
        XCTAssertTrue(run.stdout.contains("resumed from step 20"), run.stdout)
        XCTAssertEqual(losses.count, 20)
    }

    /// Over 40 steps with H = 10 and F = 2: per rank 4 outer periods, each two allreduces of a
    /// fragment (Ψ floats in all), plus the 4-byte loss every step — Ψ·4/H + 4 bytes per step,
    /// what the plan's transfer of period H states; the memory plan equals the ledger.
    func testLedgerIsPsiFloatsEveryHSteps() throws {
        let model = LedgerTests.Model()
        for np in [2, 3] {
            let args = ["--data", Self.data, "--steps", "40", "--batch-size", "24", "--samples", "0", "--val-batches", "1",
                        "--inner-steps", "10", "--fragments", "2", "--optimizer", "adam", "--lr", "0.01"] + model.flags
            let (_, m) = try Launch.trained("train_diloco", np: np, args, timeout: 120)
            Equivalence.planEqualsLedger(m, ranks: np, "train_diloco -np \(np)")
            let comm = try m.communication()
            XCTAssertEqual(comm["allreduce"]?["bytes"], Double(40 * 4 + 4 * 4 * model.psi), "N=\(np)")
            XCTAssertEqual(comm["allreduce"]?["calls"], Double(40 + 4 * 2), "N=\(np): the losses and two fragments per period")
            let memory: [String: Int] = try m.value("memory")
            XCTAssertEqual(memory["parameters"], 2 * 4 * model.psi, "θᵢ and θ")
            XCTAssertEqual(memory["optimizer"], 3 * 4 * model.psi, "Adam's moments and the outer momentum")
        }
    }

    /// After a run that ends on an outer step every worker holds θ, bit for bit.
    func testWorkersAgreeAfterTheLastOuterStep() throws {
        let run = try Launch.run("train_diloco", np: 2, ["--data", Self.data, "--steps", "30", "--inner-steps", "10", "--samples", "0",
                                                         "--val-batches", "1", "--check-replicas", "--optimizer", "adam"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("all bit-identical"), run.stdout)
    }

    func testRefusals() throws {
        let base = ["--data", Self.data]
        try Refusal.expect("train_diloco", np: 2, base + ["--steps", "25", "--inner-steps", "10"],
                           "--steps 25 is not a multiple of --inner-steps 10: training must end on an outer step", stdoutEmpty: true)
        try Refusal.expect("train_diloco", np: 2, base + ["--steps", "20", "--inner-steps", "10", "--fragments", "3"],
                           "--fragments 3 does not divide --inner-steps 10", stdoutEmpty: true)
        try Refusal.expect("train_diloco", np: 2, base + ["--outer-momentum", "1"], "--outer-momentum must be in [0, 1) (got 1.0)",
                           stdoutEmpty: true)
        try Refusal.expect("train_diloco", np: 2, base + ["--outer-lr", "0"], "--outer-lr must be a positive finite number",
                           stdoutEmpty: true)
        try Refusal.expect("train_diloco", np: 2, base + ["--experts", "4"], "--experts is not supported by train_diloco", stdoutEmpty: true)
    }
}

extension AllocationTests {
    /// The inner steps and both fragments' outer steps (H = 10, 10 and 110 steps).
    func testDiLoCoStepDoesNotAllocate() throws {
        try check("train_diloco", np: 2, extra: ["--inner-steps", "10", "--fragments", "2", "--optimizer", "adam"])
    }
}

extension WatchdogTests {
    /// A stopped worker: the other waits in the outer allreduce or the loss sum, on the dp axis.
    func testStoppedDiLoCoWorkerEndsTheJob() throws {
        try stopRank(executable: "train_diloco", np: 2, victim: 1, axes: ["dp"], extra: ["--inner-steps", "10"])
    }
}
