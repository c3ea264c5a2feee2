import Foundation
import Core

/// The mixture-of-experts block in Double, written from the formulas (see ``MixtureOfExperts``)
/// and independently of the layer: per row the router softmax, top-K by repeated arg-max (ties to
/// the lower index), the gates, the capacity rule in row-then-slot order, and the aux loss.
struct DoubleMixture {
    let inputs: Int
    let outputs: Int
    let experts: ExpertsConfig

    /// The routing of a batch: the chosen experts per row and whether each slot was kept.
    struct Routing: Equatable {
        var chosen: [[Int]]
        var kept: [[Bool]]
    }

    /// `y` for every row of `x`, the aux loss, and the routing, under block parameters `p`
    /// (router, then experts, as in ``BlockPlan``).
    func forward(_ p: [Double], offset: Int = 0, _ x: [[Double]]) -> (y: [[Double]], aux: Double, routing: Routing) {
        let e = experts.count, k = experts.topK, rows = x.count
        let expertStart = offset + inputs * e, stride = inputs * outputs + outputs
        var probabilities: [[Double]] = []
        var routing = Routing(chosen: [], kept: [])
        var routed = [Int](repeating: 0, count: e), kept = [Int](repeating: 0, count: e)
        let capacity = experts.capacityFactor.map { Int((Double($0) * Double(rows * k) / Double(e)).rounded(.up)) } ?? rows
        var y: [[Double]] = []
        for r in 0..<rows {
            var z = [Double](repeating: 0, count: e)
            for j in 0..<e { for i in 0..<inputs { z[j] += x[r][i] * p[offset + i * e + j] } }
            let m = z.max()!
            let exps = z.map { exp($0 - m) }
            let total = exps.reduce(0, +)
            let prob = exps.map { $0 / total }
            probabilities.append(prob)
            var chosen: [Int] = []
            for _ in 0..<k {
                var best = -1
                for j in 0..<e where !chosen.contains(j) && (best < 0 || prob[j] > prob[best]) { best = j }
                chosen.append(best)
            }
            let sum = chosen.reduce(0) { $0 + prob[$1] }
            var out = [Double](repeating: 0, count: outputs)
            var keptRow: [Bool] = []
            for j in chosen {
                routed[j] += 1
                let keep = kept[j] < capacity
                keptRow.append(keep)
                guard keep else { continue }
                kept[j] += 1
                let w = expertStart + j * stride
                for o in 0..<outputs {
                    var s = p[w + inputs * outputs + o]
                    for i in 0..<inputs { s += x[r][i] * p[w + i * outputs + o] }
                    out[o] += prob[j] / sum * max(0, s)
                }
            }
            routing.chosen.append(chosen)
            routing.kept.append(keptRow)
            y.append(out)
        }
        var aux = 0.0
        for j in 0..<e {
            let f = Double(routed[j]) / Double(rows * k)
            let mean = probabilities.reduce(0) { $0 + $1[j] } / Double(rows)
            aux += f * mean
        }
        return (y, Double(experts.auxiliaryLossCoefficient) * Double(e) * aux, routing)
    }
}
