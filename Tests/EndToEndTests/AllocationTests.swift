import Foundation
import XCTest

/// The training step performs no heap allocation — checked, not assumed.
///
/// `scripts/alloccount.c`, preloaded into every rank, counts the allocations whose call stack
/// has no frame inside MPI (MPI's own allocations do not count). The same job run for 10 and
/// for 110 steps must end with the same count on every rank, up to a slack of 3 for rank 0's
/// end-of-run output (timings formatted into strings whose length, and so whether they fit
/// inline, varies run to run): an allocation every step would add 100, one every 30 steps 3.
/// (Progress lines allocate, so they are switched off here; the metrics file stays on.)
final class AllocationTests: XCTestCase {
    static let fewSteps = 10, manySteps = 110, slack = 3

    static let shim: String = {
        let dir = try! Launch.temporaryDirectory()
        let out = dir.appendingPathComponent("alloccount.so").path
        let cc = Process()
        cc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        cc.arguments = ["cc", "-shared", "-fPIC", "-O2", Launch.root.appendingPathComponent("scripts/alloccount.c").path,
                        "-o", out, "-ldl"]
        try! cc.run()
        cc.waitUntilExit()
        return out
    }()

    /// One run before any counted one, so that every counted run reads the cached MFU peak
    /// (a run that measures and writes it allocates differently).
    static let peakCached: Void = {
        _ = try? Launch.run("train", ["--data", try! SmallData.write(), "--steps", "1", "--val-batches", "1", "--samples", "0"])
    }()

    /// Allocation counts per rank, in rank order, for a run of `steps` steps (with the run's outcome).
    func counts(_ executable: String, np: Int?, steps: Int, extra: [String] = []) throws -> (Launch.Outcome, [Int]) {
        let dir = try Launch.temporaryDirectory()
        let data = try SmallData.write()
        let args = ["--data", data, "--steps", "\(steps)", "--val-batches", "2", "--samples", "0", "--log-every", "1000000",
                    "--metrics", dir.appendingPathComponent("m.jsonl").path] + extra
        let run: Launch.Outcome
        if let np {
            run = try Launch.run(executable, np: np, ["-x", "LD_PRELOAD=\(Self.shim)", "-x", "ALLOC_COUNT_DIR=\(dir.path)"],
                                 then: args)
        } else {
            run = try Launch.run(executable, args, environment: ["LD_PRELOAD": Self.shim, "ALLOC_COUNT_DIR": dir.path])
        }
        // One file per rank, named by its world rank (by its pid outside mpirun): in rank order.
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).compactMap(Int.init).sorted()
        return (run, try files.map { Int(try String(contentsOfFile: dir.appendingPathComponent("\($0)").path, encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1 })
    }

    /// The two runs (10 and 110 steps) at once: counting does not depend on timing.
    func check(_ executable: String, np: Int?, extra: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws {
        _ = Self.peakCached
        let runs = try Launch.concurrently([Self.fewSteps, Self.manySteps].map { steps in
            { try self.counts(executable, np: np, steps: steps, extra: extra) }
        }, width: 2)
        let label = "\(executable) -np \(np ?? 1) \(extra.joined(separator: " "))"
        for (run, _) in runs { XCTAssertEqual(run.status, 0, "\(label): \(run.stderr)", file: file, line: line) }
        let few = runs[0].1, many = runs[1].1
        XCTAssertEqual(few.count, np ?? 1, "\(label): one count per rank", file: file, line: line)
        XCTAssertEqual(many.count, np ?? 1, "\(label): one count per rank", file: file, line: line)
        XCTAssertTrue(few.allSatisfy { $0 > 100 }, "\(label): the counter sees start-up allocations: \(few)", file: file, line: line)
        for (a, b) in zip(few, many) {
            XCTAssertLessThanOrEqual(abs(a - b), Self.slack,
                                     "\(label): allocations grew with the step count: \(few) → \(many)", file: file, line: line)
        }
    }

    func testTrainStepDoesNotAllocate() throws {
        try check("train", np: nil, extra: ["--optimizer", "adam"])
        try check("train", np: nil, extra: ["--layers", "4", "--recompute"])
    }
    /// Expert parallelism: two groups of two (the all-to-alls, the world and replicate allreduces);
    /// and in train_3d beside a pipeline (FSDP's two-part gathers, the stages' statistics).
    func testExpertParallelStepDoesNotAllocate() throws {
        try check("train_ep", np: 4, extra: ["--experts", "4", "--top-k", "2", "--capacity-factor", "1", "--ep", "2", "--layers", "2"])
        try check("train_3d", np: 4, extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2", "--experts", "4", "--top-k", "2",
                                             "--capacity-factor", "1", "--layers", "2", "--optimizer", "adam"])
        try check("train_3d", np: 4, extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2", "--experts", "4", "--top-k", "2",
                                             "--micro-batches", "4", "--schedule", "gpipe", "--layers", "2"])
    }

