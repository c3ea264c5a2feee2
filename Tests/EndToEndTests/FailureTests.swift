import Foundation
import XCTest

/// A process of the job dying mid-training ends the whole job: mpirun exits non-zero within 20 s
/// and no process of the job is left, spinning in a collective or otherwise.
///
/// Nothing in `Sources/` is needed for this: Open MPI's runtime already aborts the job when a rank
/// dies by a signal (mpirun, acting as the local daemon, sees the child die, kills the other
/// ranks and exits with 128 + signal), and ranks whose mpirun dies notice the lost daemon
/// connection and exit. These tests prove both, so a change in launcher or MPI that breaks it is
/// caught.
///
/// Ranks are found without any help from the executables: they are mpirun's children in
/// /proc, and each one's `OMPI_COMM_WORLD_RANK` is read from /proc/PID/environ. A process that
/// has exited but not been reaped yet (a zombie: its parent mpirun is gone and init has not
/// collected it) is dead, not "left behind".
final class FailureTests: XCTestCase {
    static let data = try! SmallData.write()

    /// Rank 1 of 3 (FSDP) and rank 0 of 2 (DP, the rank that writes the metrics).
    func testKilledRankEndsTheJob() throws {
        try killRank(executable: "train_fsdp", np: 3, victim: 1)
        try killRank(executable: "train_dp", np: 2, victim: 0)
    }

    /// The last rank of 3 (DP) and rank 0 of 2 (FSDP).
    func testKilledLastOrFirstRankEndsTheJob() throws {
        try killRank(executable: "train_dp", np: 3, victim: 2)
        try killRank(executable: "train_fsdp", np: 2, victim: 0)
    }

    /// The launcher itself killed (as a scheduler or an impatient user would): the ranks end too.
    func testKilledMpirunLeavesNoRank() throws {
        let job = try Job(executable: "train_fsdp", np: 2, data: Self.data)
        defer { job.killEverything() }
        let ranks = try job.waitForTraining()
        let killedAt = Date()
        XCTAssertEqual(kill(job.process.processIdentifier, SIGKILL), 0)
        job.process.waitUntilExit()
        let survivors = Job.waitUntilGone(Array(ranks.values), marker: job.marker, seconds: 20)
        XCTAssertEqual(survivors, [], "ranks still running \(Date().timeIntervalSince(killedAt)) s after mpirun was killed")
    }

    /// Starts a long run, waits until it trains, SIGKILLs rank `victim`, and checks the ending.
    func killRank(executable: String, np: Int, victim: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let label = "\(executable) -np \(np), rank \(victim) killed"
        let job = try Job(executable: executable, np: np, data: Self.data)
        defer { job.killEverything() }
        let ranks = try job.waitForTraining(file: file, line: line)
        XCTAssertEqual(ranks.keys.sorted(), Array(0..<np), "\(label): mpirun's children by rank", file: file, line: line)
        guard let pid = ranks[victim] else { return }

        let killedAt = Date()
        XCTAssertEqual(kill(pid, SIGKILL), 0, label, file: file, line: line)
        let ended = job.waitForExit(seconds: 20)
        let seconds = Date().timeIntervalSince(killedAt)
        XCTAssertTrue(ended, "\(label): mpirun still running \(seconds) s after the kill", file: file, line: line)
        guard ended else { return }
        let failed = job.process.terminationReason == .uncaughtSignal || job.process.terminationStatus != 0
        XCTAssertTrue(failed, "\(label): mpirun exited 0", file: file, line: line)
        let survivors = Job.waitUntilGone(Array(ranks.values), marker: job.marker, seconds: max(0, 20 - seconds))
        XCTAssertEqual(survivors, [], "\(label): processes of the job still running 20 s after the kill:\n\(job.stderr)",
                       file: file, line: line)
    }
}

/// One `mpirun -np N executable --steps 10000000` in the background (`extra` flags appended).
final class Job {
    let process = Process()
    let metrics: String
    let errorFile: URL
    /// A path unique to this job that appears on every rank's command line.
    var marker: String { metrics }
    var stderr: String { (try? String(contentsOf: errorFile, encoding: .utf8)) ?? "" }

