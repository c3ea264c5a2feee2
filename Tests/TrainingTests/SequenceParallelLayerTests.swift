import XCTest
import Core
import Distributed
@testable import Training

/// The sequence-parallel Megatron layers against the plain `Linear`, on real tensor-parallel
/// groups of 2 and 3 ranks (``MPITestLauncher``), with the fixtures and the single-rank
/// reference of ``ParallelLayerTests``: every rank draws the same full `X`, `W`, `b`, `dY`, runs
/// the plain `Linear` on all of it, and its layer on its own rows or columns; the slices of the
/// reference are what the layer must produce (|a − b| ≤ 1e-5 + 1e-5·|b|).
final class SequenceParallelLayerTests: XCTestCase {
    /// `SequenceParallelColumnLinear` over 2 ranks (6 rows, 7 inputs, 8 outputs), ReLU off and on:
    /// rank t reads only rows `3t ..< 3t+3` of `X`, gathers the rest, and outputs columns
    /// `4t ..< 4t+4` of the plain `X·W + b` for all 6 rows; its dW and db are those columns of
    /// the plain gradients (complete: it saw all rows), and its input gradient is its rows of
    /// the plain, whole `dX` (summed over the group and scattered by rows inside the layer).
    func testColumnTwoRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        checkColumn(rows: 6, inputs: 7, outputs: 8)
    }

    /// As ``testColumnTwoRanks()`` over 3 ranks (6 rows: 2 each; 9 inputs, 12 outputs).
    func testColumnThreeRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        checkColumn(rows: 6, inputs: 9, outputs: 12)
    }

    /// `SequenceParallelRowLinear` over 2 ranks (6 rows, 8 inputs, 7 outputs), ReLU off and on,
    /// on random and on opposite-sign partial sums: rank t, holding rows `4t ..< 4t+4` of `W`
    /// and reading columns `4t ..< 4t+4` of `X` for all rows, outputs rows `3t ..< 3t+3` of the
    /// plain `X·W + b` (partials summed and scattered by rows, then the bias once and ReLU);
    /// given those rows of `dY`, its dW is the plain dW's row slice and its dX the plain dX's
    /// columns for all rows, and its bias gradient is partial: summed over the group (as the
    /// layout does once per step) it is the plain db.
    func testRowTwoRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        checkRow(rows: 6, inputs: 8, outputs: 7)
    }

    /// As ``testRowTwoRanks()`` over 3 ranks (6 rows, 12 inputs, 9 outputs).
    func testRowThreeRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        checkRow(rows: 6, inputs: 12, outputs: 9)
    }

    // MARK: - The checks, on one rank (collectives first, assertions last)

    func checkColumn(rows: Int, inputs: Int, outputs: Int, file: StaticString = #filePath, line: UInt = #line) {
        let world = MPI.initialize()
        let ranks = world.size, t = world.rank
        guard outputs % ranks == 0, rows % ranks == 0 else {
            return XCTFail("\(rows) rows or \(outputs) outputs do not split over \(ranks) ranks", file: file, line: line)
        }
        let width = outputs / ranks, cols = t * width ..< (t + 1) * width
        let b = rows / ranks, mine = t * b ..< (t + 1) * b
        let scratch = SequenceParallelScratch(capacity: rows * inputs)
        var failures: [String] = []
        for relu in [false, true] {
            let data = Fixture.random(rows: rows, inputs: inputs, outputs: outputs, seed: relu ? 32 : 31)
            let plain = Reference(data, relu: relu)
            let parameters = ParameterBuffer(count: inputs * width + width)
            for r in 0..<inputs {
                for (j, c) in cols.enumerated() { parameters.value[r * width + j] = data.w[r * outputs + c] }
            }
            for (j, c) in cols.enumerated() { parameters.value[inputs * width + j] = data.b[c] }
            let layer = SequenceParallelColumnLinear(inputs: inputs, localOutputs: width, relu: relu,
                                                     parameters: parameters.view(offset: 0, count: parameters.count),
                                                     tp: world, rows: rows, scratch: scratch)
            let x = Activation(rows: b, cols: inputs), y = Activation(rows: rows, cols: width)
            x.value.update(from: Array(data.x[mine.lowerBound * inputs ..< mine.upperBound * inputs]), count: x.count)
            x.grad.update(repeating: 7, count: x.count)  // backward must overwrite, not add
            layer.forward(x, y)  // the allgather of X's rows
            let output = Array(UnsafeBufferPointer(start: y.value, count: y.count))
            for r in 0..<rows {
                for (j, c) in cols.enumerated() { y.grad[r * width + j] = data.dy[r * outputs + c] }
            }
            layer.backward(x, y)  // the allgather again, and the reduce-scatter of dX

            let what = "sequence-parallel column rank \(t)/\(ranks) relu \(relu)"
            failures += compare(output, plain.y.columns(cols, of: outputs), "\(what): Y")
            failures += compare(Array(UnsafeBufferPointer(start: parameters.grad, count: inputs * width)),
                                plain.dw.columns(cols, of: outputs), "\(what): dW")
            failures += compare(Array(UnsafeBufferPointer(start: parameters.grad + inputs * width, count: width)),
                                Array(plain.db[cols]), "\(what): db")
            failures += compare(Array(UnsafeBufferPointer(start: x.grad, count: x.count)),
                                Array(plain.dx[mine.lowerBound * inputs ..< mine.upperBound * inputs]), "\(what): dX")
        }
        XCTAssert(failures.isEmpty, failures.joined(separator: "\n"), file: file, line: line)
    }

    func checkRow(rows: Int, inputs: Int, outputs: Int, file: StaticString = #filePath, line: UInt = #line) {
        let world = MPI.initialize()
        let ranks = world.size, t = world.rank
        guard inputs % ranks == 0, rows % ranks == 0 else {
            return XCTFail("\(rows) rows or \(inputs) inputs do not split over \(ranks) ranks", file: file, line: line)
        }
        let height = inputs / ranks, slice = t * height ..< (t + 1) * height
        let b = rows / ranks, mine = t * b ..< (t + 1) * b
        let scratch = SequenceParallelScratch(capacity: rows * outputs)
        var failures: [String] = []
        let cases: [(name: String, data: Fixture, relu: Bool)] = [
            ("random", Fixture.random(rows: rows, inputs: inputs, outputs: outputs, seed: 41), false),
            ("random", Fixture.random(rows: rows, inputs: inputs, outputs: outputs, seed: 42), true),
            ("opposite signs", Fixture.oppositePartials(rows: rows, inputs: inputs, outputs: outputs, ranks: ranks, seed: 43), false),
            ("opposite signs", Fixture.oppositePartials(rows: rows, inputs: inputs, outputs: outputs, ranks: ranks, seed: 44), true),
        ]
        for (name, data, relu) in cases {
            let plain = Reference(data, relu: relu)
            if name == "opposite signs" { failures += data.checkOppositePartials(ranks: ranks, relu: relu) }
            let parameters = ParameterBuffer(count: height * outputs + outputs)
            parameters.value.update(from: Array(data.w[slice.lowerBound * outputs ..< slice.upperBound * outputs]),
                                    count: height * outputs)
            (parameters.value + height * outputs).update(from: data.b, count: outputs)
            let layer = SequenceParallelRowLinear(localInputs: height, outputs: outputs, relu: relu,
                                                  parameters: parameters.view(offset: 0, count: parameters.count),
                                                  tp: world, rows: rows, scratch: scratch)
            let x = Activation(rows: rows, cols: height), y = Activation(rows: b, cols: outputs)
            x.value.update(from: data.x.columns(slice, of: inputs), count: x.count)
            x.grad.update(repeating: 7, count: x.count)  // backward must overwrite, not add
            layer.forward(x, y)  // the reduce-scatter of the partial sums
            let output = Array(UnsafeBufferPointer(start: y.value, count: y.count))
            y.grad.update(from: Array(data.dy[mine.lowerBound * outputs ..< mine.upperBound * outputs]), count: y.count)
            layer.backward(x, y)  // the allgather of dY
            let partialBias = Array(UnsafeBufferPointer(start: parameters.grad + height * outputs, count: outputs))
            world.allreduceSum(parameters.grad + height * outputs, count: outputs)

            let what = "sequence-parallel row rank \(t)/\(ranks) \(name) relu \(relu)"
            failures += compare(output, Array(plain.y[mine.lowerBound * outputs ..< mine.upperBound * outputs]), "\(what): Y")
            failures += compare(Array(UnsafeBufferPointer(start: parameters.grad, count: height * outputs)),
                                Array(plain.dw[slice.lowerBound * outputs ..< slice.upperBound * outputs]), "\(what): dW")
            failures += compare(Array(UnsafeBufferPointer(start: parameters.grad + height * outputs, count: outputs)),
                                plain.db, "\(what): db summed over the group")
            if ranks > 1 && partialBias == plain.db { failures.append("\(what): the bias gradient was already whole before the sum") }
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
