import Foundation
import XCTest

/// A checkpoint records its data file's size and CRC-32; resuming on different data is refused
/// with one line naming both files, unless `--allow-data-change` accepts it (with a note).
final class DataChangeTests: XCTestCase {
    /// The small names file, and the same names minus the last one: same characters, so the same
    /// vocabulary and model — only the data check can tell them apart.
    static let original = CheckpointTests.data
    static let changed = try! SmallData.write(SmallData.names.split(separator: "\n").dropLast().joined(separator: "\n") + "\n")

    func run(data: String, steps: Int, checkpoint: String? = nil, resume: String? = nil, extra: [String] = []) throws -> Launch.Outcome {
        // CheckpointTests.flags without its --data.
        let flags = CheckpointTests.flags, at = flags.firstIndex(of: "--data")!
        var args = Array(flags[..<at] + flags[(at + 2)...]) + ["--data", data, "--steps", "\(steps)"] + extra
        if let checkpoint { args += ["--checkpoint-dir", checkpoint] }
        if let resume { args += ["--resume", resume] }
        return try Launch.run("train_fsdp", np: 2, args, timeout: 120)
    }

    func testDifferentDataIsRefusedUnlessAllowed() throws {
        let dir = try Launch.temporaryDirectory().path
        XCTAssertEqual(try run(data: Self.original, steps: 10, checkpoint: dir).status, 0)
        let state = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/step-00000010/state.json")))
        let data = try XCTUnwrap((state as? [String: Any])?["data"] as? [String: Any])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: Self.original))
        XCTAssertEqual(data["path"] as? String, Self.original)
        XCTAssertEqual(data["bytes"] as? Int, bytes.count)
        XCTAssertEqual((state as? [String: Any])?["version"] as? Int, 2)

        let refused = try run(data: Self.changed, steps: 20, resume: dir)
        let error = Refusal.check(refused, label: "resume on changed data", expected: [])
        XCTAssertTrue(error.hasPrefix("error: checkpoint '\(dir)/step-00000010' was trained on '\(Self.original)' ("), error)
        XCTAssertTrue(error.contains("but --data is '\(Self.changed)' ("), error)
        XCTAssertTrue(error.hasSuffix("pass --allow-data-change to continue on different data"), error)
        XCTAssertFalse(refused.stdout.contains("resumed from"), refused.stdout)

        let allowed = try run(data: Self.changed, steps: 20, resume: dir, extra: ["--allow-data-change"])
        XCTAssertEqual(allowed.status, 0, allowed.stderr)
        XCTAssertTrue(allowed.stdout.contains("note: --allow-data-change: continuing on '\(Self.changed)'"), allowed.stdout)
        XCTAssertTrue(allowed.stdout.contains("resumed from step 10"), allowed.stdout)
    }

    /// A checkpoint written before data files were recorded (format version 1: no `data` key)
    /// still resumes, with a note that its data cannot be checked.
    func testVersionOneCheckpointResumesWithANote() throws {
        let dir = try Launch.temporaryDirectory().path
        XCTAssertEqual(try run(data: Self.original, steps: 10, checkpoint: dir).status, 0)
        let folder = dir + "/step-00000010"
        var state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/state.json")))
                                  as? [String: Any])
        state["version"] = 1
        state["data"] = nil
        let bytes = try JSONSerialization.data(withJSONObject: state)
        try bytes.write(to: URL(fileURLWithPath: folder + "/state.json"))
        try Data("\(Self.crc32(bytes))\n".utf8).write(to: URL(fileURLWithPath: folder + "/COMPLETE"))

        let resumed = try run(data: Self.changed, steps: 20, resume: dir)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("note: checkpoint '\(folder)' does not record its data file (format version 1): '\(Self.changed)' ("),
                      resumed.stdout)
        XCTAssertTrue(resumed.stdout.contains("resumed from step 10"), resumed.stdout)
    }

    /// zlib's CRC-32 (the checkpoint's), bit by bit.
    static func crc32(_ data: Data) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in data {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
        }
        return crc ^ 0xFFFF_FFFF
    }

    func testAllowDataChangeNeedsResume() throws {
        let run = try Launch.run("train", ["--data", Self.original, "--allow-data-change"], timeout: 30)
        XCTAssertNotEqual(run.status, 0)
        XCTAssertEqual(run.stderrLines, ["error: --allow-data-change needs --resume (see --help)"])
    }

    /// The same bytes under another path are the same data: accepted without a note.
    func testSameContentElsewhereIsAccepted() throws {
        let dir = try Launch.temporaryDirectory().path
        XCTAssertEqual(try run(data: Self.original, steps: 10, checkpoint: dir).status, 0)
        let copy = try SmallData.write(try String(contentsOfFile: Self.original, encoding: .utf8))
        XCTAssertNotEqual(copy, Self.original)
        let resumed = try run(data: copy, steps: 20, resume: dir)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertFalse(resumed.stdout.contains("note:"), resumed.stdout)
        XCTAssertTrue(resumed.stdout.contains("resumed from step 10"), resumed.stdout)
    }
}
