#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a data file cannot be used. Each case prints as one line naming the problem.
public enum DataError: Error, Equatable, CustomStringConvertible {
    case cannotRead(path: String, reason: String)
    case empty(path: String)
    case invalidUTF8(path: String, line: Int)
    case noExamples(path: String)
    case tooFewExamples(path: String, count: Int)

    public var description: String {
        switch self {
        case let .cannotRead(path, reason): "cannot read data file '\(path)': \(reason)"
        case let .empty(path): "data file '\(path)' is empty"
        case let .invalidUTF8(path, line): "data file '\(path)' is not valid UTF-8 (line \(line))"
        case let .noExamples(path): "data file '\(path)' has no usable examples (only blank lines)"
        case let .tooFewExamples(path, count):
            "data file '\(path)' has only \(count) example(s): need at least 2 to split into training and validation"
        }
    }
}

/// The characters of the data, as tokens. Token 0 is the boundary (BOS/EOS), printed as `.`;
/// tokens 1… are the distinct Unicode scalars of the file in ascending order (for the makemore
/// names: `a`…`z`, 27 tokens in all).
public struct Vocabulary: Equatable, Sendable {
    public let symbols: [Unicode.Scalar]

    public init(symbols: [Unicode.Scalar]) { self.symbols = symbols }

    public var count: Int { symbols.count + 1 }

    /// The text for token ids, stopping at the first boundary token.
    public func decode<S: Sequence>(_ ids: S) -> String where S.Element: BinaryInteger {
        var s = String.UnicodeScalarView()
        for id in ids {
            if id == 0 { break }
            s.append(symbols[Int(id) - 1])
        }
        return String(s)
    }
}

/// Examples `(previous seqLen tokens → next token)`, stored as rows of `seqLen + 1` token ids.
///
/// Immutable after construction and read through a pointer, so sampling a batch neither
/// allocates nor retains.
public final class Examples: @unchecked Sendable {
    public let count: Int
    public let seqLen: Int
    public let rows: UnsafeMutablePointer<Int32>

    /// The rows live in 2 MiB pages when the kernel allows it (`madvise`, transparent huge
    /// pages): batches draw rows at random from megabytes of examples, and with 4 KiB pages
    /// nearly every row is a TLB miss and a page walk on top of the cache miss (measured: the
    /// sampler took 5% of a default `train` step, ~1 µs; 0.3 µs with huge pages).
    init(_ ids: ArraySlice<Int32>, seqLen: Int) {
        self.seqLen = seqLen
        count = ids.count / (seqLen + 1)
        let huge = 2 << 20
        let bytes = (max(1, ids.count) * MemoryLayout<Int32>.stride + huge - 1) / huge * huge
        var memory: UnsafeMutableRawPointer?
        if posix_memalign(&memory, huge, bytes) != 0 || memory == nil {
            fatalError("out of memory for \(ids.count) token ids")
        }
        #if os(Linux)
        _ = madvise(memory, bytes, MADV_HUGEPAGE)
        #endif
        rows = memory!.bindMemory(to: Int32.self, capacity: max(1, ids.count))
        ids.withUnsafeBufferPointer { rows.initialize(from: $0.baseAddress!, count: ids.count) }
    }

    deinit { free(rows) }

    /// The context of example `i` (`seqLen` ids) and its target.
    public func example(_ i: Int) -> (context: [Int32], target: Int32) {
        let row = rows + i * (seqLen + 1)
        return (Array(UnsafeBufferPointer(start: row, count: seqLen)), row[seqLen])
    }
}

/// A text file, one example per line, turned into training and validation examples.
///
/// Each line of `n` characters gives `n + 1` examples, formed the way ml.c forms them: the
/// target is every character in turn and finally the boundary token; the context is the
/// `seqLen` tokens before it, left-padded with token 0. Lines longer than `seqLen` slide.
/// Examples are split 90/10 into training and validation in file order. Blank lines are
/// skipped; `\r\n` line endings are accepted.
public struct Dataset: Sendable {
    public let vocabulary: Vocabulary
    public let seqLen: Int
    public let train: Examples
    public let validation: Examples
    public let lines: Int

    /// Reads and parses `path`.
    public static func load(path: String, seqLen: Int) throws(DataError) -> Dataset {
        let bytes = try readFile(path)
        return try Dataset(bytes: bytes, seqLen: seqLen, name: path)
    }

