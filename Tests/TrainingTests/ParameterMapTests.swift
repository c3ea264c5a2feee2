import Distributed
import XCTest
@testable import Training

/// `ParameterMap`: building maps, cutting shards, moving floats between local and canonical
/// order, the wire encoding (without MPI), and `assembleCanonical` on real ranks.
final class ParameterMapTests: XCTestCase {
    typealias Run = ParameterMap.Run

    /// A map from `(start, count)` pairs (nil start: padding), appended in order.
    func map(_ runs: [(Int?, Int)]) -> ParameterMap {
        var m = ParameterMap()
        for (start, count) in runs { m.append(start: start, count: count) }
        return m
    }

    // MARK: Building

    /// `contiguous` is one run; appending merges exactly the runs that continue the last one
    /// (the next canonical float, or padding after padding) and nothing else; empty runs vanish.
    func testAppendMergesOnlyAdjacentRuns() {
        XCTAssertEqual(ParameterMap.contiguous(5, 3).runs, [Run(start: 5, count: 3)])
        XCTAssertEqual(ParameterMap.contiguous(5, 3).count, 3)
        XCTAssertEqual(ParameterMap().runs, [])
        XCTAssertEqual(ParameterMap.contiguous(5, 0).runs, [])

        var m = ParameterMap.contiguous(5, 3)
        m.append(start: 8, count: 2)            // continues 5..<8: merges
        XCTAssertEqual(m.runs, [Run(start: 5, count: 5)])
        m.append(start: 11, count: 1)           // gap at 10: new run
        m.append(start: 4, count: 1)            // goes backwards: new run
        m.append(start: nil, count: 2)          // padding after floats: new run
        m.append(start: nil, count: 3)          // padding after padding: merges
        m.append(start: 5, count: 0)            // empty: ignored
        m.append(start: 5, count: 1)            // floats after padding: new run
        XCTAssertEqual(m.runs, [Run(start: 5, count: 5), Run(start: 11, count: 1), Run(start: 4, count: 1),
                                Run(start: nil, count: 5), Run(start: 5, count: 1)])
        XCTAssertEqual(m.count, 13)

        // `+` and `append(_:)` merge at the seam the same way.
        XCTAssertEqual(ParameterMap.contiguous(0, 4) + ParameterMap.contiguous(4, 2), ParameterMap.contiguous(0, 6))
        XCTAssertEqual((map([(nil, 2)]) + map([(nil, 1), (7, 1)])).runs, [Run(start: nil, count: 3), Run(start: 7, count: 1)])
        XCTAssertEqual((ParameterMap.contiguous(0, 4) + ParameterMap.contiguous(5, 2)).runs,
                       [Run(start: 0, count: 4), Run(start: 5, count: 2)])
    }

    // MARK: Slicing

    /// Local floats 0..<4 → canonical 10..<14, 4..<6 → padding, 6..<9 → canonical 0..<3.
    let sample = ParameterMap.contiguous(10, 4) + ParameterMap(encoded: [-1, 2]) + ParameterMap.contiguous(0, 3)

    func testSliceInsideOneRun() {
        XCTAssertEqual(sample.count, 9)
        XCTAssertEqual(sample.slice(1..<3).runs, [Run(start: 11, count: 2)])
        XCTAssertEqual(sample.slice(4..<5).runs, [Run(start: nil, count: 1)])
        XCTAssertEqual(sample.slice(7..<9).runs, [Run(start: 1, count: 2)])
        XCTAssertEqual(sample.slice(0..<4), ParameterMap.contiguous(10, 4))
        XCTAssertEqual(sample.slice(3..<3).runs, [])
    }

    func testSliceAcrossRuns() {
        XCTAssertEqual(sample.slice(2..<8).runs, [Run(start: 12, count: 2), Run(start: nil, count: 2), Run(start: 0, count: 2)])
        XCTAssertEqual(sample.slice(0..<9), sample)
        XCTAssertEqual(sample.slice(5..<7).runs, [Run(start: nil, count: 1), Run(start: 0, count: 1)])
    }

