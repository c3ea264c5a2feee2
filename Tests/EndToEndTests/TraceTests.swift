import Foundation
import XCTest

/// `--trace`: the Chrome trace file's structure, its flows, its bytes against the ledger, its
/// report, and that tracing changes no loss. One traced pipeline (flows, the bubble report) and
/// one traced FSDP run (collectives), each of 2 ranks, and a traced train_3d on 4 (tensor-parallel
/// pairs inside pipeline stages), with the window covering every step so that the ledger's totals
/// are the window's; an untraced pipeline run beside them for the losses.
final class TraceTests: XCTestCase {
    static let steps = 4
    static let pipeline = ["--steps", "\(steps)", "--layers", "4", "--micro-batches", "8", "--val-batches", "1", "--samples", "0"]
    static let sharded = ["--steps", "\(steps)", "--layers", "2", "--val-batches", "1", "--samples", "0"]

    func testTraceStructureFlowsBytesAndLosses() throws {
        let data = try SmallData.write()
        let dir = try Launch.temporaryDirectory()
        let ppTrace = dir.appendingPathComponent("pp.json").path, fsdpTrace = dir.appendingPathComponent("fsdp.json").path
        let threeTrace = dir.appendingPathComponent("3d.json").path
        let window = ["--trace-steps", "1:\(Self.steps)"]
        let runs = try Launch.concurrently([
            { try Launch.trained("train_pp", np: 2, ["--data", data] + Self.pipeline + ["--trace", ppTrace] + window) },
            { try Launch.trained("train_pp", np: 2, ["--data", data] + Self.pipeline) },
            { try Launch.trained("train_fsdp", np: 2, ["--data", data] + Self.sharded + ["--trace", fsdpTrace] + window) },
            { try Launch.trained("train_3d", np: 4, ["--data", data, "--tp", "2", "--pp", "2", "--micro-batches", "2"] + Self.sharded
                                 + ["--trace", threeTrace] + window) },
        ], width: 3)
        XCTAssertEqual(runs[0].1.losses, runs[1].1.losses, "tracing changed the losses")
        XCTAssertEqual(runs[0].1.losses.count, Self.steps)
        for (run, path, label, ranks) in [(runs[0], ppTrace, "train_pp", 2), (runs[2], fsdpTrace, "train_fsdp", 2), (runs[3], threeTrace, "train_3d", 4)] {
            let events = try check(path, ranks: ranks, label: label)
            checkBytes(events, against: run.1, label: label)
            let report = try XCTUnwrap(run.1.final?["trace"] as? [String: Any], "\(label): no trace record in the metrics")
            XCTAssertEqual(report["steps"] as? [Int], [1, Self.steps])
            XCTAssertEqual(report["dropped"] as? Int, 0)
            let perRank = try XCTUnwrap(report["per_rank"] as? [[String: Double]])
            XCTAssertEqual(perRank.count, ranks)
            for shares in perRank {
                let sum = shares["compute"]! + shares["communication"]! + shares["idle"]!
                XCTAssertEqual(sum, 1, accuracy: 1e-9, "\(label): shares \(shares)")
                XCTAssertGreaterThan(shares["compute"]!, 0)
            }
            XCTAssertTrue(run.0.stdout.contains("trace: steps 1-\(Self.steps)"), run.0.stdout)
        }
        // The pipeline's report: the ideal bubble (p−1)/(m+p−1) beside the measured idle share.
        let pipeline = try XCTUnwrap((runs[0].1.final?["trace"] as? [String: Any])?["pipeline"] as? [String: Any])
        XCTAssertEqual(pipeline["ideal_bubble"] as? Double ?? -1, 1.0 / 9.0, accuracy: 1e-12)
        XCTAssertEqual((pipeline["measured_not_computing"] as? [Double])?.count, 2)
        XCTAssertTrue(runs[0].0.stdout.contains("ideal bubble (N−1)/(M+N−1) = 11.1%; measured not computing"), runs[0].0.stdout)
    }

