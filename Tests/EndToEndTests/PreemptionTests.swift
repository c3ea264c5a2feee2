import Foundation
import XCTest

/// SIGTERM or SIGINT during training: every rank stops after the same step, saves that step's
/// complete checkpoint, exits non-zero with one line naming the signal, and resuming from it
/// gives every later step's loss bit for bit as an uninterrupted run.
///
/// Signals go where a scheduler or a user sends them: to `train` itself (Ctrl-C), to mpirun
/// (which, in Open MPI 4.1, sends SIGCONT, waits `odls_base_sigkill_timeout`, sends the ranks
/// SIGTERM, waits as long again, then SIGKILL; the runs here set it to the 5 s that
/// `scripts/train.sh` gives a real job, Open MPI's default being 1 s), and to a single rank (a scheduler that
/// signals processes one by one: the others learn of it only through the stop vote).
final class PreemptionTests: XCTestCase {
    static let data = CheckpointTests.data

    func testSIGINTToTrainSavesAndResumesBitIdentical() throws {
        try interruptAndResume(executable: "train", np: nil, signal: SIGINT, target: .launcher)
    }

    func testSIGTERMToMpirunOfFSDP2SavesAndResumesBitIdentical() throws {
        try interruptAndResume(executable: "train_fsdp", np: 2, signal: SIGTERM, target: .launcher)
    }

    /// Only rank 1 is signalled; rank 0, which writes the checkpoint, must stop at the same step.
    func testSIGTERMToOneRankStopsEveryRankAtTheSameStep() throws {
        try interruptAndResume(executable: "train_fsdp", np: 2, signal: SIGTERM, target: .rank(1))
    }

    /// Without `--checkpoint-dir` the run still stops cleanly, and says that nothing was saved.
    func testStopWithoutCheckpointDirectorySaysNothingWasSaved() throws {
        let run = try SignalledRun(executable: "train", np: nil, arguments: CheckpointTests.flags + ["--steps", "100000000"])
        defer { run.killEverything() }
        // The metrics buffer (64 KiB) reaches the file after about 2,500 steps: training has begun.
        try run.waitUntil("training has started", { run.hasWrittenMetrics })
        XCTAssertEqual(kill(run.process.processIdentifier, SIGTERM), 0)
        let outcome = try run.finish()
        XCTAssertEqual(outcome.status, 128 + SIGTERM, outcome.stderr)
        XCTAssertEqual(outcome.stderrLines.count, 1, outcome.stderr)
        XCTAssertTrue(outcome.stderr.hasPrefix("error: stopped by SIGTERM after step "), outcome.stderr)
        XCTAssertTrue(outcome.stderr.contains("; nothing saved (no --checkpoint-dir)"), outcome.stderr)
    }

    /// The vote costs one 4-byte call per step on each rank, counted apart (`stop_vote`), and
    /// nothing on one rank; the layout's own allreduce (FSDP's loss) is unchanged.
    func testStopVoteIsOneFourByteCallPerStep() throws {
        for np in [2, 3] {
            let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
            let run = try Launch.run("train_fsdp", np: np, CheckpointTests.flags + ["--steps", "40", "--metrics", metrics], timeout: 120)
            XCTAssertEqual(run.status, 0, run.stderr)
            let last = try XCTUnwrap(Metrics(path: metrics).records.last)
            let perRank = try XCTUnwrap(last["comm_per_rank"] as? [[String: [String: Any]]])
            XCTAssertEqual(perRank.count, np)
            for comm in perRank {
                XCTAssertEqual(comm["stop_vote"]?["calls"] as? Int, 40, "\(comm)")
                XCTAssertEqual(comm["stop_vote"]?["bytes"] as? Int, 160, "\(comm)")
                XCTAssertEqual(comm["allreduce"]?["bytes"] as? Int, 40 * (4 + 8), "FSDP's 4-byte loss and 8-byte gradient norm, unchanged")
            }
        }
        let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
        let run = try Launch.run("train", CheckpointTests.flags + ["--steps", "40", "--metrics", metrics], timeout: 120)
        XCTAssertEqual(run.status, 0, run.stderr)
        let comm = try XCTUnwrap(Metrics(path: metrics).records.last?["comm"] as? [String: [String: Any]])
        XCTAssertEqual(comm["stop_vote"]?["calls"] as? Int, 0, "one rank votes with nobody")
    }

    enum Target { case launcher, rank(Int) }

    /// The losses of a run of `steps` steps in all (resuming from `resume`).
    func losses(_ executable: String, np: Int?, steps: Int, resume: String? = nil) throws -> (Launch.Outcome, [Float]) {
        try Launch.losses(executable, np: np, CheckpointTests.flags, steps: steps, resume: resume)
    }

