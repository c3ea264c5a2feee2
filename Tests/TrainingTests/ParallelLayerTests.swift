import XCTest
import Core
import Distributed
@testable import Training

/// The two Megatron layers against the plain `Linear`, on real tensor-parallel groups of 2 and
/// 3 ranks (see ``MPITestLauncher``): outputs and every gradient (dW, db, dX), without training.
///
/// Every rank draws the same full `X`, `W`, `b` and `dY` from one seed, runs the plain
/// `Linear` on all of it, and its layer on its own slice; the slice of the reference is what the
/// layer must produce. The sums run in another order, so values agree to
/// |a − b| ≤ 1e-5 + 1e-5·|b|.
final class ParallelLayerTests: XCTestCase {

    // MARK: ColumnParallelLinear

    /// `ColumnParallelLinear` over 2 ranks (5 rows, 7 inputs, 8 outputs), ReLU off and on:
    /// rank t, holding columns `4t ..< 4t+4` of `W` and `b` and reading the whole `X`, outputs
    /// exactly those columns of the plain `X·W + b`; given those columns of `dY`, its dW and db
    /// are those columns of the plain gradients, and its input gradient — summed over the group
    /// inside the layer — is the plain, whole `dX` on every rank.
    func testColumnParallelTwoRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        checkColumnParallel(rows: 5, inputs: 7, outputs: 8)
    }

    /// As ``testColumnParallelTwoRanks()`` over 3 ranks (5 rows, 9 inputs, 12 outputs: 4
    /// columns each), so a middle rank's slice starts and ends inside the row of `W`.
    func testColumnParallelThreeRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        checkColumnParallel(rows: 5, inputs: 9, outputs: 12)
    }

    // MARK: RowParallelLinear

    /// `RowParallelLinear` over 2 ranks (5 rows, 8 inputs, 7 outputs), ReLU off and on, on
    /// random values and on values built so that every output's partial sums have opposite
    /// signs: rank t, holding rows `4t ..< 4t+4` of `W` and the whole `b` and reading columns
    /// `4t ..< 4t+4` of `X`, outputs the plain, whole `X·W + b` — partials summed over the
    /// group, the bias added once, ReLU after the sum (ReLU on each partial, or the bias on
    /// every rank, would differ on these values). Given the whole `dY`, its dW is the plain
    /// dW's row slice, its db the whole plain db (on every rank), its dX the plain dX's columns.
    func testRowParallelTwoRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        checkRowParallel(rows: 5, inputs: 8, outputs: 7)
    }

    /// As ``testRowParallelTwoRanks()`` over 3 ranks (5 rows, 12 inputs, 9 outputs: 4 rows of
    /// `W` each), so three partial sums meet in the allreduce.
    func testRowParallelThreeRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        checkRowParallel(rows: 5, inputs: 12, outputs: 9)
    }

    // MARK: - The checks, on one rank

    /// Column-parallel on this rank, for both ReLU settings. Collectives first, assertions last.
    func checkColumnParallel(rows: Int, inputs: Int, outputs: Int, file: StaticString = #filePath, line: UInt = #line) {
        let world = MPI.initialize()
        let ranks = world.size, t = world.rank
        guard outputs % ranks == 0 else {
            // The same on every rank: nobody enters a collective.
            return XCTFail("\(outputs) outputs do not split over \(ranks) ranks", file: file, line: line)
        }
        let width = outputs / ranks, cols = t * width ..< (t + 1) * width
        var failures: [String] = []
        for relu in [false, true] {
            let data = Fixture.random(rows: rows, inputs: inputs, outputs: outputs, seed: relu ? 12 : 11)
            let plain = Reference(data, relu: relu)

            let parameters = ParameterBuffer(count: inputs * width + width)
            for r in 0..<inputs {
                for (j, c) in cols.enumerated() { parameters.value[r * width + j] = data.w[r * outputs + c] }
            }
            for (j, c) in cols.enumerated() { parameters.value[inputs * width + j] = data.b[c] }
            let layer = ColumnParallelLinear(inputs: inputs, localOutputs: width, relu: relu,
                                             parameters: parameters.view(offset: 0, count: parameters.count), tp: world)
            let x = Activation(rows: rows, cols: inputs), y = Activation(rows: rows, cols: width)
            x.value.update(from: data.x, count: data.x.count)
            x.grad.update(repeating: 7, count: x.count)  // backward must overwrite, not add
            layer.forward(x, y)
            let output = Array(UnsafeBufferPointer(start: y.value, count: y.count))
            for r in 0..<rows {
                for (j, c) in cols.enumerated() { y.grad[r * width + j] = data.dy[r * outputs + c] }
            }
            layer.backward(x, y)  // the allreduce of dX

            let what = "column-parallel rank \(t)/\(ranks) relu \(relu)"
            failures += compare(output, plain.y.columns(cols, of: outputs), "\(what): Y")
            failures += compare(Array(UnsafeBufferPointer(start: parameters.grad, count: inputs * width)),
                                plain.dw.columns(cols, of: outputs), "\(what): dW")
            failures += compare(Array(UnsafeBufferPointer(start: parameters.grad + inputs * width, count: width)),
                                Array(plain.db[cols]), "\(what): db")
            failures += compare(Array(UnsafeBufferPointer(start: x.grad, count: x.count)), plain.dx, "\(what): dX")
        }
        XCTAssert(failures.isEmpty, failures.joined(separator: "\n"), file: file, line: line)
    }

    /// Row-parallel on this rank, for both ReLU settings on random values and on the
    /// opposite-sign values. Collectives first, assertions last.
    func checkRowParallel(rows: Int, inputs: Int, outputs: Int, file: StaticString = #filePath, line: UInt = #line) {
        let world = MPI.initialize()
        let ranks = world.size, t = world.rank
        guard inputs % ranks == 0 else {
            return XCTFail("\(inputs) inputs do not split over \(ranks) ranks", file: file, line: line)
        }
        let height = inputs / ranks, slice = t * height ..< (t + 1) * height
        var failures: [String] = []
        let cases: [(name: String, data: Fixture, relu: Bool)] = [
            ("random", Fixture.random(rows: rows, inputs: inputs, outputs: outputs, seed: 21), false),
            ("random", Fixture.random(rows: rows, inputs: inputs, outputs: outputs, seed: 22), true),
            ("opposite signs", Fixture.oppositePartials(rows: rows, inputs: inputs, outputs: outputs, ranks: ranks, seed: 23), false),
            ("opposite signs", Fixture.oppositePartials(rows: rows, inputs: inputs, outputs: outputs, ranks: ranks, seed: 24), true),
        ]
        for (name, data, relu) in cases {
            let plain = Reference(data, relu: relu)
            if name == "opposite signs" {
                failures += data.checkOppositePartials(ranks: ranks, relu: relu)
            }

            let parameters = ParameterBuffer(count: height * outputs + outputs)
            parameters.value.update(from: Array(data.w[slice.lowerBound * outputs ..< slice.upperBound * outputs]),
                                    count: height * outputs)
            (parameters.value + height * outputs).update(from: data.b, count: outputs)
            let layer = RowParallelLinear(localInputs: height, outputs: outputs, relu: relu,
                                          parameters: parameters.view(offset: 0, count: parameters.count), tp: world)
            let x = Activation(rows: rows, cols: height), y = Activation(rows: rows, cols: outputs)
            x.value.update(from: data.x.columns(slice, of: inputs), count: x.count)
            x.grad.update(repeating: 7, count: x.count)  // backward must overwrite, not add
            layer.forward(x, y)  // the allreduce of the partial sums
            let output = Array(UnsafeBufferPointer(start: y.value, count: y.count))
            y.grad.update(from: data.dy, count: y.count)
            layer.backward(x, y)

            let what = "row-parallel rank \(t)/\(ranks) \(name) relu \(relu)"
            failures += compare(output, plain.y, "\(what): Y")
            failures += compare(Array(UnsafeBufferPointer(start: parameters.grad, count: height * outputs)),
                                Array(plain.dw[slice.lowerBound * outputs ..< slice.upperBound * outputs]), "\(what): dW")
            failures += compare(Array(UnsafeBufferPointer(start: parameters.grad + height * outputs, count: outputs)),
                                plain.db, "\(what): db")
            failures += compare(Array(UnsafeBufferPointer(start: x.grad, count: x.count)),
                                plain.dx.columns(slice, of: inputs), "\(what): dX")
        }
        XCTAssert(failures.isEmpty, failures.joined(separator: "\n"), file: file, line: line)
    }

    /// A line for each of the first 3 elements outside |a − b| ≤ 1e-5 + 1e-5·|b|, and one
    /// counting the rest (or one for a length mismatch).
    func compare(_ actual: [Float], _ expected: [Float], _ what: String) -> [String] {
        guard actual.count == expected.count else { return ["\(what): \(actual.count) values, expected \(expected.count)"] }
        let wrong = zip(actual, expected).enumerated().compactMap { i, pair in
            let (a, b) = pair
            return abs(a - b) <= 1e-5 + 1e-5 * abs(b) ? nil : "\(what)[\(i)] = \(a), expected \(b)"
        }
        return wrong.prefix(3) + (wrong.count > 3 ? ["\(what): \(wrong.count - 3) more of \(actual.count) wrong"] : [])
    }
}

