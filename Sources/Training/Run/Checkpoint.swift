import Core
import Foundation

/// Checkpoints: the full training state in canonical (layout-free) form, saved atomically and
/// verified by checksums, so any layout can resume any other layout's checkpoint.
///
/// A checkpoint is a folder `DIR/step-00000200/` (the number of completed steps) holding:
///
/// | file | content |
/// |---|---|
/// | `parameters.f32` | Ψ little-endian float32, canonical order (see `tensors` in state.json) |
/// | `adam_m.f32`, `adam_v.f32` | Adam's moments, same order (only with `--optimizer adam`) |
/// | `state.json` | format, step, model, optimizer, sampler state, tensor table, byte size and CRC-32 of each file |
/// | `COMPLETE` | written last: the CRC-32 of state.json |
///
/// Saving writes everything into a hidden temporary folder, fsyncs each file and the folder,
/// renames it into place, and only then writes `COMPLETE`. A job killed at any point leaves the
/// previous checkpoint untouched and loadable; a folder without `COMPLETE` is ignored. The newest
/// complete checkpoint is verified before use: a size or checksum mismatch is refused with an
/// error, never loaded. Read one with numpy:
///
///     state = json.load(open("step-00000200/state.json"))
///     p = np.fromfile("step-00000200/parameters.f32", dtype="<f4")
///     for t in state["tensors"]: w = p[t["offset"]:t["offset"] + np.prod(t["shape"])].reshape(t["shape"])
public struct Checkpoint {
    public var step: Int
    public var seed: UInt64
    public var config: ModelConfig
    public var optimizer: OptimizerConfig
    public var parameters: [Float]
    /// Adam's first and second moments, canonical order (nil for SGD).
    public var moments: (m: [Float], v: [Float])?

    static let format = "parallelisms-swift checkpoint"

    /// The folder name of a checkpoint after `step` steps.
    public static func folderName(step: Int) -> String {
        "step-" + String(repeating: "0", count: max(0, 8 - String(step).count)) + String(step)
    }

    /// Environment variable: when saving the checkpoint of the step it names, `save` kills its
    /// process after writing the temporary folder and before renaming it — how the tests prove
    /// that a save interrupted at the worst moment loses nothing.
    static let killBeforeRenameVariable = "PARALLELISMS_TEST_KILL_BEFORE_RENAME"

    // MARK: Saving

    /// Writes this checkpoint into `directory` atomically (see the type's documentation).
    public func save(in directory: String) throws(UsageError) {
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch { throw UsageError("cannot create checkpoint directory '\(directory)': \(error.localizedDescription)") }
        let final = directory + "/" + Self.folderName(step: step)
        let temporary = directory + "/." + Self.folderName(step: step) + ".tmp-\(getpid())"
        try? fm.removeItem(atPath: temporary)
        do { try fm.createDirectory(atPath: temporary, withIntermediateDirectories: false) } catch {
            throw UsageError("cannot write checkpoint into '\(directory)': \(error.localizedDescription)")
        }

        var files: [(String, [Float])] = [("parameters.f32", parameters)]
        if let moments { files += [("adam_m.f32", moments.m), ("adam_v.f32", moments.v)] }
        var entries: [String: CheckpointState.File] = [:]
        for (name, values) in files {
            let bytes = values.withUnsafeBytes { Data($0) }
            try Self.writeSynced(bytes, to: temporary + "/" + name)
            entries[name] = CheckpointState.File(bytes: bytes.count, crc32: CRC32.checksum(bytes))
        }
        let stateBytes = try CheckpointState(self, files: entries).encoded()
        try Self.writeSynced(stateBytes, to: temporary + "/state.json")
        try Self.syncDirectory(temporary)

        if ProcessInfo.processInfo.environment[Self.killBeforeRenameVariable] == String(step) { kill(getpid(), SIGKILL) }

        try? fm.removeItem(atPath: final)
        if rename(temporary, final) != 0 {
            throw UsageError("cannot move checkpoint into place at '\(final)': \(String(cString: strerror(errno)))")
        }
        try Self.syncDirectory(directory)
        try Self.writeSynced(Data("\(CRC32.checksum(stateBytes))\n".utf8), to: final + "/COMPLETE")
        try Self.syncDirectory(final)
    }

