import Foundation
import XCTest

/// Launches the release executables, directly or under mpirun, and reads what they write.
///
/// `scripts/test.sh` builds release before `swift test`; the tests run those binaries. The
/// environment is cleaned of `OMPI_*`/`PMIX_*` variables (a process that ever ran MPI_Init
/// carries them, and a child mpirun that inherits them exits 1 without a word).
enum Launch {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let bin = root.appendingPathComponent(".build/release")

    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
        var seconds: Double
        var timedOut: Bool
        var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }
    }

    static var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("OMPI_") && !$0.key.hasPrefix("PMIX_") }
        // The runs' MFU peak is cached here, not in the user's ~/.cache (see `MachinePeak`).
        env["XDG_CACHE_HOME"] = cacheHome
        env["OMPI_MCA_pml"] = testTransport
        if getuid() == 0 {
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        }
        return env
    }

    /// Open MPI's point-to-point layer for every test run: `ob1`, the one it selects on these
    /// machines anyway, named so that MPI_Init skips probing UCX first (which costs each launch
    /// about 0.2 s, half its time, and changes nothing: UCX is not chosen on one host here).
    static let testTransport = "ob1"

    /// Runs `executable` with `arguments`, under `mpirun -np np` unless `np` is nil.
    /// `mpirunArguments` go to mpirun before the executable; `environment` adds variables.
    static func run(_ executable: String, np: Int? = nil, _ mpirunArguments: [String] = [], then arguments: [String],
                    environment extra: [String: String] = [:], timeout: Double = 300,
                    file: StaticString = #filePath, line: UInt = #line) throws -> Outcome {
        let path = bin.appendingPathComponent(executable).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            XCTFail("\(path) is missing: run scripts/test.sh (it builds release first)", file: file, line: line)
            throw CocoaError(.fileNoSuchFile)
        }
        let process = Process()
        if let np {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "\(np)"] + mpirunArguments + [path] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
        }
        process.environment = environment.merging(extra) { $1 }
        return try finish(process, timeout: timeout)
    }

    /// Runs a configured `process` (executable, arguments, environment set) to its end, its stdout
    /// and stderr captured in files, terminated (then killed) after `timeout` seconds.
    static func finish(_ process: Process, timeout: Double) throws -> Outcome {
        let dir = try temporaryDirectory()
        let out = dir.appendingPathComponent("stdout"), err = dir.appendingPathComponent("stderr")
        guard FileManager.default.createFile(atPath: out.path, contents: nil),
              FileManager.default.createFile(atPath: err.path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        process.standardInput = FileHandle.nullDevice
        let start = Date()
        try process.run()
        var timedOut = false
        while process.isRunning {
            if Date().timeIntervalSince(start) > timeout {
                timedOut = true
                process.terminate()
                Thread.sleep(forTimeInterval: 2)
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                break
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        process.waitUntilExit()
        let seconds = Date().timeIntervalSince(start)
        return Outcome(status: process.terminationStatus,
                       stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
                       stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "",
                       seconds: seconds, timedOut: timedOut)
    }

    /// Runs `jobs` (independent launches) `width` at a time and returns their results in order.
    ///
    /// A launch mostly waits (mpirun's start and the ranks' MPI_Init take most of its half second,
    /// little of it on a core), so independent runs overlap well even on 2 cores. Jobs must not
    /// assert (XCTest's assertions belong on the test's thread): return what to check, and check
    /// it afterwards.
    static func concurrently<T>(_ jobs: [() throws -> T], width: Int = 3) throws -> [T] {
        let work = ConcurrentWork(jobs)
        let done = DispatchGroup()
        for _ in 0..<min(width, jobs.count) {
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                while let index = work.take() {
                    let result = Result { try work.jobs[index]() }
                    work.lock.withLock { work.results[index] = result }
                }
            }
        }
        done.wait()
        return try work.results.map { try $0!.get() }
    }

    /// Runs `executable` with `arguments`, under `mpirun -np np` unless `np` is nil.
    static func run(_ executable: String, np: Int? = nil, _ arguments: [String], environment extra: [String: String] = [:],
                    timeout: Double = 300, file: StaticString = #filePath, line: UInt = #line) throws -> Outcome {
        try run(executable, np: np, [], then: arguments, environment: extra, timeout: timeout, file: file, line: line)
    }

    /// `XDG_CACHE_HOME` of every run the tests start: the first run of a test session measures the
    /// machine's peak (MFU's denominator) and caches it under `.build/`, the others read it. One
    /// place for every test process (they may run in parallel: `MachinePeak` writes its file by
    /// rename, so a reader sees a whole file or none).
    static let cacheHome = root.appendingPathComponent(".build/test-cache").path

    /// A fresh directory under the system's temporary directory.
    static func temporaryDirectory() throws -> URL {
        let dir = sessionDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Where this test process keeps its files (data, metrics, checkpoints, dumps): one folder,
    /// removed when the process exits, so a run of the suite leaves nothing behind in /tmp.
    static let sessionDirectory: URL = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ps-e2e-\(getpid())-\(UUID().uuidString.prefix(8))")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        sessionPath = dir.path
        atexit { if let path = Launch.sessionPath { try? FileManager.default.removeItem(atPath: path) } }
        return dir
    }()
    nonisolated(unsafe) static var sessionPath: String?
}

/// The one check of a refusal, used by every test of bad input: the run (direct, or each rank
/// under mpirun) exits non-zero in bounded time, stderr holds exactly one `error:` line and it
/// names the problem, and nothing crashed on the way (no crash trace from Swift, the C library
/// or mpirun).
enum Refusal {
    static let crashTraces = ["Fatal error", "Stack dump", "Backtrace", "Segmentation", "Aborted", "signal", "Killed",
                              "Illegal instruction", "core dumped"]

    /// Runs `executable` with `arguments` (under `mpirun -np np` unless `np` is nil), checks the
    /// refusal and returns its error line. Under mpirun every rank's own exit status is recorded
    /// (each runs inside a small `sh` that writes it) and must be non-zero: one rank refusing
    /// while the others hang or exit 0 fails. `stdoutEmpty`: nothing may be printed before the
    /// error (for refusals that come before the run starts).
    @discardableResult
    static func expect(_ executable: String, np: Int?, _ arguments: [String], _ expected: [String], stdoutEmpty: Bool = false,
                       environment: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let attempt = try launch(executable, np: np, arguments, environment: environment)
        return verify(attempt, expected, stdoutEmpty: stdoutEmpty, file: file, line: line)
    }

    /// A launch that should be refused, not yet checked (safe to run off the test's thread:
    /// ``Launch/concurrently(_:width:)``).
    struct Attempt {
        var label: String
        var outcome: Launch.Outcome
        /// Each rank's own exit status under mpirun (nil: the rank wrote none); empty for a direct run.
        var rankStatuses: [Int32?]
        var underMPI: Bool
    }

    static func launch(_ executable: String, np: Int?, _ arguments: [String], environment: [String: String] = [:]) throws -> Attempt {
        let label = "\(np.map { "mpirun -np \($0) " } ?? "")\(executable) \(arguments.joined(separator: " "))"
        guard let np else {
            return Attempt(label: label, outcome: try Launch.run(executable, arguments, environment: environment, timeout: 60),
                           rankStatuses: [], underMPI: false)
        }
        let statuses = try Launch.temporaryDirectory()
        let path = Launch.bin.appendingPathComponent(executable).path
        // mpirun would end the other ranks as soon as one exits non-zero; told not to, it
        // leaves each rank to end on its own, so a rank that would hang makes the run time out.
        let wrapped = ["--mca", "orte_abort_on_non_zero_status", "0", "-x", "PS_RANK_STATUS=\(statuses.path)",
                       "/bin/sh", "-c", Self.recordingStatus, path]
        let outcome = try Launch.runCommand(["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "\(np)"] + wrapped + arguments,
                                            environment: environment, timeout: 60)
        let codes = (0..<np).map { rank in
            (try? String(contentsOf: statuses.appendingPathComponent("\(rank)"), encoding: .utf8))
                .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        return Attempt(label: label, outcome: outcome, rankStatuses: codes, underMPI: true)
    }

    /// Checks an attempt's refusal; returns the error line.
    @discardableResult
    static func verify(_ attempt: Attempt, _ expected: [String], stdoutEmpty: Bool = false,
                       file: StaticString = #filePath, line: UInt = #line) -> String {
        // Told not to abort, mpirun itself exits 0 whatever the ranks did: their own statuses count.
        let error = check(attempt.outcome, label: attempt.label, expected: expected, stdoutEmpty: stdoutEmpty,
                          exitsNonZero: !attempt.underMPI, file: file, line: line)
        if attempt.underMPI {
            XCTAssertTrue(attempt.rankStatuses.allSatisfy { $0 != nil && $0 != 0 },
                          "\(attempt.label): every rank must exit non-zero; exit statuses \(attempt.rankStatuses)", file: file, line: line)
        }
        return error
    }

    static func expect(_ executable: String, np: Int?, _ arguments: [String], _ expected: String, stdoutEmpty: Bool = false,
                       environment: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws {
        try expect(executable, np: np, arguments, [expected], stdoutEmpty: stdoutEmpty, environment: environment, file: file, line: line)
    }

    /// The `sh -c` script around each rank: runs the executable with its arguments, writes its
    /// exit status to `$PS_RANK_STATUS/<world rank>`, and exits with it.
    static let recordingStatus = #""$0" "$@"; s=$?; echo $s > "$PS_RANK_STATUS/$OMPI_COMM_WORLD_RANK"; exit $s"#

    /// Checks a finished run's refusal (see ``Refusal``); returns the error line.
    @discardableResult
    static func check(_ run: Launch.Outcome, label: String, expected: [String], stdoutEmpty: Bool = false,
                      within seconds: Double = 30, exitsNonZero: Bool = true, file: StaticString = #filePath, line: UInt = #line) -> String {
        XCTAssertFalse(run.timedOut, "\(label) hung", file: file, line: line)
        XCTAssertLessThan(run.seconds, seconds, "\(label): answered after \(run.seconds) s", file: file, line: line)
        if exitsNonZero { XCTAssertNotEqual(run.status, 0, "\(label) exited 0", file: file, line: line) }
        let errors = run.stderrLines.filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors.count, 1, "\(label): exactly one error line expected in: \(run.stderr)", file: file, line: line)
        for text in expected {
            XCTAssertTrue(errors.first?.contains(text) ?? false, "\(label): expected '\(text)' in: \(run.stderr)", file: file, line: line)
        }
        for trace in crashTraces {
            XCTAssertFalse(run.stderr.contains(trace), "\(label): a crash trace ('\(trace)') in: \(run.stderr)", file: file, line: line)
        }
        if stdoutEmpty { XCTAssertEqual(run.stdout, "", "\(label): nothing on stdout before the error", file: file, line: line) }
        return errors.first ?? ""
    }
}

extension Launch {
    /// Runs `arguments` through `/usr/bin/env` in the tests' environment.
    static func runCommand(_ arguments: [String], environment extra: [String: String] = [:], timeout: Double) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.environment = environment.merging(extra) { $1 }
        return try finish(process, timeout: timeout)
    }
}

/// A small dataset the tests write themselves (tests never need ../shared).
enum SmallData {
    static let names = """
    emma olivia ava isabella sophia charlotte mia amelia harper evelyn abigail emily elizabeth mila ella
    avery sofia camila aria scarlett victoria madison luna grace chloe penelope layla riley zoey nora lily
    eleanor hannah lillian addison aubrey ellie stella natalie zoe leah hazel violet aurora savannah audrey
    brooklyn bella claire skylar lucy paisley everly anna caroline nova genesis emilia kennedy samantha maya
    willow kinsley naomi aaliyah elena sarah ariana allison gabriella alice madelyn cora ruby eva serenity
    autumn adeline hailey gianna valentina isla eliana quinn nevaeh ivy sadie piper lydia alexa josephine
    liam noah william james oliver benjamin elijah lucas mason logan alexander ethan jacob michael daniel
    henry jackson sebastian aiden matthew samuel david joseph carter owen wyatt john jack luke jayden dylan
    """.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: "\n") + "\n"

    /// The names file, written once per test process: every test that trains on the same small
    /// data passes the same path, so `train`'s reference runs (keyed on the flags, the path
    /// among them) are shared between tests.
    static let path: String = try! write(names)

    /// The names file's path (written once per process).
    static func write() throws -> String { path }

    /// Writes `text` into a new temporary directory and returns the file's path.
    static func write(_ text: String) throws -> String {
        let dir = try Launch.temporaryDirectory()
        let file = dir.appendingPathComponent("names.txt")
        try Data(text.utf8).write(to: file)
        return file.path
    }
}

/// The records of a `--metrics` file.
struct Metrics {
    var losses: [Float] = []
    /// The whole model's gradient norm per step (`grad_norm`), when the run recorded it.
    var gradientNorms: [Float] = []
    /// The first step recorded (0, or the step a resumed run continued from).
    var firstStep: Int?
    var valLoss: Float?
    /// `--val-every`'s records: (steps completed, validation loss).
    var validation: [(step: Int, loss: Float)] = []
    /// The final record (the one without a "step").
    var final: [String: Any]?
    var records: [[String: Any]] = []

    /// No records (a run that wrote no metrics file).
    init() {}

    init(path: String) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        for line in text.split(separator: "\n") {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            records.append(object)
            // A training record (it has "loss"; a non-finite loss is written as null and read as NaN,
            // so that no check of the losses can miss it).
            if let step = object["step"] as? Int, object["loss"] != nil {
                if firstStep == nil { firstStep = step }
                XCTAssertEqual(step, firstStep! + losses.count, "steps are consecutive")
                losses.append(Self.number(object["loss"]))
                if object["grad_norm"] != nil { gradientNorms.append(Self.number(object["grad_norm"])) }
            }
            if let v = object["val_loss"] as? Double {
                if let step = object["step"] as? Int { validation.append((step, Float(v))) } else { valLoss = Float(v) }
            }
            if object["step"] == nil { final = object }
        }
    }

    /// A JSON number as a Float; `null` (how the metrics write a non-finite value) as NaN.
    static func number(_ value: Any?) -> Float { (value as? Double).map(Float.init) ?? .nan }

    /// The final record, failing the test when the run wrote none.
    func finalRecord(file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        try XCTUnwrap(final, "the run wrote no final record", file: file, line: line)
    }

    /// The final record's `key` as `T`; a missing key or another type fails the test.
    func value<T>(_ key: String, as type: T.Type = T.self, file: StaticString = #filePath, line: UInt = #line) throws -> T {
        let record = try finalRecord(file: file, line: line)
        return try XCTUnwrap(record[key] as? T, "final record: no \(key) of type \(T.self) in \(record.keys.sorted())",
                             file: file, line: line)
    }

    /// The ledger's communication (`comm`, or `comm_per_rank` entries) by kind, as numbers.
    typealias Communication = [String: [String: Double]]

    static func communication(_ object: Any?, file: StaticString = #filePath, line: UInt = #line) throws -> Communication {
        let kinds = try XCTUnwrap(object as? [String: [String: Any]], "not a communication record: \(String(describing: object))",
                                  file: file, line: line)
        return kinds.mapValues { $0.compactMapValues { ($0 as? NSNumber)?.doubleValue } }
    }

    /// The whole job's communication over the training steps (`comm`).
    func communication(file: StaticString = #filePath, line: UInt = #line) throws -> Communication {
        try Self.communication(try finalRecord(file: file, line: line)["comm"], file: file, line: line)
    }

    /// Each rank's communication (`comm_per_rank`).
    func communicationPerRank(file: StaticString = #filePath, line: UInt = #line) throws -> [Communication] {
        let ranks = try value("comm_per_rank", as: [Any].self, file: file, line: line)
        return try ranks.map { try Self.communication($0, file: file, line: line) }
    }
}

