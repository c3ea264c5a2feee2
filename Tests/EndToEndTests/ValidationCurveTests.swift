import Foundation
import XCTest

/// `--val-every K`: the validation loss during training, in every layout, without touching it.
final class ValidationCurveTests: XCTestCase {
    static let data = try! SmallData.write()
    /// A batch of 12 divides over 2, 3 and 4 ranks and into 2 micro-batches.
    static let flags = ["--batch-size", "12", "--val-batches", "3", "--samples", "0", "--log-every", "20",
                        "--data", data]

    struct Layout {
        var executable: String
        var np: Int?
        var extra: [String] = []
    }

    static let layouts = [
        Layout(executable: "train", np: nil),
        Layout(executable: "train_dp", np: 2),
        Layout(executable: "train_fsdp", np: 3),
        Layout(executable: "train_tp", np: 2),
        Layout(executable: "train_pp", np: 3, extra: ["--micro-batches", "2"]),
        Layout(executable: "train_3d", np: 4, extra: ["--tp", "2", "--dp", "1", "--pp", "2", "--micro-batches", "2"]),
    ]

    func run(_ layout: Layout, steps: Int = 60, _ extra: [String] = []) throws -> (Launch.Outcome, Metrics) {
        try Launch.trained(layout.executable, np: layout.np, Self.flags + layout.extra + extra + ["--steps", "\(steps)"], timeout: 120)
    }

    /// Calls and bytes per kind, for every rank, from a final record (seconds left out).
    func ledger(_ metrics: Metrics) -> [[String: [Int]]] {
        let ranks = metrics.final?["comm_per_rank"] as? [[String: [String: Any]]] ?? []
        return ranks.map { rank in rank.mapValues { [$0["calls"] as? Int ?? -1, $0["bytes"] as? Int ?? -1] } }
    }

    /// With `--val-every 15`, every layout trains exactly as without it (the same losses, bit for
    /// bit, and the same ledger: validation is not counted), records the curve at 15, 30, 45 and
    /// 60 steps, shows it in the progress line, and its point at the last step equals the final
    /// validation loss bit for bit (the same batches). The curves agree with `train`'s.
    func testValidationDuringTrainingChangesNothing() throws {
        var reference: [(step: Int, loss: Float)] = []
        for layout in Self.layouts {
            let label = "\(layout.executable) -np \(layout.np ?? 1)"
            let (_, plain) = try run(layout)
            let (output, curve) = try run(layout, ["--val-every", "15"])
            XCTAssertEqual(plain.losses.count, 60, label)
            XCTAssertEqual(curve.losses, plain.losses, "\(label): validating during training changed the training losses")
            XCTAssertEqual(curve.validation.map(\.step), [15, 30, 45, 60], label)
            XCTAssertEqual(curve.validation.last?.loss, curve.valLoss, "\(label): the curve's last point is not the final validation")
            XCTAssertEqual(curve.valLoss, plain.valLoss, label)
            XCTAssertTrue(plain.validation.isEmpty, label)
            XCTAssertFalse(ledger(plain).isEmpty, label)
            XCTAssertEqual(ledger(curve), ledger(plain), "\(label): validation was counted in the communication ledger")
            XCTAssertEqual(curve.final?["train_steps"] as? Int, 60, label)
            XCTAssertTrue(output.stdout.contains("step 15/60  val loss "), "\(label): \(output.stdout)")
            XCTAssertTrue(output.stdout.split(separator: "\n").contains { $0.hasPrefix("step 60/60  loss ") && $0.contains("val loss ") },
                          "\(label): \(output.stdout)")
            if layout.executable == "train" { reference = curve.validation }
            XCTAssertEqual(curve.validation.count, reference.count, label)
            for (got, want) in zip(curve.validation, reference) {
                XCTAssertLessThanOrEqual(abs(got.loss - want.loss), 1e-5 * abs(want.loss), "\(label) at step \(got.step)")
            }
        }
    }

    /// The time spent validating is left out of `training_seconds` (and so out of µs/step and
    /// MFU). Here validation is about 300 times the training work (1,000 forward-only batches
    /// after each of 50 steps), and the time it adds to the run — the difference between the
    /// wall-clock times of the run with and without it, most of a second — bounds the check:
    /// counted as training, `training_seconds` would be about that much; left out, it stays a
    /// tenth of it even if the machine preempts the training steps for tens of milliseconds.
    /// (The bound divides by the validation's time, not by the milliseconds of training.)
    func testValidationIsNotTimedAsTraining() throws {
        let layout = Layout(executable: "train", np: nil)
        let (plainRun, plain) = try run(layout, steps: 50)
        let (curveRun, curve) = try run(layout, steps: 50, ["--val-every", "1", "--val-batches", "1000"])
        let curveSeconds = try curve.value("training_seconds", as: Double.self)
        XCTAssertGreaterThan(try plain.value("training_seconds", as: Double.self), 0)
        XCTAssertEqual(curve.validation.count, 50)
        let validationSeconds = curveRun.seconds - plainRun.seconds
        XCTAssertGreaterThan(validationSeconds, 0.2, "the validation should take a visible time")
        XCTAssertLessThan(curveSeconds, validationSeconds / 10,
                          "training_seconds \(curveSeconds) with validation taking about \(validationSeconds) s")
    }

    func testValEveryMustBePositive() throws {
        // The other values' messages: InputRulesTests.
        let line = try Refusal.expect("train_fsdp", np: 2, ["--data", Self.data, "--val-every", "0"],
                                      ["--val-every must be a positive integer (got 0)"], stdoutEmpty: true)
        XCTAssertEqual(line, "error: --val-every must be a positive integer (got 0) (see --help)")
    }
}
