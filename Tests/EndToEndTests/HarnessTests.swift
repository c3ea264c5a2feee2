import Foundation
import XCTest

/// The harness's readers, on files written here (no run): what they must not hide.
final class HarnessTests: XCTestCase {
    func write(_ lines: [String]) throws -> String {
        let path = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// The metrics write a non-finite loss or norm as `null`: the reader keeps the record, as NaN,
    /// so that every check of the losses sees it (it used to drop the record).
    func testNonFiniteLossesAreReadAsNaN() throws {
        let metrics = try Metrics(path: try write([#"{"step":0,"loss":1.5,"grad_norm":0.5}"#, #"{"step":1,"loss":null,"grad_norm":null}"#,
                                                   #"{"val_loss":null,"steps":2}"#]))
        XCTAssertEqual(metrics.losses.count, 2)
        XCTAssertEqual(metrics.losses[0], 1.5)
        XCTAssertTrue(metrics.losses[1].isNaN)
        XCTAssertFalse(metrics.losses.allSatisfy(\.isFinite))
        XCTAssertEqual(metrics.gradientNorms.count, 2)
        XCTAssertTrue(metrics.gradientNorms[1].isNaN)
        XCTAssertNil(metrics.valLoss, "a null validation loss is missing, and XCTUnwrap of it fails")
    }

    /// The ledger readers: a kind that is listed reads as its number; `count` of a kind that is
    /// not listed fails (checked by hand: it cannot be asserted here without failing this test),
    /// and the communication record is read field by field.
    func testLedgerKindsAreReadAsListed() throws {
        let metrics = try Metrics(path: try write([#"{"step":0,"loss":1}"#,
                                                   #"{"val_loss":1,"comm":{"allreduce":{"calls":3,"bytes":12,"seconds":0.5}}}"#]))
        let comm = try metrics.communication()
        XCTAssertEqual(try comm.count("allreduce", "calls"), 3)
        XCTAssertEqual(try comm.count("allreduce", "bytes"), 12)
        XCTAssertNil(comm["reduce_scatter"])
    }
}