extension Metrics.Communication {
    /// `field` ("calls" or "bytes") of `kind`: a kind the ledger does not list fails the test
    /// (never read as 0, so a renamed kind cannot pass an "== 0" check).
    func count(_ kind: String, _ field: String, file: StaticString = #filePath, line: UInt = #line) throws -> Double {
        let entry = try XCTUnwrap(self[kind], "no ledger kind '\(kind)' in \(keys.sorted())", file: file, line: line)
        return try XCTUnwrap(entry[field], "ledger kind '\(kind)' has no '\(field)'", file: file, line: line)
    }
}

extension Launch {
    /// Runs `executable` with `arguments` and `--metrics` into a fresh file; asserts it exits 0
    /// (unless `expectSuccess` is false) and returns the outcome with the records (empty when the
    /// run wrote none).
    @discardableResult
    static func trained(_ executable: String, np: Int?, _ arguments: [String], environment: [String: String] = [:],
                        expectSuccess: Bool = true, timeout: Double = 180,
                        file: StaticString = #filePath, line: UInt = #line) throws -> (Outcome, Metrics) {
        let metrics = try temporaryDirectory().appendingPathComponent("m.jsonl").path
        let mpirunArguments = np == nil ? [] : environment.sorted { $0.key < $1.key }.flatMap { ["-x", "\($0.key)=\($0.value)"] }
        let run = try run(executable, np: np, mpirunArguments, then: arguments + ["--metrics", metrics], environment: environment,
                          timeout: timeout, file: file, line: line)
        let label = "\(executable) -np \(np ?? 1) \(arguments.joined(separator: " "))"
        XCTAssertFalse(run.timedOut, "\(label) timed out", file: file, line: line)
        if expectSuccess { XCTAssertEqual(run.status, 0, "\(label): \(run.stderr)", file: file, line: line) }
        let records = FileManager.default.fileExists(atPath: metrics) ? try Metrics(path: metrics) : Metrics()
        return (run, records)
    }

