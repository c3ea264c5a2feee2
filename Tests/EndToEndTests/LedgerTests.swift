import Foundation
import XCTest

/// The ledger against theory, per training step, with Ψ = parameter count and N = world size.
final class LedgerTests: XCTestCase {
    static let data = try! SmallData.write()
    static let vocab = Set(SmallData.names.filter { $0 != "\n" }).count + 1

    struct Model {
        var seqLen = 8, emb = 5, hidden = 9, layers = 2
        init(layers: Int = 2) { self.layers = layers }
        var flags: [String] { ["--seq-len", "\(seqLen)", "--emb", "\(emb)", "--hidden", "\(hidden)", "--layers", "\(layers)"] }
        /// Floats per block: embedding, then each Linear's W and b.
        var blocks: [Int] {
            var sizes = [vocab * emb]
            for i in 1...layers + 1 {
                let inputs = i == 1 ? seqLen * emb : hidden, outputs = i == layers + 1 ? vocab : hidden
                sizes.append(inputs * outputs + outputs)
            }
            return sizes
        }
        var psi: Int { blocks.reduce(0, +) }
    }

    struct Record {
        var steps: Int
        var comm: [String: [String: Double]]
        var memory: [String: Int]
        var memoryPerRank: [[String: Int]]
        func bytesPerStep(_ kind: String, file: StaticString = #filePath, line: UInt = #line) -> Double {
            perStep(kind, "bytes", file: file, line: line)
        }
        func callsPerStep(_ kind: String, file: StaticString = #filePath, line: UInt = #line) -> Double {
            perStep(kind, "calls", file: file, line: line)
        }
        /// A kind or field the ledger does not list fails the test and reads as NaN (never 0, which
        /// would let a renamed kind pass an "== 0" check).
        func perStep(_ kind: String, _ field: String, file: StaticString, line: UInt) -> Double {
            guard let value = comm[kind]?[field] else {
                XCTFail("no ledger kind '\(kind)' with '\(field)' in \(comm.keys.sorted())", file: file, line: line)
                return .nan
            }
            return value / Double(steps)
        }
    }

    /// `--metrics` records the whole model's gradient norm every step: one 8-byte allreduce over
    /// the world in every layout whose ranks do not each hold the whole model (not DP, not `train`).
    static let gradientNormBytes = 8

    func ledger(_ executable: String, np: Int?, _ flags: [String]) throws -> Record {
        let (run, m) = try Launch.trained(executable, np: np, ["--data", Self.data, "--steps", "40", "--batch-size", "24", "--samples", "0",
                                                               "--val-batches", "1"] + flags, timeout: 120)
        XCTAssertTrue(run.stdout.contains("memory per rank (bytes):"), run.stdout)
        return Record(steps: try m.value("train_steps"), comm: try m.communication(),
                      memory: try m.value("memory"), memoryPerRank: try m.value("memory_per_rank"))
    }

    /// DP allreduces Ψ floats of gradients per step, in one call with the default bucket size,
    /// plus the 4-byte loss sum; its memory is the whole model on every rank. Its gradient norm
    /// costs nothing: every rank holds the whole summed gradient.
    func testDataParallelAllreducesPsiFloats() throws {
        let model = Model()
        for np in [2, 3] {
            let r = try ledger("train_dp", np: np, model.flags + ["--optimizer", "adam", "--lr", "0.01"])
            XCTAssertEqual(r.steps, 40)
            XCTAssertEqual(r.bytesPerStep("allreduce"), Double(4 * model.psi + 4), "N=\(np)")
            XCTAssertEqual(r.callsPerStep("allreduce"), 2, "one bucket and the loss")
            XCTAssertEqual(r.bytesPerStep("allgather") + r.bytesPerStep("reduce_scatter") + r.bytesPerStep("send"), 0)
            XCTAssertEqual(r.memory["parameters"], 4 * model.psi)
            XCTAssertEqual(r.memory["gradients"], 4 * model.psi)
            XCTAssertEqual(r.memory["optimizer"], 8 * model.psi)
            XCTAssertEqual(r.memoryPerRank.count, np)
        }
    }

