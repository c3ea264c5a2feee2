import Foundation
import XCTest
import Core
@testable import Training

/// The checkpoint folder format without MPI: `Checkpoint.save(in:)` and `Checkpoint.load(folder:)`
/// on a temporary directory.
final class CheckpointFormatTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ps-checkpoint-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A checkpoint whose every field differs from the defaults, with Adam moments unless `sgd`.
    func sample(sgd: Bool = false) -> Checkpoint {
        let config = ModelConfig(vocab: 5, seqLen: 3, emb: 2, hidden: 4, layers: 2)
        var f = SplitMix64(seed: 99)
        let floats = { (f: inout SplitMix64) in (0..<config.parameterCount).map { _ in f.symmetric(3) } }
        let parameters = floats(&f), m = floats(&f), v = floats(&f).map(abs)
        return Checkpoint(step: 123, seed: .max - 4, config: config,
                          optimizer: OptimizerConfig(kind: sgd ? .sgd : .adam, learningRate: 0.003, beta1: 0.85, beta2: 0.995,
                                                     epsilon: 3e-7, weightDecay: 0.01),
                          parameters: parameters, moments: sgd ? nil : (m, v),
                          data: DataIdentity(path: "data/some file.txt", bytes: 632_713, crc32: 0xFFFF_FFF0))
    }

    func assertEqual(_ a: Checkpoint, _ b: Checkpoint, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.step, b.step, file: file, line: line)
        XCTAssertEqual(a.seed, b.seed, file: file, line: line)
        XCTAssertEqual(a.config, b.config, file: file, line: line)
        XCTAssertEqual(a.optimizer, b.optimizer, file: file, line: line)
        XCTAssertEqual(a.parameters, b.parameters, file: file, line: line)
        XCTAssertEqual(a.moments?.m, b.moments?.m, file: file, line: line)
        XCTAssertEqual(a.moments?.v, b.moments?.v, file: file, line: line)
        XCTAssertEqual(a.moments == nil, b.moments == nil, file: file, line: line)
        XCTAssertEqual(a.data, b.data, file: file, line: line)
    }

    /// The error `load` throws for `folder`, or nil if it loads.
    func loadError(_ folder: String) -> String? {
        do { _ = try Checkpoint.load(folder: folder); return nil } catch { return error.description }
    }

    /// Saves `sample()`, applies `edit` to its state.json (parsed with JSONSerialization, so the
    /// edit does not depend on the code under test), rewrites COMPLETE as the CRC-32 of the new
    /// state.json so that loading gets past the checksum, and returns the folder.
    func savedAndEdited(_ edit: (inout [String: Any]) -> Void) throws -> String {
        try sample().save(in: directory)
        let folder = directory + "/" + Checkpoint.folderName(step: 123)
        let url = URL(fileURLWithPath: folder + "/state.json")
        var state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        edit(&state)
        let data = try JSONSerialization.data(withJSONObject: state)
        try data.write(to: url)
        try Data("\(CRC32.checksum(data))\n".utf8).write(to: URL(fileURLWithPath: folder + "/COMPLETE"))
        return folder
    }

    /// Sets `value` at the key path `keys` (dictionary keys, or array indices as Int).
    static func set(_ value: Any?, at keys: [Any], in object: inout Any) {
        if keys.isEmpty { object = value as Any; return }
        if let index = keys[0] as? Int, var array = object as? [Any] {
            var element = array[index]
            set(value, at: Array(keys.dropFirst()), in: &element)
            array[index] = element
            object = array
        } else if let key = keys[0] as? String, var dictionary = object as? [String: Any] {
            if keys.count == 1 && value == nil {
                dictionary[key] = nil
            } else {
                var element: Any = dictionary[key] as Any
                set(value, at: Array(keys.dropFirst()), in: &element)
                dictionary[key] = element
            }
            object = dictionary
        } else {
            XCTFail("no \(keys) in \(object)")
        }
    }

    // MARK: Round trip

    /// Every field of the checkpoint (step, sampler seed up to UInt64.max, model, every optimizer
    /// hyperparameter, parameters and both moments bit for bit) survives save then load; the
    /// state.json written is one line of JSON with today's keys.
    func testRoundTripKeepsEveryField() throws {
        for sgd in [false, true] {
            let dir = directory + (sgd ? "/sgd" : "/adam")
            let original = sample(sgd: sgd)
            try original.save(in: dir)
            let folder = dir + "/step-00000123"
            let loaded = try Checkpoint.load(folder: folder)
            assertEqual(loaded, original)
            let files = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
            XCTAssertEqual(files, (["COMPLETE"] + (sgd ? [] : ["adam_m.f32", "adam_v.f32"]) + ["parameters.f32", "state.json"]))

            let text = try String(contentsOfFile: folder + "/state.json", encoding: .utf8)
            XCTAssertTrue(text.hasSuffix("}\n"))
            XCTAssertEqual(text.filter { $0 == "\n" }.count, 1, "one line")
            let state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
            XCTAssertEqual(Set(state.keys), ["format", "version", "step", "model", "optimizer", "sampler", "parameter_count",
                                             "dtype", "byte_order", "tensors", "files", "data"])
            XCTAssertEqual(state["version"] as? Int, 2)
            let data = state["data"] as? [String: Any] ?? [:]
            XCTAssertEqual(Set(data.keys), ["path", "bytes", "crc32"])
            XCTAssertEqual(data["path"] as? String, "data/some file.txt")
            XCTAssertEqual(data["bytes"] as? Int, 632_713)
            XCTAssertEqual(data["crc32"] as? UInt32, 0xFFFF_FFF0)
            XCTAssertEqual(Set((state["model"] as? [String: Any] ?? [:]).keys), ["vocab", "seq_len", "emb", "hidden", "layers"])
            XCTAssertEqual(Set((state["optimizer"] as? [String: Any] ?? [:]).keys),
                           ["kind", "lr", "beta1", "beta2", "eps", "weight_decay"])
            XCTAssertEqual((state["sampler"] as? [String: Any])?["next_batch"] as? Int, 123)
            XCTAssertEqual(Set((state["files"] as? [String: Any] ?? [:]).keys),
                           Set(sgd ? ["parameters.f32"] : ["parameters.f32", "adam_m.f32", "adam_v.f32"]))
            let tensors = try XCTUnwrap(state["tensors"] as? [[String: Any]])
            XCTAssertEqual(tensors.map { $0["name"] as? String }, ["embedding", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                                                  "head.weight", "head.bias"])
            XCTAssertEqual(tensors.map { $0["shape"] as? [Int] }, [[5, 2], [6, 4], [4], [4, 4], [4], [4, 5], [5]])
        }
    }

    // MARK: Missing and mistyped keys

    /// A state.json without `optimizer.lr` is refused with an error naming that key — the loader
    /// no longer falls back to a learning rate of 0.
    func testMissingLearningRateIsNamed() throws {
        let folder = try savedAndEdited { state in
            var object: Any = state
            Self.set(nil, at: ["optimizer", "lr"], in: &object)
            state = object as! [String: Any]
        }
        XCTAssertEqual(loadError(folder), "checkpoint '\(folder)' is corrupt: state.json: missing key 'optimizer.lr'")
    }

    /// `"step": "5"` (a string) is refused with an error naming `step`.
    func testMistypedStepIsNamed() throws {
        let folder = try savedAndEdited { $0["step"] = "5" }
        XCTAssertEqual(loadError(folder), "checkpoint '\(folder)' is corrupt: state.json: key 'step' has the wrong type")
    }

    /// Every kind of `DecodingError` becomes one line naming the key, at any depth: nested
    /// objects, array elements, the file table, numbers that do not fit their type, null, an
    /// unknown optimizer kind; and the checks after decoding name what they refuse.
    func testEveryDecodingErrorNamesItsKey() throws {
        let cases: [([Any], Any?, String)] = [
            (["format"], nil, "missing key 'format'"),
            (["model", "seq_len"], nil, "missing key 'model.seq_len'"),
            (["model", "layers"], 1.5, "key 'model.layers' has an invalid value"),
            (["optimizer", "weight_decay"], "0", "key 'optimizer.weight_decay' has the wrong type"),
            (["optimizer", "beta2"], NSNull(), "key 'optimizer.beta2' is null"),
            (["optimizer", "kind"], "lion", "key 'optimizer.kind' has an invalid value"),
            (["optimizer", "eps"], 1e50, "key 'optimizer.eps' has an invalid value"),
            (["sampler", "seed"], -1, "key 'sampler.seed' has an invalid value"),
            (["sampler", "next_batch"], nil, "missing key 'sampler.next_batch'"),
            (["tensors", 2, "shape"], nil, "missing key 'tensors[2].shape'"),
            (["tensors", 1, "shape"], [6, "4"], "key 'tensors[1].shape[1]' has the wrong type"),
            (["files", "adam_v.f32", "crc32"], nil, "missing key 'files.adam_v.f32.crc32'"),
            (["files", "parameters.f32", "crc32"], 1 << 33, "key 'files.parameters.f32.crc32' has an invalid value"),
            (["files"], [1, 2], "key 'files' has the wrong type"),
            (["parameter_count"], nil, "missing key 'parameter_count'"),
            (["format"], "something else", "format is 'something else', expected 'parallelisms-swift checkpoint'"),
            (["version"], 3, "version 3 is not supported (expected 1 to 2)"),
            (["version"], 0, "version 0 is not supported (expected 1 to 2)"),
            (["data"], nil, "missing key 'data'"),
            (["data", "crc32"], nil, "missing key 'data.crc32'"),
            (["data", "bytes"], "5", "key 'data.bytes' has the wrong type"),
            (["data", "path"], NSNull(), "key 'data.path' is null"),
            (["dtype"], "float16", "dtype is 'float16', expected 'float32'"),
            (["byte_order"], "big", "byte_order is 'big', expected 'little'"),
            (["model", "layers"], 0, "model.layers is 0, expected at least 1"),
            (["step"], -3, "step is -3, expected at least 0"),
            (["sampler", "next_batch"], 7, "sampler.next_batch is 7, expected the step 123"),
        ]
        for (i, (keys, value, expected)) in cases.enumerated() {
            let subdirectory = directory
            directory += "/\(i)"
            defer { directory = subdirectory }
            let folder = try savedAndEdited { state in
                var object: Any = state
                Self.set(value, at: keys, in: &object)
                state = object as! [String: Any]
            }
            XCTAssertEqual(loadError(folder), "checkpoint '\(folder)' is corrupt: state.json: \(expected)", "\(keys) = \(value ?? "removed")")
        }
    }

    /// The checks after decoding still run: the parameter count against the model, the tensor
    /// table against the model, a data file not listed, and the COMPLETE marker against state.json.
    func testModelAndFileChecksStillRun() throws {
        var folder = try savedAndEdited { $0["parameter_count"] = 100 }
        XCTAssertEqual(loadError(folder), "checkpoint '\(folder)' is corrupt: parameter count does not match its model")

        directory += "/tensors"
        folder = try savedAndEdited { state in
            var object: Any = state
            Self.set(7, at: ["tensors", 3, "offset"], in: &object)
            state = object as! [String: Any]
        }
        XCTAssertEqual(loadError(folder), "checkpoint '\(folder)' is corrupt: tensor table does not match its model")

        directory += "/files"
        folder = try savedAndEdited { state in
            var object: Any = state
            Self.set(nil, at: ["files", "adam_m.f32"], in: &object)
            state = object as! [String: Any]
        }
        XCTAssertEqual(loadError(folder), "checkpoint '\(folder)' is corrupt: adam_m.f32 is not listed in state.json")

        directory += "/marker"
        try sample().save(in: directory)
        folder = directory + "/step-00000123"
        var text = try String(contentsOfFile: folder + "/state.json", encoding: .utf8)
        text = text.replacingOccurrences(of: "\"step\":123", with: "\"step\":124")
        try text.write(toFile: folder + "/state.json", atomically: true, encoding: .utf8)
        XCTAssertEqual(loadError(folder), "checkpoint '\(folder)' is corrupt: state.json does not match its checksum")
    }

    // MARK: Checkpoints written before the Codable change

    /// Byte for byte what the string-interpolating `save` wrote (captured from a `train` built
    /// before the change): `train --data tiny.txt --layers 1 --emb 2 --hidden 3 --seq-len 2
    /// --batch-size 2 --steps 4 --optimizer adam --lr 0.003 --weight-decay 0.01 --seed 7`, and the
    /// same with SGD at its defaults, `--steps 3 --seed 42`. Keys in writing order, `"shape":[3, 2]`
    /// with a space, `"weight_decay":0.0`, `"eps":1e-08`.
    static let legacyAdam: [String: String] = [
        "state.json": #"""
        {"format":"parallelisms-swift checkpoint","version":1,"step":4,"model":{"vocab":3,"seq_len":2,"emb":2,"hidden":3,"layers":1},"optimizer":{"kind":"adam","lr":0.003,"beta1":0.9,"beta2":0.999,"eps":1e-08,"weight_decay":0.01},"sampler":{"seed":7,"next_batch":4},"parameter_count":33,"dtype":"float32","byte_order":"little","tensors":[{"name":"embedding","offset":0,"shape":[3, 2]},{"name":"fc1.weight","offset":6,"shape":[4, 3]},{"name":"fc1.bias","offset":18,"shape":[3]},{"name":"head.weight","offset":21,"shape":[3, 3]},{"name":"head.bias","offset":30,"shape":[3]}],"files":{"parameters.f32":{"bytes":132,"crc32":1746585872},"adam_m.f32":{"bytes":132,"crc32":2241563383},"adam_v.f32":{"bytes":132,"crc32":4148861256}}}

        """#,
        "COMPLETE": "33357417\n",
        "parameters.f32": "3yQvvScIpj4HkCQ+VJJPv44e6z6p8ia/yO56PjiWTr40uzk+DPpDPf7bkr6AmxW+cn32vkW+sj4ifcm+wA7supYt9T5QKvY9aCqFvZk7vT7sY4a+TMsAPyAIJr1Ngs4+HLlOvpp+Eb/cLQQ+9Gh2vubxpL6mirk+Jp7CPqHVBj8D/0Y+",
        "adam_m.f32": "y+7lO/VzHTxL8hC8YlVNvNEOGjyCfE88AAAAAB4GzLsAAAAAAAAAAHCiOTwAAAAAAAAAAF0DfjsAAAAAAAAAADYUizwAAAAAAAAAACe3Tz0AAAAAAAAAAAAAAAAAAAAALMjyPLqWVL1KZbY8AAAAAAAAAAAAAAAAg2ekPS5C4L2wau88",
        "adam_v.f32": "Uv2gNvFmGzcjKNk2JbBaN8CkXzeuKNQ3AAAAAIcYKTcAAAAAAAAAAOpeIjgAAAAAAAAAAAripzcAAAAAAAAAAKuPjjgAAAAAAAAAAOSslzkAAAAAAAAAAAAAAAAAAAAABsIlOPd4CDkQAew3AAAAAAAAAAAAAAAAuHvDOWxOhjrZNZQ5",
    ]

    static let legacySGD: [String: String] = [
        "state.json": #"""
        {"format":"parallelisms-swift checkpoint","version":1,"step":3,"model":{"vocab":3,"seq_len":2,"emb":2,"hidden":3,"layers":1},"optimizer":{"kind":"sgd","lr":0.1,"beta1":0.9,"beta2":0.999,"eps":1e-08,"weight_decay":0.0},"sampler":{"seed":42,"next_batch":3},"parameter_count":33,"dtype":"float32","byte_order":"little","tensors":[{"name":"embedding","offset":0,"shape":[3, 2]},{"name":"fc1.weight","offset":6,"shape":[4, 3]},{"name":"fc1.bias","offset":18,"shape":[3]},{"name":"head.weight","offset":21,"shape":[3, 3]},{"name":"head.bias","offset":30,"shape":[3]}],"files":{"parameters.f32":{"bytes":132,"crc32":3044572011}}}

        """#,
        "COMPLETE": "3529280532\n",
        "parameters.f32": "qNUVP91bYr+S7ei+8uuyvnQ9LTvmVDW+DF6lvtfS2j7tIDo9b5s7vqDb0T6RBj++c6x6Pjszyb5iws49V8javvSlI74dIOU+DZLnvfjyez5IcqM++CsOvKc/oz2tvgo/ehcDv7+7n76eCKq+C7r9vhdtCb6vrva9/C/vvgiB7r5NbeI+",
    ]

    /// Writes `files` (binary ones in base64) into `DIR/name` and returns the folder.
    func writeLegacy(_ files: [String: String], name: String) throws -> String {
        let folder = directory + "/" + name
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (file, content) in files {
            let data = file.hasSuffix(".f32") ? try XCTUnwrap(Data(base64Encoded: content)) : Data(content.utf8)
            try data.write(to: URL(fileURLWithPath: folder + "/" + file))
        }
        return folder
    }

    static func floats(_ base64: String) -> [Float] {
        Data(base64Encoded: base64)!.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// Checkpoints written by the code before `state.json` went through `Codable` load, with every
    /// field as that code wrote it (the hyperparameters are the floats of the flags, exactly).
    func testCheckpointsWrittenBeforeTheChangeLoad() throws {
        let config = ModelConfig(vocab: 3, seqLen: 2, emb: 2, hidden: 3, layers: 1)
        let adam = try Checkpoint.load(folder: try writeLegacy(Self.legacyAdam, name: "step-00000004"))
        assertEqual(adam, Checkpoint(step: 4, seed: 7, config: config,
                                     optimizer: OptimizerConfig(kind: .adam, learningRate: 0.003, beta1: 0.9, beta2: 0.999,
                                                                epsilon: 1e-8, weightDecay: 0.01),
                                     parameters: Self.floats(Self.legacyAdam["parameters.f32"]!),
                                     moments: (Self.floats(Self.legacyAdam["adam_m.f32"]!), Self.floats(Self.legacyAdam["adam_v.f32"]!))))
        XCTAssertEqual(adam.parameters.count, 33)

        let sgd = try Checkpoint.load(folder: try writeLegacy(Self.legacySGD, name: "step-00000003"))
        assertEqual(sgd, Checkpoint(step: 3, seed: 42, config: config, optimizer: OptimizerConfig(kind: .sgd, learningRate: 0.1),
                                    parameters: Self.floats(Self.legacySGD["parameters.f32"]!), moments: nil))
        XCTAssertEqual(try Checkpoint.latest(in: directory), directory + "/step-00000004")
        XCTAssertNil(adam.data, "version 1 records no data file")
        XCTAssertNil(sgd.data)
    }

    // MARK: Data file identity (version 2)

    /// A checkpoint without a data identity is written as version 1 (no `data` key) and loads
    /// with none; a version 1 state.json that happens to carry `data` ignores it.
    func testWithoutDataIdentityIsVersionOne() throws {
        var checkpoint = sample()
        checkpoint.data = nil
        try checkpoint.save(in: directory)
        let folder = directory + "/step-00000123"
        let state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/state.json")))
                                  as? [String: Any])
        XCTAssertEqual(state["version"] as? Int, 1)
        XCTAssertNil(state["data"])
        assertEqual(try Checkpoint.load(folder: folder), checkpoint)

        directory += "/v1"
        let edited = try savedAndEdited { $0["version"] = 1 }
        XCTAssertNil(try Checkpoint.load(folder: edited).data)
    }

    // MARK: Failed saves

    /// A save that cannot create its folder names the checkpoint, the directory and the reason,
    /// and leaves the earlier checkpoint as it was.
    func testFailedSaveNamesDirectoryAndReason() throws {
        try sample().save(in: directory)
        let blocked = directory + "/blocked"
        XCTAssertTrue(FileManager.default.createFile(atPath: blocked, contents: Data("x".utf8)))
        var later = sample()
        later.step = 124
        XCTAssertThrowsError(try later.save(in: blocked)) { error in
            XCTAssertEqual("\(error)", "cannot save checkpoint step-00000124 in '\(blocked)': it is not a directory")
        }
        XCTAssertThrowsError(try later.save(in: blocked + "/sub")) { error in
            XCTAssertEqual("\(error)", "cannot save checkpoint step-00000124 in '\(blocked)/sub': it is not a directory")
        }
        assertEqual(try Checkpoint.load(folder: try Checkpoint.latest(in: directory)), sample())
    }
}
