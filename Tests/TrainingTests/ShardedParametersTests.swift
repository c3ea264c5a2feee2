import XCTest
import Core
import Distributed
@testable import Training

/// FSDP's hooks (``ShardedParameters``) on a ``LayerChain`` against the plain chain over one
/// flat buffer, on real data-parallel groups of 2 and 3 ranks (see ``MPITestLauncher``), without
/// training: outputs, input gradients and every parameter gradient.
///
/// The chain is an embedding, a dense block and a head (the reference layers of a small
/// ``BlockPlan``), whose block sizes the group sizes do not divide, so shards are padded. Every
/// rank draws the same whole batch and parameters from one seed and runs the plain chain on all
/// of it; its sharded chain runs on its own rows only. So the sharded chain's output and input
/// gradient must be this rank's rows of the plain ones, and its gradient shards — reduce-scattered
/// over the group by the hooks — must be the plain full-batch gradient's floats at the places the
/// shard map names (padding: zero).
final class ShardedParametersTests: XCTestCase {
    func testShardedChainMatchesPlainChainTwoRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        check(rowsPerRank: 3)
    }

    func testShardedChainMatchesPlainChainThreeRanks() {
        guard MPITestLauncher.runUnderMPI(ranks: 3, test: self) else { return }
        check(rowsPerRank: 2)
    }

    /// Collectives first (forward, backward: both run on every rank), assertions last.
    func check(rowsPerRank: Int, file: StaticString = #filePath, line: UInt = #line) {
        let world = MPI.initialize()
        let config = ModelConfig(vocab: 7, seqLen: 3, emb: 5, hidden: 11, layers: 1)
        let plan = config.plan
        let n = world.size, rows = rowsPerRank * n, mine = world.rank * rowsPerRank ..< (world.rank + 1) * rowsPerRank
        var rng = SplitMix64(seed: 5)
        let initial = (0..<plan.parameterCount).map { _ in rng.symmetric(1) }
        let tokens = (0..<rows * config.seqLen).map { _ in Float(rng.below(config.vocab)) }
        let targets = (0..<rows).map { _ in Int32(rng.below(config.vocab)) }
        let scale = 1 / Float(rows)

        // The plain chain on the whole batch.
        let model = Model(config: config, batchSize: rows, lossScale: scale)
        model.load(initial)
        model.tokens.value.update(from: tokens, count: tokens.count)
        model.targets.update(from: targets, count: rows)
        let plainLoss = model.forward()
        model.parameters.zeroGradients()
        model.backward()

        // The sharded chain on this rank's rows.
        let sharded = ShardedParameters(
            blocks: plan.blocks.map { block in
                ShardedParameters.Block(count: block.parameterCount, map: .contiguous(block.parameterOffset, block.parameterCount),
                                        make: block.makeLayer(parameters:))
            },
            group: world, initialParameters: initial)
        let chain = LayerChain(layers: sharded.layers, widths: plan.widths(0..<plan.count), rows: rowsPerRank,
                               loss: SoftmaxCrossEntropy(gradientScale: scale), hooks: sharded)
        chain.input.value.update(from: Array(tokens[mine.lowerBound * config.seqLen ..< mine.upperBound * config.seqLen]),
                                 count: rowsPerRank * config.seqLen)
        chain.targets.update(from: Array(targets[mine]), count: rowsPerRank)
        var loss = chain.forward()
        sharded.shards.zeroGradients()
        chain.backward()
        world.allreduceSum(&loss, count: 1)

        var failures: [String] = []
        let vocab = config.vocab
        let logits = Array(UnsafeBufferPointer(start: model.logits.value + mine.lowerBound * vocab, count: rowsPerRank * vocab))
        failures += compare(Array(UnsafeBufferPointer(start: chain.output.value, count: rowsPerRank * vocab)), logits, "logits")
        // The input gradient of the first Linear (the embedding's output gradient).
        let width = plan[0].outputWidth
        let plainDX = Array(UnsafeBufferPointer(start: model.chain.activations[1].grad + mine.lowerBound * width, count: rowsPerRank * width))
        failures += compare(Array(UnsafeBufferPointer(start: chain.activations[1].grad, count: rowsPerRank * width)), plainDX, "dX")
        failures += compare([loss], [plainLoss], "summed loss")
        // Every shard float against the plain gradient at its canonical place.
        var expected: [Float] = []
        for run in sharded.map.runs {
            if let start = run.start {
                expected += UnsafeBufferPointer(start: model.parameters.grad + start, count: run.count)
            } else {
                expected += [Float](repeating: 0, count: run.count)
            }
        }
        XCTAssertTrue(plan.blocks.contains { $0.parameterCount % n != 0 }, "the sizes are meant to need padding", file: file, line: line)
        failures += compare(Array(UnsafeBufferPointer(start: sharded.shards.grad, count: sharded.shards.count)), expected, "gradient shards")
        XCTAssertEqual(failures, [], "rank \(world.rank) of \(n)", file: file, line: line)
    }

    func compare(_ actual: [Float], _ expected: [Float], _ what: String) -> [String] {
        guard actual.count == expected.count else { return ["\(what): \(actual.count) values, expected \(expected.count)"] }
        let wrong = zip(actual, expected).enumerated().compactMap { i, pair in
            abs(pair.0 - pair.1) <= 1e-5 + 1e-5 * abs(pair.1) ? nil : "\(what)[\(i)] = \(pair.0), expected \(pair.1)"
        }
        return wrong.prefix(3) + (wrong.count > 3 ? ["\(what): \(wrong.count - 3) more of \(actual.count) wrong"] : [])
    }
}
