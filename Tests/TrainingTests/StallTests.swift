import Distributed
import XCTest

/// The watchdog's line (`Stall`): which ranks it says a stalled call waits for, and how it names
/// the step or the phase. (WatchdogTests checks the line from real stalled jobs.)
final class StallTests: XCTestCase {
    func stall(_ operation: WatchedOperation, members: [Int], groupRank: Int, peer: Int? = nil,
               phase: Watchdog.Phase = .training) -> Stall {
        Stall(rank: members[groupRank], host: "h", operation: operation, axis: "pp", members: members, groupRank: groupRank,
              peer: peer, phase: phase, step: 41, waited: 3.04, timeout: 3)
    }

    func testPointToPointNamesItsPeerAsAWorldRank() {
        let line = stall(.receive, members: [1, 5, 9], groupRank: 0, peer: 2).description
        XCTAssertEqual(line, "error: watchdog: rank 1 (host h) stuck 3.0 s in recv on axis pp (3 ranks) at step 41, "
                       + "waiting for rank 9 (--timeout 3 s); ending the job")
        XCTAssertTrue(stall(.send, members: [1, 5, 9], groupRank: 2, peer: 1).description.contains("waiting for rank 5 "))
    }

    func testCollectiveOfTwoNamesTheOtherRank() {
        XCTAssertTrue(stall(.allreduce, members: [4, 6], groupRank: 1).description.contains("waiting for rank 4 "))
        XCTAssertTrue(stall(.ringExchange, members: [4, 6], groupRank: 0).description.contains("waiting for rank 6 "))
    }

    func testRingNamesBothNeighbours() {
        let line = stall(.ringExchange, members: [0, 2, 4, 6], groupRank: 0).description
        XCTAssertTrue(line.contains("waiting for rank 6 (sends to this rank) or rank 2 (receives from it)"), line)
    }

    func testLargerCollectiveSaysItCannotTell() {
        let line = stall(.allgather, members: [0, 1, 2], groupRank: 1).description
        XCTAssertTrue(line.contains("waiting for one or more of ranks 0, 2 (MPI does not say which)"), line)
        let many = stall(.barrier, members: Array(0..<12), groupRank: 0).description
        XCTAssertTrue(many.contains("ranks 1, 2, 3, 4, 5, 6, 7, 8, … (MPI does not say which)"), many)
    }

    func testPhasesOutsideTheStepsAreNamed() {
        XCTAssertTrue(stall(.split, members: [0, 1], groupRank: 0, phase: .setup).description.contains(" during setup, "))
        XCTAssertTrue(stall(.allgather, members: [0, 1], groupRank: 0, phase: .checkpoint).description
            .contains(" saving a checkpoint after step 41, "))
        XCTAssertTrue(stall(.finalize, members: [0, 1], groupRank: 0, phase: .shutdown).description.contains(" in shutdown, "))
        var fractional = stall(.allreduce, members: [0, 1], groupRank: 0)
        fractional.timeout = 0.25
        XCTAssertTrue(fractional.description.contains("(--timeout 0.25 s)"), fractional.description)
    }
}