    /// A slice that reaches past the end is padded to its full length (an FSDP shard of a block
    /// that does not divide evenly); one that starts past the end is all padding.
    func testSlicePastTheEndIsPadding() {
        XCTAssertEqual(sample.slice(7..<12).runs, [Run(start: 1, count: 2), Run(start: nil, count: 3)])
        XCTAssertEqual(sample.slice(7..<12).count, 5)
        XCTAssertEqual(sample.slice(11..<14).runs, [Run(start: nil, count: 3)])
        XCTAssertEqual(ParameterMap().slice(0..<2).runs, [Run(start: nil, count: 2)])
        // Padding at the end merges with a padding run the slice already ends in.
        XCTAssertEqual(map([(0, 2), (nil, 2)]).slice(1..<6).runs, [Run(start: 1, count: 1), Run(start: nil, count: 4)])
    }

    // MARK: Moving floats

    /// `extract` copies each run's canonical floats into place and writes 0 over padding
    /// (the local buffer starts as NaN, so a float left unwritten would show).
    func testExtractZeroesPadding() {
        let canonical = (0..<20).map { Float($0) + 0.5 }
        var local = [Float](repeating: .nan, count: sample.count)
        local.withUnsafeMutableBufferPointer { sample.extract(from: canonical, into: $0.baseAddress!) }
        XCTAssertEqual(local, [10.5, 11.5, 12.5, 13.5, 0, 0, 0.5, 1.5, 2.5])
    }

    /// `scatter` writes each local float to its canonical place, skips padding, and leaves every
    /// other canonical float as it was.
    func testScatterWritesOnlyMappedFloats() {
        let local: [Float] = [1, 2, 3, 4, 99, 99, 5, 6, 7]
        var canonical = [Float](repeating: -1, count: 16)
        local.withUnsafeBufferPointer { sample.scatter($0.baseAddress!, into: &canonical) }
        XCTAssertEqual(canonical, [5, 6, 7, -1, -1, -1, -1, -1, -1, -1, 1, 2, 3, 4, -1, -1])
    }

    /// `extract` then `scatter` is the identity on the mapped floats.
    func testExtractThenScatterRoundTrips() {
        let canonical = (0..<14).map { Float($0 * $0) }
        var local = [Float](repeating: 0, count: sample.count)
        local.withUnsafeMutableBufferPointer { sample.extract(from: canonical, into: $0.baseAddress!) }
        var back = [Float](repeating: .nan, count: 14)
        local.withUnsafeBufferPointer { sample.scatter($0.baseAddress!, into: &back) }
        for i in [0, 1, 2, 10, 11, 12, 13] { XCTAssertEqual(back[i], canonical[i]) }
        for i in 3..<10 { XCTAssertTrue(back[i].isNaN, "\(i) is not in the map") }
    }

    // MARK: Encoding

    /// The wire form is `[start, count, …]` with padding as −1, and decoding it gives the map back.
    func testEncodingRoundTrips() {
        XCTAssertEqual(sample.encoded, [10, 4, -1, 2, 0, 3])
        XCTAssertEqual(ParameterMap(encoded: sample.encoded), sample)
        XCTAssertEqual(ParameterMap(encoded: []), ParameterMap())
        let ragged = map([(nil, 1), (3, 2), (9, 1), (nil, 7), (0, 1)])
        XCTAssertEqual(ParameterMap(encoded: ragged.encoded), ragged)
        XCTAssertEqual(ParameterMap(encoded: ragged.encoded).count, 12)
    }

    // MARK: Canonical assembly

    /// Each rank's local floats, cut out of `canonical` by its map.
    func local(_ map: ParameterMap, of canonical: [Float]) -> [Float] {
        var values = [Float](repeating: .nan, count: map.count)
        values.withUnsafeMutableBufferPointer { map.extract(from: canonical, into: $0.baseAddress!) }
        return values
    }