    /// The structural checks; returns the events.
    func check(_ path: String, ranks: Int, label: String, measured: Bool = true) throws -> [[String: Any]] {
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
        let file = try XCTUnwrap(object, "\(label): not a JSON object")
        XCTAssertEqual(file["displayTimeUnit"] as? String, "ms")
        XCTAssertNotNil((file["otherData"] as? [String: Any])?[measured ? "residual_skew_us" : "predicted"])
        let events = try XCTUnwrap(file["traceEvents"] as? [[String: Any]])
        for event in events {
            for key in ["name", "ph", "ts", "pid", "tid"] { XCTAssertNotNil(event[key], "\(label): no \(key) in \(event)") }
        }
        XCTAssertEqual(Set(events.compactMap { $0["pid"] as? Int }), Set(0..<ranks), "\(label): pids are the ranks")
        let names = events.filter { $0["name"] as? String == "process_name" }.compactMap { ($0["args"] as? [String: Any])?["name"] as? String }
        XCTAssertEqual(names.count, ranks)
        XCTAssertTrue(names.allSatisfy { $0.hasPrefix("rank ") && $0.contains("(") }, "\(label): \(names)")
        // Complete events: dur ≥ 0, and per (pid, tid) each one either inside or after the one before.
        let complete = events.filter { $0["ph"] as? String == "X" }
        XCTAssertGreaterThan(complete.count, 20)
        let rows = Dictionary(grouping: complete) { "\($0["pid"]!)/\($0["tid"]!)" }
        for (row, list) in rows {
            var open: [Double] = []  // ends of the enclosing events
            for event in list.sorted(by: { ($0["ts"] as! Double, -($0["dur"] as! Double)) < ($1["ts"] as! Double, -($1["dur"] as! Double)) }) {
                let start = event["ts"] as! Double, end = start + (event["dur"] as! Double)
                XCTAssertGreaterThanOrEqual(event["dur"] as! Double, 0)
                while let last = open.last, last <= start + 5e-4 { open.removeLast() }
                if let last = open.last { XCTAssertLessThanOrEqual(end, last + 5e-4, "\(label) \(row): \(event) overlaps its parent") }
                open.append(end)
            }
        }
        // Flows: every start has exactly one finish, on the peer, not before it.
        let starts = events.filter { $0["ph"] as? String == "s" }, finishes = events.filter { $0["ph"] as? String == "f" }
        XCTAssertEqual(starts.count, finishes.count, "\(label): flow starts and finishes")
        let finishById = Dictionary(grouping: finishes) { $0["id"] as! Int }
        for start in starts {
            let matches = finishById[start["id"] as! Int] ?? []
            XCTAssertEqual(matches.count, 1, "\(label): finishes of \(start)")
            guard let finish = matches.first else { continue }
            XCTAssertNotEqual(finish["pid"] as? Int, start["pid"] as? Int)
            XCTAssertEqual(finish["bp"] as? String, "e")
            XCTAssertEqual(finish["cat"] as? String, start["cat"] as? String)
            XCTAssertGreaterThanOrEqual(finish["ts"] as! Double, start["ts"] as! Double, "\(label): \(finish) before \(start)")
        }
        return events
    }

    /// Per rank and kind, the trace's bytes over the window equal the ledger's (`comm_per_rank`).
    func checkBytes(_ events: [[String: Any]], against metrics: Metrics, label: String) {
        guard let ledger = metrics.final?["comm_per_rank"] as? [[String: [String: Any]]] else {
            return XCTFail("\(label): no comm_per_rank")
        }
        for (rank, kinds) in ledger.enumerated() {
            for (kind, counter) in kinds {
                let traced = events.filter { $0["pid"] as? Int == rank && $0["ph"] as? String == "X" && $0["cat"] as? String == kind }
                    .reduce(0) { $0 + (($1["args"] as? [String: Any])?["bytes"] as? Int ?? 0) }
                XCTAssertEqual(traced, counter["bytes"] as? Int, "\(label): rank \(rank) \(kind) bytes")
            }
        }
        XCTAssertGreaterThan(events.filter { ($0["args"] as? [String: Any])?["bytes"] as? Int ?? 0 > 0 }.count, 0)
    }

    /// `plan --trace`: the predicted timeline of a 4-stage ZB-H1 pipeline passes the same checks,
    /// every micro-batch's forward, input and weight pass on every stage.
    func testPlanWritesAPredictedTimeline() throws {
        let path = try Launch.temporaryDirectory().appendingPathComponent("plan.json").path
        let run = try Launch.run("plan", ["--ranks", "4", "--layers", "8", "--flops", "20", "--link-latency", "2", "--link-bandwidth", "5",
                                          "--top", "1", "--trace", path, "--trace-layout", "train_pp -np 4 --schedule zb1p --micro-batches 8"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let events = try check(path, ranks: 4, label: "plan", measured: false)
        for rank in 0..<4 {
            let names = events.filter { $0["pid"] as? Int == rank && $0["ph"] as? String == "X" && $0["tid"] as? Int == 0 }
                .compactMap { $0["name"] as? String }
            XCTAssertEqual(Set(names), Set((0..<8).flatMap { ["F mb\($0)", "B (input) mb\($0)", "W mb\($0)"] }), "rank \(rank)")
        }
    }

    /// A bad `--trace-steps`, a window too long for the buffer and a file that cannot be written
    /// are refused on every rank with one line.
    func testBadTraceStepsAreRefused() throws {
        let data = try SmallData.write()
        let big = try Launch.temporaryDirectory().appendingPathComponent("big.json").path
        let attempts = try Launch.concurrently([
            { try Refusal.launch("train_dp", np: 2, ["--data", data, "--trace", "t.json", "--trace-steps", "5:2"]) },
            { try Refusal.launch("train_dp", np: 2, ["--data", data, "--steps", "3", "--trace", "t.json", "--trace-steps", "4:9"]) },
            { try Refusal.launch("train_dp", np: 2, ["--data", data, "--trace-steps", "1:2"]) },
            { try Refusal.launch("train_dp", np: 2, ["--data", data, "--steps", "1000000", "--trace", big, "--trace-steps", "1:1000000"]) },
            { try Refusal.launch("train_pp", np: 2, ["--data", data, "--trace", "/nonexistent/t.json"]) },
        ], width: 3)
        Refusal.verify(attempts[3], ["--trace-steps 1:1000000 would reserve", "trace fewer steps"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: big), "a refused trace leaves no file")
        Refusal.verify(attempts[4], ["cannot write trace file '/nonexistent/t.json'"])
        Refusal.verify(attempts[0], ["--trace-steps must be two step counts A:B with 1 ≤ A ≤ B", "'5:2'"], stdoutEmpty: true)
        Refusal.verify(attempts[1], ["--trace-steps 4:9 starts beyond --steps 3"], stdoutEmpty: true)
        Refusal.verify(attempts[2], ["--trace-steps needs --trace"], stdoutEmpty: true)
    }
}
