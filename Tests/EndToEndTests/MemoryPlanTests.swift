import Foundation
import XCTest

/// The memory plan in the executables: runs that cannot fit are refused before anything big is
/// allocated (one `error:` line with need against have, non-zero exit, no crash trace, within
/// 10 s), and the plan every executable writes into `--metrics` equals what the ledger measured.
final class MemoryPlanTests: XCTestCase {
    /// Runs `command` under `bash -c` (so `ulimit` applies to it and to mpirun's ranks) and checks
    /// the refusal (``Refusal/check(_:label:expected:stdoutEmpty:within:file:line:)``, within
    /// 10 s); returns the error line.
    @discardableResult
    func expectRefusal(_ command: String, containing expected: [String], file: StaticString = #filePath,
                       line: UInt = #line) throws -> String {
        let run = try Launch.runShell(command, timeout: 60)
        return Refusal.check(run, label: command, expected: expected, within: 10, file: file, line: line)
    }

    func binary(_ name: String) -> String { Launch.bin.appendingPathComponent(name).path }

    /// The issue's four commands: a model of 1.6·10¹² parameters, a batch of 10⁸, 100,000 layers and
    /// a 537M-parameter model under `ulimit -v 4000000`.
    func testRunsThatCannotFitAreRefusedAtOnce() throws {
        let data = try SmallData.write()
        let train = "\(binary("train")) --data \(data)"
        try expectRefusal("\(train) --emb 1000000 --hidden 100000",
                          containing: ["train needs more than", "GiB per rank", "parameters, built on every rank before it is cut", "may use"])
        try expectRefusal("\(train) --batch-size 100000000",
                          containing: ["train needs", "GiB per rank", "activations", "may use", "train is the only layout on 1 rank"])
        try expectRefusal("ulimit -v 4000000; exec \(train) --layers 100000",
                          containing: ["train needs", "whole model", "RLIMIT_AS (ulimit -v)"])
        try expectRefusal("ulimit -v 4000000; exec \(train) --hidden 8192 --layers 8",
                          containing: ["train needs", "parameters 1.76, gradients 1.76", "RLIMIT_AS (ulimit -v)"])
    }

    /// Under mpirun every rank refuses, one line is printed, and the line names the layouts on the
    /// same number of ranks that would fit (here, with about 1.3 GiB per rank: DP, 1.56 GiB, does not; TP, 1.05 GiB, does).
    func testRefusalUnderMpirunNamesTheLayoutsThatFit() throws {
        let data = try SmallData.write()
        let mpirun = "mpirun --oversubscribe --bind-to none -np 2"
        let line = try expectRefusal("ulimit -v 1600000; exec \(mpirun) \(binary("train_dp")) --data \(data) --hidden 8192 --layers 3 --samples 0",
                                     containing: ["train_dp -np 2 needs", "these fit:", "train_tp -np 2 needs"])
        XCTAssertFalse(line.contains("train_dp -np 2 needs 0"), line)
        try expectRefusal("ulimit -v 4000000; exec \(mpirun) \(binary("train_fsdp")) --data \(data) --hidden 8192 --layers 8",
                          containing: ["train_fsdp -np 2 needs", "no layout on 2 rank(s) fits (the smallest:"])
    }