    static func writeSynced(_ data: Data, to path: String) throws(UsageError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if fd < 0 { throw UsageError("cannot write '\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let ok = data.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
        if !ok || fsync(fd) != 0 { throw UsageError("cannot write '\(path)': \(String(cString: strerror(errno)))") }
    }

    static func syncDirectory(_ path: String) throws(UsageError) {
        let fd = open(path, O_RDONLY)
        if fd < 0 { throw UsageError("cannot open '\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        _ = fsync(fd)
    }

    // MARK: Loading

    /// The newest complete checkpoint folder in `directory`.
    public static func latest(in directory: String) throws(UsageError) -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw UsageError("cannot resume: checkpoint directory '\(directory)' does not exist")
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let complete = names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix("step-"), let step = Int(name.dropFirst(5)),
                  FileManager.default.fileExists(atPath: directory + "/" + name + "/COMPLETE") else { return nil }
            return (step, directory + "/" + name)
        }
        guard let newest = complete.max(by: { $0.0 < $1.0 }) else {
            throw UsageError("cannot resume: no complete checkpoint in '\(directory)'")
        }
        return newest.1
    }

    /// Reads and verifies the checkpoint in `folder`.
    public static func load(folder: String) throws(UsageError) -> Checkpoint {
        func read(_ name: String) throws(UsageError) -> Data {
            guard let data = FileManager.default.contents(atPath: folder + "/" + name) else {
                throw UsageError("checkpoint '\(folder)' is incomplete: cannot read \(name)")
            }
            return data
        }
        let stateBytes = try read("state.json")
        let marker = String(decoding: try read("COMPLETE"), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard UInt32(marker) == CRC32.checksum(stateBytes) else {
            throw UsageError("checkpoint '\(folder)' is corrupt: state.json does not match its checksum")
        }
        let state: CheckpointState
        do { state = try CheckpointState.decode(stateBytes) } catch {
            throw UsageError("checkpoint '\(folder)' is corrupt: state.json: \(error.reason)")
        }
        if let problem = state.problem {
            throw UsageError("checkpoint '\(folder)' is corrupt: state.json: \(problem)")
        }
        let config = state.model.config
        if config.parameterCount != state.parameterCount {
            throw UsageError("checkpoint '\(folder)' is corrupt: parameter count does not match its model")
        }
        if state.tensors != config.tensors.map(CheckpointState.Tensor.init) {
            throw UsageError("checkpoint '\(folder)' is corrupt: tensor table does not match its model")
        }

        func floats(_ name: String) throws(UsageError) -> [Float] {
            let data = try read(name)
            guard let entry = state.files[name] else {
                throw UsageError("checkpoint '\(folder)' is corrupt: \(name) is not listed in state.json")
            }
            if data.count != entry.bytes || entry.bytes != state.parameterCount * 4 {
                throw UsageError("checkpoint '\(folder)' is corrupt: \(name) has \(data.count) bytes, expected \(entry.bytes)")
            }
            if CRC32.checksum(data) != entry.crc32 { throw UsageError("checkpoint '\(folder)' is corrupt: \(name) fails its checksum") }
            return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
        let kind = state.optimizer.kind
        return Checkpoint(
            step: state.step, seed: state.sampler.seed, config: config, optimizer: state.optimizer.config,
            parameters: try floats("parameters.f32"),
            moments: kind == .adam ? (try floats("adam_m.f32"), try floats("adam_v.f32")) : nil)
    }

    /// Why this checkpoint cannot continue a run of `config` with `optimizer`, or nil if it can.
    public func mismatch(config: ModelConfig, optimizer: OptimizerKind) -> String? {
        var differences: [String] = []
        let pairs: [(String, Int, Int)] = [("vocab", self.config.vocab, config.vocab), ("seq-len", self.config.seqLen, config.seqLen),
                                          ("emb", self.config.emb, config.emb), ("hidden", self.config.hidden, config.hidden),
                                          ("layers", self.config.layers, config.layers)]
        for (name, saved, wanted) in pairs where saved != wanted {
            differences.append("\(name) \(saved) in the checkpoint, \(wanted) here")
        }
        if self.optimizer.kind != optimizer {
            differences.append("optimizer \(self.optimizer.kind.rawValue) in the checkpoint, \(optimizer.rawValue) here")
        }
        return differences.isEmpty ? nil : differences.joined(separator: "; ")
    }
}

/// The content of `state.json`, key for key: the snake_case names and nesting every checkpoint
/// has had since version 1, so older checkpoints still load.
///
///     {"format", "version", "step",
///      "model": {"vocab", "seq_len", "emb", "hidden", "layers"},
///      "optimizer": {"kind", "lr", "beta1", "beta2", "eps", "weight_decay"},
///      "sampler": {"seed", "next_batch"},
///      "parameter_count", "dtype", "byte_order",
///      "tensors": [{"name", "offset", "shape"}], "files": {NAME: {"bytes", "crc32"}}}
///
/// Every key is required: a missing, null or mistyped one is an error naming it (see
/// ``decode(_:)``), never a default. Written with sorted keys on one line.
struct CheckpointState: Codable, Equatable {
    var format: String
    var version: Int
    var step: Int
    var model: Model
    var optimizer: Optimizer
    var sampler: Sampler
    var parameterCount: Int
    var dtype: String
    var byteOrder: String
    var tensors: [Tensor]
    var files: [String: File]

    static let version = 1

    enum CodingKeys: String, CodingKey {
        case format, version, step, model, optimizer, sampler, dtype, tensors, files
        case parameterCount = "parameter_count", byteOrder = "byte_order"
    }

    struct Model: Codable, Equatable {
        var vocab, seqLen, emb, hidden, layers: Int

        enum CodingKeys: String, CodingKey {
            case vocab, emb, hidden, layers
            case seqLen = "seq_len"
        }

        var config: ModelConfig { ModelConfig(vocab: vocab, seqLen: seqLen, emb: emb, hidden: hidden, layers: layers) }
    }

    struct Optimizer: Codable, Equatable {
        var kind: OptimizerKind
        var lr, beta1, beta2, eps, weightDecay: Float

        enum CodingKeys: String, CodingKey {
            case kind, lr, beta1, beta2, eps
            case weightDecay = "weight_decay"
        }

        var config: OptimizerConfig {
            OptimizerConfig(kind: kind, learningRate: lr, beta1: beta1, beta2: beta2, epsilon: eps, weightDecay: weightDecay)
        }
    }

    struct Sampler: Codable, Equatable {
        var seed: UInt64
        /// The index of the next training batch: always `step` (batches are numbered by step).
        var nextBatch: Int

        enum CodingKeys: String, CodingKey {
            case seed
            case nextBatch = "next_batch"
        }
    }

    struct Tensor: Codable, Equatable {
        var name: String
        var offset: Int
        var shape: [Int]

        init(_ tensor: (name: String, offset: Int, shape: [Int])) {
            (name, offset, shape) = tensor
        }
    }

    struct File: Codable, Equatable {
        var bytes: Int
        var crc32: UInt32
    }

    /// The description of `checkpoint`, whose data files are `files`.
    init(_ checkpoint: Checkpoint, files: [String: File]) {
        let c = checkpoint.config, o = checkpoint.optimizer
        format = Checkpoint.format
        version = Self.version
        step = checkpoint.step
        model = Model(vocab: c.vocab, seqLen: c.seqLen, emb: c.emb, hidden: c.hidden, layers: c.layers)
        optimizer = Optimizer(kind: o.kind, lr: o.learningRate, beta1: o.beta1, beta2: o.beta2, eps: o.epsilon,
                              weightDecay: o.weightDecay)
        sampler = Sampler(seed: checkpoint.seed, nextBatch: checkpoint.step)
        parameterCount = checkpoint.parameters.count
        dtype = "float32"
        byteOrder = "little"
        tensors = c.tensors.map(Tensor.init)
        self.files = files
    }

    /// One line of JSON and a newline.
    func encoded() throws(UsageError) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do { return try encoder.encode(self) + Data("\n".utf8) } catch {
            throw UsageError("cannot describe checkpoint: \(error)")
        }
    }

    /// Why a state.json cannot be read, in one line: `missing key 'optimizer.lr'`,
    /// `key 'step' has the wrong type`, …
    struct Invalid: Error {
        let reason: String
    }

    /// Decodes state.json, turning every `DecodingError` into a one-line ``Invalid`` naming the key.
    static func decode(_ data: Data) throws(Invalid) -> CheckpointState {
        do { return try JSONDecoder().decode(CheckpointState.self, from: data) } catch let error as DecodingError {
            throw Invalid(reason: describe(error))
        } catch {
            throw Invalid(reason: "not valid JSON")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        switch error {
        case let .keyNotFound(key, context):
            return "missing key '\(path(context.codingPath + [key]))'"
        case let .typeMismatch(_, context):
            return context.codingPath.isEmpty ? "not a JSON object" : "key '\(path(context.codingPath))' has the wrong type"
        case let .valueNotFound(_, context):
            return "key '\(path(context.codingPath))' is null"
        case let .dataCorrupted(context):
            return context.codingPath.isEmpty ? "not valid JSON" : "key '\(path(context.codingPath))' has an invalid value"
        @unknown default:
            return "not a valid checkpoint description"
        }
    }

    /// `optimizer.lr`, `tensors[2].shape`, `files.parameters.f32.crc32`.
    static func path(_ keys: [any CodingKey]) -> String {
        var text = ""
        for key in keys {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += (text.isEmpty ? "" : ".") + key.stringValue
            }
        }
        return text
    }

    /// What is wrong with a well-formed description, or nil.
    var problem: String? {
        if format != Checkpoint.format { return "format is '\(format)', expected '\(Checkpoint.format)'" }
        if version != Self.version { return "version \(version) is not supported (expected \(Self.version))" }
        if dtype != "float32" { return "dtype is '\(dtype)', expected 'float32'" }
        if byteOrder != "little" { return "byte_order is '\(byteOrder)', expected 'little'" }
        let dimensions = [("vocab", model.vocab), ("seq_len", model.seqLen), ("emb", model.emb),
                          ("hidden", model.hidden), ("layers", model.layers)]
        if let (name, value) = dimensions.first(where: { $0.1 < 1 }) { return "model.\(name) is \(value), expected at least 1" }
        if step < 0 { return "step is \(step), expected at least 0" }
        if sampler.nextBatch != step { return "sampler.next_batch is \(sampler.nextBatch), expected the step \(step)" }
        return nil
    }
}

// Hand-written decoding: every key through ``KeyedDecodingContainer/required(_:)``, so that a
// number that does not fit its type names its key too.

extension CheckpointState {
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        format = try c.required(.format)
        version = try c.required(.version)
        step = try c.required(.step)
        model = try c.required(.model)
        optimizer = try c.required(.optimizer)
        sampler = try c.required(.sampler)
        parameterCount = try c.required(.parameterCount)
        dtype = try c.required(.dtype)
        byteOrder = try c.required(.byteOrder)
        tensors = try c.required(.tensors)
        files = try c.required(.files)
    }
}

extension CheckpointState.Model {
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocab = try c.required(.vocab)
        seqLen = try c.required(.seqLen)
        emb = try c.required(.emb)
        hidden = try c.required(.hidden)
        layers = try c.required(.layers)
    }
}

extension CheckpointState.Optimizer {
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        kind = try c.required(.kind)
        lr = try c.required(.lr)
        beta1 = try c.required(.beta1)
        beta2 = try c.required(.beta2)
        eps = try c.required(.eps)
        weightDecay = try c.required(.weightDecay)
    }
}

