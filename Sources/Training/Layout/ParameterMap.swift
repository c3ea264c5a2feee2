import Core
import Distributed

/// Where a rank's local parameter floats sit in the canonical vector (``ModelConfig/tensors``).
///
/// A map is a list of runs in local order: local floats `0..<runs[0].count` are canonical floats
/// `runs[0].start ..< runs[0].start + runs[0].count`, and so on; a run with `start == nil` is
/// padding that exists only locally. Every layout describes its shards this way — a column slice
/// of a weight is one run per input row, an FSDP shard is a ``slice(_:)`` of the block's map — so
/// one routine can reassemble the full model from any layout, and one can cut any layout's
/// shard out of the full initial weights.
public struct ParameterMap: Sendable, Equatable {
    public struct Run: Sendable, Equatable {
        public var start: Int?
        public var count: Int
    }

    public private(set) var runs: [Run] = []
    public private(set) var count = 0

    public init() {}

    /// `count` consecutive canonical floats from `start`.
    public static func contiguous(_ start: Int, _ count: Int) -> ParameterMap {
        var map = ParameterMap()
        map.append(start: start, count: count)
        return map
    }

    /// Appends a run, merging it with the last one when they are adjacent.
    public mutating func append(start: Int?, count: Int) {
        guard count > 0 else { return }
        if let last = runs.last {
            let merges = (last.start == nil && start == nil)
                || (last.start != nil && start != nil && last.start! + last.count == start!)
            if merges { runs[runs.count - 1].count += count; self.count += count; return }
        }
        runs.append(Run(start: start, count: count))
        self.count += count
    }

    /// Appends `other`'s runs, merging at the seam when they are adjacent.
    public mutating func append(_ other: ParameterMap) {
        for run in other.runs { append(start: run.start, count: run.count) }
    }

    public static func + (a: ParameterMap, b: ParameterMap) -> ParameterMap {
        var c = a
        c.append(b)
        return c
    }

    /// The map of local floats `range` (a shard of this map).
    public func slice(_ range: Range<Int>) -> ParameterMap {
        var result = ParameterMap()
        var offset = 0
        for run in runs {
            let lo = max(range.lowerBound, offset), hi = min(range.upperBound, offset + run.count)
            if lo < hi { result.append(start: run.start.map { $0 + lo - offset }, count: hi - lo) }
            offset += run.count
        }
        if range.upperBound > offset { result.append(start: nil, count: range.upperBound - max(offset, range.lowerBound)) }
        return result
    }

    /// Copies this map's floats out of a canonical vector into `local` (padding becomes 0).
    public func extract(from canonical: [Float], into local: UnsafeMutablePointer<Float>) {
        var offset = 0
        for run in runs {
            if let start = run.start {
                for i in 0..<run.count { local[offset + i] = canonical[start + i] }
            } else {
                (local + offset).update(repeating: 0, count: run.count)
            }
            offset += run.count
        }
    }

    /// Writes local floats back into their canonical places.
    public func scatter(_ local: UnsafePointer<Float>, into canonical: inout [Float]) {
        var offset = 0
        for run in runs {
            if let start = run.start { for i in 0..<run.count { canonical[start + i] = local[offset + i] } }
            offset += run.count
        }
    }

    /// Flattened as `[start₀, count₀, start₁, count₁, …]` (padding as start −1), for sending.
    var encoded: [Int64] { runs.flatMap { [Int64($0.start ?? -1), Int64($0.count)] } }

    init(encoded: [Int64]) {
        for i in stride(from: 0, to: encoded.count, by: 2) {
            append(start: encoded[i] < 0 ? nil : Int(encoded[i]), count: Int(encoded[i + 1]))
        }
    }
}

/// Every rank's map and local floats, on world rank 0 in rank order (nil on the other ranks).
/// Collective over `world`. Not a hot path: used for `--dump`, sampling, checkpoints and the
/// replica check, never inside a training step.
func gatherParts(world: Communicator, map: ParameterMap, values: UnsafePointer<Float>) -> [(map: ParameterMap, values: [Float])]? {
    if world.rank != 0 {
        let encoded = map.encoded
        var header = [Int64(encoded.count), Int64(map.count)]
        world.send(&header, count: 2, to: 0, tag: .canonicalHeader)
        encoded.withUnsafeBufferPointer { world.send($0.baseAddress!, count: encoded.count, to: 0, tag: .canonicalMap) }
        world.send(values, count: map.count, to: 0, tag: .canonicalValues)
        return nil
    }
    var parts = [(map: map, values: Array(UnsafeBufferPointer(start: values, count: map.count)))]
    for source in 1..<max(1, world.size) {
        var header = [Int64](repeating: 0, count: 2)
        world.receive(&header, count: 2, from: source, tag: .canonicalHeader)
        var encoded = [Int64](repeating: 0, count: Int(header[0]))
        encoded.withUnsafeMutableBufferPointer { world.receive($0.baseAddress!, count: $0.count, from: source, tag: .canonicalMap) }
        var floats = [Float](repeating: 0, count: Int(header[1]))
        floats.withUnsafeMutableBufferPointer { world.receive($0.baseAddress!, count: $0.count, from: source, tag: .canonicalValues) }
        parts.append((ParameterMap(encoded: encoded), floats))
    }
    return parts
}

/// Reassembles the canonical vector of `total` floats on world rank 0 from every rank's local
/// floats and their map (collective over `world`; nil on the other ranks).
///
/// Replicated floats (held by several ranks) simply arrive more than once with the same value.
/// A rank whose floats are all held elsewhere too may pass an empty map.
public func assembleCanonical(world: Communicator, map: ParameterMap, values: UnsafePointer<Float>, total: Int) -> [Float]? {
    guard let parts = gatherParts(world: world, map: map, values: values) else { return nil }
    var canonical = [Float](repeating: .nan, count: total)
    for part in parts { part.values.withUnsafeBufferPointer { part.map.scatter($0.baseAddress!, into: &canonical) } }
    return canonical
}
