import XCTest
import Core
import Distributed
@testable import Training

/// `--check-replicas` (``LocalParameters/checkReplicas(_:total:)``) on 2 real ranks: it counts
/// the floats held twice and passes when they have the same bits, and it fails, naming the float
/// and both ranks, when one copy differs by the smallest step a float can take.
final class ReplicaCheckTests: XCTestCase {
    func testIdenticalReplicasPassAndOneDifferentBitFails() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        let world = MPI.initialize()
        let count = 10
        // Both ranks hold floats 0..<10; rank 1 also holds 10..<12 alone.
        let map = world.rank == 0 ? ParameterMap.contiguous(0, count) : .contiguous(0, count + 2)
        let buffer = ParameterBuffer(count: map.count)
        for i in 0..<map.count { buffer.value[i] = Float(i) + 0.25 }
        let local = LocalParameters(map: map, values: buffer.value, gradients: buffer.grad,
                                    optimizer: Optimizer(config: OptimizerConfig(), count: map.count))
        let agreed = Result { try local.checkReplicas(world, total: count + 2) }
        if world.rank == 1 { buffer.value[7] = buffer.value[7].nextUp }
        let differing = Result { try local.checkReplicas(world, total: count + 2) }

        if world.rank == 0 {
            XCTAssertEqual(try agreed.get(), "replicas: 10 extra copies of parameters across 2 rank(s), all bit-identical")
            XCTAssertThrowsError(try differing.get()) { error in
                XCTAssertTrue("\(error)".contains("canonical parameter 7 is 7.25 on rank 0 but 7.2500005 on rank 1"), "\(error)")
            }
        } else {
            XCTAssertNil(try agreed.get())
            XCTAssertNil(try differing.get())
        }
    }
}
