import Foundation
import XCTest
import Core

/// A naive model in Double, written independently of the kernels: the ground truth for the
/// gradient checks (its loss is differentiated by central finite differences). It walks the
/// block plan and computes each block from its kind, so a new kind of block needs a case here.
struct DoubleModel {
    let config: ModelConfig

    /// Mean cross-entropy of the batch under canonical parameters `p`, plus the mixture-of-experts
    /// blocks' aux losses (whose batch statistics need every row: the blocks run batch by batch).
    func loss(_ p: [Double], tokens: [[Int]], targets: [Int]) -> Double {
        var xs = tokens.map { $0.map(Double.init) }
        var aux = 0.0
        for block in config.plan.blocks {
            let offset = block.parameterOffset, inputs = block.weightRows, outputs = block.weightColumns
            switch block.kind {
            case .embedding:
                xs = xs.map { x in x.flatMap { t in (0..<outputs).map { p[offset + Int(t) * outputs + $0] } } }
            case .dense, .head:
                xs = xs.map { x in
                    (0..<outputs).map { o in
                        var sum = p[offset + inputs * outputs + o]
                        for k in 0..<inputs { sum += x[k] * p[offset + k * outputs + o] }
                        return block.kind == .dense ? max(0, sum) : sum
                    }
                }
            case .mixtureOfExperts:
                let result = DoubleMixture(inputs: inputs, outputs: outputs, experts: block.experts!).forward(p, offset: offset, xs)
                xs = result.y
                aux += result.aux
            }
        }
        var total = 0.0
        for (row, x) in xs.enumerated() {
            let m = x.max()!
            let z = x.reduce(0) { $0 + exp($1 - m) }
            total += log(z) + m - x[targets[row]]
        }
        return total / Double(tokens.count) + aux
    }

    /// ∂loss/∂p by central differences.
    func numericGradient(_ p: [Double], tokens: [[Int]], targets: [Int], h: Double = 1e-5) -> [Double] {
        var q = p
        return (0..<p.count).map { i in
            q[i] = p[i] + h
            let up = loss(q, tokens: tokens, targets: targets)
            q[i] = p[i] - h
            let down = loss(q, tokens: tokens, targets: targets)
            q[i] = p[i]
            return (up - down) / (2 * h)
        }
    }
}

/// Deterministic pseudo-random test data.
struct Fixture {
    var rng: SplitMix64
    init(_ seed: UInt64) { rng = SplitMix64(seed: seed) }
    mutating func floats(_ n: Int, _ bound: Float = 1) -> [Float] { (0..<n).map { _ in rng.symmetric(bound) } }
    mutating func ints(_ n: Int, below: Int) -> [Int] { (0..<n).map { _ in rng.below(below) } }
}

/// Largest violation of |a − b| ≤ atol + rtol·|b|, as a ratio (≤ 1 passes). A NaN on either
/// side is the worst of all (its ratio is NaN, which fails every `≤ 1`), and arrays of different
/// lengths are infinitely far apart.
func worstRatio(_ a: [Double], _ b: [Double], rtol: Double, atol: Double) -> (ratio: Double, index: Int) {
    guard a.count == b.count else { return (.infinity, min(a.count, b.count)) }
    var worst = (0.0, -1)
    for i in 0..<a.count {
        let r = abs(a[i] - b[i]) / (atol + rtol * abs(b[i]))
        if !(r <= worst.0) { worst = (r, i) }
        if r.isNaN { break }
    }
    return worst
}

/// The comparison itself: a NaN on either side, or arrays of different lengths, can never pass.
final class ReferenceComparisonTests: XCTestCase {
    func testNaNAndLengthMismatchesFail() {
        XCTAssertLessThanOrEqual(worstRatio([1, 2], [1, 2], rtol: 1e-5, atol: 1e-6).ratio, 1)
        for (a, b) in [([1, .nan, 2], [1, 1, 2]), ([1, 1, 2], [1, .nan, 2]), ([1, 2], [1, 2, 3])] as [([Double], [Double])] {
            let worst = worstRatio(a, b, rtol: 1e-5, atol: 1e-6)
            XCTAssertFalse(worst.ratio <= 1, "\(a) vs \(b) passed with ratio \(worst.ratio)")
        }
    }
}
