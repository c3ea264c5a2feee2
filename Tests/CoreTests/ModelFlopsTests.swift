import XCTest
@testable import Core

/// The model FLOPs of a training step: 6·B·in·out per Linear (forward x·W, backward xᵀ·dy and dy·Wᵀ).
final class TrainingFlopsTests: XCTestCase {
    func testDefaultModel() {
        let plan = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 1).plan
        XCTAssertEqual(plan.trainingFlops(batchSize: 32), 6 * 32 * (256 * 64 + 64 * 27))
        XCTAssertEqual(plan.trainingFlops(batchSize: 32), 3_477_504)
    }

    func testDeeperModelCountsEveryLinearAndNoEmbedding() {
        let plan = ModelConfig(vocab: 5, seqLen: 3, emb: 2, hidden: 7, layers: 3).plan
        XCTAssertEqual(plan.trainingFlops(batchSize: 4), 6 * 4 * Double(6 * 7 + 7 * 7 + 7 * 7 + 7 * 5))
        XCTAssertEqual(plan.trainingFlops(batchSize: 8), 2 * plan.trainingFlops(batchSize: 4))
    }
}
