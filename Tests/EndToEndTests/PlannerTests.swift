import Foundation
import XCTest

/// The planner (`plan`) against the executables: its communication plan equals what the ledger
/// counted in real runs, per rank and kind, calls and bytes; its table lists every layout with
/// the memory plan's figures, fastest first; bad flags get one line.
final class PlannerTests: XCTestCase {
    static let data = try! SmallData.write()

    /// `plan --json` for `flags` (no calibration needed: `--flops`, one rank per host, link rates given).
    func plan(_ flags: [String]) throws -> [String: Any] {
        let run = try Launch.run("plan", ["--data", Self.data, "--flops", "1", "--ranks-per-host", "1", "--link-latency", "1",
                                          "--link-bandwidth", "1", "--json"] + flags, timeout: 60)
        XCTAssertEqual(run.status, 0, run.stderr)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], run.stdout)
    }

    func layouts(_ json: [String: Any]) -> [[String: Any]] { json["layouts"] as? [[String: Any]] ?? [] }

    /// Per rank, `kind: [calls, bytes]` per step from a `comm_per_rank` array (the ledger's totals
    /// divided by `steps`, or the plan's per-step figures with `steps` 1).
    func perStep(_ ranks: [[String: [String: Any]]], steps: Int) -> [[String: [Int]]] {
        ranks.map { kinds in
            kinds.mapValues { counter in
                [(counter["calls"] as? Int ?? -1), (counter["bytes"] as? Int ?? -1)].map { $0 < 0 || $0 % steps != 0 ? -1 : $0 / steps }
            }
        }
    }

    /// CommunicationPlan = ledger: for 18 layouts (DP with buckets and accumulation, FSDP ZeRO
    /// 1/2/3, HSDP and recomputation, TP with and without sequence parallelism and recomputation,
    /// PP with every schedule (interleaved too) and recomputation, 3D with sequence parallelism
    /// and recomputation), every rank's calls and
    /// bytes per step of every kind, gradient norm and stop vote included, equal the ledger's.
    func testCommunicationPlanEqualsLedger() throws {
        let config = ["--seq-len", "8", "--emb", "5", "--hidden", "12", "--layers", "3", "--batch-size", "24"]
        // (executable, ranks, flags, the plan's command for it, extra plan flags)
        let cases: [(String, Int, [String], String, [String])] = [
            ("train_dp", 3, ["--bucket-kb", "1"], "train_dp -np 3 --bucket-kb 1", ["--bucket-kb", "1"]),
            ("train_dp", 2, ["--accumulate", "2"], "train_dp -np 2", ["--accumulate", "2"]),
            ("train_fsdp", 3, [], "train_fsdp -np 3", []),
            ("train_fsdp", 2, ["--zero", "1", "--accumulate", "2"], "train_fsdp -np 2 --zero 1", ["--accumulate", "2"]),
            ("train_fsdp", 4, ["--zero", "2", "--replicate", "2", "--accumulate", "2"], "train_fsdp -np 4 --zero 2 --replicate 2",
             ["--accumulate", "2"]),
            ("train_fsdp", 4, ["--replicate", "2"], "train_fsdp -np 4 --replicate 2", []),
            ("train_tp", 2, [], "train_tp -np 2", []),
            ("train_tp", 2, ["--sequence-parallel", "--accumulate", "2"], "train_tp -np 2 --sequence-parallel", ["--accumulate", "2"]),
            ("train_pp", 3, ["--micro-batches", "3", "--schedule", "gpipe"], "train_pp -np 3 --schedule gpipe --micro-batches 3", []),
            ("train_pp", 3, ["--micro-batches", "6", "--schedule", "zb1p"], "train_pp -np 3 --schedule zb1p --micro-batches 6", []),
            ("train_pp", 3, ["--micro-batches", "12", "--recompute", "--accumulate", "2"],
             "train_pp -np 3 --schedule 1f1b --recompute --micro-batches 12", ["--accumulate", "2"]),
            ("train_pp", 2, ["--schedule", "interleaved", "--virtual-stages", "2", "--micro-batches", "4"],
             "train_pp -np 2 --schedule interleaved --virtual-stages 2 --micro-batches 4", []),
            ("train_tp", 2, ["--recompute"], "train_tp -np 2 --recompute", []),
            ("train_tp", 2, ["--sequence-parallel", "--recompute"], "train_tp -np 2 --sequence-parallel --recompute", []),
            ("train_fsdp", 3, ["--recompute"], "train_fsdp -np 3 --recompute", []),
            ("train_3d", 4, ["--tp", "2", "--dp", "2", "--pp", "1"], "train_3d -np 4 --tp 2 --dp 2 --pp 1 --micro-batches 1", []),
            ("train_3d", 4, ["--tp", "2", "--dp", "1", "--pp", "2", "--micro-batches", "4", "--sequence-parallel", "--recompute"],
             "train_3d -np 4 --tp 2 --dp 1 --pp 2 --recompute --sequence-parallel --micro-batches 4", []),
            ("train_3d", 4, ["--tp", "1", "--dp", "2", "--pp", "2", "--micro-batches", "4"],
             "train_3d -np 4 --tp 1 --dp 2 --pp 2 --micro-batches 4", []),
        ]
        let runs = try ledgerRuns(cases.map { ($0.0, $0.1, config + $0.2) })
        for ((executable, np, flags, command, planFlags), run) in zip(cases, runs) {
            try comparePlanWithLedger(executable, np: np, config + flags, plan: config + ["--ranks", "\(np)", "--metrics"] + planFlags,
                                      command: command, run: run)
        }
    }

    static let ledgerSteps = 3

    /// Runs each `(executable, ranks, flags)` for 3 steps, three at a time; returns each outcome
    /// and its metrics file.
    func ledgerRuns(_ specs: [(String, Int, [String])]) throws -> [(Launch.Outcome, String)] {
        try Launch.concurrently(specs.map { spec in
            {
                let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
                let run = try Launch.run(spec.0, np: spec.1, ["--data", Self.data, "--steps", "\(Self.ledgerSteps)", "--samples", "0",
                                                              "--val-batches", "1", "--metrics", metrics] + spec.2, timeout: 120)
                return (run, metrics)
            }
        })
    }

    /// Asserts that the entry `command` of the plan `plan` (its flags) has, on every rank, the
    /// calls and bytes per step of every kind the ledger counted in `run` (of `executable` with
    /// `flags`, from ``ledgerRuns(_:)``); returns that entry and the run's last metrics record.
    @discardableResult
    func comparePlanWithLedger(_ executable: String, np: Int, _ flags: [String], plan planFlags: [String], command: String,
                               run result: (Launch.Outcome, String)) throws -> (entry: [String: Any], last: [String: Any]) {
        let steps = Self.ledgerSteps, label = "\(executable) -np \(np) \(flags.joined(separator: " "))"
        let (run, metrics) = result
        XCTAssertEqual(run.status, 0, "\(label): \(run.stderr)")
        let last = try XCTUnwrap(Metrics(path: metrics).records.last, label)
        let ledger = perStep(try XCTUnwrap(last["comm_per_rank"] as? [[String: [String: Any]]], label), steps: steps)
        let json = try plan(planFlags)
        let entry = try XCTUnwrap(layouts(json).first { $0["command"] as? String == command },
                                  "\(label): the plan has no '\(command)': \(layouts(json).map { $0["command"] ?? "" })")
        let planned = perStep(try XCTUnwrap(entry["comm_per_rank"] as? [[String: [String: Any]]], label), steps: 1)
        XCTAssertEqual(planned.count, np, label)
        XCTAssertEqual(ledger.count, np, label)
        for rank in 0..<min(np, ledger.count, planned.count) {
            XCTAssertEqual(planned[rank], ledger[rank], "\(label), rank \(rank)")
        }
        return (entry, last)
    }

    /// Mixture of experts: the plan equals the ledger, every rank and kind, calls and bytes per
    /// step, where the routing is known in advance. `train_ep` with K = E (every row goes to
    /// every expert, so uniform routing is the routing taken) on one group of two, on two groups
    /// of two, and with a capacity that drops the later ranks' rows; `train_dp` at K < E (its
    /// routing-statistics allgather does not depend on the routing); `train_3d` with K = E at
    /// (tp, dp, pp, ep) = (1, 2, 2, 2) and (2, 2, 1, 2), with a capacity at (2, 2, 1, 2), and at
    /// K < E without `--ep` (no all-to-all). The memory column is the layout's memory plan, as
    /// the run reports it, plus the runtime reserve.
    func testExpertPlanEqualsLedger() throws {
        let config = ["--seq-len", "8", "--emb", "5", "--hidden", "12", "--layers", "2", "--batch-size", "24"]
        // (executable, ranks, the model's flags (the plan's too), the layout's flags, the plan's command)
        let cases: [(String, Int, [String], [String], String)] = [
            ("train_ep", 2, ["--experts", "4", "--top-k", "4"], ["--ep", "2"], "train_ep -np 2 --ep 2"),
            ("train_ep", 4, ["--experts", "4", "--top-k", "4"], ["--ep", "2"], "train_ep -np 4 --ep 2"),
            ("train_ep", 4, ["--experts", "2", "--top-k", "2", "--capacity-factor", "0.5"], ["--ep", "2"], "train_ep -np 4 --ep 2"),
            ("train_dp", 2, ["--experts", "4", "--top-k", "2"], [], "train_dp -np 2"),
            ("train_3d", 4, ["--experts", "4", "--top-k", "4"], ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2"],
             "train_3d -np 4 --tp 1 --dp 2 --pp 2 --ep 2 --micro-batches 1"),
            ("train_3d", 4, ["--experts", "2", "--top-k", "2", "--capacity-factor", "0.5"], ["--tp", "2", "--dp", "2", "--pp", "1", "--ep", "2"],
             "train_3d -np 4 --tp 2 --dp 2 --pp 1 --ep 2 --micro-batches 1"),
            ("train_3d", 4, ["--experts", "4", "--top-k", "4"], ["--tp", "2", "--dp", "2", "--pp", "1", "--ep", "2"],
             "train_3d -np 4 --tp 2 --dp 2 --pp 1 --ep 2 --micro-batches 1"),
            ("train_3d", 4, ["--experts", "4", "--top-k", "2"], ["--tp", "2", "--dp", "1", "--pp", "2"],
             "train_3d -np 4 --tp 2 --dp 1 --pp 2 --micro-batches 1"),
            ("train_3d", 4, ["--experts", "4", "--top-k", "4"], ["--tp", "1", "--dp", "2", "--pp", "2", "--ep", "2", "--micro-batches", "2",
                                                                "--schedule", "gpipe"],
             "train_3d -np 4 --tp 1 --dp 2 --pp 2 --schedule gpipe --ep 2 --micro-batches 2"),
            ("train_pp", 2, ["--experts", "4", "--top-k", "2"], ["--micro-batches", "2", "--schedule", "gpipe"],
             "train_pp -np 2 --schedule gpipe --micro-batches 2"),
        ]
        let runs = try ledgerRuns(cases.map { ($0.0, $0.1, config + $0.2 + $0.3) })
        for ((executable, np, model, layout, command), run) in zip(cases, runs) {
            let label = "\(executable) -np \(np) \((model + layout).joined(separator: " "))"
            let (entry, last) = try comparePlanWithLedger(executable, np: np, config + model + layout,
                                                          plan: config + ["--ranks", "\(np)", "--metrics", "--memory-per-rank", "64"] + model,
                                                          command: command, run: run)
            let memory = try XCTUnwrap(last["memory_plan_per_rank"] as? [[String: Int]], label)
            let toAllocate = memory.map { $0.filter { $0.key != "dataset" }.values.reduce(0, +) }.max() ?? 0
            XCTAssertEqual(entry["memory_per_rank"] as? Int, toAllocate + 32 << 20, label)
        }
    }

    /// With experts the candidates are `train_dp`, `train_ep --ep E'` for E' > 1 dividing N, and
    /// the `train_3d` grids with one micro-batch, each with every E' dividing D; an E' that does
    /// not divide E, a grid with more micro-batches, and every other layout, is refused with the
    /// line the executable itself prints for it.
    func testExpertLayoutsAndRefusals() throws {
        let json = try plan(["--ranks", "4", "--experts", "6", "--top-k", "2", "--memory-per-rank", "64"])
        let commands = Set(layouts(json).compactMap { $0["command"] as? String })
        XCTAssertTrue(commands.isSuperset(of: ["train_dp -np 4", "train_ep -np 4 --ep 2",
                                               "train_3d -np 4 --tp 2 --dp 2 --pp 1 --micro-batches 1",
                                               "train_3d -np 4 --tp 2 --dp 2 --pp 1 --ep 2 --micro-batches 1",
                                               "train_3d -np 4 --tp 1 --dp 2 --pp 2 --ep 2 --micro-batches 1",
                                               "train_3d -np 4 --tp 1 --dp 2 --pp 2 --schedule gpipe --ep 2 --micro-batches 4"]), "\(commands)")
        XCTAssertTrue(commands.allSatisfy { command in ["train_dp ", "train_ep ", "train_pp ", "train_3d "].contains { command.hasPrefix($0) } },
                      "\(commands)")
        XCTAssertFalse(commands.contains("train_ep -np 4 --ep 4"), "E' = 4 does not divide E = 6")
        XCTAssertFalse(commands.contains { $0.contains("--micro-batches ") && !$0.hasSuffix("--micro-batches 1")
                                           && !$0.contains("--schedule gpipe") }, "micro-batches only under GPipe: \(commands)")
        XCTAssertEqual([json["experts"] as? Int, json["top_k"] as? Int], [6, 2])
        XCTAssertTrue(json["capacity_factor"] is NSNull, "dropless")
        let refused = (json["refused"] as? [[String: Any]] ?? []).compactMap { entry in
            (entry["command"] as? String).map { ($0, entry["reason"] as? String ?? "") }
        }
        for (executable, flags, command) in [("train_ep", ["--ep", "4"], "train_ep -np 4 --ep 4"), ("train_fsdp", [], "train_fsdp -np 4"),
                                             ("train_tp", [], "train_tp -np 4"), ("train_pp", ["--micro-batches", "4"], "train_pp -np 4 --schedule 1f1b --micro-batches 4"),
                                             ("train_3d", ["--tp", "1", "--dp", "2", "--pp", "2", "--micro-batches", "4"],
                                              "train_3d -np 4 --tp 1 --dp 2 --pp 2 --micro-batches 4")] {
            let reason = try XCTUnwrap(refused.first { $0.0 == command }?.1, "\(command) not refused: \(refused)")
            // One rank: these flag checks run before MPI starts, the same at any rank count.
            try Refusal.expect(executable, np: 1, ["--data", Self.data, "--steps", "1", "--experts", "6", "--top-k", "2"] + flags,
                               [reason])
        }
    }

    /// A small case: every layout of the suite on 2 ranks is listed (or refused with its reason),
    /// each memory figure is the memory plan's (what `--metrics` writes as `memory_plan_per_rank`,
    /// plus the runtime reserve), and the rows are sorted by predicted time.
    func testTableListsEveryLayoutSortedWithTheMemoryPlan() throws {
        let config = ["--seq-len", "8", "--emb", "5", "--hidden", "12", "--layers", "2", "--batch-size", "24"]
        let json = try plan(config + ["--ranks", "2", "--memory-per-rank", "64"])
        let entries = layouts(json), commands = entries.compactMap { $0["command"] as? String }
        let refused = (json["refused"] as? [[String: Any]] ?? []).compactMap { $0["command"] as? String }
        for expected in ["train_dp -np 2", "train_fsdp -np 2 --zero 1", "train_fsdp -np 2 --zero 2", "train_fsdp -np 2",
                         "train_tp -np 2", "train_tp -np 2 --sequence-parallel",
                         "train_pp -np 2 --schedule gpipe --micro-batches 2", "train_pp -np 2 --schedule 1f1b --micro-batches 8",
                         "train_pp -np 2 --schedule zb1p --micro-batches 8", "train_pp -np 2 --schedule 1f1b --recompute --micro-batches 8"] {
            XCTAssertTrue(commands.contains(expected), "\(expected) missing from \(commands)")
        }
        XCTAssertTrue(refused.isEmpty, "\(refused)")
        let times = entries.compactMap { $0["predicted_us"] as? Double }
        XCTAssertEqual(times.count, entries.count)
        XCTAssertEqual(times, times.sorted(), "fastest first")
        XCTAssertTrue(entries.allSatisfy { $0["fits"] as? Bool == true })
        // Memory: the largest per-rank plan the executables report, plus the 32 MiB reserve.
        for (executable, flags, command) in [("train_fsdp", ["--zero", "2"], "train_fsdp -np 2 --zero 2"),
                                             ("train_tp", ["--sequence-parallel"], "train_tp -np 2 --sequence-parallel"),
                                             ("train_pp", ["--micro-batches", "8"], "train_pp -np 2 --schedule 1f1b --micro-batches 8")] {
            let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
            let run = try Launch.run(executable, np: 2, ["--data", Self.data, "--steps", "1", "--samples", "0", "--val-batches", "1",
                                                         "--metrics", metrics] + config + flags, timeout: 120)
            XCTAssertEqual(run.status, 0, run.stderr)
            let planned = try XCTUnwrap(Metrics(path: metrics).records.last?["memory_plan_per_rank"] as? [[String: Int]])
            let toAllocate = planned.map { $0.filter { $0.key != "dataset" }.values.reduce(0, +) }.max() ?? 0
            let entry = try XCTUnwrap(entries.first { $0["command"] as? String == command }, command)
            XCTAssertEqual(entry["memory_per_rank"] as? Int, toAllocate + 32 << 20, command)
        }
        // The table: one row per layout, in the JSON's order.
        let table = try Launch.run("plan", ["--data", Self.data, "--flops", "1", "--link-latency", "1", "--link-bandwidth", "1",
                                            "--ranks-per-host", "1", "--ranks", "2", "--memory-per-rank", "64"] + config, timeout: 60)
        XCTAssertEqual(table.status, 0, table.stderr)
        let rows = table.stdout.split(separator: "\n").filter { $0.first?.isNumber ?? false }
        XCTAssertEqual(rows.map { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().prefix(3).joined(separator: " ") },
                       commands.map { $0.split(separator: " ").prefix(3).joined(separator: " ") })
    }

    /// Bad flags: one `error:` line, a non-zero exit, no trace.
    func testBadFlagsGetOneLine() throws {
        let broken = try Launch.temporaryDirectory().appendingPathComponent("calibration.json")
        try Data("{\"cores\": 2".utf8).write(to: broken)
        // A calibration from before the all-to-all series: train_ep cannot be priced.
        let noAllToAll = try Launch.temporaryDirectory().appendingPathComponent("calibration.json")
        let link = "{\"alpha_us\": 1, \"gb_per_s\": 1}"
        try Data(("{\"cores\": 2, \"ranks\": 2, \"compute\": [{\"rows\": 2, \"flops_per_step\": 1e6, \"flops_per_second\": 1e9}], "
                  + "\"collectives\": {\"allreduce\": \(link), \"allgather\": \(link)}, "
                  + "\"update_seconds_per_parameter\": {\"sgd\": 1e-9, \"adam\": 1e-9}}").utf8).write(to: noAllToAll)
        let cases: [([String], String)] = [
            (["--ranks", "0", "--flops", "1"], "--ranks must be a positive integer"),
            (["--flops", "1"], "--ranks"),
            (["--ranks", "2", "--flops", "-3"], "--flops must be a positive finite number"),
            (["--ranks", "2", "--flops", "1", "--bogus"], "--bogus"),
            (["--ranks", "2", "--calibration", "/nonexistent/c.json"], "no calibration at /nonexistent/c.json"),
            (["--ranks", "2", "--flops", "1", "--data", "/nonexistent/data.txt"], "/nonexistent/data.txt"),
            (["--ranks", "2", "--flops", "1", "--emb", "2000000", "--seq-len", "16"], "below 2^24"),
            (["--ranks", "2", "--flops", "1", "--emb", "100000", "--hidden", "10000000", "--layers", "100000000"], "too large to count"),
            (["--ranks", "2", "--flops", "1", "--calibration", broken.path], "is not valid"),
            (["--ranks", "2", "--flops", "1", "--link-bandwidth", "0"], "--link-bandwidth must be a positive finite number"),
            (["--ranks", "5", "--flops", "1", "--hidden", "7", "--batch-size", "7", "--layers", "1"], "no layout can run"),
            (["--ranks", "2", "--flops", "1", "--experts", "4", "--top-k", "5"], "--top-k must be between 1 and --experts 4 (got 5)"),
            (["--ranks", "2", "--flops", "1", "--capacity-factor", "1"], "--capacity-factor needs --experts"),
            (["--ranks", "2", "--experts", "4", "--calibration", noAllToAll.path], "no measured rate for all_to_all"),
        ]
        for (flags, expected) in cases {
            try Refusal.expect("plan", np: nil, flags, expected, stdoutEmpty: true)
            let run = try Launch.run("plan", flags, timeout: 60)
            XCTAssertEqual(run.stderrLines.count, 1, "plan \(flags): only the error line: \(run.stderr)")
        }
    }
}