    /// With small buckets, DP's gradient allreduces really are cut at block boundaries: the
    /// buckets are formed from the last block backwards, each closed once it holds at least
    /// `--bucket-kb`, the embedding closing the last one. The ledger must show exactly one call
    /// per bucket (plus the loss) and Ψ floats in all; a collapse to one bucket would fail.
    func testDataParallelBucketsAreSeparateAllreduces() throws {
        var model = Model(layers: 3)
        (model.seqLen, model.emb, model.hidden) = (16, 16, 64)  // the default widths
        let bucketBytes = 4 * 1024
        var buckets: [Int] = []
        var pending = 0
        for (i, size) in model.blocks.enumerated().reversed() {
            pending += size
            if pending * 4 >= bucketBytes || i == 0 { buckets.append(pending); pending = 0 }
        }
        XCTAssertGreaterThan(buckets.count, 2, "the test needs several buckets: \(buckets)")
        let r = try ledger("train_dp", np: 2, model.flags + ["--bucket-kb", "\(bucketBytes / 1024)"])
        XCTAssertEqual(r.callsPerStep("allreduce"), Double(buckets.count + 1), "\(buckets.count) buckets and the loss")
        XCTAssertEqual(r.bytesPerStep("allreduce"), Double(4 * model.psi + 4))
    }

    /// FSDP allgathers Ψ twice (forward and backward) — less the last two blocks, still gathered
    /// from the forward — and reduce-scatters it once per step; each block is padded to N·⌈c/N⌉,
    /// which is the whole difference from 2Ψ and Ψ. Its parameter, gradient and optimizer memory
    /// is Ψ/N (padded) per rank, plus two gather buffers (the blocks alternate between them).
    func testFullyShardedMovesOneAndAHalfDPVolumes() throws {
        let model = Model()
        for np in [2, 3, 4] {
            let r = try ledger("train_fsdp", np: np, model.flags + ["--optimizer", "adam", "--lr", "0.01"])
            let shards = model.blocks.map { ($0 + np - 1) / np }
            let padded = shards.reduce(0, +) * np
            XCTAssertGreaterThanOrEqual(padded, model.psi)
            XCTAssertLessThan(padded - model.psi, np * model.blocks.count, "padding is less than one float per rank per block")
            let kept = shards.suffix(2).reduce(0, +) * np  // the last two blocks, padded
            XCTAssertEqual(r.bytesPerStep("allgather"), Double(4 * (2 * padded - kept)), "N=\(np): 2Ψ (padded) less the last two blocks")
            XCTAssertEqual(r.bytesPerStep("reduce_scatter"), Double(4 * padded), "N=\(np): Ψ (padded)")
            XCTAssertEqual(r.callsPerStep("allgather"), Double(2 * model.blocks.count - 2))
            XCTAssertEqual(r.bytesPerStep("allreduce"), Double(4 + Self.gradientNormBytes), "only the loss and the gradient norm")
            XCTAssertEqual(r.callsPerStep("allreduce"), 2)
            // Counting an allreduce as a reduce-scatter plus an allgather: 3Ψ against DP's 2Ψ, less the kept blocks.
            XCTAssertEqual((r.bytesPerStep("allgather") + r.bytesPerStep("reduce_scatter")) / Double(2 * 4 * padded),
                           1.5 - Double(kept) / Double(2 * padded), accuracy: 1e-12)
            for bytes in r.memoryPerRank {
                XCTAssertEqual(bytes["parameters"], 4 * shards.reduce(0, +))
                XCTAssertEqual(bytes["gradients"], 4 * shards.reduce(0, +))
                XCTAssertEqual(bytes["optimizer"], 8 * shards.reduce(0, +))
                // Two gather buffers (parameters and gradients of the largest even and odd padded
                // block) and their reduce-scatter outputs: nothing else.
                let even = stride(from: 0, to: shards.count, by: 2).map { shards[$0] }.max()!
                let odd = stride(from: 1, to: shards.count, by: 2).map { shards[$0] }.max()!
                XCTAssertEqual(bytes["buffers"], (2 * 4 * np + 4) * (even + odd))
            }
        }
    }

