import XCTest

/// The `collectives` benchmark runs to the end on two ranks: the sweep fits every collective the
/// layouts use, and `--overlap` (MPI_THREAD_SERIALIZED, a communication thread) measures all
/// three ways for a payload and ends (the thread is joined; no rank hangs). Timing is not checked.
final class CollectivesBenchmarkTests: XCTestCase {
    func testSweepFitsEveryCollective() throws {
        let out = try Launch.run("collectives", np: 2, ["--max-bytes", "4096", "--seconds", "0.01"], timeout: 120)
        XCTAssertEqual(out.status, 0, out.stderr)
        for name in ["allreduce (mpi)", "allgather (mpi)", "reduce-scatter (ring)", "broadcast (mpi)", "send/recv (mpi, one way)",
                     "all-to-all (mpi)"] {
            XCTAssertTrue(out.stdout.contains("\(name)") && out.stdout.split(separator: "\n").contains { $0.contains(name) && $0.contains("α =") },
                          "no fit for \(name):\n\(out.stdout)")
        }
    }

    func testOverlapMeasuresEveryWayAndEnds() throws {
        let out = try Launch.run("collectives", np: 2, ["--overlap", "--max-bytes", "80000", "--seconds", "0.01"], timeout: 120)
        XCTAssertEqual(out.status, 0, out.stderr)
        XCTAssertFalse(out.timedOut)
        let row = try XCTUnwrap(out.stdout.split(separator: "\n").first { $0.hasPrefix("74540 ") }, out.stdout)
        let fields = row.split(separator: " ")
        XCTAssertEqual(fields.count, 9, "bytes, allreduce, pieces, compute, sequential, polling, thread, two hidden shares: \(row)")
        for field in fields[1...6] { XCTAssertGreaterThan(Double(field) ?? 0, 0, "\(row)") }
        XCTAssertNil(out.stdout.split(separator: "\n").first { $0.hasPrefix("1048576 ") }, "only payloads up to --max-bytes")
    }
}
