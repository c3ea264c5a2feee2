import XCTest
import Core
import Distributed

/// All-to-all and all-to-all-v on real groups of 2 and 3 ranks (see ``MPITestLauncher``). Every
/// rank regenerates what every other rank sends it from the senders' seeds and checks each
/// received block in place, and that the ledger counted exactly the bytes sent to the *other*
/// ranks (not the block kept): `(p − 1)·count·4` for equal blocks, `Σ_{d ≠ rank} counts[d]·4`
/// for blocks of any size, including empty ones and offsets with gaps.
final class AllToAllTests: XCTestCase {
    func testTwoRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        check()
    }

    func testThreeRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        check()
    }

    /// The block rank `source` sends rank `destination`, `count` values.
    func block(from source: Int, to destination: Int, count: Int) -> [Float] {
        var rng = SplitMix64(seed: UInt64(1000 + 10 * source + destination))
        return (0..<count).map { _ in rng.symmetric(5) }
    }

    /// Rows rank `source` sends rank `destination` in the uneven case: 0 on the diagonal's
    /// right neighbour, else a size that differs for every pair.
    func rows(from source: Int, to destination: Int, ranks: Int) -> Int {
        destination == (source + 1) % ranks ? 0 : 1 + 3 * source + 2 * destination
    }

    func check(file: StaticString = #filePath, line: UInt = #line) {
        let world = MPI.initialize()
        let p = world.size, me = world.rank
        var failures: [String] = []

        // Equal blocks, Int32 and Float.
        for count in [1, 5] {
            var ints = [Int32]((0..<p * count).map { Int32(100 * me + $0) })
            var intsOut = [Int32](repeating: -1, count: p * count)
            var before = Ledger.snapshot()[CommunicationKind.allToAll.rawValue]
            ints.withUnsafeMutableBufferPointer { i in
                intsOut.withUnsafeMutableBufferPointer { world.allToAll(UnsafePointer(i.baseAddress!), count: count, into: $0.baseAddress!) }
            }
            var after = Ledger.snapshot()[CommunicationKind.allToAll.rawValue]
            for q in 0..<p {
                for i in 0..<count where intsOut[q * count + i] != Int32(100 * q + me * count + i) {
                    failures.append("allToAll Int32 count \(count): from \(q) [\(i)] = \(intsOut[q * count + i])")
                }
            }
            if after.bytes - before.bytes != (p - 1) * count * 4 || after.calls - before.calls != 1 {
                failures.append("allToAll count \(count): ledger \(after.bytes - before.bytes) bytes in \(after.calls - before.calls) calls")
            }
            let input = (0..<p).flatMap { block(from: me, to: $0, count: count) }
            var output = [Float](repeating: .nan, count: p * count)
            before = after
            input.withUnsafeBufferPointer { i in
                output.withUnsafeMutableBufferPointer { world.allToAll(i.baseAddress!, count: count, into: $0.baseAddress!) }
            }
            after = Ledger.snapshot()[CommunicationKind.allToAll.rawValue]
            for q in 0..<p where Array(output[q * count ..< (q + 1) * count]) != block(from: q, to: me, count: count) {
                failures.append("allToAll Float count \(count): block from \(q) differs")
            }
            if after.bytes - before.bytes != (p - 1) * count * 4 { failures.append("allToAll Float count \(count): ledger") }
        }

        // Blocks of any size, 7 floats a row, with a gap of 3 floats between blocks on both sides.
        let width = 7, gap = 3
        var sendCounts = [Int32](), sendOffsets = [Int32](), receiveCounts = [Int32](), receiveOffsets = [Int32]()
        var input: [Float] = [], sentToOthers = 0
        for d in 0..<p {
            input += [Float](repeating: 99, count: gap)
            let values = block(from: me, to: d, count: rows(from: me, to: d, ranks: p) * width)
            sendOffsets.append(Int32(input.count))
            sendCounts.append(Int32(values.count))
            input += values
            if d != me { sentToOthers += values.count }
        }
        var total = 0
        for q in 0..<p {
            total += gap
            receiveOffsets.append(Int32(total))
            receiveCounts.append(Int32(rows(from: q, to: me, ranks: p) * width))
            total += Int(receiveCounts[q])
        }
        var output = [Float](repeating: .nan, count: total)
        let before = Ledger.snapshot()[CommunicationKind.allToAllV.rawValue]
        input.withUnsafeBufferPointer { i in
            output.withUnsafeMutableBufferPointer {
                world.allToAllV(i.baseAddress!, sendCounts: sendCounts, sendOffsets: sendOffsets, into: $0.baseAddress!,
                                receiveCounts: receiveCounts, receiveOffsets: receiveOffsets)
            }
        }
        let after = Ledger.snapshot()[CommunicationKind.allToAllV.rawValue]
        for q in 0..<p {
            let start = Int(receiveOffsets[q]), got = Array(output[start ..< start + Int(receiveCounts[q])])
            if got != block(from: q, to: me, count: Int(receiveCounts[q])) { failures.append("allToAllV: block from \(q) differs") }
            if !output[start - gap ..< start].allSatisfy(\.isNaN) { failures.append("allToAllV: wrote into the gap before \(q)'s block") }
        }
        if after.bytes - before.bytes != sentToOthers * 4 || after.calls - before.calls != 1 {
            failures.append("allToAllV: ledger \(after.bytes - before.bytes) bytes in \(after.calls - before.calls) calls, expected \(sentToOthers * 4) in 1")
        }
        XCTAssertEqual(failures, [], "rank \(me) of \(p)", file: file, line: line)
    }
}
