import Foundation
import XCTest
import Distributed

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs one XCTest method on several MPI ranks, from inside an ordinary `swift test`.
///
/// MPI can be initialised once per process, and the test process itself must never do it (a
/// process that ran `MPI_Init` cannot start `mpirun` cleanly, and every later test would share
/// its world). So a test method that needs ranks begins with
///
///     guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
///     let world = MPI.initialize()
///     ...
///
/// In the ordinary run (`PARALLELISMS_MPI_TEST` unset) ``runUnderMPI(ranks:test:method:timeout:file:line:)``
/// starts `mpirun --oversubscribe --bind-to none -np <ranks> <this test binary> <that one test>`
/// with `PARALLELISMS_MPI_TEST=1`, asserts that it exits 0 within the timeout (printing every
/// rank's output when it does not), and returns `false`: the method returns. In each of the
/// children (`PARALLELISMS_MPI_TEST` set) it returns `true` and the method goes on to do the real
/// work on its rank. A failed assertion makes that rank's test binary exit 1, so `mpirun` exits
/// non-zero and the outer test fails. MPI is finalised at exit.
///
/// A rank that skips a collective the others enter leaves them waiting for ever: inner tests
/// make every collective call unconditionally and assert only after the last one; the timeout
/// is the last resort.
enum MPITestLauncher {
    /// Set (to anything) in the children `mpirun` starts.
    static let variable = "PARALLELISMS_MPI_TEST"

    static var isInnerRun: Bool { ProcessInfo.processInfo.environment[variable] != nil }

    /// - Parameters:
    ///   - ranks: `-np` for `mpirun`.
    ///   - test: the running test case (its class names the test to select).
    ///   - method: the test method (defaults to the caller's name).
    ///   - timeout: seconds before `mpirun` is killed and the test fails.
    /// - Returns: `true` in an MPI child, where the caller should run its check; `false` in the
    ///   launching process, after the children have run (and their outcome has been asserted).
    static func runUnderMPI(ranks: Int, test: XCTestCase, method: String = #function, timeout: Double = 120,
                            file: StaticString = #filePath, line: UInt = #line) -> Bool {
        if isInnerRun {
            atexit { MPI.finalize() }
            return true
        }
        let name = method.hasSuffix("()") ? String(method.dropLast(2)) : method
        let selection: [String]
        let binary: String
        #if os(Linux)
        // SwiftPM's test product on Linux is an executable (`…PackageTests.xctest`) whose
        // arguments are a comma-separated list of `Module.Class/method`.
        binary = executablePath()
        selection = [String(reflecting: type(of: test)) + "/" + name]
        #else
        // Darwin: the bundle is loaded by `xctest`, which selects with `-XCTest Class/method`.
        // (Not exercised here; the project's tests run on Linux.)
        binary = "/usr/bin/xcrun"
        selection = ["xctest", "-XCTest", String(describing: type(of: test)) + "/" + name,
                     Bundle(for: type(of: test)).bundlePath]
        #endif
        let arguments = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "\(ranks)", binary] + selection
        do {
            let outcome = try run(arguments, timeout: timeout)
            let command = arguments.joined(separator: " ")
            if outcome.timedOut {
                XCTFail("\(command) was killed after \(Int(timeout)) s (a rank waiting in a collective?)\n"
                        + outcome.output, file: file, line: line)
            } else if outcome.status != 0 {
                XCTFail("\(command) exited \(outcome.status)\n" + outcome.output, file: file, line: line)
            } else {
                // XCTest exits 0 when its filter selects nothing: each rank must say it ran the test.
                let passed = "Test Case '\(String(describing: type(of: test))).\(name)' passed"
                let ran = outcome.output.components(separatedBy: passed).count - 1
                XCTAssertEqual(ran, ranks, "\(command): \(ranks) rank(s) should each have run the test once\n" + outcome.output,
                               file: file, line: line)
            }
        } catch {
            XCTFail("could not start mpirun: \(error)", file: file, line: line)
        }
        return false
    }

    /// The running test binary, absolute.
    static func executablePath() -> String {
        if let path = Bundle.main.executablePath { return path }
        let first = CommandLine.arguments[0]
        return first.hasPrefix("/") ? first : FileManager.default.currentDirectoryPath + "/" + first
    }

    /// The parent's environment without `OMPI_*`/`PMIX_*` (left by any `MPI_Init`; a child
    /// `mpirun` that inherits them exits 1 without a word), allowed to run as root, and marked
    /// as an MPI child.
    static var childEnvironment: [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("OMPI_") && !$0.key.hasPrefix("PMIX_") }
        if getuid() == 0 {
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        }
        env[variable] = "1"
        // The point-to-point layer Open MPI selects here anyway, named so MPI_Init skips probing
        // UCX (half of a launch's time; see EndToEndTests' `Launch.testTransport`).
        env["OMPI_MCA_pml"] = "ob1"
        return env
    }

    struct Outcome {
        var status: Int32
        var timedOut: Bool
        /// stdout then stderr of `mpirun` and every rank.
        var output: String
    }

    /// Runs `arguments` through `/usr/bin/env`, output to files (a full pipe would block the
    /// children), killing it after `timeout` seconds.
    static func run(_ arguments: [String], timeout: Double) throws -> Outcome {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ps-mpitest-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("stdout"), err = dir.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.environment = childEnvironment
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        process.standardInput = FileHandle.nullDevice
        let start = Date()
        try process.run()
        var timedOut = false
        while process.isRunning {
            if Date().timeIntervalSince(start) > timeout {
                timedOut = true
                process.terminate()  // mpirun passes SIGTERM on to the ranks
                Thread.sleep(forTimeInterval: 3)
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                break
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        process.waitUntilExit()
        let stdout = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOf: err, encoding: .utf8)) ?? ""
        return Outcome(status: process.terminationStatus, timedOut: timedOut,
                       output: "--- stdout ---\n\(stdout)--- stderr ---\n\(stderr)")
    }
}
