import XCTest
import Core
import Distributed

/// The reduce-scatter algorithms on real groups of 2 and 3 ranks (see ``MPITestLauncher``):
/// MPI's and the spelled-out ring both leave each rank exactly its block of the sum of every
/// rank's input (each rank regenerates all inputs from their seeds and sums them in Double), on
/// block sizes that are and are not multiples of the 16-lane vectors; on two ranks the two
/// algorithms agree bit for bit (one addition, which commutes); and the ledger counts the same
/// payload, `p·count·4` bytes per call, whichever algorithm ran.
final class ReduceScatterTests: XCTestCase {
    func testAlgorithmsAgreeOnTwoRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        check()
    }

    func testAlgorithmsAgreeOnThreeRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        check()
    }

    /// The size decides the algorithm when none is given: MPI's below the threshold, the ring
    /// from it on.
    func testAutomaticChoice() {
        XCTAssertEqual(ReduceScatterAlgorithm.automatic(bytes: ReduceScatterAlgorithm.ringThreshold - 4), .mpi)
        XCTAssertEqual(ReduceScatterAlgorithm.automatic(bytes: ReduceScatterAlgorithm.ringThreshold), .ring)
    }

    func input(rank: Int, count: Int) -> [Float] {
        var rng = SplitMix64(seed: UInt64(100 + rank))
        return (0..<count).map { _ in rng.symmetric(3) }
    }

    func check(file: StaticString = #filePath, line: UInt = #line) {
        let world = MPI.initialize()
        let p = world.size
        var failures: [String] = []
        for count in [1, 16, 37, 5000] {
            var expected = [Double](repeating: 0, count: count)
            for q in 0..<p {
                let theirs = input(rank: q, count: p * count)
                for i in 0..<count { expected[i] += Double(theirs[world.rank * count + i]) }
            }
            var results: [ReduceScatterAlgorithm: [Float]] = [:]
            for algorithm in ReduceScatterAlgorithm.allCases {
                var data = input(rank: world.rank, count: p * count)
                var out = [Float](repeating: .nan, count: count)
                let before = Ledger.snapshot()[CommunicationKind.reduceScatter.rawValue]
                data.withUnsafeMutableBufferPointer { d in
                    out.withUnsafeMutableBufferPointer { world.reduceScatterSum(d.baseAddress!, into: $0.baseAddress!, count: count, algorithm: algorithm) }
                }
                let after = Ledger.snapshot()[CommunicationKind.reduceScatter.rawValue]
                if after.bytes - before.bytes != p * count * 4 || after.calls - before.calls != 1 {
                    failures.append("\(algorithm) count \(count): ledger counted \(after.bytes - before.bytes) bytes in \(after.calls - before.calls) calls")
                }
                results[algorithm] = out
                for i in 0..<count where !(abs(Double(out[i]) - expected[i]) <= 1e-5 * (1 + abs(expected[i]))) {
                    failures.append("\(algorithm) count \(count): [\(i)] = \(out[i]), expected \(expected[i])")
                    break
                }
            }
            if p == 2 && results[.mpi] != results[.ring] {
                failures.append("count \(count): the ring and MPI differ on two ranks")
            }
        }
        XCTAssertEqual(failures, [], "rank \(world.rank) of \(p)", file: file, line: line)
    }
}