    init(executable: String, np: Int, data: String, extra: [String] = []) throws {
        let dir = try Launch.temporaryDirectory()
        metrics = dir.appendingPathComponent("m.jsonl").path
        errorFile = dir.appendingPathComponent("stderr")
        guard FileManager.default.createFile(atPath: errorFile.path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        let path = Launch.bin.appendingPathComponent(executable).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            XCTFail("\(path) is missing: run scripts/test.sh (it builds release first)")
            throw CocoaError(.fileNoSuchFile)
        }
        // /usr/bin/env execs mpirun, so the process's PID is mpirun's and its children are the ranks.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "\(np)", path,
                             "--data", data, "--steps", "10000000", "--batch-size", "\(np == 3 ? 30 : 32)",
                             "--log-every", "100000000", "--samples", "0", "--metrics", metrics] + extra
        process.environment = Launch.environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: errorFile)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    /// Waits until rank 0 has written metrics, i.e. every rank is past start-up and inside the
    /// training loop's collectives, then returns the ranks' PIDs by world rank. Rank 0 flushes
    /// its metrics every ~2000 steps: under a second on idle cores, much longer on a loaded
    /// machine, hence the generous limit.
    func waitForTraining(file: StaticString = #filePath, line: UInt = #line) throws -> [Int: pid_t] {
        let start = Date()
        while (try? FileManager.default.attributesOfItem(atPath: metrics)[.size] as? Int) ?? 0 == 0 {
            if !process.isRunning {
                XCTFail("the job ended before training: \(stderr)", file: file, line: line)
                throw CocoaError(.executableLoad)
            }
            if Date().timeIntervalSince(start) > 180 {
                XCTFail("no metrics after 180 s", file: file, line: line)
                throw CocoaError(.executableLoad)
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        var ranks: [Int: pid_t] = [:]
        for pid in Self.children(of: process.processIdentifier) {
            if let rank = Self.environment(of: pid)["OMPI_COMM_WORLD_RANK"].flatMap({ Int($0) }) { ranks[rank] = pid }
        }
        return ranks
    }

    /// Whether mpirun exited within `seconds`.
    func waitForExit(seconds: Double) -> Bool {
        let start = Date()
        while process.isRunning {
            if Date().timeIntervalSince(start) > seconds { return false }
            Thread.sleep(forTimeInterval: 0.02)
        }
        process.waitUntilExit()
        return true
    }

    /// Leaves nothing behind whatever the test found: SIGKILL to mpirun and to every process of
    /// the job still running.
    func killEverything() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        for pid in Self.running(mentioning: marker) { kill(pid, SIGKILL) }
    }

    /// Polls until none of `pids` and no process mentioning `marker` runs (zombies excepted), for
    /// at most `seconds`; returns those still running then.
    static func waitUntilGone(_ pids: [pid_t], marker: String, seconds: Double) -> [pid_t] {
        let start = Date()
        while true {
            let left = Set(pids.filter(isRunning) + running(mentioning: marker)).sorted()
            if left.isEmpty || Date().timeIntervalSince(start) > seconds { return left }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    // MARK: /proc

    /// The fields of /proc/PID/stat after the command name: [state, ppid, ...].
    static func stat(_ pid: pid_t) -> [Substring]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].split(separator: " ")
    }

    /// Exists and is not a zombie (Z) or dead (X).
    static func isRunning(_ pid: pid_t) -> Bool {
        guard let state = stat(pid)?.first else { return false }
        return state != "Z" && state != "X"
    }

    static func allPIDs() -> [pid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid_t($0) }
    }

    static func children(of parent: pid_t) -> [pid_t] {
        allPIDs().filter { pid in stat(pid).map { $0.count > 1 && $0[1] == "\(parent)" } ?? false }
    }

    static func environment(of pid: pid_t) -> [String: String] {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return [:] }
        var env: [String: String] = [:]
        for entry in data.split(separator: 0) {
            let text = String(decoding: entry, as: UTF8.self)
            if let eq = text.firstIndex(of: "=") { env[String(text[..<eq])] = String(text[text.index(after: eq)...]) }
        }
        return env
    }

    /// Running processes (not this one) whose command line contains `marker`.
    static func running(mentioning marker: String) -> [pid_t] {
        let me = getpid()
        return allPIDs().filter { pid in
            guard pid != me, isRunning(pid), let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self).contains(marker)
        }
    }
}
