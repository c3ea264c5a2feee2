import Foundation
import XCTest

/// `train_fsdp --zero 1|2|3` and `--replicate R` (HSDP) keep the promise: the same model as
/// `train` (losses, gradient norms, gradients and parameters), with `--accumulate 2` too; full
/// copies that stay bit-identical; checkpoints that move between stages; one-line refusals. The
/// ledger and allocation checks are in the extensions below (their classes' helpers).
final class ZeroStageTests: XCTestCase {
    static let data = try! SmallData.write()
    static let vocab = Set(SmallData.names.filter { $0 != "\n" }).count + 1

    /// As DataParallelTests: the batch divides N·2; emb, hidden and vocab do not divide N.
    func flags(np: Int, layers: Int, optimizer: String) -> [String] {
        let batch = np == 3 ? 30 : 32
        var f = ["--batch-size", "\(batch)", "--layers", "\(layers)", "--seq-len", "6", "--emb", "5", "--hidden", "\(np == 4 ? 7 : 9)"]
        if optimizer == "adam" { f += ["--optimizer", "adam", "--lr", "0.01"] }
        return f
    }

    /// N = 2 and 3, SGD (one hidden layer) and Adam (two), each with and without `--accumulate 2`.
    func checkStage(_ zero: Int) throws {
        for np in [2, 3] {
            for (layers, optimizer) in [(1, "sgd"), (2, "adam")] {
                for accumulate in ["1", "2"] {
                    try Equivalence.check("train_fsdp", np: np, flags(np: np, layers: layers, optimizer: optimizer),
                                          extra: ["--zero", "\(zero)", "--accumulate", accumulate], data: Self.data)
                }
            }
        }
    }

    func testZeroOneMatchesTrain() throws { try checkStage(1) }
    func testZeroTwoMatchesTrain() throws { try checkStage(2) }

    /// HSDP at N = 4, R = 2 with every stage, with and without `--accumulate 2`.
    func testHybridShardingMatchesTrain() throws {
        for zero in [3, 1, 2] {
            let optimizer = zero == 3 ? "sgd" : "adam"
            for accumulate in ["1", "2"] {
                try Equivalence.check("train_fsdp", np: 4, flags(np: 4, layers: 2, optimizer: optimizer),
                                      extra: ["--zero", "\(zero)", "--replicate", "2", "--accumulate", accumulate], data: Self.data)
            }
        }
    }

    /// `--check-replicas` compares the full copies of ZeRO-1/2 (every rank but one holds a second
    /// copy of all Ψ floats) and HSDP's replicated shards (the second replica holds them all again).
    func testFullCopiesAndReplicasStayBitIdentical() throws {
        let (vocab, emb, seq, hidden) = (Self.vocab, 16, 16, 64)
        let psi = vocab * emb + (seq * emb * hidden + hidden) + (hidden * vocab + vocab)
        func copies(np: Int, _ extra: [String]) throws -> Int {
            let run = try Launch.run("train_fsdp", np: np, ["--data", Self.data, "--steps", "60", "--samples", "0", "--val-batches", "1",
                                                            "--optimizer", "adam", "--lr", "0.01", "--check-replicas"] + extra, timeout: 120)
            XCTAssertEqual(run.status, 0, "\(extra): \(run.stderr)")
            let line = try XCTUnwrap(run.stdout.split(separator: "\n").first { $0.hasPrefix("replicas: ") }, run.stdout)
            XCTAssertTrue(line.hasSuffix("all bit-identical"), String(line))
            return Int(line.split(separator: " ")[1])!
        }
        XCTAssertEqual(try copies(np: 2, ["--zero", "1"]), psi)
        XCTAssertEqual(try copies(np: 4, ["--zero", "2"]), 3 * psi)
        XCTAssertEqual(try copies(np: 2, ["--zero", "3"]), 0, "ZeRO-3: every float on one rank only")
        XCTAssertEqual(try copies(np: 4, ["--zero", "3", "--replicate", "2"]), psi)
        XCTAssertEqual(try copies(np: 4, ["--zero", "1", "--replicate", "2"]), 3 * psi)
    }

    func testBadStageAndReplicasFailWithOneLine() throws {
        try Equivalence.expectError("train_fsdp", np: 2, ["--data", Self.data, "--zero", "4"], "--zero must be 1, 2 or 3 (got 4)")
        try Equivalence.expectError("train_fsdp", np: 2, ["--data", Self.data, "--zero", "0"], "--zero must be 1, 2 or 3 (got 0)")
        try Equivalence.expectError("train_fsdp", np: 4, ["--data", Self.data, "--replicate", "3"],
                                    "--replicate 3 does not divide the 4 ranks")
        try Equivalence.expectError("train_fsdp", np: 2, ["--data", Self.data, "--replicate", "4"],
                                    "--replicate 4 does not divide the 2 ranks")
        try Equivalence.expectError("train_fsdp", np: 2, ["--data", Self.data, "--replicate", "0"],
                                    "--replicate must be a positive integer (got 0)")
        try Equivalence.expectError("train_fsdp", np: 4, ["--data", Self.data, "--replicate", "2", "--batch-size", "30"],
                                    "--batch-size 30 is not divisible by the 4 data-parallel ranks")
    }
}

