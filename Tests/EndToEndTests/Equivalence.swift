import Foundation
import XCTest

/// "Every layout computes the same model as `train`", as assertions.
///
/// For a layout (an executable, a rank count, its own flags) and model flags, it runs:
/// - `--steps 1 --dump`: the full gradients of the first step, gathered from the shards, against
///   `train`'s at rtol 1e-5 / atol 1e-6, every parameter (embedding and biases included), and the
///   parameters after that update;
/// - `--steps 3 --dump`: the parameters after three updates;
/// - `--steps N --metrics`: the loss of every step, relative difference ≤ 1e-5.
/// `train`'s own runs are cached per flag set.
enum Equivalence {
    nonisolated(unsafe) static var references: [String: (Dump, Dump, [Float])] = [:]
    static let lock = NSLock()

    static func common(_ data: String, steps: Int) -> [String] {
        ["--data", data, "--steps", "\(steps)", "--val-batches", "2", "--samples", "0", "--log-every", "100000"]
    }

    /// Runs `train` with `flags` (cached): (dump after 1 step, dump after 3 steps, losses).
    static func reference(data: String, flags: [String], steps: Int) throws -> (Dump, Dump, [Float]) {
        let key = ([data, "\(steps)"] + flags).joined(separator: " ")
        lock.lock(); defer { lock.unlock() }
        if let cached = references[key] { return cached }
        let result = try outcome("train", np: nil, layout: [], data: data, flags: flags, steps: steps)
        references[key] = result
        return result
    }

    static func outcome(_ executable: String, np: Int?, layout: [String], data: String, flags: [String], steps: Int,
                        file: StaticString = #filePath, line: UInt = #line) throws -> (Dump, Dump, [Float]) {
        let dir = try Launch.temporaryDirectory()
        var dumps: [Dump] = []
        for k in [1, 3] {
            let path = dir.appendingPathComponent("d\(k)").path
            let run = try Launch.run(executable, np: np, common(data, steps: k) + flags + layout + ["--dump", path], timeout: 300)
            XCTAssertEqual(run.status, 0, "\(executable) -np \(np ?? 1) \(layout) \(flags): \(run.stderr)", file: file, line: line)
            dumps.append(try Dump(path: path))
        }
        let metrics = dir.appendingPathComponent("m.jsonl").path
        let run = try Launch.run(executable, np: np, common(data, steps: steps) + flags + layout + ["--metrics", metrics], timeout: 300)
        XCTAssertEqual(run.status, 0, "\(executable) \(layout) \(flags): \(run.stderr)", file: file, line: line)
        return (dumps[0], dumps[1], try Metrics(path: metrics).losses)
    }

    /// Asserts that `executable` under `mpirun -np np` with `layout` flags reproduces `train`.
    static func check(_ executable: String, np: Int, layout: [String] = [], data: String, flags: [String], steps: Int = 300,
                      file: StaticString = #filePath, line: UInt = #line) throws {
        let label = "\(executable) -np \(np) \((layout + flags).joined(separator: " "))"
        let (ref1, ref3, refLosses) = try reference(data: data, flags: flags, steps: steps)
        let (got1, got3, losses) = try outcome(executable, np: np, layout: layout, data: data, flags: flags, steps: steps,
                                               file: file, line: line)
        assertClose(got1.gradients, ref1.gradients, rtol: 1e-5, atol: 1e-6, "\(label): gradients after one step", file: file, line: line)
        assertClose(got1.parameters, ref1.parameters, rtol: 1e-5, atol: 1e-6, "\(label): parameters after one step", file: file, line: line)
        assertClose(got3.parameters, ref3.parameters, rtol: 1e-5, atol: 1e-6, "\(label): parameters after three steps", file: file, line: line)
        XCTAssertEqual(losses.count, steps, label, file: file, line: line)
        var worst: (Float, Int) = (0, -1)
        for (i, (a, b)) in zip(losses, refLosses).enumerated() {
            let r = abs(a - b) / abs(b)
            if !(r <= worst.0) { worst = (r, i) }
        }
        XCTAssertLessThanOrEqual(worst.0, 1e-5, "\(label): loss differs by \(worst.0) (relative) at step \(worst.1)", file: file, line: line)
    }

    static func assertClose(_ a: [Float], _ b: [Float], rtol: Float, atol: Float, _ label: String,
                            file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, label, file: file, line: line)
        var bad: [Int] = []
        for i in 0..<min(a.count, b.count) where !(abs(a[i] - b[i]) <= atol + rtol * abs(b[i])) { bad.append(i) }
        if let first = bad.first {
            XCTFail("\(label): \(bad.count) of \(a.count) floats differ; first at \(first): \(a[first]) vs \(b[first])", file: file, line: line)
        }
    }
}