    func testMixtureOfExpertsStepDoesNotAllocate() throws {
        try check("train", np: nil, extra: ["--experts", "4", "--top-k", "2", "--capacity-factor", "1.25", "--layers", "2"])
        try check("train_dp", np: 2, extra: ["--experts", "4", "--top-k", "1", "--capacity-factor", "1"])
    }
    func testDataParallelStepDoesNotAllocate() throws { try check("train_dp", np: 2, extra: ["--bucket-kb", "8"]) }
    func testFullyShardedStepDoesNotAllocate() throws {
        try check("train_fsdp", np: 2, extra: ["--optimizer", "adam", "--clip-grad-norm", "0.5"])
    }
    func testTensorParallelStepDoesNotAllocate() throws { try check("train_tp", np: 2, extra: ["--layers", "3"]) }
    func testSequenceParallelStepDoesNotAllocate() throws {
        try check("train_tp", np: 2, extra: ["--layers", "3", "--sequence-parallel", "--accumulate", "2"])
        try check("train_3d", np: 4, extra: ["--tp", "2", "--pp", "2", "--micro-batches", "2", "--layers", "2", "--sequence-parallel"])
    }
    func testPipelineStepDoesNotAllocate() throws {
        try check("train_pp", np: 3, extra: ["--micro-batches", "4", "--schedule", "gpipe"])
        try check("train_pp", np: 2, extra: ["--micro-batches", "4", "--schedule", "1f1b"])
        try check("train_pp", np: 2, extra: ["--micro-batches", "4", "--schedule", "1f1b", "--batch-weight-gradients"])
        try check("train_pp", np: 3, extra: ["--micro-batches", "4", "--schedule", "zb1p"])
        try check("train_pp", np: 2, extra: ["--micro-batches", "4", "--schedule", "gpipe", "--recompute"])
        try check("train_pp", np: 2, extra: ["--micro-batches", "4", "--schedule", "interleaved", "--virtual-stages", "2", "--layers", "2"])
    }
    /// Tracing on, every step in the window (the 110-step run records 100 more steps than the
    /// 10-step run): recording and writing the trace allocate the same whatever the window.
    func testTracedStepDoesNotAllocate() throws {
        let trace = try Launch.temporaryDirectory().appendingPathComponent("t.json").path
        try check("train_pp", np: 2, extra: ["--micro-batches", "4", "--layers", "2", "--trace", trace, "--trace-steps", "1:\(Self.manySteps)"])
    }
    func testThreeDimensionalStepDoesNotAllocate() throws {
        try check("train_3d", np: 4, extra: ["--tp", "2", "--dp", "1", "--pp", "2", "--micro-batches", "2", "--optimizer", "adam"])
        try check("train_3d", np: 4, extra: ["--tp", "1", "--dp", "2", "--pp", "2", "--micro-batches", "2", "--schedule", "interleaved",
                                             "--virtual-stages", "2", "--layers", "2", "--recompute"])
    }
}
