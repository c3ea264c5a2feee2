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
        if getuid() == 0 {
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        }
        return env
    }

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

    /// Runs `executable` with `arguments`, under `mpirun -np np` unless `np` is nil.
    static func run(_ executable: String, np: Int? = nil, _ arguments: [String], environment extra: [String: String] = [:],
                    timeout: Double = 300, file: StaticString = #filePath, line: UInt = #line) throws -> Outcome {
        try run(executable, np: np, [], then: arguments, environment: extra, timeout: timeout, file: file, line: line)
    }

    /// `XDG_CACHE_HOME` of every run of this test process: the first run measures the peak, the
    /// others read it.
    static let cacheHome = try! temporaryDirectory().path

    /// A fresh directory under the system's temporary directory.
    static func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ps-e2e-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
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

    /// Writes the names file into a new temporary directory and returns its path.
    static func write(_ text: String = names) throws -> String {
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

    init(path: String) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        for line in text.split(separator: "\n") {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            records.append(object)
            if let step = object["step"] as? Int, let loss = object["loss"] as? Double {
                if firstStep == nil { firstStep = step }
                XCTAssertEqual(step, firstStep! + losses.count, "steps are consecutive")
                losses.append(Float(loss))
                if let norm = object["grad_norm"] as? Double { gradientNorms.append(Float(norm)) }
            }
            if let v = object["val_loss"] as? Double {
                if let step = object["step"] as? Int { validation.append((step, Float(v))) } else { valLoss = Float(v) }
            }
            if object["step"] == nil { final = object }
        }
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
