import Foundation
import XCTest

/// A minimal safetensors reader, written from the format's description and independent of the
/// project's writer and reader: an 8-byte little-endian header length N, N bytes of JSON
/// (`{"NAME": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {…}}`), then
/// the data, which the offsets index.
struct SafeTensorsFile {
    struct Entry {
        var name: String
        var dtype: String
        var shape: [Int]
        var begin: Int
        var end: Int
    }

    var headerLength: Int
    /// The tensors in data order.
    var entries: [Entry]
    var metadata: [String: String]
    var data: [UInt8]

    init(path: String) throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var length = 0
        for i in (0..<8).reversed() { length = length << 8 | Int(bytes[i]) }
        headerLength = length
        let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<8 + length])) as! [String: Any]
        metadata = header["__metadata__"] as? [String: String] ?? [:]
        entries = header.filter { $0.key != "__metadata__" }.map { name, value in
            let entry = value as! [String: Any]
            let offsets = entry["data_offsets"] as! [Int]
            return Entry(name: name, dtype: entry["dtype"] as! String, shape: entry["shape"] as! [Int], begin: offsets[0], end: offsets[1])
        }.sorted { $0.begin < $1.begin }
        data = Array(bytes[(8 + length)...])
    }

    /// The little-endian float32 values of `entry`.
    func floats(_ entry: Entry) -> [Float] {
        stride(from: entry.begin, to: entry.end, by: 4).map { i in
            Float(bitPattern: UInt32(data[i]) | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2]) << 16 | UInt32(data[i + 3]) << 24)
        }
    }
}

/// `--export` writes the trained model as safetensors in every layout; `--init-from` trains on
/// from such a file; broken or mismatched files are refused with one line.
final class SafeTensorsTests: XCTestCase {
    static let data = try! SmallData.write()
    /// The names file's vocabulary: the boundary, then its distinct letters in order.
    static let letters = Set(SmallData.names.filter { $0 != "\n" }).map(String.init).sorted()
    static let flags = ["--batch-size", "12", "--val-batches", "2", "--samples", "0", "--log-every", "1000000", "--data", data]

    struct Layout {
        var executable: String
        var np: Int?
        var extra: [String] = []
    }

    func run(_ layout: Layout, _ extra: [String], expectSuccess: Bool = true) throws -> Launch.Outcome {
        let run = try Launch.run(layout.executable, np: layout.np, Self.flags + layout.extra + extra, timeout: 120)
        if expectSuccess { XCTAssertEqual(run.status, 0, "\(layout.executable) \(extra): \(run.stderr)") }
        return run
    }