// MARK: - Data and the single-rank reference

/// Full `X` (`rows × inputs`), `W` (`inputs × outputs`, row-major), `b`, `dY` (`rows × outputs`):
/// the same on every rank for the same seed.
struct Fixture {
    let rows: Int, inputs: Int, outputs: Int
    var x: [Float], w: [Float], b: [Float], dy: [Float]

    static func random(rows: Int, inputs: Int, outputs: Int, seed: UInt64) -> Fixture {
        var rng = SplitMix64(seed: seed)
        func draw(_ n: Int) -> [Float] { (0..<n).map { _ in rng.symmetric(1) } }
        return Fixture(rows: rows, inputs: inputs, outputs: outputs,
                       x: draw(rows * inputs), w: draw(inputs * outputs), b: draw(outputs), dy: draw(rows * outputs))
    }

    /// Positive `X`; the rows of `W` of row-parallel rank `t` have sign `(−1)^(t + j)` in column `j`,
    /// so every output's partial sums over the ranks come in both signs, with magnitudes random
    /// enough that the whole sums come in both signs too.
    static func oppositePartials(rows: Int, inputs: Int, outputs: Int, ranks: Int, seed: UInt64) -> Fixture {
        var data = random(rows: rows, inputs: inputs, outputs: outputs, seed: seed)
        let height = inputs / ranks
        data.x = data.x.map { 0.25 + abs($0) }
        for i in 0..<inputs {
            for j in 0..<outputs {
                let sign: Float = (i / height + j) % 2 == 0 ? 1 : -1
                data.w[i * outputs + j] = sign * (0.1 + abs(data.w[i * outputs + j]))
            }
        }
        data.b = data.b.map { 0.1 * $0 }
        return data
    }

