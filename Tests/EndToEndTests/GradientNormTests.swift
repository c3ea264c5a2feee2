import Foundation
import XCTest

/// `grad_norm` is the norm of the whole model's gradient, and `--clip-grad-norm` clips it, the
/// same in every layout.
///
/// The equivalence tests already compare every layout's per-step `grad_norm` with `train`'s
/// (replicas counted once, shards and stages summed). These tests pin down what `train`'s number
/// is and what clipping does:
/// - `train`'s `grad_norm` at step 0 equals √Σ g² of the dumped full gradient, computed here in Double;
/// - with `--clip-grad-norm C` below the norm, the gradient the update used (the dump holds it)
///   has norm C, and the recorded `grad_norm` is the norm before clipping;
/// - clipped runs of FSDP, TP, PP and 3D equal clipped `train` step for step, and clipping changes
///   the losses (so the clip really acted).
final class GradientNormTests: XCTestCase {
    static let data = try! SmallData.write()
    let flags = ["--layers", "2", "--samples", "0", "--val-batches", "1", "--log-every", "100"]

    /// Runs `train --steps 1 --dump --metrics` and returns (recorded grad_norm, dumped gradient).
    func oneStep(_ extra: [String]) throws -> (recorded: Float, gradients: [Float]) {
        let dump = try Launch.temporaryDirectory().appendingPathComponent("d.bin").path
        let (_, metrics) = try Launch.trained("train", np: nil, ["--data", Self.data, "--steps", "1", "--dump", dump] + flags + extra,
                                              timeout: 60)
        let recorded = try XCTUnwrap(metrics.gradientNorms.first)
        return (recorded, try Dump(path: dump).gradients)
    }

    static func norm(_ values: [Float]) -> Double { values.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }

    func testRecordedNormIsTheNormOfTheFullGradient() throws {
        let (recorded, gradients) = try oneStep([])
        let expected = Self.norm(gradients)
        XCTAssertGreaterThan(expected, 0)
        XCTAssertEqual(Double(recorded), expected, accuracy: 1e-6 * expected)
    }

    func testClippingScalesTheGradientToTheLimit() throws {
        let unclipped = try oneStep([])
        let limit = unclipped.recorded / 4
        let clipped = try oneStep(["--clip-grad-norm", "\(limit)"])
        XCTAssertEqual(clipped.recorded, unclipped.recorded, "grad_norm is recorded before clipping")
        XCTAssertEqual(Self.norm(clipped.gradients), Double(limit), accuracy: 1e-5 * Double(limit), "the update's gradient has norm C")
        // A limit above the norm leaves the gradient untouched, bit for bit.
        let loose = try oneStep(["--clip-grad-norm", "\(unclipped.recorded * 2)"])
        XCTAssertEqual(loose.gradients, unclipped.gradients)
    }

    func testClippedLayoutsEqualClippedTrain() throws {
        let clip = ["--layers", "2", "--clip-grad-norm", "0.3"]
        try Equivalence.check("train_fsdp", np: 2, clip, data: Self.data, steps: 100)
        try Equivalence.check("train_tp", np: 2, clip, data: Self.data, steps: 100)
        try Equivalence.check("train_pp", np: 2, clip, extra: ["--micro-batches", "2"], data: Self.data, steps: 100)
        try Equivalence.check("train_3d", np: 4, clip, extra: ["--tp", "2", "--dp", "2", "--pp", "1"], data: Self.data, steps: 100)
        // The clip acted: the clipped reference's losses are not the unclipped ones.
        let base = ["--data", Self.data, "--steps", "20", "--log-every", "20", "--samples", "0", "--val-batches", "1", "--layers", "2"]
        let losses = try [[], ["--clip-grad-norm", "0.3"]].map { try Launch.trained("train", np: nil, base + $0, timeout: 60).1.losses }
        XCTAssertEqual(losses.map(\.count), [20, 20])
        XCTAssertEqual(losses[0].first, losses[1].first, "step 0's loss comes before any update")
        XCTAssertNotEqual(losses[0].last, losses[1].last, "clipping changed training")
    }
}