    /// Names, order, shapes, offsets, dtype and metadata as documented, and the values are
    /// `--dump`'s parameters bit for bit, in every layout (FSDP over 3 ranks pads its shards).
    func testExportHoldsTheDumpedParametersInEveryLayout() throws {
        let layouts = [
            Layout(executable: "train", np: nil),
            Layout(executable: "train_dp", np: 2),
            Layout(executable: "train_fsdp", np: 3),
            Layout(executable: "train_tp", np: 2),
            Layout(executable: "train_pp", np: 3, extra: ["--micro-batches", "2"]),
            Layout(executable: "train_3d", np: 4, extra: ["--tp", "2", "--dp", "1", "--pp", "2", "--micro-batches", "2", "--layers", "2"]),
        ]
        let vocab = Self.letters.count + 1
        for layout in layouts {
            let label = "\(layout.executable) -np \(layout.np ?? 1)"
            let dir = try Launch.temporaryDirectory()
            let file = dir.appendingPathComponent("model.safetensors").path, dump = dir.appendingPathComponent("dump").path
            let outcome = try run(layout, ["--steps", "20", "--dump", dump, "--export", file])
            XCTAssertTrue(outcome.stdout.contains("exported "), outcome.stdout)
            let model = try SafeTensorsFile(path: file)
            let layers = layout.extra.contains("--layers") ? 2 : 1
            var expected: [(String, [Int])] = [("embedding.weight", [vocab, 16]), ("fc1.weight", [256, 64]), ("fc1.bias", [64])]
            if layers == 2 { expected += [("fc2.weight", [64, 64]), ("fc2.bias", [64])] }
            expected += [("head.weight", [64, vocab]), ("head.bias", [vocab])]
            XCTAssertEqual(model.entries.map(\.name), expected.map(\.0), label)
            XCTAssertEqual(model.entries.map(\.shape), expected.map(\.1), label)
            XCTAssertEqual(model.headerLength % 8, 0, "\(label): the data starts 8-byte aligned")
            var offset = 0
            for entry in model.entries {
                XCTAssertEqual(entry.dtype, "F32", label)
                XCTAssertEqual(entry.begin, offset, "\(label): \(entry.name) is not contiguous")
                XCTAssertEqual(entry.end - entry.begin, 4 * entry.shape.reduce(1, *), label)
                offset = entry.end
            }
            XCTAssertEqual(offset, model.data.count, "\(label): nothing after the last tensor")
            XCTAssertEqual(model.metadata["format"], "parallelisms-swift", label)
            XCTAssertEqual(model.metadata["format_version"], "1", label)
            XCTAssertEqual(model.metadata["steps"], "20", label)
            for (key, value) in [("vocab", vocab), ("seq_len", 16), ("emb", 16), ("hidden", 64), ("layers", layers)] {
                XCTAssertEqual(model.metadata[key], "\(value)", "\(label): metadata \(key)")
            }
            let vocabulary = try JSONSerialization.jsonObject(with: Data((model.metadata["vocabulary"] ?? "").utf8)) as? [String]
            XCTAssertEqual(vocabulary, Self.letters, label)
            let values = model.entries.flatMap { model.floats($0) }
            XCTAssertEqual(values.map(\.bitPattern), try Dump(path: dump).parameters.map(\.bitPattern),
                           "\(label): the exported values are not the dumped parameters")
        }
    }

    /// A model trained 30 steps by `train` and exported; each layout starts from the file, takes
    /// one SGD step and dumps: the parameters before that step (after + lr · gradient) are the
    /// exported ones, and the first losses agree across layouts and are below a fresh model's.
    func testInitFromStartsFromTheExportedParameters() throws {
        let dir = try Launch.temporaryDirectory()
        let file = dir.appendingPathComponent("a.safetensors").path, dumpA = dir.appendingPathComponent("a.dump").path
        _ = try run(Layout(executable: "train", np: nil), ["--steps", "30", "--export", file, "--dump", dumpA])
        let trained = try Dump(path: dumpA).parameters

        func firstLoss(_ layout: Layout, _ extra: [String]) throws -> (Float, Dump) {
            let metrics = dir.appendingPathComponent("m-\(UUID().uuidString).jsonl").path
            let dump = dir.appendingPathComponent("d-\(UUID().uuidString)").path
            let outcome = try run(layout, ["--steps", "1", "--metrics", metrics, "--dump", dump] + extra)
            if !extra.isEmpty { XCTAssertTrue(outcome.stdout.contains("initialised from \(file)"), outcome.stdout) }
            return (try XCTUnwrap(Metrics(path: metrics).losses.first), try Dump(path: dump))
        }
        let (fresh, _) = try firstLoss(Layout(executable: "train", np: nil), [])
        var reference: Float?
        for layout in [Layout(executable: "train", np: nil), Layout(executable: "train_fsdp", np: 2),
                       Layout(executable: "train_3d", np: 4, extra: ["--tp", "2", "--dp", "1", "--pp", "2"])] {
            let label = "\(layout.executable) -np \(layout.np ?? 1)"
            let (loss, dump) = try firstLoss(layout, ["--init-from", file])
            let lr: Float = 0.1
            var worst: Float = 0
            for i in trained.indices {
                let before = dump.parameters[i] + lr * dump.gradients[i]
                let ratio = abs(before - trained[i]) / (1e-6 + 1e-5 * abs(trained[i]))
                if !(ratio <= worst) { worst = ratio }  // NaN fails (max would drop it)
            }
            XCTAssertLessThanOrEqual(worst, 1, "\(label): the run did not start from the exported parameters")
            XCTAssertLessThan(loss, fresh, "\(label): a trained model's first loss")
            if let reference { XCTAssertLessThanOrEqual(abs(loss - reference), 1e-5 * reference, label) } else { reference = loss }
        }
    }

