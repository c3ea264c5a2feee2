import XCTest
import Core
@testable import Training

/// The tensor-parallel plan without MPI: which block is sharded how, and that the ranks' maps
/// together hold every canonical float (sharded ones on exactly one rank, replicated ones on all).
final class TensorParallelPlanTests: XCTestCase {
    func testPairsAndLeftOverHead() {
        func kinds(_ layers: Int, _ n: Int) -> [TensorParallelPlan.Sharding] {
            let config = ModelConfig(vocab: 27, seqLen: 4, emb: 3, hidden: 8, layers: layers)
            return try! TensorParallelPlan(config.plan, blocks: 0..<config.plan.count, tpSize: n, tpRank: 0).blocks.map(\.sharding)
        }
        XCTAssertEqual(kinds(1, 2), [.replicated, .column, .row])
        XCTAssertEqual(kinds(2, 2), [.replicated, .column, .row, .replicated])
        XCTAssertEqual(kinds(3, 4), [.replicated, .column, .row, .column, .row])
        XCTAssertEqual(kinds(4, 2), [.replicated, .column, .row, .column, .row, .replicated])
        XCTAssertEqual(kinds(3, 1), [.replicated, .replicated, .replicated, .replicated, .replicated])
    }

    func testMapsCoverTheModel() throws {
        for layers in 1...4 {
            for n in [1, 2, 4, 8] {
                let config = ModelConfig(vocab: 27, seqLen: 4, emb: 3, hidden: 16, layers: layers)
                let model = config.plan
                var holders = [Int](repeating: 0, count: config.parameterCount)
                for rank in 0..<n {
                    let plan = try TensorParallelPlan(model, blocks: 0..<model.count, tpSize: n, tpRank: rank)
                    XCTAssertEqual(plan.map.count, plan.parameterCount)
                    for block in plan.blocks {
                        let offset = model[block.index].parameterOffset
                        for run in block.map.runs {
                            let start = try XCTUnwrap(run.start)
                            for i in start..<start + run.count {
                                // Every float of the block's canonical range, never another block's.
                                XCTAssertTrue(i >= offset && i < offset + model[block.index].parameterCount)
                                holders[i] += 1
                            }
                        }
                        // Local widths multiply out to the local weight.
                        if block.index > 0 {
                            XCTAssertEqual(block.parameterCount, block.inputWidth * block.outputWidth
                                           + (block.sharding == .row ? model[block.index].weightColumns : block.outputWidth))
                        }
                    }
                    // Consecutive blocks agree on the width between them.
                    for (a, b) in zip(plan.blocks, plan.blocks.dropFirst()) { XCTAssertEqual(a.outputWidth, b.inputWidth) }
                    XCTAssertEqual(plan.widths.last, config.vocab, "the logits are whole on every rank")
                }
                let shardings = TensorParallelPlan.shardings(model, tpSize: n)
                for b in 0..<model.count {
                    let kind = shardings[b]
                    let offset = model[b].parameterOffset, count = model[b].parameterCount
                    let biasStart = b == 0 ? count : offset + model[b].weightRows * model[b].weightColumns
                    for i in offset..<offset + count {
                        let everywhere = kind == .replicated || (kind == .row && i >= biasStart)
                        XCTAssertEqual(holders[i], everywhere ? n : 1, "layers \(layers) N \(n) block \(b) float \(i)")
                    }
                }
            }
        }
    }

    func testColumnSliceIsOneRunPerInputRow() throws {
        let config = ModelConfig(vocab: 5, seqLen: 2, emb: 3, hidden: 8, layers: 1)
        let plan = try TensorParallelPlan(config.plan, blocks: 1..<2, tpSize: 4, tpRank: 2)
        let offset = config.plan[1].parameterOffset
        // W is [6 × 8]; rank 2 holds columns 4, 5 of each row, then b[4], b[5].
        XCTAssertEqual(plan.blocks[0].map.runs.map { $0.start! - offset }, [4, 12, 20, 28, 36, 44, 48 + 4])
        XCTAssertTrue(plan.blocks[0].map.runs.allSatisfy { $0.count == 2 })
        XCTAssertEqual(plan.widths, [6, 2])
    }

    func testHiddenNotDivisibleIsAUsageError() {
        let config = ModelConfig(vocab: 27, seqLen: 4, emb: 3, hidden: 64, layers: 1)
        XCTAssertThrowsError(try TensorParallelPlan(config.plan, blocks: 0..<3, tpSize: 3, tpRank: 0)) { error in
            XCTAssertTrue("\(error)".contains("--hidden divisible by 3"), "\(error)")
        }
    }
}
