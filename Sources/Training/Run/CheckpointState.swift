import Core
import Foundation

/// The content of `state.json`, key for key: the snake_case names and nesting every checkpoint
/// has had since version 1, so older checkpoints still load.
///
///     {"format", "version", "step",
///      "model": {"vocab", "seq_len", "emb", "hidden", "layers"},
///      "optimizer": {"kind", "lr", "beta1", "beta2", "eps", "weight_decay"},
///      "sampler": {"seed", "next_batch"},
///      "parameter_count", "dtype", "byte_order",
///      "tensors": [{"name", "offset", "shape"}], "files": {NAME: {"bytes", "crc32"}},
///      "data": {"path", "bytes", "crc32"}}
///
/// Every key is required: a missing, null or mistyped one is an error naming it (see
/// ``decode(_:)``), never a default. Written with sorted keys on one line.
///
/// Version 2 added `data`, the training data file (``DataIdentity``), required from version 2
/// on. A version 1 checkpoint (written before) has no `data` key and loads with `data` nil: its
/// data file cannot be checked, and resuming says so. A checkpoint written without a data
/// identity (only tests do that) is written as version 1.
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
    /// The data file the run trained on (nil in version 1).
    var data: DataIdentity?

    /// The newest format version, written whenever the data file is known.
    static let version = 2

    enum CodingKeys: String, CodingKey {
        case format, version, step, model, optimizer, sampler, dtype, tensors, files, data
        case parameterCount = "parameter_count", byteOrder = "byte_order"
    }

    struct Model: Codable, Equatable {
        var vocab, seqLen, emb, hidden, layers: Int
        /// The mixture of experts (`"experts": {"count", "top_k", "capacity_factor", "aux_loss_coef"}`),
        /// absent for a dense model: dense checkpoints read and write as before.
        var experts: ExpertsConfig? = nil

        enum CodingKeys: String, CodingKey {
            case vocab, emb, hidden, layers, experts
            case seqLen = "seq_len"
        }

        var config: ModelConfig { ModelConfig(vocab: vocab, seqLen: seqLen, emb: emb, hidden: hidden, layers: layers, experts: experts) }
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
        version = checkpoint.data == nil ? 1 : Self.version
        step = checkpoint.step
        model = Model(vocab: c.vocab, seqLen: c.seqLen, emb: c.emb, hidden: c.hidden, layers: c.layers, experts: c.experts)
        optimizer = Optimizer(kind: o.kind, lr: o.learningRate, beta1: o.beta1, beta2: o.beta2, eps: o.epsilon,
                              weightDecay: o.weightDecay)
        sampler = Sampler(seed: checkpoint.seed, nextBatch: checkpoint.step)
        parameterCount = checkpoint.parameters.count
        dtype = "float32"
        byteOrder = "little"
        tensors = c.tensors.map(Tensor.init)
        self.files = files
        data = checkpoint.data
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
        if !(1...Self.version).contains(version) { return "version \(version) is not supported (expected 1 to \(Self.version))" }
        if dtype != "float32" { return "dtype is '\(dtype)', expected 'float32'" }
        if byteOrder != "little" { return "byte_order is '\(byteOrder)', expected 'little'" }
        let dimensions = [("vocab", model.vocab), ("seq_len", model.seqLen), ("emb", model.emb),
                          ("hidden", model.hidden), ("layers", model.layers)]
        if let (name, value) = dimensions.first(where: { $0.1 < 1 }) { return "model.\(name) is \(value), expected at least 1" }
        if let experts = model.experts {
            if experts.count < 1 || experts.topK < 1 || experts.topK > experts.count {
                return "model.experts has count \(experts.count) and top_k \(experts.topK), expected 1 ≤ top_k ≤ count"
            }
            if let factor = experts.capacityFactor, !(factor.isFinite && factor > 0) {
                return "model.experts.capacity_factor is \(factor), expected a positive number"
            }
            if !(experts.auxiliaryLossCoefficient.isFinite && experts.auxiliaryLossCoefficient >= 0) {
                return "model.experts.aux_loss_coef is \(experts.auxiliaryLossCoefficient), expected a number ≥ 0"
            }
        }
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
        if version >= 2 { data = try c.required(.data) as DataIdentity } else { data = nil }
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
        experts = c.contains(.experts) ? try c.required(.experts) as ExpertsConfig : nil
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
