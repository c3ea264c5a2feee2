import Foundation
import XCTest

/// `train_tp` with and without `--sequence-parallel`: bytes per step by kind and memory per rank,
/// measured by the ledger, against the formulas of the README's tensor-parallel section.
///
/// For `T` ranks and `B` rows (b = B/T), the pairs (column-parallel input width `i`,
/// row-parallel output width `o`), `H_t = hidden/T` inside each pair, and the activations
/// outside the pairs besides the ids and the embedding (each row-parallel output, an unpaired
/// head's logits):
///
///     plain TP   allreduce  4·B·Σ(i + o) + 8                 (forward o, backward i; gradient norm)
///                activations 8·B·(seq + seq·emb + Σ H_t + Σ outside)
///     SP         allgather  4·B·Σ(2i + o)    reduce-scatter 4·B·Σ(i + o)
///                allreduce  4·P + 4 + 8     (P partial gradients: embedding, row biases, an unpaired head; loss; norm)
///                activations 8·(b·(seq + seq·emb + Σ outside) + B·Σ H_t)
///                buffers    8·B·max(i, o) + 4·P   (the full-rows scratch, the packed partial gradients)
extension LedgerTests {
    struct SequenceParallelFormula {
        var model: Model
        var ranks: Int, batch: Int
        var vocab: Int { LedgerTests.vocab }
        var flat: Int { model.seqLen * model.emb }
        /// Column-parallel input and row-parallel output width of each pair.
        var pairs: [(input: Int, output: Int)] {
            (0 ..< (model.layers + 1) / 2).map { p in (p == 0 ? flat : model.hidden, 2 * p + 2 > model.layers ? vocab : model.hidden) }
        }
        var headUnpaired: Bool { model.layers % 2 == 0 }
        var outsideWidths: Int { pairs.reduce(0) { $0 + $1.output } + (headUnpaired ? vocab : 0) }
        var insideWidths: Int { pairs.count * model.hidden / ranks }
        var partialFloats: Int {
            vocab * model.emb + pairs.reduce(0) { $0 + $1.output } + (headUnpaired ? model.hidden * vocab + vocab : 0)
        }
        var plainAllreduce: Int { 4 * batch * pairs.reduce(0) { $0 + $1.input + $1.output } + LedgerTests.gradientNormBytes }
        var plainActivations: Int { 8 * batch * (model.seqLen + flat + insideWidths + outsideWidths) }
        var allgather: Int { 4 * batch * pairs.reduce(0) { $0 + 2 * $1.input + $1.output } }
        var reduceScatter: Int { 4 * batch * pairs.reduce(0) { $0 + $1.input + $1.output } }
        var allreduce: Int { 4 * partialFloats + 4 + LedgerTests.gradientNormBytes }
        var activations: Int { 8 * (batch / ranks * (model.seqLen + flat + outsideWidths) + batch * insideWidths) }
        var buffers: Int { 8 * batch * pairs.map { max($0.input, $0.output) }.max()! + 4 * partialFloats }
    }

    /// `--layers 1` (the head row-parallel, the loss on each rank's rows) and `--layers 2` (an
    /// unpaired head, replicated, whose whole gradient is partial), over 3 ranks.
    func testSequenceParallelLedgerMatchesTheFormula() throws {
        for layers in [1, 2] {
            let f = SequenceParallelFormula(model: Model(layers: layers), ranks: 3, batch: 24)
            let what = "--layers \(layers)"
            let plain = try ledger("train_tp", np: f.ranks, f.model.flags)
            XCTAssertEqual(plain.bytesPerStep("allreduce"), Double(f.plainAllreduce), what)
            XCTAssertEqual(plain.bytesPerStep("allgather") + plain.bytesPerStep("reduce_scatter"), 0, what)
            let sp = try ledger("train_tp", np: f.ranks, f.model.flags + ["--sequence-parallel"])
            XCTAssertEqual(sp.bytesPerStep("allgather"), Double(f.allgather), what)
            XCTAssertEqual(sp.callsPerStep("allgather"), Double(3 * f.pairs.count), "\(what): g forward and backward, ḡ backward")
            XCTAssertEqual(sp.bytesPerStep("reduce_scatter"), Double(f.reduceScatter), what)
            XCTAssertEqual(sp.callsPerStep("reduce_scatter"), Double(2 * f.pairs.count), what)
            XCTAssertEqual(sp.bytesPerStep("allreduce"), Double(f.allreduce), what)
            XCTAssertEqual(sp.callsPerStep("allreduce"), 3, "\(what): the partial gradients, the loss, the gradient norm")
            for (p, s) in zip(plain.memoryPerRank, sp.memoryPerRank) {
                XCTAssertEqual(p["activations"], f.plainActivations, what)
                XCTAssertEqual(s["activations"], f.activations, what)
                XCTAssertEqual(p["buffers"], 0, what)
                XCTAssertEqual(s["buffers"], f.buffers, what)
                XCTAssertEqual(p["parameters"], s["parameters"], "\(what): the same parameters per rank")
            }
        }
    }