    /// Each problem: one `error:` line naming it, a non-zero exit on every rank, nothing trained.
    func testBadFilesAreRefusedWithOneLine() throws {
        let dir = try Launch.temporaryDirectory()
        let good = dir.appendingPathComponent("good.safetensors").path
        _ = try run(Layout(executable: "train", np: nil), ["--steps", "5", "--export", good])
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: good)))
        func file(_ name: String, _ content: [UInt8]) throws -> String {
            let url = dir.appendingPathComponent(name)
            try Data(content).write(to: url)
            return url.path
        }
        func replacing(_ old: String, _ new: String) -> [UInt8] {
            let length = (0..<8).reversed().reduce(0) { $0 << 8 | Int(bytes[$1]) }
            let text = String(decoding: bytes[8..<8 + length], as: UTF8.self)
            let range = text.range(of: old)!
            let start = 8 + text.utf8.distance(from: text.startIndex, to: range.lowerBound)
            var copy = bytes
            copy.replaceSubrange(start..<start + old.utf8.count, with: Array(new.utf8))
            return copy
        }
        var huge = bytes
        huge.replaceSubrange(0..<8, with: [0, 0, 0, 0, 1, 0, 0, 0])
        let shifted = try SmallData.write(String(SmallData.names.map { $0 == "z" ? "Z" : $0 }))
        let missing = dir.appendingPathComponent("nope.safetensors").path
        let cases: [([String], String)] = [
            (["--init-from", missing], "cannot read safetensors file '\(missing)': no such file"),
            (["--init-from", try file("short", Array(bytes.prefix(4)))], "is truncated: 4 bytes"),
            (["--init-from", try file("cut", Array(bytes.dropLast(8)))], "is truncated: tensor 'head.bias' ends at byte"),
            (["--init-from", try file("huge", huge)], "is truncated: its header should have 4294967296 bytes"),
            (["--init-from", try file("json", replacing("{\"__metadata__\"", "[\"__metadata__\""))], "header that is not a JSON object"),
            (["--init-from", try file("f16", replacing("\"F32\"", "\"F16\""))], "has tensor 'embedding.weight' of dtype F16; only F32"),
            (["--init-from", try file("shape", replacing("\"shape\":[64]", "\"shape\":[32]"))], "has tensor 'fc1.bias' of shape"),
            (["--init-from", good, "--hidden", "32"], "is a different model: hidden 64 in the file, 32 here"),
            (["--init-from", good, "--data", shifted], "was trained on another vocabulary"),
            (["--init-from", good, "--resume", dir.path], "--init-from and --resume cannot be used together"),
        ]
        let runs = [Layout(executable: "train", np: nil), Layout(executable: "train_fsdp", np: 2)].flatMap { layout in
            cases.map { (layout: layout, args: $0.0, expected: $0.1) }
        }
        let attempts = try Launch.concurrently(runs.map { run in
            {
                let metrics = try Launch.temporaryDirectory().appendingPathComponent("m.jsonl").path
                let attempt = try Refusal.launch(run.layout.executable, np: run.layout.np,
                                                 Self.flags + run.layout.extra + run.args + ["--steps", "5", "--metrics", metrics])
                return (attempt, metrics)
            }
        })
        for (run, (attempt, metrics)) in zip(runs, attempts) {
            Refusal.verify(attempt, [run.expected])
            let trained = FileManager.default.fileExists(atPath: metrics) ? try Metrics(path: metrics).losses : []
            XCTAssertTrue(trained.isEmpty, "\(attempt.label): nothing trained")
        }
    }
}