extension CheckpointState.Sampler {
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        seed = try c.required(.seed)
        nextBatch = try c.required(.nextBatch)
    }
}

extension CheckpointState.Tensor {
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.required(.name)
        offset = try c.required(.offset)
        shape = try c.required(.shape)
    }
}

extension CheckpointState.File {
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        bytes = try c.required(.bytes)
        crc32 = try c.required(.crc32)
    }
}

extension KeyedDecodingContainer {
    /// `decode(_:forKey:)`, except that a number that does not fit `T` (−1 for a `UInt64`, 1.5
    /// for an `Int`, 1e50 for a `Float`) becomes `DecodingError.dataCorrupted` at this key:
    /// Foundation's JSONDecoder reports it as invalid JSON with an empty coding path.
    func required<T: Decodable>(_ key: Key) throws -> T {
        do { return try decode(T.self, forKey: key) } catch let error as DecodingError { throw error } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath + [key],
                                                    debugDescription: "value does not fit \(T.self)", underlyingError: error))
        }
    }
}

/// CRC-32 (IEEE 802.3, as zlib.crc32 and `cksum -o 3`), to detect truncated or damaged files.
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ data: Data) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        data.withUnsafeBytes { raw in
            for byte in raw.bindMemory(to: UInt8.self) { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc ^ 0xFFFF_FFFF
    }
}
