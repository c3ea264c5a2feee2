import Foundation
import XCTest

/// A rank that stalls mid-training — `kill -STOP`, as a paused process, a dead link or a stuck
/// host would — ends the whole job through the collective watchdog (`--timeout`,
/// `Sources/Distributed/Watchdog.swift`): mpirun exits non-zero within the timeout + 15 s, the
/// ranks left waiting print the watchdog's one line (their rank, the operation, the mesh axis,
/// the step, and the rank they wait for), and no process of the job is left, the stopped one
/// included. Without the watchdog the other ranks spin in MPI for ever (FailureTests' SIGKILL
/// is different: MPI's runtime sees a dead process; nobody sees a stopped one).
///
/// The stopped rank is chosen so that some waiting rank can name it: the other rank of a pair,
/// the neighbours of the middle pipeline stage, the tensor-parallel partner in 3D.
final class WatchdogTests: XCTestCase {
    static let data = try! SmallData.write()
    /// Short, so the four cases take seconds each; long enough that a loaded machine's
    /// scheduling hiccups (milliseconds) never look like a stall.
    static let timeout = 3

    func testStoppedDataParallelRankEndsTheJob() throws {
        try stopRank(executable: "train_dp", np: 2, victim: 1, axes: ["dp"])
    }

    /// Rank 0 stopped: the rank that writes the metrics and prints; the other rank reports it.
    func testStoppedFullyShardedRankEndsTheJob() throws {
        try stopRank(executable: "train_fsdp", np: 2, victim: 0, axes: ["shard"])
    }

    /// ZeRO-2: its gradients are reduce-scattered block by block with uneven counts
    /// (`MPI_Reduce_scatter`), the one collective that was once left unwatched: the job hung.
    func testStoppedZeroTwoRankEndsTheJob() throws {
        try stopRank(executable: "train_fsdp", np: 2, victim: 1, axes: ["shard"], extra: ["--zero", "2"])
    }

    /// The middle of three stages: both neighbours wait for it on the pipeline axis.
    func testStoppedMiddlePipelineStageEndsTheJob() throws {
        try stopRank(executable: "train_pp", np: 3, victim: 1, axes: ["pp"], extra: ["--micro-batches", "2"])
    }

    /// 3D tp 2 × dp 1 × pp 2: rank 3 is the second tensor-parallel lane of the last stage.
    func testStoppedThreeDimensionalRankEndsTheJob() throws {
        try stopRank(executable: "train_3d", np: 4, victim: 3, axes: ["tp", "dp", "pp"],
                     extra: ["--tp", "2", "--dp", "1", "--pp", "2", "--micro-batches", "2"])
    }

