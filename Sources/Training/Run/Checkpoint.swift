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
/// | other `NAME.f32` | a layout's own state (``LayoutState``: DiLoCo's outer model and each worker's copy), any length |
/// | `state.json` | format, step, model, optimizer, sampler state, tensor table, byte size and CRC-32 of each file, data file |
/// | `COMPLETE` | written last: the CRC-32 of state.json |
///
/// Saving writes everything into a hidden temporary folder, fsyncs each file and the folder,
/// renames it into place, and only then writes `COMPLETE`. A job killed at any point leaves the
/// previous checkpoint untouched and loadable; a folder without `COMPLETE` is ignored; a save
/// that fails (full or read-only disk) removes what it wrote and names the directory and reason.
/// The newest complete checkpoint is verified before use: a size or checksum mismatch is refused
/// with an error, never loaded. Read one with numpy:
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
    /// The data file trained on (nil for checkpoints of format version 1).
    var data: DataIdentity? = nil
    /// A layout's own files (``LayoutState``), by file name; empty for most layouts.
    public var layoutFiles: [String: [Float]] = [:]

    static let format = "parallelisms-swift checkpoint"
    /// The files every layout reads; any other listed file is a layout's own (``layoutFiles``).
    static let canonicalFiles: Set<String> = ["parameters.f32", "adam_m.f32", "adam_v.f32"]

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
    ///
    /// Any failure — a full disk (`ENOSPC`), a read-only one (`EROFS`), no permission — is one
    /// error naming the checkpoint, the directory and the system's reason, e.g. `cannot save
    /// checkpoint step-00000080 in '/ckpt': No space left on device (writing adam_v.f32)`; and
    /// what this save wrote is removed again (the temporary folder, or the new folder if only its
    /// `COMPLETE` could not be written). Earlier checkpoints are never touched, so the newest
    /// complete one stays loadable.
    public func save(in directory: String) throws(UsageError) {
        let name = Self.folderName(step: step)
        let final = directory + "/" + name
        let temporary = directory + "/." + name + ".tmp-\(getpid())"
        var placed = false
        do {
            try writeFolder(into: directory, temporary: temporary, final: final, placed: &placed)
        } catch {
            try? FileManager.default.removeItem(atPath: placed ? final : temporary)
            throw UsageError("cannot save checkpoint \(name) in '\(directory)': \(error.reason)")
        }
    }

    /// Why a save failed: the system's reason and what was being done, e.g.
    /// `Read-only file system (creating .step-00000080.tmp-123)`.
    struct SaveFailure: Error {
        let reason: String

        /// The reason `errno` gives, for `action`.
        static func system(_ action: String) -> SaveFailure {
            SaveFailure(reason: "\(String(cString: strerror(errno))) (\(action))")
        }
    }

    /// The steps of ``save(in:)``; `placed` becomes true once the folder has its final name.
    private func writeFolder(into directory: String, temporary: String, final: String, placed: inout Bool) throws(SaveFailure) {
        try Self.makeDirectories(directory)
        try? FileManager.default.removeItem(atPath: temporary)
        let hidden = String(temporary.dropFirst(directory.count + 1))
        if mkdir(temporary, 0o755) != 0 { throw .system("creating \(hidden)") }

        var files: [(String, [Float])] = [("parameters.f32", parameters)]
        if let moments { files += [("adam_m.f32", moments.m), ("adam_v.f32", moments.v)] }
        files += layoutFiles.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        var entries: [String: CheckpointState.File] = [:]
        for (name, values) in files {
            let bytes = values.withUnsafeBytes { Data($0) }
            try Self.writeSynced(bytes, to: temporary + "/" + name)
            entries[name] = CheckpointState.File(bytes: bytes.count, crc32: CRC32.checksum(bytes))
        }
        let stateBytes: Data
        do { stateBytes = try CheckpointState(self, files: entries).encoded() } catch { throw SaveFailure(reason: error.description) }
        try Self.writeSynced(stateBytes, to: temporary + "/state.json")
        try Self.syncDirectory(temporary)

        if ProcessInfo.processInfo.environment[Self.killBeforeRenameVariable] == String(step) { kill(getpid(), SIGKILL) }

        try? FileManager.default.removeItem(atPath: final)
        if rename(temporary, final) != 0 { throw .system("renaming \(hidden)") }
        placed = true
        try Self.syncDirectory(directory)
        try Self.writeSynced(Data("\(CRC32.checksum(stateBytes))\n".utf8), to: final + "/COMPLETE")
        try Self.syncDirectory(final)
    }

    /// `mkdir -p`: creates `path` and any missing parents.
    static func makeDirectories(_ path: String) throws(SaveFailure) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            if isDirectory.boolValue { return }
            throw SaveFailure(reason: "it is not a directory")
        }
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty && parent != path { try makeDirectories(parent) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw .system("creating the directory") }
    }

    /// Writes `data` to `path` and fsyncs it; the failure names the file.
    static func writeSynced(_ data: Data, to path: String) throws(SaveFailure) {
        let name = (path as NSString).lastPathComponent
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if fd < 0 { throw .system("creating \(name)") }
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
        if !ok { throw .system("writing \(name)") }
        if fsync(fd) != 0 { throw .system("syncing \(name)") }
    }

    /// Flushes a directory's entries to disk (best effort: some file systems refuse it).
    static func syncDirectory(_ path: String) throws(SaveFailure) {
        let fd = open(path, O_RDONLY)
        if fd < 0 { throw .system("opening \((path as NSString).lastPathComponent)") }
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

        func floats(_ name: String, canonical: Bool = true) throws(UsageError) -> [Float] {
            let data = try read(name)
            guard let entry = state.files[name] else {
                throw UsageError("checkpoint '\(folder)' is corrupt: \(name) is not listed in state.json")
            }
            if data.count != entry.bytes || (canonical ? entry.bytes != state.parameterCount * 4 : entry.bytes % 4 != 0) {
                throw UsageError("checkpoint '\(folder)' is corrupt: \(name) has \(data.count) bytes, expected \(entry.bytes)")
            }
            if CRC32.checksum(data) != entry.crc32 { throw UsageError("checkpoint '\(folder)' is corrupt: \(name) fails its checksum") }
            return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
        let kind = state.optimizer.kind
        var layoutFiles: [String: [Float]] = [:]
        for name in state.files.keys where !Self.canonicalFiles.contains(name) {
            layoutFiles[name] = try floats(name, canonical: false)
        }
        return Checkpoint(
            step: state.step, seed: state.sampler.seed, config: config, optimizer: state.optimizer.config,
            parameters: try floats("parameters.f32"),
            moments: kind == .adam ? (try floats("adam_m.f32"), try floats("adam_v.f32")) : nil, data: state.data,
            layoutFiles: layoutFiles)
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
        if self.config.experts != config.experts {
            func text(_ experts: ExpertsConfig?) -> String { experts.map { "(\($0))" } ?? "none (dense)" }
            differences.append("experts \(text(self.config.experts)) in the checkpoint, \(text(config.experts)) here")
        }
        if self.optimizer.kind != optimizer {
            differences.append("optimizer \(self.optimizer.kind.rawValue) in the checkpoint, \(optimizer.rawValue) here")
        }
        return differences.isEmpty ? nil : differences.joined(separator: "; ")
    }
}