    public init(bytes: [UInt8], seqLen: Int, name: String) throws(DataError) {
        precondition(seqLen > 0)
        if bytes.isEmpty { throw .empty(path: name) }
        // Validate UTF-8 line by line so the error names the line.
        var lines: [[Unicode.Scalar]] = []
        var lineNumber = 0
        var start = 0
        while start <= bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            lineNumber += 1
            var stop = end
            if stop > start && bytes[stop - 1] == 0x0D { stop -= 1 }
            if stop > start {
                guard let text = String(validating: bytes[start..<stop], as: UTF8.self) else {
                    throw .invalidUTF8(path: name, line: lineNumber)
                }
                let scalars = Array(text.unicodeScalars)
                if !scalars.allSatisfy({ $0.properties.isWhitespace }) { lines.append(scalars) }
            }
            if end == bytes.count { break }
            start = end + 1
        }
        if lines.isEmpty { throw .noExamples(path: name) }

        let symbols = Set(lines.joined()).sorted { $0.value < $1.value }
        var lookup: [Unicode.Scalar: Int32] = [:]
        for (i, s) in symbols.enumerated() { lookup[s] = Int32(i + 1) }

        var ids: [Int32] = []
        ids.reserveCapacity(lines.reduce(0) { $0 + ($1.count + 1) * (seqLen + 1) })
        for line in lines {
            let tokens = line.map { lookup[$0]! }
            for t in 0...tokens.count {
                for p in (t - seqLen)..<t { ids.append(p >= 0 ? tokens[p] : 0) }
                ids.append(t < tokens.count ? tokens[t] : 0)
            }
        }
        let total = ids.count / (seqLen + 1)
        if total < 2 { throw .tooFewExamples(path: name, count: total) }
        let trainCount = max(1, min(total - 1, Int(Double(total) * 0.9)))
        let cut = trainCount * (seqLen + 1)
        self.vocabulary = Vocabulary(symbols: symbols)
        self.seqLen = seqLen
        self.train = Examples(ids[..<cut], seqLen: seqLen)
        self.validation = Examples(ids[cut...], seqLen: seqLen)
        self.lines = lines.count
    }
}

/// Reads a whole file with POSIX calls, so the error can say why it failed.
func readFile(_ path: String) throws(DataError) -> [UInt8] {
    let fd = open(path, O_RDONLY)
    if fd < 0 { throw .cannotRead(path: path, reason: String(cString: strerror(errno))) }
    defer { close(fd) }
    var info = stat()
    if fstat(fd, &info) != 0 { throw .cannotRead(path: path, reason: String(cString: strerror(errno))) }
    if (info.st_mode & S_IFMT) == S_IFDIR { throw .cannotRead(path: path, reason: "it is a directory") }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw .cannotRead(path: path, reason: String(cString: strerror(errno)))
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return bytes
}

/// Draws batches of examples uniformly with replacement.
///
/// Batch `index` of a run is a pure function of `(seed, stream, index)`: every rank draws the
/// same global batch and copies out only the rows it needs, and a resumed run draws the same
/// batches as an uninterrupted one.
public struct BatchSampler: Sendable {
    public let examples: Examples
    public let batchSize: Int
    public let seed: UInt64
    public let stream: RandomStream

    public init(examples: Examples, batchSize: Int, seed: UInt64, stream: RandomStream) {
        self.examples = examples
        self.batchSize = batchSize
        self.seed = seed
        self.stream = stream
    }

    /// Writes rows `rows` of global batch `index`: token ids (as floats) into `tokens`
    /// (`rows.count × seqLen`) and targets into `targets` (`rows.count`).
    ///
    /// The rows are scattered over the whole training set (megabytes), so each is a cache miss.
    /// The draw goes in chunks of 32: draw the rows (arithmetic only), then read each one's
    /// first token and target in a loop short enough that all 32 rows' misses are in flight
    /// at once, then convert the rest of each row, now in cache.
    public func fill(index: Int, rows: Range<Int>, tokens: UnsafeMutablePointer<Float>, targets: UnsafeMutablePointer<Int32>) {
        var rng = SplitMix64(seed: seed, stream: stream.rawValue, index: UInt64(index))
        let width = examples.seqLen + 1
        let seqLen = examples.seqLen
        let data = examples.rows, count = examples.count
        var drawn = InlineArray<32, Int>(repeating: 0)
        var b0 = 0
        while b0 < batchSize {
            let chunk = Swift.min(32, batchSize - b0)
            for j in 0..<chunk { drawn[j] = rng.below(count) }
            for j in 0..<chunk {
                let b = b0 + j
                guard rows.contains(b) else { continue }
                let row = data + drawn[j] * width
                tokens[(b - rows.lowerBound) * seqLen] = Float(row[0])
                targets[b - rows.lowerBound] = row[seqLen]
            }
            for j in 0..<chunk {
                let b = b0 + j
                guard rows.contains(b) else { continue }
                let row = data + drawn[j] * width
                let out = tokens + (b - rows.lowerBound) * seqLen
                for s in 1..<seqLen { out[s] = Float(row[s]) }
            }
            b0 += chunk
        }
    }
}
