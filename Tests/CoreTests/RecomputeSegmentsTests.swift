import XCTest
@testable import Core

/// The √n segments of a recomputing chain: which activations it keeps, which share a scratch
/// slot, and how large each slot must be.
final class RecomputeSegmentsTests: XCTestCase {
    func testSegmentsAreSquareRootSized() {
        XCTAssertEqual(RecomputeSegments(blocks: 1).ranges, [0..<1])
        XCTAssertEqual(RecomputeSegments(blocks: 3).ranges, [0..<2, 2..<3])
        XCTAssertEqual(RecomputeSegments(blocks: 4).ranges, [0..<2, 2..<4])
        XCTAssertEqual(RecomputeSegments(blocks: 10).ranges, [0..<4, 4..<8, 8..<10])
    }

    /// 10 blocks, 11 activations: kept are the input and the segments' outputs (0, 4, 8, 10);
    /// activation i inside segment [b, e) takes slot i − b − 1, each slot as large as the largest
    /// activation it ever holds.
    func testSlotsAndCapacities() {
        let segments = RecomputeSegments(blocks: 10)
        XCTAssertEqual((0...10).map { segments.scratchSlot($0) }, [nil, 0, 1, 2, nil, 0, 1, 2, nil, 0, nil])
        let sizes = [5, 10, 20, 30, 7, 40, 1, 2, 9, 50, 3]
        XCTAssertEqual(segments.scratchCapacities(sizes), [50, 20, 30])
    }

    /// A recomputing chain computes bit for bit what a plain one does: the same layers, the same
    /// input and output gradient, the same parameter gradients and input gradient.
    func testRecomputingChainEqualsPlainChain() {
        let config = ModelConfig(vocab: 11, seqLen: 4, emb: 3, hidden: 8, layers: 4)
        let plain = Model(config: config, batchSize: 5), recomputing = Model(config: config, batchSize: 5, recompute: true)
        var rng = SplitMix64(seed: 9)
        let parameters = (0..<config.parameterCount).map { _ in Float.random(in: -0.5..<0.5, using: &rng) }
        plain.load(parameters)
        recomputing.load(parameters)
        for model in [plain, recomputing] {
            for i in 0..<5 * 4 { model.tokens.value[i] = Float(i % 11) }
            for r in 0..<5 { model.targets[r] = Int32((r * 3) % 11) }
        }
        XCTAssertEqual(plain.forward(), recomputing.forward())
        plain.backward()
        recomputing.backward()
        XCTAssertEqual(Array(UnsafeBufferPointer(start: plain.parameters.grad, count: config.parameterCount)),
                       Array(UnsafeBufferPointer(start: recomputing.parameters.grad, count: config.parameterCount)))
        XCTAssertNotNil(recomputing.chain.segments)
    }
}
