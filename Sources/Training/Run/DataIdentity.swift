import Foundation

/// Which data file a run trained on: its path as given, its size and its CRC-32, recorded in
/// every checkpoint (`state.json` key `data`, format version 2) and compared when resuming.
///
/// Batches are a function of (seed, step) over the file's examples, so resuming on another file —
/// or on the same path after it was edited — silently trains on different batches than the
/// checkpointed run would have. A changed size or checksum is refused unless
/// `--allow-data-change` says it is meant. Computed once, on rank 0, when the run saves or
/// resumes: one extra read of the file (the words list, 0.6 MB, in a few milliseconds).
struct DataIdentity: Codable, Equatable {
    var path: String
    var bytes: Int
    var crc32: UInt32

    init(path: String, bytes: Int, crc32: UInt32) {
        self.path = path
        self.bytes = bytes
        self.crc32 = crc32
    }

    /// Reads the file at `path` and takes its size and CRC-32.
    init(path: String) throws(UsageError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw UsageError("cannot read data file '\(path)' to record it in checkpoints")
        }
        self.init(path: path, bytes: data.count, crc32: CRC32.checksum(data))
    }

    /// `'data/words.txt' (632,713 bytes, CRC-32 0x1c291ca3)`.
    var description: String {
        let digits = String(bytes)
        let grouped = digits.enumerated().map { i, d in (i > 0 && (digits.count - i) % 3 == 0 ? "," : "") + String(d) }.joined()
        let hex = String(crc32, radix: 16)
        return "'\(path)' (\(grouped) bytes, CRC-32 0x\(String(repeating: "0", count: 8 - hex.count) + hex))"
    }

    /// Whether the content differs (the path alone may change: the same file moved is the same data).
    func differs(from other: DataIdentity) -> Bool { bytes != other.bytes || crc32 != other.crc32 }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        path = try c.required(.path)
        bytes = try c.required(.bytes)
        crc32 = try c.required(.crc32)
    }
}
