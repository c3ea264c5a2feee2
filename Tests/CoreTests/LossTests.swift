import XCTest
@testable import Core

/// `SoftmaxCrossEntropy` (Float, the kernels) against a Double computation written here.
final class LossTests: XCTestCase {
    /// The Double reference for one batch: per row the loss `log Σ exp(x − max) + max − x[target]`,
    /// the probabilities, and `∂L/∂x = (p − onehot(target)) · scale`.
    struct Reference {
        var losses: [Double] = []
        var probabilities: [Double] = []
        var gradient: [Double] = []

        init(logits: [Float], rows: Int, cols: Int, targets: [Int32], scale: Float) {
            for r in 0..<rows {
                let x = (0..<cols).map { Double(logits[r * cols + $0]) }
                let m = x.max()!
                let e = x.map { exp($0 - m) }
                let z = e.reduce(0, +)
                let t = Int(targets[r])
                losses.append(log(z) + m - x[t])
                for j in 0..<cols {
                    let p = e[j] / z
                    probabilities.append(p)
                    gradient.append((p - (j == t ? 1 : 0)) * Double(scale))
                }
            }
        }
    }

    /// Runs forward then backward on `logits` and compares everything with the reference:
    /// the summed loss, the probabilities forward leaves in `grad`, and the gradient backward
    /// leaves there. Tolerances are a few Float ulps of each quantity, so a loss that were a mean
    /// instead of a sum, a gradient without its scale or without the −1 at the target, or a
    /// softmax that missed or double-counted a column would all fail.
    func check(_ logits: [Float], rows: Int, cols: Int, targets: [Int32], scale: Float, label: String,
               file: StaticString = #filePath, line: UInt = #line) {
        let activation = Activation(rows: rows, cols: cols)
        for i in 0..<logits.count { activation.value[i] = logits[i] }
        let loss = SoftmaxCrossEntropy(gradientScale: scale)
        let reference = Reference(logits: logits, rows: rows, cols: cols, targets: targets, scale: scale)

        let total = targets.withUnsafeBufferPointer { loss.forward(activation, $0.baseAddress!) }
        let expected = reference.losses.reduce(0, +)
        let magnitude = reference.losses.reduce(0) { $0 + abs($1) }
        XCTAssertEqual(Double(total), expected, accuracy: 1e-5 * Double(rows) + 1e-6 * magnitude,
                       "\(label): summed loss", file: file, line: line)
        let probabilities = (0..<rows * cols).map { Double(activation.grad[$0]) }
        let wp = worstRatio(probabilities, reference.probabilities, rtol: 1e-5, atol: 1e-6)
        XCTAssertLessThanOrEqual(wp.ratio, 1, "\(label): probability \(wp.index)", file: file, line: line)

        targets.withUnsafeBufferPointer { loss.backward(activation, $0.baseAddress!) }
        let gradient = (0..<rows * cols).map { Double(activation.grad[$0]) }
        let wg = worstRatio(gradient, reference.gradient, rtol: 1e-5, atol: 1e-6 * Double(abs(scale)))
        XCTAssertLessThanOrEqual(wg.ratio, 1, "\(label): gradient \(wg.index) is \(gradient[max(0, wg.index)]), "
                                 + "expected \(reference.gradient[max(0, wg.index)])", file: file, line: line)
        XCTAssertTrue(logits.indices.allSatisfy { activation.value[$0] == logits[$0] }, "\(label): logits untouched",
                      file: file, line: line)
    }

    /// Vocabularies below, at, and between multiples of the kernels' 16-float vector and past the
    /// 64 where they switch to the any-width path, 1 to 7 rows, targets at the first and last
    /// column (the ragged last vector) and in between, and several gradient scales.
    func testForwardAndBackwardMatchDouble() {
        var f = Fixture(17)
        for cols in [2, 3, 5, 15, 16, 17, 27, 31, 32, 33, 48, 64, 65, 100, 257] {
            for rows in [1, 3, 7] {
                let logits = f.floats(rows * cols, 4)
                let targets = (0..<rows).map { r -> Int32 in
                    r == 0 ? 0 : r == 1 ? Int32(cols - 1) : Int32(f.rng.below(cols))
                }
                for scale: Float in [1, 1 / Float(rows), 1.0 / 96] {
                    check(logits, rows: rows, cols: cols, targets: targets, scale: scale,
                          label: "\(rows)×\(cols) scale \(scale)")
                }
            }
        }
    }

    /// Large logits: rows spread over ±1e4, ±1e20 and ±1e30, a row of equal huge values (loss
    /// log V exactly), and rows whose target sits far below the maximum (probabilities that
    /// underflow to 0 in Float). A naive `exp` of the raw logits would overflow to ∞ and give NaN.
    func testLargeMagnitudeLogitsStayAccurate() {
        var f = Fixture(5)
        for cols in [5, 16, 27, 100] {
            for magnitude: Float in [1e4, 1e20, 1e30] {
                let rows = 4
                var logits = f.floats(rows * cols, magnitude)
                for j in 0..<cols { logits[2 * cols + j] = magnitude }  // row 2: all equal
                let targets: [Int32] = [0, Int32(cols - 1), Int32(cols / 2), Int32(f.rng.below(cols))]
                check(logits, rows: rows, cols: cols, targets: targets, scale: 0.25, label: "\(cols) columns, ±\(magnitude)")
            }
        }
    }

    func testLargeLogitsStayFinite() {
        let logits = Activation(rows: 2, cols: 4)
        let values: [Float] = [1e4, -1e4, 0, 3e4, -1e38, 1e38, 1e30, -1e30]
        for i in 0..<8 { logits.value[i] = values[i] }
        let targets: [Int32] = [1, 0]
        let loss = SoftmaxCrossEntropy(gradientScale: 0.5)
        let total = targets.withUnsafeBufferPointer { loss.forward(logits, $0.baseAddress!) }
        XCTAssertTrue(total.isFinite)
        // Row 0: target −1e4 against max 3e4 → loss 4e4. Row 1: target −1e38 against 1e38 → 2e38;
        // exp(−2e38) underflows to 0, but log-sum-exp never takes log(0).
        XCTAssertEqual(Double(total), 4e4 + 2e38, accuracy: 1e33)
        targets.withUnsafeBufferPointer { loss.backward(logits, $0.baseAddress!) }
        for i in 0..<8 { XCTAssertTrue(logits.grad[i].isFinite) }
        XCTAssertEqual(logits.grad[3], 0.5, accuracy: 1e-6)   // p = 1 at the max, not the target
        XCTAssertEqual(logits.grad[1], -0.5, accuracy: 1e-6)  // p = 0 at the target
    }
}
