import Foundation
import XCTest

/// A checkpoint that cannot be written — the disk is full, or mounted read-only — ends the run
/// with one line naming the directory and the system's reason, non-zero, leaves nothing of the
/// failed save behind, and the previous checkpoint stays complete: resuming from it works and
/// trains exactly what the failed run trained.
///
/// Real file systems, not simulated errors: a 1 MiB tmpfs filled to the brim, and a read-only
/// bind mount. Both need root (mount); without root the tests are skipped with a message, and as
/// root a mount that fails fails the test.
final class SaveFailureTests: XCTestCase {
    static let data = CheckpointTests.data
    var mounts: [String] = []

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("skipped: mounting a tmpfs or a read-only bind mount needs root") }
    }

    override func tearDown() {
        for mount in mounts.reversed() where system(["umount", mount]) != 0 { _ = system(["umount", "-l", mount]) }
        mounts = []
    }

    /// Runs a command quietly; returns its exit status.
    @discardableResult
    func system(_ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Mounts with `arguments` (the mount point last), or skips saying why it could not.
    func mount(_ arguments: [String]) throws {
        // As root (CI, and every machine of this project) mounting must work: a failure here is a
        // failure of the test, never a silent skip.
        guard system(["mount"] + arguments) == 0 else {
            XCTFail("'mount \(arguments.joined(separator: " "))' failed as root")
            throw CocoaError(.featureUnsupported)
        }
        mounts.append(arguments.last!)
    }

    /// FSDP-2 trains 20 steps into `directory`, then (after `prepare`) resumes from `resumeFrom`
    /// to 40 with `--save-every 10`: the save at step 30 must fail with a reason starting with
    /// `reason`, and the step-20 checkpoint must still resume to the same losses.
    func checkFailedSave(directory: String, resumeFrom: String, reason: String, prepare: () throws -> Void,
                         file: StaticString = #filePath, line: UInt = #line) throws {
        let layout = CheckpointTests.Layout(executable: "train_fsdp", np: 2)
        let (first, _) = try losses(layout, steps: 20, into: directory)
        XCTAssertEqual(first.status, 0, first.stderr, file: file, line: line)
        try prepare()

        let (failed, trained) = try losses(layout, steps: 40, saveEvery: 10, into: resumeFrom, resume: resumeFrom)
        XCTAssertNotEqual(failed.status, 0, file: file, line: line)
        XCTAssertFalse(failed.timedOut, file: file, line: line)
        let errors = failed.stderrLines.filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors.count, 1, failed.stderr, file: file, line: line)
        let expected = "error: cannot save checkpoint step-00000030 in '\(resumeFrom)': \(reason)"
        XCTAssertTrue(errors.first?.hasPrefix(expected) ?? false, "\(expected)… ∉ \(failed.stderr)", file: file, line: line)
        XCTAssertEqual(trained.count, 10, "steps 20…29 ran, then the save failed", file: file, line: line)
        let names = try FileManager.default.contentsOfDirectory(atPath: resumeFrom).sorted()
        XCTAssertTrue(names.contains("step-00000020"), "\(names)", file: file, line: line)
        XCTAssertFalse(names.contains { $0.hasPrefix(".step-") || $0 == "step-00000030" }, "leftovers: \(names)", file: file, line: line)

        let (resumed, again) = try losses(layout, steps: 30, resume: resumeFrom)
        XCTAssertEqual(resumed.status, 0, resumed.stderr, file: file, line: line)
        XCTAssertTrue(resumed.stdout.contains("resumed from step 20"), resumed.stdout, file: file, line: line)
        XCTAssertEqual(again, trained, "the previous checkpoint resumes exactly", file: file, line: line)
    }

    func testFullDiskKeepsThePreviousCheckpoint() throws {
        let point = try Launch.temporaryDirectory().path
        try mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", point])
        try checkFailedSave(directory: point, resumeFrom: point, reason: "No space left on device (writing parameters.f32)") {
            // Fill the file system, then free 8 KiB: the next save starts, writes part of its
            // first file and fails in the middle of it.
            let filler = point + "/filler"
            let fd = open(filler, O_WRONLY | O_CREAT, 0o644)
            XCTAssertGreaterThanOrEqual(fd, 0)
            let chunk = [UInt8](repeating: 0x55, count: 4096)
            var size = 0
            while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == chunk.count { size += chunk.count }
            XCTAssertEqual(ftruncate(fd, off_t(max(0, size - 8192))), 0)
            close(fd)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: point).sorted(), ["filler", "step-00000020"])
    }

    func testReadOnlyDiskKeepsThePreviousCheckpoint() throws {
        let source = try Launch.temporaryDirectory().path, point = try Launch.temporaryDirectory().path
        // The temporary folder's name ends in rank 0's PID.
        try checkFailedSave(directory: source, resumeFrom: point, reason: "Read-only file system (creating .step-00000030.tmp-") {
            try mount(["--bind", source, point])
            try mount(["-o", "remount,bind,ro", point])
        }
    }

    /// The losses of a run of `steps` steps in all, saving into / resuming from directories.
    func losses(_ layout: CheckpointTests.Layout, steps: Int, saveEvery: Int? = nil, into directory: String? = nil,
                resume: String? = nil) throws -> (Launch.Outcome, [Float]) {
        try Launch.losses(layout.executable, np: layout.np, CheckpointTests.flags + layout.extra, steps: steps, saveEvery: saveEvery,
                          into: directory, resume: resume, expectSuccess: false)
    }
}