    /// Starts a long run with `--timeout`, waits until it trains, SIGSTOPs rank `victim`, and
    /// checks the ending and the lines. Every line must be on one of `axes`; at least one must
    /// say it waits for `victim`.
    func stopRank(executable: String, np: Int, victim: Int, axes: Set<String>, extra: [String] = [],
                  file: StaticString = #filePath, line: UInt = #line) throws {
        let label = "\(executable) -np \(np), rank \(victim) stopped"
        let timeout = Double(Self.timeout)
        let job = try Job(executable: executable, np: np, data: Self.data, extra: ["--timeout", "\(Self.timeout)"] + extra)
        defer { job.killEverything() }   // SIGKILL ends a stopped process too
        let ranks = try job.waitForTraining(file: file, line: line)
        XCTAssertEqual(ranks.keys.sorted(), Array(0..<np), "\(label): mpirun's children by rank", file: file, line: line)
        guard let pid = ranks[victim] else { return }

        let stoppedAt = Date()
        XCTAssertEqual(kill(pid, SIGSTOP), 0, label, file: file, line: line)
        let ended = job.waitForExit(seconds: timeout + 15)
        let seconds = Date().timeIntervalSince(stoppedAt)
        XCTAssertTrue(ended, "\(label): mpirun still running \(seconds) s after the stop:\n\(job.stderr)", file: file, line: line)
        guard ended else { return }
        XCTAssertGreaterThanOrEqual(seconds, timeout, "\(label): the job ended before the timeout", file: file, line: line)
        let failed = job.process.terminationReason == .uncaughtSignal || job.process.terminationStatus != 0
        XCTAssertTrue(failed, "\(label): mpirun exited 0", file: file, line: line)
        let survivors = Job.waitUntilGone(Array(ranks.values), marker: job.marker, seconds: max(0, timeout + 15 - seconds))
        XCTAssertEqual(survivors, [], "\(label): processes of the job still running \(timeout + 15) s after the stop",
                       file: file, line: line)

        let stderr = job.stderr
        let reports = stderr.split(separator: "\n").filter { $0.hasPrefix("error: watchdog:") }.map(String.init)
        XCTAssertFalse(reports.isEmpty, "\(label): no watchdog line on stderr:\n\(stderr)", file: file, line: line)
        var namesVictim = false
        for report in reports {
            guard let stall = WatchdogLine(report) else {
                XCTFail("\(label): malformed watchdog line: \(report)", file: file, line: line)
                continue
            }
            XCTAssertNotEqual(stall.rank, victim, "\(label): the stopped rank cannot report: \(report)", file: file, line: line)
            XCTAssertTrue(ranks.keys.contains(stall.rank), "\(label): \(report)", file: file, line: line)
            // Besides the layout's axes, every rank takes part in two world-wide reductions per step
            // (the gradient norm that --metrics records, and the stop vote): a rank may be caught there.
            XCTAssertTrue(axes.union(["world"]).contains(stall.axis), "\(label): unexpected axis in \(report)", file: file, line: line)
            XCTAssertTrue(WatchdogLine.operations.contains(stall.operation), "\(label): \(report)", file: file, line: line)
            XCTAssertGreaterThan(stall.step, 0, "\(label): not stalled in training: \(report)", file: file, line: line)
            XCTAssertGreaterThanOrEqual(stall.waited, timeout, "\(label): \(report)", file: file, line: line)
            if stall.waitingFor.contains(victim) { namesVictim = true }
        }
        XCTAssertTrue(namesVictim, "\(label): no line names rank \(victim) as the one waited for:\n\(reports.joined(separator: "\n"))",
                      file: file, line: line)
    }
}

/// The parts of the watchdog's line:
/// `error: watchdog: rank R (host H) stuck S s in OP on axis A (N ranks) at step K, waiting for WHO (--timeout T s); ending the job`.
struct WatchdogLine {
    static let operations: Set<String> = ["allreduce", "allgather", "reduce_scatter", "reduce_scatter (ring exchange)",
                                          "broadcast", "send", "recv", "barrier"]
    var rank: Int
    var waited: Double
    var operation: String
    var axis: String
    var step: Int
    /// The world ranks named after "waiting for".
    var waitingFor: Set<Int>

    init?(_ line: String) {
        let pattern = #"^error: watchdog: rank (\d+) \(host [^)]*\) stuck ([0-9.]+) s in (.+) on axis (\w+) \(\d+ ranks\) "#
            + #"at step (\d+), waiting for (.+) \(--timeout [0-9.]+ s\); ending the job$"#
        guard let regex = try? NSRegularExpression(pattern: pattern),
              let match = regex.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)) else { return nil }
        func group(_ i: Int) -> String { String(line[Range(match.range(at: i), in: line)!]) }
        guard let rank = Int(group(1)), let waited = Double(group(2)), let step = Int(group(5)) else { return nil }
        self.rank = rank
        self.waited = waited
        operation = group(3)
        axis = group(4)
        self.step = step
        let who = group(6)
        let numbers = try! NSRegularExpression(pattern: #"\d+"#)
        waitingFor = Set(numbers.matches(in: who, range: NSRange(who.startIndex..., in: who)).compactMap {
            Int(who[Range($0.range, in: who)!])
        })
    }
}