extension CheckpointTests {
    /// ZeRO-1/2 resume bit-identically (the full copy is refilled from the checkpoint), and a
    /// checkpoint moves between stages, world sizes and HSDP, matching the target's own run.
    func testZeroStagesResumeAndReshard() throws {
        for zero in ["1", "2"] {
            let layout = Layout(executable: "train_fsdp", np: 2, extra: ["--zero", zero])
            let (_, full) = try losses(layout, steps: 120)
            let dir = try Launch.temporaryDirectory().path
            _ = try losses(layout, steps: 80, saveEvery: 40, into: dir)
            let (run, rest) = try losses(layout, steps: 120, resume: dir)
            XCTAssertTrue(run.stdout.contains("resumed from step 80"), run.stdout)
            XCTAssertEqual(rest, Array(full[80..<120]), "--zero \(zero): resumed losses must equal the uninterrupted run's exactly")
        }
        let hybrid = Layout(executable: "train_fsdp", np: 4, extra: ["--replicate", "2"])
        let pairs: [(Layout, Layout)] = [
            (Layout(executable: "train_fsdp", np: 2, extra: ["--zero", "1"]), Layout(executable: "train_fsdp", np: 3, extra: ["--zero", "2"])),
            (Layout(executable: "train_fsdp", np: 3, extra: ["--zero", "2"]), hybrid),
            (hybrid, Layout(executable: "train_fsdp", np: 4, extra: ["--zero", "1", "--replicate", "2"])),
            (Layout(executable: "train_dp", np: 2), Layout(executable: "train_fsdp", np: 2, extra: ["--zero", "1"])),
        ]
        for (source, target) in pairs {
            let dir = try Launch.temporaryDirectory().path
            _ = try losses(source, steps: 60, into: dir)
            let (_, reference) = try losses(target, steps: 100)
            let (_, continued) = try losses(target, steps: 100, resume: dir)
            XCTAssertEqual(continued.count, 40)
            for (i, (a, b)) in zip(continued, reference[60...]).enumerated() {
                XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "\(source) → \(target) at step \(60 + i)")
            }
        }
    }
}

extension AllocationTests {
    func testZeroStagesAndHybridStepDoNotAllocate() throws {
        try check("train_fsdp", np: 2, extra: ["--zero", "1", "--optimizer", "adam", "--accumulate", "2", "--clip-grad-norm", "0.5"])
        try check("train_fsdp", np: 3, extra: ["--zero", "2", "--optimizer", "adam", "--accumulate", "2", "--batch-size", "30"])
        try check("train_fsdp", np: 4, extra: ["--zero", "3", "--replicate", "2", "--optimizer", "adam", "--accumulate", "2"])
    }
}