    /// `assembleCanonical` itself, on 3 real ranks (it sends every rank's map in its wire form and
    /// its floats to rank 0, which scatters them into a vector that starts as NaN):
    ///
    /// 1. A model of an embedding (replicated on every rank) and one Linear `W` (inputs × outputs,
    ///    row-major) then `b`, whose columns are split over the 3 ranks unevenly (3, 3, 1 of 7): a
    ///    column slice is one run per input row plus the bias slice. The floats scattered back
    ///    reproduce the canonical vector exactly: every float written (no NaN left), each with its
    ///    own value — a map that put a float in the wrong place or dropped one fails. (Whether
    ///    replicas agree is the replica check's question: `ReplicaCheckTests`.)
    /// 2. The same with rank 1 holding nothing (an empty map): its columns are missing, and
    ///    exactly those floats stay NaN.
    /// 3. FSDP-style shards: the whole map cut into 3 equal slices, the last one padded. The
    ///    padding floats, zero locally, never reach the canonical vector.
    func testRanksReassembleTheCanonicalVector() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        let world = MPI.initialize()
        let rank = world.rank

        let embedding = 6, inputs = 4, outputs = 7
        let total = embedding + inputs * outputs + outputs
        let canonical = (0..<total).map { Float($0) * 0.25 - 3 }
        let columns = [0..<3, 3..<6, 6..<7]
        let maps = columns.map { cols -> ParameterMap in
            var m = ParameterMap.contiguous(0, embedding)
            for row in 0..<inputs { m.append(start: embedding + row * outputs + cols.lowerBound, count: cols.count) }
            m.append(start: embedding + inputs * outputs + cols.lowerBound, count: cols.count)
            return m
        }
        let mine = local(maps[rank], of: canonical)
        let whole = mine.withUnsafeBufferPointer { assembleCanonical(world: world, map: maps[rank], values: $0.baseAddress!, total: total) }

        let partialMap = rank == 1 ? ParameterMap() : maps[rank]
        let partialValues = local(partialMap, of: canonical) + [0]  // never empty, so the pointer is valid
        let partial = partialValues.withUnsafeBufferPointer {
            assembleCanonical(world: world, map: partialMap, values: $0.baseAddress!, total: total)
        }

        let sharded = ParameterMap.contiguous(0, 10) + ParameterMap.contiguous(20, 5) + ParameterMap.contiguous(10, 10)
        let shardTotal = 25, shard = 9  // 25 floats in 3 shards of 9: the last holds 7 floats and 2 padding
        let shardCanonical = (0..<shardTotal).map { Float(100 + $0) }
        let shardMap = sharded.slice(rank * shard ..< (rank + 1) * shard)
        let shardValues = local(shardMap, of: shardCanonical)
        let fromShards = shardValues.withUnsafeBufferPointer {
            assembleCanonical(world: world, map: shardMap, values: $0.baseAddress!, total: shardTotal)
        }

        XCTAssertEqual(shardMap.count, shard)
        if rank == 2 {
            XCTAssertEqual(shardMap.runs.last, Run(start: nil, count: 2))
            XCTAssertEqual(Array(shardValues.suffix(2)), [0, 0], "padding is zero locally")
        }
        if rank == 0 {
            XCTAssertEqual(maps.map(\.count), [6 + 4 * 3 + 3, 6 + 4 * 3 + 3, 6 + 4 + 1])
            XCTAssertEqual(maps[1].runs.count, 1 + inputs + 1, "one run per input row: the slices do not touch")
            XCTAssertEqual(maps[0].runs.count, inputs + 1, "row 0's first columns continue the embedding: merged")
            XCTAssertEqual(whole, canonical)
            let partialVector = partial ?? []
            XCTAssertEqual(partialVector.count, total)
            let missing = (0..<partialVector.count).filter { partialVector[$0].isNaN }
            XCTAssertEqual(missing, (0..<inputs).flatMap { row in (3..<6).map { embedding + row * outputs + $0 } }
                           + (3..<6).map { embedding + inputs * outputs + $0 })
            for i in 0..<partialVector.count where !partialVector[i].isNaN { XCTAssertEqual(partialVector[i], canonical[i], "float \(i)") }
            XCTAssertEqual(fromShards, shardCanonical)
        } else {
            XCTAssertNil(whole)
            XCTAssertNil(partial)
            XCTAssertNil(fromShards)
        }
    }
}
