import XCTest
@testable import Core

final class DatasetTests: XCTestCase {
    func testRowsAndVocabulary() throws {
        let text = "ab\ncab\n\n"
        let data = try Dataset(bytes: Array(text.utf8), seqLen: 2, name: "fixture")
        XCTAssertEqual(data.vocabulary.count, 4)  // boundary + a b c
        XCTAssertEqual(data.vocabulary.symbols, ["a", "b", "c"])
        XCTAssertEqual(data.lines, 2)
        // "ab" → (.. → a) (.a → b) (ab → .); "cab" → (.. → c) (.c → a) (ca → b) (ab → .)
        let expected: [([Int32], Int32)] = [
            ([0, 0], 1), ([0, 1], 2), ([1, 2], 0),
            ([0, 0], 3), ([0, 3], 1), ([3, 1], 2), ([1, 2], 0),
        ]
        // 7 examples: 6 train (⌊0.9·7⌋), 1 validation, in file order.
        XCTAssertEqual(data.train.count, 6)
        XCTAssertEqual(data.validation.count, 1)
        for (i, e) in expected.enumerated() {
            let got = i < 6 ? data.train.example(i) : data.validation.example(i - 6)
            XCTAssertEqual(got.context, e.0, "example \(i)")
            XCTAssertEqual(got.target, e.1, "example \(i)")
        }
    }

    func testLongLinesSlideAndCRLFIsAccepted() throws {
        let data = try Dataset(bytes: Array("abcd\r\nba\r\n".utf8), seqLen: 2, name: "fixture")
        XCTAssertEqual(data.vocabulary.symbols, ["a", "b", "c", "d"])
        // "abcd": targets a b c d . with contexts .. .a ab bc cd
        XCTAssertEqual(data.train.example(3).context, [2, 3])
        XCTAssertEqual(data.train.example(3).target, 4)
        XCTAssertEqual(data.train.example(4).context, [3, 4])
        XCTAssertEqual(data.train.example(4).target, 0)
        XCTAssertEqual(data.train.count + data.validation.count, 8)
    }

    func testUnicodeVocabulary() throws {
        let data = try Dataset(bytes: Array("zoë\nchloé\n".utf8), seqLen: 4, name: "fixture")
        XCTAssertEqual(data.vocabulary.decode([2, 3, 6, 0, 1]), "hlé")
        XCTAssertTrue(data.vocabulary.symbols.contains("ë"))
    }

    func testErrorsNameTheProblem() throws {
        XCTAssertThrowsError(try Dataset(bytes: [], seqLen: 3, name: "f")) { XCTAssertEqual($0 as? DataError, .empty(path: "f")) }
        XCTAssertThrowsError(try Dataset(bytes: Array("\n  \n\n".utf8), seqLen: 3, name: "f")) {
            XCTAssertEqual($0 as? DataError, .noExamples(path: "f"))
        }
        XCTAssertThrowsError(try Dataset(bytes: Array("ok\n".utf8) + [0xFF, 0xFE] + Array("\n".utf8), seqLen: 3, name: "f")) {
            XCTAssertEqual($0 as? DataError, .invalidUTF8(path: "f", line: 2))
        }
        XCTAssertThrowsError(try Dataset.load(path: "/nonexistent/words.txt", seqLen: 3)) {
            XCTAssertEqual("\($0)", "cannot read data file '/nonexistent/words.txt': No such file or directory")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ps-data-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        XCTAssertThrowsError(try Dataset.load(path: dir.path, seqLen: 3)) { XCTAssertTrue("\($0)".contains("directory")) }
        let file = dir.appendingPathComponent("w.txt")
        try Data("hello\nworld\n".utf8).write(to: file)
        let loaded = try Dataset.load(path: file.path, seqLen: 3)
        XCTAssertEqual(loaded.train.count + loaded.validation.count, 12)
    }
}

final class RandomTests: XCTestCase {
    func testSameSeedSameSequence() {
        var a = SplitMix64(seed: 42), b = SplitMix64(seed: 42), c = SplitMix64(seed: 43)
        let x = (0..<100).map { _ in a.next() }
        XCTAssertEqual(x, (0..<100).map { _ in b.next() })
        XCTAssertNotEqual(x, (0..<100).map { _ in c.next() })
    }