    /// The plan (`memory_plan_per_rank`, computed from the flags before allocating) equals the
    /// ledger (`memory_per_rank`, counted as the buffers were allocated) for every layout, every
    /// rank and category, at two configurations.
    func testPlanEqualsLedgerForEveryLayout() throws {
        let data = try SmallData.write()
        let configs = [["--seq-len", "8", "--emb", "5", "--hidden", "12", "--layers", "3", "--batch-size", "24"],
                       ["--hidden", "64", "--layers", "2", "--batch-size", "36", "--optimizer", "adam", "--lr", "0.01"]]
        let layouts: [(String, Int?, [String])] = [
            ("train", nil, []),
            ("train", nil, ["--recompute"]),
            ("train_fsdp", 2, ["--zero", "2", "--recompute"]),
            ("train_tp", 2, ["--sequence-parallel", "--recompute"]),
            ("train", nil, ["--experts", "4", "--top-k", "2"]),
            ("train", nil, ["--experts", "3", "--top-k", "1", "--capacity-factor", "0.75"]),
            ("train_dp", 3, ["--experts", "4", "--top-k", "2"]),
            ("train_ep", 4, ["--experts", "4", "--top-k", "2", "--ep", "2"]),
            ("train_ep", 2, ["--experts", "2", "--top-k", "1", "--capacity-factor", "0.5", "--ep", "2"]),
            ("train_3d", 4, ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2", "--experts", "4", "--top-k", "2"]),
            ("train_3d", 4, ["--tp", "2", "--dp", "2", "--pp", "1", "--ep", "2", "--experts", "2", "--top-k", "1", "--capacity-factor", "0.5"]),
            ("train_3d", 4, ["--tp", "1", "--dp", "4", "--pp", "1", "--ep", "2", "--experts", "4", "--top-k", "2"]),
            ("train_3d", 4, ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2", "--experts", "4", "--top-k", "2",
                             "--micro-batches", "2", "--schedule", "gpipe"]),
            ("train_pp", 2, ["--experts", "4", "--top-k", "2", "--micro-batches", "2", "--schedule", "gpipe"]),
            ("train_dp", 2, ["--bucket-kb", "1"]),
            ("train_dp", 2, ["--accumulate", "2"]),
            ("train_fsdp", 3, []),
            ("train_fsdp", 2, ["--zero", "1"]),
            ("train_fsdp", 4, ["--zero", "2", "--replicate", "2"]),
            ("train_tp", 2, []),
            ("train_tp", 2, ["--sequence-parallel", "--accumulate", "2"]),
            ("train_pp", 3, ["--micro-batches", "4", "--schedule", "gpipe"]),
            ("train_pp", 3, ["--micro-batches", "4", "--schedule", "1f1b"]),
            ("train_pp", 3, ["--micro-batches", "4", "--schedule", "zb1p"]),
            ("train_pp", 3, ["--micro-batches", "4", "--recompute"]),
            ("train_pp", 3, ["--micro-batches", "4", "--batch-weight-gradients"]),
            ("train_pp", 2, ["--micro-batches", "4", "--schedule", "interleaved", "--virtual-stages", "2", "--batch-weight-gradients"]),
            ("train_3d", 8, ["--tp", "2", "--dp", "2", "--pp", "2", "--micro-batches", "3"]),
            ("train_3d", 8, ["--tp", "2", "--dp", "2", "--pp", "2", "--micro-batches", "3", "--accumulate", "2", "--recompute"]),
            ("train_3d", 6, ["--tp", "2", "--dp", "1", "--pp", "3", "--micro-batches", "2", "--schedule", "gpipe"]),
            ("train_3d", 8, ["--tp", "2", "--dp", "2", "--pp", "2", "--micro-batches", "3", "--sequence-parallel"]),
            ("train_3d", 6, ["--tp", "2", "--dp", "1", "--pp", "3", "--micro-batches", "2", "--sequence-parallel", "--recompute"]),
            ("train_pp", 2, ["--micro-batches", "4", "--schedule", "interleaved", "--virtual-stages", "2"]),
            ("train_pp", 2, ["--micro-batches", "4", "--schedule", "interleaved", "--virtual-stages", "2", "--recompute"]),
            ("train_3d", 8, ["--tp", "2", "--dp", "2", "--pp", "2", "--micro-batches", "2", "--schedule", "interleaved",
                             "--virtual-stages", "2", "--recompute"]),
        ]
        let runs = configs.flatMap { config in layouts.map { (executable: $0.0, np: $0.1, flags: config + $0.2) } }
        let outcomes = try Launch.concurrently(runs.map { run in
            {
                let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
                let outcome = try Launch.run(run.executable, np: run.np, ["--data", data, "--steps", "1", "--samples", "0",
                                                                          "--val-batches", "1", "--metrics", metrics] + run.flags, timeout: 120)
                return (outcome, metrics)
            }
        })
        for (run, (outcome, path)) in zip(runs, outcomes) {
            let label = "\(run.executable) -np \(run.np ?? 1) \(run.flags.joined(separator: " "))"
            XCTAssertEqual(outcome.status, 0, "\(label): \(outcome.stderr)")
            XCTAssertTrue(outcome.stdout.hasPrefix("memory plan: "), "\(label): the plan is the first line: \(outcome.stdout)")
            let metrics = try Metrics(path: path)
            Equivalence.planEqualsLedger(metrics, ranks: run.np ?? 1, label)
            let plan = try metrics.value("memory_plan_per_rank", as: [[String: Int]].self)
            XCTAssertGreaterThan(try XCTUnwrap(plan.first?["whole_model"], label), 0, label)
        }
    }
}

extension Launch {
    /// Runs `command` with `bash -c`, in the tests' environment.
    static func runShell(_ command: String, timeout: Double) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", command]
        process.environment = environment
        return try finish(process, timeout: timeout)
    }
}