    /// That these values tell the right row-parallel layer from the wrong ones: every output has
    /// partial sums of both signs; the true outputs come in both signs; and ReLU applied to each
    /// rank's partial (plus the bias) before the sum, or the bias added on every rank, would give
    /// a different output somewhere. Empty when it all holds.
    func checkOppositePartials(ranks: Int, relu: Bool) -> [String] {
        let height = inputs / ranks
        var mixed = true, reluFirstDiffers = false, biasTwiceDiffers = false
        var positive = false, negative = false
        for r in 0..<rows {
            for j in 0..<outputs {
                let partials = (0..<ranks).map { t in
                    (t * height ..< (t + 1) * height).reduce(Float(0)) { $0 + x[r * inputs + $1] * w[$1 * outputs + j] }
                }
                let sum = partials.reduce(0, +) + b[j]
                if !(partials.contains { $0 > 0 } && partials.contains { $0 < 0 }) { mixed = false }
                if sum > 0 { positive = true } else { negative = true }
                let truth = relu ? max(sum, 0) : sum
                let reluFirst = partials.reduce(Float(0)) { $0 + max($1 + b[j], 0) }
                let biasTwice = sum + Float(ranks - 1) * b[j]
                if abs(reluFirst - truth) > 1e-3 { reluFirstDiffers = true }
                if abs((relu ? max(biasTwice, 0) : biasTwice) - truth) > 1e-3 { biasTwiceDiffers = true }
            }
        }
        var problems: [String] = []
        if !mixed { problems.append("opposite-sign fixture: some output's partial sums all have one sign") }
        if !(positive && negative) { problems.append("opposite-sign fixture: outputs are not of both signs") }
        if relu && !reluFirstDiffers { problems.append("opposite-sign fixture: ReLU before the sum would not differ") }
        if !biasTwiceDiffers { problems.append("opposite-sign fixture: the bias on every rank would not differ") }
        return problems
    }
}

/// The plain `Linear` on the whole fixture: `Y`, then, after backward with the whole `dY`,
/// dW, db and dX. Built from zeroed gradients.
struct Reference {
    let y: [Float], dw: [Float], db: [Float], dx: [Float]

    init(_ data: Fixture, relu: Bool) {
        let (rows, inputs, outputs) = (data.rows, data.inputs, data.outputs)
        let parameters = ParameterBuffer(count: inputs * outputs + outputs)
        parameters.value.update(from: data.w, count: inputs * outputs)
        (parameters.value + inputs * outputs).update(from: data.b, count: outputs)
        let linear = Linear(inputs: inputs, outputs: outputs, relu: relu,
                            parameters: parameters.view(offset: 0, count: parameters.count))
        let x = Activation(rows: rows, cols: inputs), out = Activation(rows: rows, cols: outputs)
        x.value.update(from: data.x, count: x.count)
        linear.forward(x, out)
        y = Array(UnsafeBufferPointer(start: out.value, count: out.count))
        out.grad.update(from: data.dy, count: out.count)
        linear.backward(x, out)
        dw = Array(UnsafeBufferPointer(start: parameters.grad, count: inputs * outputs))
        db = Array(UnsafeBufferPointer(start: parameters.grad + inputs * outputs, count: outputs))
        dx = Array(UnsafeBufferPointer(start: x.grad, count: x.count))
    }
}

extension Array where Element == Float {
    /// Columns `cols` of this row-major matrix of `width` columns, row by row.
    func columns(_ cols: Range<Int>, of width: Int) -> [Float] {
        stride(from: 0, to: count, by: width).flatMap { self[$0 + cols.lowerBound ..< $0 + cols.upperBound] }
    }
}
