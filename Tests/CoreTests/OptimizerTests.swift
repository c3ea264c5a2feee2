import XCTest
@testable import Core

final class OptimizerTests: XCTestCase {
    func testSGDAndAdamMatchScalarFormulas() {
        for kind in OptimizerKind.allCases {
            let config = OptimizerConfig(kind: kind, learningRate: 0.01, weightDecay: 0.1)
            let n = 37
            let optimizer = Optimizer(config: config, count: n)
            var f = Fixture(4)
            var p = f.floats(n)
            var expected = p.map(Double.init)
            var m = [Double](repeating: 0, count: n), v = [Double](repeating: 0, count: n)
            for t in 1...3 {
                let g = f.floats(n)
                optimizer.step(&p, g, t: t)
                for i in 0..<n {
                    let gi = Double(g[i]), lr = 0.01, wd = 0.1
                    switch kind {
                    case .sgd: expected[i] -= lr * (gi + wd * expected[i])
                    case .adam:
                        m[i] = 0.9 * m[i] + 0.1 * gi
                        v[i] = 0.999 * v[i] + 0.001 * gi * gi
                        let update = (m[i] / (1 - pow(0.9, Double(t)))) / ((v[i] / (1 - pow(0.999, Double(t)))).squareRoot() + 1e-8)
                        expected[i] -= lr * (update + wd * expected[i])
                    }
                }
            }
            for i in 0..<n { XCTAssertEqual(Double(p[i]), expected[i], accuracy: 1e-5, "\(kind) \(i)") }
        }
    }
}