    /// `train_3d` (T, D, P) = (2, 1, 3), `--partition 1,1,1` (embedding | fc1 | head), M = 2,
    /// `--sequence-parallel`: per step and rank, the embedding stage sends and receives its
    /// tp rank's B/T rows across the first boundary (half of plain 3D's B rows) and allreduces
    /// the embedding's partial gradient; fc1's stage gathers and scatters B × seq·emb as in TP and
    /// exchanges B × H/T column slices with the head's stage (inside the pair: all rows); the
    /// head's stage scatters and gathers B × vocab and allreduces its bias's partial gradient.
    func testSequenceParallelThreeDimensionalPerStage() throws {
        var model = Model(layers: 1)
        model.hidden = 10
        let (t, batch, vocab) = (2, 24, Self.vocab)
        let flat = model.seqLen * model.emb, h = model.hidden / t, b = batch / t
        func perRank(_ extra: [String]) throws -> [[String: (bytes: Double, calls: Double)]] {
            let (_, metrics) = try Launch.trained("train_3d", np: 6, ["--data", Self.data, "--steps", "40", "--batch-size", "\(batch)",
                                                                      "--samples", "0", "--val-batches", "1", "--tp", "2", "--pp", "3",
                                                                      "--partition", "1,1,1", "--micro-batches", "2"] + model.flags + extra,
                                              timeout: 120)
            let steps = Double(try metrics.value("train_steps", as: Int.self))
            return try metrics.communicationPerRank().map { kinds in
                try kinds.mapValues { (try XCTUnwrap($0["bytes"]) / steps, try XCTUnwrap($0["calls"]) / steps) }
            }
        }
        let plain = try perRank([]), sp = try perRank(["--sequence-parallel"])
        XCTAssertEqual(plain[0]["send"]?.bytes, Double(4 * batch * flat), "plain 3D: all B rows cross the first boundary")
        let norm = Double(Self.gradientNormBytes)
        for tpRank in 0..<t {
            let (embedding, fc1, head) = (sp[tpRank], sp[2 + tpRank], sp[4 + tpRank])
            XCTAssertEqual(embedding["send"]?.bytes, Double(4 * b * flat), "tp \(tpRank): B/T rows forward")
            XCTAssertEqual(embedding["recv"]?.bytes, Double(4 * b * flat), "tp \(tpRank): B/T rows of gradient back")
            XCTAssertEqual(embedding["allreduce"]?.bytes, Double(4 * vocab * model.emb + 4) + norm, "the embedding's gradient, the loss, the norm")
            XCTAssertEqual(try XCTUnwrap(embedding["allgather"], "the ledger lists every kind").bytes, 0)
            XCTAssertEqual(fc1["allgather"]?.bytes, Double(2 * 4 * batch * flat), "g forward and again in backward")
            XCTAssertEqual(fc1["reduce_scatter"]?.bytes, Double(4 * batch * flat), "ḡ of the input gradient")
            XCTAssertEqual(fc1["send"]?.bytes, Double(4 * b * flat + 4 * batch * h), "B/T rows back, B × H/T forward")
            XCTAssertEqual(fc1["recv"]?.bytes, Double(4 * b * flat + 4 * batch * h))
            XCTAssertEqual(fc1["allreduce"]?.bytes, 4 + norm, "no partial gradient: the loss and the norm")
            XCTAssertEqual(head["reduce_scatter"]?.bytes, Double(4 * batch * vocab))
            XCTAssertEqual(head["allgather"]?.bytes, Double(4 * batch * vocab))
            XCTAssertEqual(head["allreduce"]?.bytes, Double(4 * vocab + 4) + norm, "the head's bias, the loss, the norm")
        }
    }
}
