import Core
import Foundation

/// The trained model as a `.safetensors` file (`--export`), and read back (`--init-from`).
///
/// The format (Hugging Face's, read by `safetensors` in Python, Rust and C++):
///
///     8 bytes     N, the header's length, unsigned little-endian
///     N bytes     JSON: {"NAME": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
///                        "__metadata__": {"KEY": "VALUE", ...}}   (padded with spaces to a multiple of 8)
///     the data    every tensor's little-endian floats; offsets count from here, tensors contiguous
///
/// Tensors, in canonical (offset) order: `embedding.weight [vocab, emb]`, then for each Linear
/// `fcL.weight [in, out]` and `fcL.bias [out]`, and `head.weight [hidden, vocab]`, `head.bias
/// [vocab]`. A weight is stored as this project computes with it, `y = x·W + b` with `W [in × out]`:
/// PyTorch's `nn.Linear` holds `[out, in]`, its transpose. The metadata (all strings) holds the
/// configuration (`vocab`, `seq_len`, `emb`, `hidden`, `layers`; with experts also `experts`,
/// `top_k` and `capacity_factor`, the tensors then `fcL.router.weight [in, E]` and
/// `fcL.experts.e.weight`, `fcL.experts.e.bias` for each expert e), the `vocabulary` (a JSON array
/// of the characters of tokens 1 … vocab − 1; token 0 is the boundary), the steps trained, the
/// weight layout, and `format` / `format_version`, checked on reading.
enum SafeTensors {
    static let format = "parallelisms-swift"
    static let version = "1"

    /// The exported tensors of `config`, canonical order: the checkpoint table, with the
    /// embedding named `embedding.weight` like every other weight.
    static func tensors(_ config: ModelConfig) -> [Tensor] {
        config.plan.tensors.map { tensor in
            var tensor = tensor
            if !tensor.name.contains(".") { tensor.name += ".weight" }
            return tensor
        }
    }