extension LedgerTests {
    /// Per optimizer step, Adam, Ψ' = N·⌈Ψ/N⌉ (ZeRO-1/2's flat padding) and s = Ψ'/N:
    ///
    /// - ZeRO-1: one reduce-scatter and one allgather of Ψ' (DP's allreduce of Ψ, counted as the
    ///   two halves), whatever K; memory 4Ψ' + 4Ψ' + 8s = 8Ψ + 8Ψ/N, buffers: the reduce-scatter's
    ///   output (s floats).
    /// - ZeRO-2: a reduce-scatter of each block (Ψ floats, unpadded) per micro-step, one allgather
    ///   of Ψ'; memory 4Ψ' + 4s + 8s = 4Ψ + 12Ψ/N, buffers: the block gradient buffer (largest
    ///   block) and the reduce-scatter's output (min(s, largest block)).
    /// - ZeRO-3: 16Ψ/N with its per-block padding (its bytes: `testFullyShardedMovesOneAndAHalfDPVolumes`).
    func testZeroStagesMemoryAndBytesFollowTheFormulas() throws {
        let model = Model()
        let psi = model.psi, largest = model.blocks.max()!, adam = ["--optimizer", "adam", "--lr", "0.01"]
        for np in [2, 3] {
            let padded = (psi + np - 1) / np * np, s = padded / np
            for k in [1, 2] {
                let accumulate = ["--accumulate", "\(k)"]
                let z1 = try ledger("train_fsdp", np: np, model.flags + adam + accumulate + ["--zero", "1"])
                XCTAssertEqual(z1.bytesPerStep("reduce_scatter"), Double(4 * padded), "Z1 N=\(np) K=\(k)")
                XCTAssertEqual(z1.bytesPerStep("allgather"), Double(4 * padded), "Z1 N=\(np) K=\(k)")
                XCTAssertEqual(z1.callsPerStep("reduce_scatter") + z1.callsPerStep("allgather"), 2, "one of each, whatever K")
                XCTAssertEqual(z1.bytesPerStep("reduce_scatter") + z1.bytesPerStep("allgather"), Double(2 * 4 * padded),
                               "DP's allreduce volume (padded)")
                XCTAssertEqual(z1.bytesPerStep("allreduce"), Double(4 + Self.gradientNormBytes), "the loss and the gradient norm")
                for bytes in z1.memoryPerRank {
                    XCTAssertEqual(bytes["parameters"], 4 * padded)
                    XCTAssertEqual(bytes["gradients"], 4 * padded)
                    XCTAssertEqual(bytes["optimizer"], 8 * s)
                    XCTAssertEqual(bytes["parameters"]! + bytes["gradients"]! + bytes["optimizer"]!, 8 * padded + 8 * padded / np, "8Ψ + 8Ψ/N")
                    XCTAssertEqual(bytes["buffers"], 4 * s)
                }

                let z2 = try ledger("train_fsdp", np: np, model.flags + adam + accumulate + ["--zero", "2"])
                XCTAssertEqual(z2.bytesPerStep("reduce_scatter"), Double(k * 4 * psi), "Z2 N=\(np) K=\(k): every block per micro-step")
                XCTAssertEqual(z2.callsPerStep("reduce_scatter"), Double(k * model.blocks.count))
                XCTAssertEqual(z2.bytesPerStep("allgather"), Double(4 * padded))
                XCTAssertEqual(z2.callsPerStep("allgather"), 1)
                XCTAssertEqual(z2.bytesPerStep("allreduce"), Double(4 + Self.gradientNormBytes))
                for bytes in z2.memoryPerRank {
                    XCTAssertEqual(bytes["parameters"], 4 * padded)
                    XCTAssertEqual(bytes["gradients"], 4 * s)
                    XCTAssertEqual(bytes["optimizer"], 8 * s)
                    XCTAssertEqual(bytes["parameters"]! + bytes["gradients"]! + bytes["optimizer"]!, 4 * padded + 12 * padded / np, "4Ψ + 12Ψ/N")
                    XCTAssertEqual(bytes["buffers"], 4 * largest + 4 * min(s, largest))
                }
            }
            let z3 = try ledger("train_fsdp", np: np, model.flags + adam + ["--zero", "3"])
            let shards = model.blocks.map { ($0 + np - 1) / np }.reduce(0, +)
            for bytes in z3.memoryPerRank {
                XCTAssertEqual(bytes["parameters"]! + bytes["gradients"]! + bytes["optimizer"]!, 16 * shards, "16Ψ/N")
            }
        }
    }

    /// HSDP, N = 4 as R = 2 replicas of S = 2 shards: each stage's collectives over its shard group
    /// of 2, plus one allreduce of the rank's gradient shard over the replicas per step.
    func testHybridShardingAllreducesShardsAcrossReplicas() throws {
        let model = Model()
        let (r, sGroup) = (2, 2)
        let z3 = try ledger("train_fsdp", np: r * sGroup, model.flags + ["--replicate", "\(r)"])
        let shards = model.blocks.map { ($0 + sGroup - 1) / sGroup }.reduce(0, +)
        let kept = model.blocks.suffix(2).map { ($0 + sGroup - 1) / sGroup }.reduce(0, +)  // gathered from forward into backward
        XCTAssertEqual(z3.bytesPerStep("allgather"), Double(4 * sGroup * (2 * shards - kept)), "2Ψ (padded) over the shard group, less the last two blocks")
        XCTAssertEqual(z3.bytesPerStep("reduce_scatter"), Double(4 * sGroup * shards))
        XCTAssertEqual(z3.bytesPerStep("allreduce"), Double(4 * shards + 4 + Self.gradientNormBytes), "the shard, the loss, the norm")
        XCTAssertEqual(z3.callsPerStep("allreduce"), 3)
        for bytes in z3.memoryPerRank { XCTAssertEqual(bytes["parameters"], 4 * shards, "Ψ/S per rank") }

        let padded = (model.psi + sGroup - 1) / sGroup * sGroup
        let z1 = try ledger("train_fsdp", np: r * sGroup, model.flags + ["--replicate", "\(r)", "--zero", "1", "--accumulate", "2"])
        XCTAssertEqual(z1.bytesPerStep("reduce_scatter"), Double(4 * padded))
        XCTAssertEqual(z1.bytesPerStep("allgather"), Double(4 * padded))
        XCTAssertEqual(z1.bytesPerStep("allreduce"), Double(4 * padded / sGroup + 4 + Self.gradientNormBytes))
        XCTAssertEqual(z1.callsPerStep("allreduce"), 3, "the shards once per optimizer step, whatever K")
    }
}
