import XCTest
import Core
import Distributed
import Training

/// ZeRO-2's collective and HSDP's mesh on real groups (see ``MPITestLauncher``).
///
/// - The reduce-scatter with uneven counts (`reduceScatterSum(_:into:counts:)`) leaves each rank
///   exactly its segment of the sum, for counts that include zeros and a single owner, and the
///   ledger counts the whole input, `Σ counts · 4` bytes, in one call.
/// - On the mesh `[shard, replicate]` every rank trains on its own rows: the data-parallel
///   coordinate runs over both axes (shard fastest), so the N slices of the batch are disjoint.
final class UnevenReduceScatterTests: XCTestCase {
    func testUnevenCountsOnThreeRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        let world = MPI.initialize()
        var failures: [String] = []
        for counts in [[3, 0, 5], [0, 0, 7], [1, 1, 1], [37, 16, 0]] {
            let total = counts.reduce(0, +), start = counts[..<world.rank].reduce(0, +), mine = counts[world.rank]
            func input(_ rank: Int) -> [Float] {
                var rng = SplitMix64(seed: UInt64(200 + rank))
                return (0..<total).map { _ in rng.symmetric(3) }
            }
            var expected = [Double](repeating: 0, count: mine)
            for q in 0..<world.size {
                let theirs = input(q)
                for i in 0..<mine { expected[i] += Double(theirs[start + i]) }
            }
            var data = input(world.rank)
            var out = [Float](repeating: .nan, count: max(1, mine))
            let counts32 = counts.map(Int32.init)
            let before = Ledger.snapshot()[CommunicationKind.reduceScatter.rawValue]
            data.withUnsafeMutableBufferPointer { d in
                out.withUnsafeMutableBufferPointer { o in
                    counts32.withUnsafeBufferPointer { world.reduceScatterSum(d.baseAddress!, into: o.baseAddress!, counts: $0.baseAddress!) }
                }
            }
            let after = Ledger.snapshot()[CommunicationKind.reduceScatter.rawValue]
            if after.bytes - before.bytes != total * 4 || after.calls - before.calls != 1 {
                failures.append("\(counts): ledger counted \(after.bytes - before.bytes) bytes in \(after.calls - before.calls) calls")
            }
            for i in 0..<mine where !(abs(Double(out[i]) - expected[i]) <= 1e-5 * (1 + abs(expected[i]))) {
                failures.append("\(counts): [\(i)] = \(out[i]), expected \(expected[i])")
                break
            }
        }
        XCTAssertEqual(failures, [], "rank \(world.rank)")
    }

    func testHybridMeshRowsAreDisjoint() {
        guard MPITestLauncher.runUnderMPI(ranks: 4, test: self) else { return }
        let world = MPI.initialize()
        let mesh = ProcessMesh(world: world, axes: [(.shard, 2), (.replicate, 2)])
        let rows = mesh.dataParallelRows(batch: 8)
        var all = [Int32](repeating: 0, count: 4)
        all[world.rank] = Int32(rows.lowerBound)
        all.withUnsafeMutableBufferPointer { world.allreduceSum($0.baseAddress!, count: 4) }
        XCTAssertEqual(rows.count, 2)
        XCTAssertEqual(all, [0, 2, 4, 6], "rank r trains on rows 2r ..< 2r + 2")
        XCTAssertEqual(mesh[.shard].rank, world.rank % 2, "shard groups are neighbouring ranks")
        XCTAssertEqual(mesh[.replicate].rank, world.rank / 2)
    }
}