    /// Golden values: the generator must give these on every platform, forever, or saved runs
    /// and cross-platform comparisons break.
    func testGoldenValues() {
        var g = SplitMix64(seed: 0)
        XCTAssertEqual([g.next(), g.next(), g.next()], [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
        var s = SplitMix64(seed: 42, stream: 1, index: 7)
        let first = s.next()
        var t = SplitMix64(seed: 42, stream: 1, index: 7)
        XCTAssertEqual(first, t.next())
        var u = SplitMix64(seed: 42, stream: 1, index: 8)
        XCTAssertNotEqual(first, u.next())
        var v = SplitMix64(seed: 42, stream: 2, index: 7)
        XCTAssertNotEqual(first, v.next())
    }

    func testBelowIsInRangeAndRoughlyUniform() {
        var g = SplitMix64(seed: 1)
        var counts = [Int](repeating: 0, count: 27)
        for _ in 0..<27000 { counts[g.below(27)] += 1 }
        XCTAssertTrue(counts.allSatisfy { $0 > 850 && $0 < 1150 }, "\(counts)")
        for _ in 0..<1000 { let u = g.unit(); XCTAssertTrue(u >= 0 && u < 1) }
    }

    func testBatchIsAFunctionOfSeedAndStep() throws {
        let data = try Dataset(bytes: Array("alpha\nbeta\ngamma\ndelta\n".utf8), seqLen: 3, name: "f")
        let sampler = BatchSampler(examples: data.train, batchSize: 8, seed: 5, stream: .trainingBatches)
        var tokens = [Float](repeating: 0, count: 24), targets = [Int32](repeating: 0, count: 8)
        sampler.fill(index: 3, rows: 0..<8, tokens: &tokens, targets: &targets)
        // Any slice of the same batch equals the same rows of the whole.
        var sliceTokens = [Float](repeating: 0, count: 9), sliceTargets = [Int32](repeating: 0, count: 3)
        sampler.fill(index: 3, rows: 4..<7, tokens: &sliceTokens, targets: &sliceTargets)
        XCTAssertEqual(sliceTokens, Array(tokens[12..<21]))
        XCTAssertEqual(sliceTargets, Array(targets[4..<7]))
        var again = [Float](repeating: 0, count: 24), againTargets = [Int32](repeating: 0, count: 8)
        sampler.fill(index: 3, rows: 0..<8, tokens: &again, targets: &againTargets)
        XCTAssertEqual(again, tokens)
        sampler.fill(index: 4, rows: 0..<8, tokens: &again, targets: &againTargets)
        XCTAssertNotEqual(again, tokens)
    }

    func testInitialisationIsDeterministic() {
        let config = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 2)
        XCTAssertEqual(config.initialParameters(seed: 42), config.initialParameters(seed: 42))
        XCTAssertNotEqual(config.initialParameters(seed: 42), config.initialParameters(seed: 43))
        XCTAssertEqual(config.initialParameters(seed: 42).count, config.parameterCount)
        XCTAssertEqual(config.parameterCount, 27 * 16 + 256 * 64 + 64 + 64 * 64 + 64 + 64 * 27 + 27)
    }
}

final class KernelTests: XCTestCase {
    /// Every combination of transposition, accumulation, bias and ReLU against a naive loop, over
    /// shapes with ragged edges (27 columns, 1–5 rows, k = 1).
    func testGemmAgainstNaive() {
        var f = Fixture(11)
        let shapes = [(1, 1, 1), (3, 27, 64), (32, 64, 256), (5, 33, 7), (4, 16, 1), (7, 48, 3), (2, 17, 31), (9, 100, 5), (64, 27, 32)]
        for (m, n, k) in shapes {
            for transposed in [false, true] {
                for (accumulate, withBias, relu) in [(false, false, false), (true, false, false), (false, true, true), (true, true, false)] {
                    let a = f.floats(m * k), b = f.floats(k * n), bias = f.floats(n), c0 = f.floats(m * n)
                    var c = c0
                    a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in bias.withUnsafeBufferPointer { bias in
                        c.withUnsafeMutableBufferPointer { c in
                            Kernels.gemm(m: m, n: n, k: k, a: a.baseAddress!, rowStride: transposed ? 1 : k, depthStride: transposed ? m : 1,
                                         b: b.baseAddress!, ldb: n, c: c.baseAddress!, ldc: n,
                                         epilogue: .init(accumulate: accumulate, bias: withBias ? bias.baseAddress! : nil, relu: relu))
                        }
                    } } }
                    for i in 0..<m {
                        for j in 0..<n {
                            var s = Double(accumulate ? c0[i * n + j] : 0) + Double(withBias ? bias[j] : 0)
                            for p in 0..<k { s += Double(transposed ? a[p * m + i] : a[i * k + p]) * Double(b[p * n + j]) }
                            if relu { s = max(0, s) }
                            XCTAssertEqual(Double(c[i * n + j]), s, accuracy: 1e-4 * (1 + abs(s)), "\(m)×\(n)×\(k) T\(transposed) at \(i),\(j)")
                        }
                    }
                }
            }
        }
    }

    func testGemmWritesNothingOutsideC() {
        // A 3×27 C inside a larger buffer with ldc 40: the gaps must stay untouched.
        var f = Fixture(2)
        let a = f.floats(3 * 5), b = f.floats(5 * 27)
        var c = [Float](repeating: 99, count: 3 * 40)
        a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in c.withUnsafeMutableBufferPointer { c in
            Kernels.gemm(m: 3, n: 27, k: 5, a: a.baseAddress!, rowStride: 5, depthStride: 1, b: b.baseAddress!, ldb: 27,
                         c: c.baseAddress!, ldc: 40)
        } } }
        for r in 0..<3 { for j in 27..<40 { XCTAssertEqual(c[r * 40 + j], 99) } }
    }

    func testSmallKernels() {
        var x: [Float] = (0..<37).map { Float($0) - 18 }
        var y: [Float] = (0..<37).map { Float($0 % 3) - 1 }
        let x0 = x
        Kernels.maskByPositive(&x, y, count: 37)
        for i in 0..<37 { XCTAssertEqual(x[i], y[i] > 0 ? x0[i] : 0) }
        var sums = [Float](repeating: 1, count: 19)
        let m: [Float] = (0..<(3 * 19)).map { Float($0) }
        Kernels.addColumnSums(m, rows: 3, cols: 19, into: &sums)
        for j in 0..<19 { XCTAssertEqual(sums[j], 1 + Float(j) + Float(19 + j) + Float(38 + j)) }
        let t: [Float] = (0..<(5 * 7)).map { Float($0) }
        var out = [Float](repeating: 0, count: 35)
        Kernels.transpose(t, rows: 5, cols: 7, into: &out)
        for r in 0..<5 { for c in 0..<7 { XCTAssertEqual(out[c * 5 + r], t[r * 7 + c]) } }
        Kernels.addBias(&y, rows: 1, cols: 37, bias: x0, relu: true)
        for i in 0..<37 { XCTAssertEqual(y[i], max(0, Float(i % 3) - 1 + x0[i])) }
    }
}

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