    /// The per-step losses of a run of `arguments` for `steps` steps in all, saving checkpoints into
    /// `directory` (every `saveEvery` steps, and at the end) or resuming from `resume`: the shared
    /// half of every resume-and-compare check (the losses of a resumed run are the steps after
    /// the checkpoint, to be compared with the same steps of an uninterrupted run).
    static func losses(_ executable: String, np: Int?, _ arguments: [String], steps: Int, saveEvery: Int? = nil,
                       into directory: String? = nil, resume: String? = nil, environment: [String: String] = [:],
                       expectSuccess: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws -> (Outcome, [Float]) {
        var args = arguments + ["--steps", "\(steps)"]
        if let directory { args += ["--checkpoint-dir", directory] }
        if let saveEvery { args += ["--save-every", "\(saveEvery)"] }
        if let resume { args += ["--resume", resume] }
        let (run, metrics) = try trained(executable, np: np, args, environment: environment, expectSuccess: expectSuccess,
                                         timeout: 120, file: file, line: line)
        return (run, metrics.losses)
    }

    /// ``trained(_:np:_:environment:expectSuccess:timeout:file:line:)`` for a run that may fail:
    /// the outcome and the records (nil when the run wrote none).
    static func runWithMetrics(_ executable: String, np: Int?, _ arguments: [String], timeout: Double = 180) throws -> (Outcome, Metrics?) {
        let (run, metrics) = try trained(executable, np: np, arguments, expectSuccess: false, timeout: timeout)
        return (run, metrics.records.isEmpty ? nil : metrics)
    }
}

/// The `--dump` file: canonical parameters and the last step's gradients.
struct Dump {
    var parameters: [Float]
    var gradients: [Float]

    init(path: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let bytes = [UInt8](data)
        var newlines = 0, start = 0
        for (i, b) in bytes.enumerated() where b == 0x0A {
            newlines += 1
            if newlines == 2 { start = i + 1; break }
        }
        let header = try JSONSerialization.jsonObject(with: Data(bytes[bytes.firstIndex(of: 0x0A)! + 1..<start - 1])) as! [String: Any]
        let count = header["count"] as! Int
        XCTAssertEqual(bytes.count - start, 2 * count * 4)
        let floats = bytes[start...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        parameters = Array(floats[0..<count])
        gradients = Array(floats[count..<2 * count])
    }
}

/// The jobs, their results and the next job to start, shared by the worker threads under `lock`.
final class ConcurrentWork<T>: @unchecked Sendable {
    let jobs: [() throws -> T]
    var results: [Result<T, Error>?]
    var next = 0
    let lock = NSLock()
    init(_ jobs: [() throws -> T]) {
        self.jobs = jobs
        results = Array(repeating: nil, count: jobs.count)
    }
    func take() -> Int? {
        lock.withLock {
            defer { next += 1 }
            return next < jobs.count ? next : nil
        }
    }
}