    /// Trains until rank 0's metrics reach the file (after about 2,500 steps: the 64 KiB buffer),
    /// signals `target`, then checks the stop and the resume. No `--save-every`: the only
    /// checkpoint is the one the stop saves.
    func interruptAndResume(executable: String, np: Int?, signal: Int32, target: Target,
                            file: StaticString = #filePath, line: UInt = #line) throws {
        let label = "\(executable) -np \(np ?? 1), \(signal == SIGTERM ? "SIGTERM" : "SIGINT") to \(target)"
        let dir = try Launch.temporaryDirectory().path
        let run = try SignalledRun(executable: executable, np: np,
                                   arguments: CheckpointTests.flags + ["--steps", "100000000", "--checkpoint-dir", dir])
        defer { run.killEverything() }
        try run.waitUntil("training has started", { run.hasWrittenMetrics })
        switch target {
        case .launcher:
            XCTAssertEqual(kill(run.process.processIdentifier, signal), 0, label, file: file, line: line)
        case let .rank(rank):
            let ranks = Dictionary(uniqueKeysWithValues: Job.children(of: run.process.processIdentifier).compactMap { pid in
                Job.environment(of: pid)["OMPI_COMM_WORLD_RANK"].flatMap(Int.init).map { ($0, pid) }
            })
            let pid = try XCTUnwrap(ranks[rank], "\(label): ranks \(ranks)", file: file, line: line)
            XCTAssertEqual(kill(pid, signal), 0, label, file: file, line: line)
        }
        let outcome = try run.finish()
        XCTAssertFalse(outcome.timedOut, label, file: file, line: line)
        if np == nil { XCTAssertEqual(outcome.status, 128 + signal, label, file: file, line: line) }
        XCTAssertNotEqual(outcome.status, 0, label, file: file, line: line)

        // One line naming the signal, the step and the checkpoint; the metrics end at that step.
        let errors = outcome.stderrLines.filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors.count, 1, "\(label): \(outcome.stderr)", file: file, line: line)
        let name = signal == SIGTERM ? "SIGTERM" : "SIGINT"
        let prefix = "error: stopped by \(name) after step "
        let error = try XCTUnwrap(errors.first, file: file, line: line)
        XCTAssertTrue(error.hasPrefix(prefix), "\(label): \(error)", file: file, line: line)
        let stop = try XCTUnwrap(Int(error.dropFirst(prefix.count).prefix { $0.isNumber }), error, file: file, line: line)
        let folder = "step-" + String(format: "%08d", stop)
        XCTAssertTrue(error.hasSuffix("; saved '\(dir)/\(folder)' (continue with --resume \(dir))"), error, file: file, line: line)
        let interrupted = try Metrics(path: run.metrics).losses
        XCTAssertEqual(interrupted.count, stop, "\(label): a loss for every step before the stop", file: file, line: line)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        XCTAssertEqual(names, [folder], "\(label): the stop's checkpoint, and nothing else", file: file, line: line)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir)/\(folder)/COMPLETE"), label, file: file, line: line)

        // Resume 30 more steps; the whole sequence equals an uninterrupted run bit for bit.
        let (resumed, rest) = try losses(executable, np: np, steps: stop + 30, resume: dir)
        XCTAssertTrue(resumed.stdout.contains("resumed from step \(stop) of \(dir)"), resumed.stdout, file: file, line: line)
        let (_, full) = try losses(executable, np: np, steps: stop + 30)
        XCTAssertEqual(interrupted + rest, full, "\(label): interrupted + resumed must equal the uninterrupted run", file: file, line: line)
    }
}

/// A training run in the background (`executable`, or `mpirun -np N executable`), to be signalled.
final class SignalledRun {
    let process = Process()
    let metrics: String
    let output: URL
    let errors: URL
    let started = Date()

    init(executable: String, np: Int?, arguments: [String]) throws {
        let dir = try Launch.temporaryDirectory()
        metrics = dir.appendingPathComponent("m.jsonl").path
        output = dir.appendingPathComponent("stdout")
        errors = dir.appendingPathComponent("stderr")
        for file in [output, errors] {
            guard FileManager.default.createFile(atPath: file.path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        }
        let path = Launch.bin.appendingPathComponent(executable).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            XCTFail("\(path) is missing: run scripts/test.sh (it builds release first)")
            throw CocoaError(.fileNoSuchFile)
        }
        let all = arguments + ["--log-every", "100000000", "--metrics", metrics]
        if let np {
            // /usr/bin/env execs mpirun, so the process's PID is mpirun's and its children are the ranks.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            // The time a save gets between mpirun's SIGTERM and its SIGKILL: what scripts/train.sh
            // and the README give a real job (`odls_base_sigkill_timeout` 5 s), not Open MPI's 1 s.
            process.arguments = ["mpirun", "--oversubscribe", "--bind-to", "none", "--mca", "odls_base_sigkill_timeout", "5",
                                 "-np", "\(np)", path] + all
        } else {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = all
        }
        process.environment = Launch.environment
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = try FileHandle(forWritingTo: errors)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var hasWrittenMetrics: Bool { ((try? FileManager.default.attributesOfItem(atPath: metrics)[.size] as? Int) ?? 0) > 0 }

    /// Polls `condition` until it holds (at most 180 s: the machine may be loaded).
    func waitUntil(_ what: String, _ condition: () -> Bool) throws {
        while !condition() {
            if !process.isRunning {
                XCTFail("the run ended before \(what): \((try? String(contentsOf: errors, encoding: .utf8)) ?? "")")
                throw CocoaError(.executableLoad)
            }
            if Date().timeIntervalSince(started) > 180 {
                XCTFail("no \(what) after 180 s")
                throw CocoaError(.executableLoad)
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    /// Waits for the run to end (at most 60 s) and returns what it wrote.
    func finish() throws -> Launch.Outcome {
        let start = Date()
        var timedOut = false
        while process.isRunning {
            if Date().timeIntervalSince(start) > 60 { timedOut = true; killEverything(); break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        process.waitUntilExit()
        return Launch.Outcome(status: process.terminationStatus,
                              stdout: (try? String(contentsOf: output, encoding: .utf8)) ?? "",
                              stderr: (try? String(contentsOf: errors, encoding: .utf8)) ?? "",
                              seconds: Date().timeIntervalSince(started), timedOut: timedOut)
    }

    /// SIGKILL to the launcher and every process of this run still running.
    func killEverything() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        for pid in Job.running(mentioning: metrics) { kill(pid, SIGKILL) }
    }
}