    /// The vocabulary as it is stored in the metadata: a JSON array of one-character strings.
    static func vocabularyText(_ vocabulary: Vocabulary) -> String {
        let symbols = vocabulary.symbols.map { String(Character($0)) }
        let data = (try? JSONSerialization.data(withJSONObject: symbols, options: [.withoutEscapingSlashes])) ?? Data("[]".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The metadata of a model of `config` on `vocabulary` after `steps` steps.
    static func metadata(config: ModelConfig, vocabulary: Vocabulary, steps: Int) -> [String: String] {
        var metadata = ["format": format, "format_version": version,
         "vocab": "\(config.vocab)", "seq_len": "\(config.seqLen)", "emb": "\(config.emb)",
         "hidden": "\(config.hidden)", "layers": "\(config.layers)",
         "vocabulary": vocabularyText(vocabulary), "steps": "\(steps)",
         "linear_weight_layout": "[in, out]: y = x @ W + b (torch.nn.Linear.weight is W.T)"]
        // A mixture of experts adds its routing (absent keys: the dense model, `experts` 0).
        if let experts = config.experts {
            metadata["experts"] = "\(experts.count)"
            metadata["top_k"] = "\(experts.topK)"
            if let factor = experts.capacityFactor { metadata["capacity_factor"] = "\(factor)" }
        }
        return metadata
    }

    // MARK: Writing

    /// The whole file for the canonical `parameters` of `config`.
    static func encode(parameters: [Float], config: ModelConfig, vocabulary: Vocabulary, steps: Int) throws(UsageError) -> Data {
        precondition(parameters.count == config.parameterCount)
        var header: [String: Any] = ["__metadata__": metadata(config: config, vocabulary: vocabulary, steps: steps)]
        for tensor in tensors(config) {
            header[tensor.name] = ["dtype": "F32", "shape": tensor.shape,
                                   "data_offsets": [4 * tensor.offset, 4 * (tensor.offset + tensor.count)]] as [String: Any]
        }
        var json: Data
        do { json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys, .withoutEscapingSlashes]) } catch {
            throw UsageError("cannot encode the safetensors header: \(error.localizedDescription)")
        }
        // Pad so the data starts 8-byte aligned (readers may then map it in place).
        json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))
        var file = Data(capacity: 8 + json.count + 4 * parameters.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(json)
        for value in parameters { withUnsafeBytes(of: value.bitPattern.littleEndian) { file.append(contentsOf: $0) } }
        return file
    }

    /// Writes the file atomically: a temporary file beside `path`, synced, then renamed over it,
    /// so a job killed while exporting leaves the previous file (or none), never half of one.
    static func save(_ data: Data, to path: String) throws(UsageError) {
        let temporary = path + ".tmp-\(getpid())"
        func fail() -> UsageError {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            return UsageError("cannot write safetensors file '\(path)': \(reason)")
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if fd < 0 { throw fail() }
        let written = data.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { return false }
                offset += n
            }
            return fsync(fd) == 0
        }
        close(fd)
        if !written || rename(temporary, path) != 0 { throw fail() }
    }

    // MARK: Reading

    /// The canonical parameters in the file at `path`, which must hold exactly the model of
    /// `config` trained on `vocabulary`. Every problem is one error naming it.
    static func read(path: String, config: ModelConfig, vocabulary: Vocabulary) throws(UsageError) -> [Float] {
        guard let data = FileManager.default.contents(atPath: path) else {
            var isDirectory: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
            throw UsageError("cannot read safetensors file '\(path)': " + (!exists ? "no such file" : isDirectory.boolValue ? "it is a directory" : "not readable"))
        }
        do { return try decode(data, config: config, vocabulary: vocabulary) } catch {
            throw UsageError("safetensors file '\(path)' \(error.description)")
        }
    }

    /// ``read(path:config:vocabulary:)`` on the file's bytes; errors continue "safetensors file 'PATH' …".
    static func decode(_ data: Data, config: ModelConfig, vocabulary: Vocabulary) throws(UsageError) -> [Float] {
        let bytes = [UInt8](data)
        guard bytes.count >= 8 else { throw UsageError("is truncated: \(bytes.count) bytes, less than the 8-byte header length") }
        let length = bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard length <= UInt64(bytes.count - 8) else {
            throw UsageError("is truncated: its header should have \(length) bytes, only \(bytes.count - 8) follow")
        }
        let headerEnd = 8 + Int(length)
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes[8..<headerEnd])), let header = object as? [String: Any] else {
            throw UsageError("has a header that is not a JSON object")
        }

        // The metadata first: a different model is named as such, not as a list of odd shapes.
        guard let metadata = header["__metadata__"] as? [String: String] else {
            throw UsageError("has no __metadata__ of strings (this project's files hold the configuration there)")
        }
        func field(_ key: String) throws(UsageError) -> String {
            guard let value = metadata[key] else { throw UsageError("has no '\(key)' in its metadata") }
            return value
        }
        let fileFormat = try field("format"), fileVersion = try field("format_version")
        guard fileFormat == format, fileVersion == version else {
            throw UsageError("is format '\(fileFormat)' version \(fileVersion); this build reads '\(format)' version \(version)")
        }
        var differences: [String] = []
        for (key, flag, wanted) in [("vocab", "vocab", config.vocab), ("seq_len", "seq-len", config.seqLen), ("emb", "emb", config.emb),
                                    ("hidden", "hidden", config.hidden), ("layers", "layers", config.layers)] {
            let text = try field(key)
            guard let saved = Int(text) else { throw UsageError("has metadata '\(key)' = '\(text)', not an integer") }
            if saved != wanted { differences.append("\(flag) \(saved) in the file, \(wanted) here") }
        }
        // The experts' count shapes the tensors (absent: dense); top-k and capacity only route,
        // so a file trained with other ones may start this run.
        let savedExperts = metadata["experts"] ?? "0", wantedExperts = "\(config.experts?.count ?? 0)"
        if savedExperts != wantedExperts { differences.append("experts \(savedExperts) in the file, \(wantedExperts) here") }
        if !differences.isEmpty { throw UsageError("is a different model: " + differences.joined(separator: "; ")) }
        let fileVocabulary = try field("vocabulary")
        let symbols = (try? JSONSerialization.jsonObject(with: Data(fileVocabulary.utf8))) as? [String]
        if symbols != vocabulary.symbols.map({ String(Character($0)) }) {
            throw UsageError("was trained on another vocabulary: \(fileVocabulary) in the file, \(vocabularyText(vocabulary)) here")
        }

        // Then the tensors: exactly the expected names, F32, the expected shapes, inside the data.
        let expected = tensors(config)
        let names = Set(expected.map(\.name))
        if let extra = header.keys.filter({ $0 != "__metadata__" && !names.contains($0) }).sorted().first {
            throw UsageError("has a tensor '\(extra)' that this model does not have")
        }
        let dataCount = bytes.count - headerEnd
        var parameters = [Float](repeating: 0, count: config.parameterCount)
        var spans: [Range<Int>] = []
        for tensor in expected {
            guard let entry = header[tensor.name] as? [String: Any] else { throw UsageError("has no tensor '\(tensor.name)'") }
            guard let dtype = entry["dtype"] as? String, dtype == "F32" else {
                throw UsageError("has tensor '\(tensor.name)' of dtype \(entry["dtype"].map { "\($0)" } ?? "(none)"); only F32 is read")
            }
            guard let shape = entry["shape"] as? [Int], shape == tensor.shape else {
                throw UsageError("has tensor '\(tensor.name)' of shape \(entry["shape"].map { "\($0)" } ?? "(none)"), expected \(tensor.shape)")
            }
            guard let offsets = entry["data_offsets"] as? [Int], offsets.count == 2, offsets[0] >= 0,
                  offsets[1] - offsets[0] == 4 * tensor.count else {
                throw UsageError("has tensor '\(tensor.name)' with data_offsets \(entry["data_offsets"].map { "\($0)" } ?? "(none)") "
                                 + "that do not hold \(tensor.count) floats")
            }
            guard offsets[1] <= dataCount else {
                throw UsageError("is truncated: tensor '\(tensor.name)' ends at byte \(offsets[1]) of the data, which has \(dataCount)")
            }
            spans.append(offsets[0]..<offsets[1])
            bytes.withUnsafeBytes { raw in
                for i in 0..<tensor.count {
                    let bits = raw.loadUnaligned(fromByteOffset: headerEnd + offsets[0] + 4 * i, as: UInt32.self)
                    parameters[tensor.offset + i] = Float(bitPattern: UInt32(littleEndian: bits))
                }
            }
        }
        // The format's last rule: the tensors tile the data exactly, without gaps or overlaps.
        var end = 0
        for span in spans.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if span.lowerBound != end { throw UsageError("has tensors that overlap or leave gaps in its data") }
            end = span.upperBound
        }
        if end != dataCount { throw UsageError("has \(dataCount - end) bytes of data after its last tensor") }
        return parameters
    }
}
