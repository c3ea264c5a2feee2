import XCTest
import Distributed
@testable import Training

/// The ledger report's output, without MPI: the table and the metrics JSON for given counters.
/// The expected text was produced by the report as it was when the counters were flat Doubles,
/// so this proves that the `CommunicationCounter` rewrite kept both formats byte for byte (the
/// `stop_vote`, then `all_to_all` and `all_to_all_v` rows and keys were added since, as the last kinds).
final class LedgerReportTests: XCTestCase {
    /// Two ranks over 4 steps: rank 0 allreduces and sends, rank 1 allreduces and receives;
    /// bytes that do not divide by the step count, seconds with a fractional microsecond.
    let report = LedgerReport(
        steps: 4,
        comm: [
            [CommunicationCounter(calls: 4, bytes: 4002, seconds: 0.0000123), CommunicationCounter(),
             CommunicationCounter(), CommunicationCounter(calls: 8, bytes: 1024, seconds: 0.5),
             CommunicationCounter(), CommunicationCounter(), CommunicationCounter(calls: 4, bytes: 16, seconds: 0.000002),
             CommunicationCounter(), CommunicationCounter()],
            [CommunicationCounter(calls: 4, bytes: 4002, seconds: 0.25), CommunicationCounter(),
             CommunicationCounter(), CommunicationCounter(),
             CommunicationCounter(calls: 8, bytes: 1024, seconds: 0.125), CommunicationCounter(),
             CommunicationCounter(calls: 4, bytes: 16, seconds: 0.000004), CommunicationCounter(), CommunicationCounter()],
        ],
        memory: [[100, 100, 0, 64, 8], [100, 100, 0, 64, 0]])

    func testTable() {
        XCTAssertEqual(report.table, """
            communication per training step (rank 0 | all ranks), over 4 steps:
              kind            calls   bytes (rank 0)   bytes (all ranks)   µs in MPI (rank 0)
              allreduce        1.00             1001                2001                  3.1
              send             2.00              256                 256             125000.0
              recv             0.00                0                 256                  0.0
              stop_vote        1.00                4                   8                  0.5
            memory per rank (bytes):
              rank   parameters    gradients    optimizer  activations      buffers       total
              0             100          100            0           64            8         272
              1             100          100            0           64            0         264
            """)
    }

    func testJSON() {
        let zero = #"{"calls":0,"bytes":0,"seconds":0.0}"#
        let rank0 = #"{"allreduce":{"calls":4,"bytes":4002,"seconds":1.23e-05},"allgather":"# + zero + #","reduce_scatter":"# + zero
            + #","send":{"calls":8,"bytes":1024,"seconds":0.5},"recv":"# + zero + #","broadcast":"# + zero
            + #","stop_vote":{"calls":4,"bytes":16,"seconds":2e-06},"all_to_all":"# + zero + #","all_to_all_v":"# + zero + "}"
        let rank1 = #"{"allreduce":{"calls":4,"bytes":4002,"seconds":0.25},"allgather":"# + zero + #","reduce_scatter":"# + zero
            + #","send":"# + zero + #","recv":{"calls":8,"bytes":1024,"seconds":0.125},"broadcast":"# + zero
            + #","stop_vote":{"calls":4,"bytes":16,"seconds":4e-06},"all_to_all":"# + zero + #","all_to_all_v":"# + zero + "}"
        let memory0 = #"{"parameters":100,"gradients":100,"optimizer":0,"activations":64,"buffers":8}"#
        let memory1 = #"{"parameters":100,"gradients":100,"optimizer":0,"activations":64,"buffers":0}"#
        XCTAssertEqual(report.json, #""train_steps":4,"comm":"# + rank0 + #","memory":"# + memory0
                       + #","comm_per_rank":["# + rank0 + "," + rank1 + #"],"memory_per_rank":["# + memory0 + "," + memory1 + "]")
    }

    /// A single rank that communicated nothing says so.
    func testSingleRankTable() {
        let single = LedgerReport(steps: 0, comm: [Array(repeating: CommunicationCounter(), count: CommunicationKind.allCases.count)], memory: [[4, 4, 8, 16, 0]])
        XCTAssertEqual(single.table, """
            communication per training step (rank 0 | all ranks), over 0 steps:
              kind            calls   bytes (rank 0)   bytes (all ranks)   µs in MPI (rank 0)
              (none: a single rank)
            memory per rank (bytes):
              rank   parameters    gradients    optimizer  activations      buffers       total
              0               4            4            8           16            0          32
            """)
    }
}