    /// TP moves activations, not parameters: per step, the row-parallel head allreduces the
    /// B × vocab logits forward and the column-parallel fc1 allreduces its B × seq·emb input
    /// gradient backward (--layers 1). Nothing else moves: the loss is whole on every rank.
    func testTensorParallelMovesActivations() throws {
        let model = Model(layers: 1)
        for np in [3] {
            let r = try ledger("train_tp", np: np, model.flags)
            let batch = 24
            XCTAssertEqual(r.bytesPerStep("allreduce"), Double(4 * batch * (Self.vocab + model.seqLen * model.emb) + Self.gradientNormBytes),
                           "N=\(np)")
            XCTAssertEqual(r.callsPerStep("allreduce"), 3, "the head's output, fc1's input gradient, the gradient norm")
            XCTAssertEqual(r.bytesPerStep("allgather") + r.bytesPerStep("reduce_scatter") + r.bytesPerStep("send"), 0)
        }
    }

    /// PP sends each boundary's activation forward and its gradient back: B × width floats per
    /// boundary each way per step, whatever the number of micro-batches (M messages of B/M rows).
    func testPipelineSendsBoundaryActivations() throws {
        let model = Model(layers: 1)
        for micro in [1, 4] {
            let r = try ledger("train_pp", np: 3, model.flags + ["--micro-batches", "\(micro)"])
            let batch = 24
            // Rank 0 holds the embedding: it sends B × seq·emb forward and receives as much back.
            XCTAssertEqual(r.bytesPerStep("send"), Double(4 * batch * model.seqLen * model.emb), "M=\(micro)")
            XCTAssertEqual(r.bytesPerStep("recv"), Double(4 * batch * model.seqLen * model.emb), "M=\(micro)")
            XCTAssertEqual(r.callsPerStep("send"), Double(micro))
            XCTAssertEqual(r.bytesPerStep("broadcast"), 4, "the loss, from the last stage")
            XCTAssertEqual(r.bytesPerStep("allreduce"), Double(Self.gradientNormBytes), "the gradient norm")
        }
    }

    /// 3D (T = 2, D = 2, P = 1) is the sum of its parts, per rank: TP's activation allreduces
    /// over its data-parallel group's B/D rows, FSDP's two allgathers and one reduce-scatter of its
    /// own tensor-parallel blocks (each padded to D·⌈c/D⌉), and the 4-byte loss summed over dp.
    func testThreeDimensionalIsTheSumOfItsParts() throws {
        var model = Model(layers: 1)
        model.hidden = 10  // divisible by T
        let (t, d, batch) = (2, 2, 24)
        let r = try ledger("train_3d", np: t * d, model.flags + ["--tp", "\(t)", "--dp", "\(d)"])
        // Rank 0's blocks: the replicated embedding, fc1's column slice, the head's row slice + whole bias.
        let vocab = Self.vocab, inputs = model.seqLen * model.emb, h = model.hidden / t
        let local = [vocab * model.emb, inputs * h + h, h * vocab + vocab]
        let padded = local.map { ($0 + d - 1) / d * d }.reduce(0, +)
        XCTAssertEqual(r.bytesPerStep("allgather"), Double(2 * 4 * padded))
        XCTAssertEqual(r.bytesPerStep("reduce_scatter"), Double(4 * padded))
        XCTAssertEqual(r.callsPerStep("allgather"), Double(2 * local.count))
        XCTAssertEqual(r.bytesPerStep("allreduce"), Double(4 * (batch / d) * (vocab + inputs) + 4 + Self.gradientNormBytes))
        XCTAssertEqual(r.callsPerStep("allreduce"), 4, "the head's output, fc1's input gradient, the loss, the gradient norm")
        XCTAssertEqual(r.bytesPerStep("send") + r.bytesPerStep("broadcast"), 0, "one stage: no pipeline traffic")
        for bytes in r.memoryPerRank { XCTAssertEqual(bytes["parameters"], 4 * padded / d) }
    }

    func testSingleRankCommunicatesNothing() throws {
        let r = try ledger("train", np: nil, Model().flags)
        for kind in ["allreduce", "allgather", "reduce_scatter", "send", "recv", "broadcast"] {
            XCTAssertEqual(r.callsPerStep(kind), 0, kind)
        }
        XCTAssertEqual(r.memory["parameters"], 4 * Model().psi)
    }
}
