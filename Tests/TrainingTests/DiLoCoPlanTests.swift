import Core
import XCTest
import Training

/// DiLoCo's facts: what moves once every H steps is a transfer of period H, charged a H-th of
/// its cost per step; θ and the outer momentum are planned beside DP's memory. (The ledger side:
/// `DiLoCoTests.testLedgerIsPsiFloatsEveryHSteps` in the end-to-end tests.)
final class DiLoCoPlanTests: XCTestCase {
    let config = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 1)

    func testOuterAllreduceHasPeriodH() throws {
        let plan = config.plan, psi = plan.parameterCount, settings = PlanSettings(batchSize: 32, optimizer: .sgd)
        let layout = LayoutDescription.diloco(ranks: 2, settings: OuterSettings(innerSteps: 10, learningRate: 0.7, momentum: 0.9, fragments: 2))
        let comm = try CommunicationPlan.perRank(plan, layout, settings)
        XCTAssertEqual(comm.count, 2)
        for rank in comm {
            let outer = try XCTUnwrap(rank.transfers.first { $0.period == 10 })
            XCTAssertEqual(outer.calls, 2, "one allreduce per fragment")
            XCTAssertEqual(outer.bytes, 4 * psi, "the fragments add up to Ψ floats")
            XCTAssertEqual(rank.bytes(.allreduce), 4 * psi / 10 + 4, "per step: a tenth of Ψ·4, and the loss")
        }
        let model = CostModel(calibration: nil, flops: 1e9, linkLatency: 0, linkBandwidth: 1e9)
        let predicted = try model.predict(plan, layout, settings, communication: comm)
        XCTAssertEqual(predicted.communicationSeconds, (Double(4 * psi) / 10 + 4) / 1e9, accuracy: 1e-12)
        let memory = try MemoryPlan.perRank(plan, layout, settings)[0]
        XCTAssertEqual(memory[.parameters], 2 * 4 * psi, "θᵢ and θ")
        XCTAssertEqual(memory[.optimizer], 4 * psi, "the outer momentum (SGD inside keeps nothing)")
        XCTAssertEqual(memory.largestMessage, psi / 2 + psi % 2, "a fragment")
    }

    func testFragmentsCoverEveryFloatOnce() {
        let ranges = OuterSettings.fragmentRanges(count: 10, fragments: 3)
        XCTAssertEqual(ranges, [0..<4, 4..<7, 7..<10])
        XCTAssertEqual(OuterSettings(innerSteps: 12, learningRate: 1, momentum: 0, fragments: 3).offset(fragment: 2), 8)
    }
}
