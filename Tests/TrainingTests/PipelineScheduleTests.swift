import XCTest
@testable import Training

/// The pipeline schedules and the stage partition, without MPI: every stage's action list is
/// executed by a simulator that enforces the data dependencies between stages.
final class PipelineScheduleTests: XCTestCase {
    /// Runs every stage's actions in list order, one time unit each, as soon as their inputs
    /// exist. Returns, per stage, the times at which each action ran and the largest number of
    /// micro-batches it held (forwarded, not yet backwarded); fails on a deadlock.
    struct Simulation {
        var finish: [[PipelineAction: Int]]
        var maxInFlight: [Int]
        var makespan: Int
        var busy: Int
    }

    func simulate(_ schedules: [PipelineSchedule], file: StaticString = #filePath, line: UInt = #line) -> Simulation? {
        let n = schedules.count
        var position = [Int](repeating: 0, count: n)
        var finish = [[PipelineAction: Int]](repeating: [:], count: n)
        var inFlight = [Int](repeating: 0, count: n), maxInFlight = [Int](repeating: 0, count: n)
        var time = 0, busy = 0
        while (0..<n).contains(where: { position[$0] < schedules[$0].actions.count }) {
            time += 1
            var ran = false
            var done: [(Int, PipelineAction)] = []
            for s in 0..<n where position[s] < schedules[s].actions.count {
                let a = schedules[s].actions[position[s]]
                let ready: Bool
                switch a.direction {
                case .forward:
                    ready = s == 0 || (finish[s - 1][a].map { $0 < time } ?? false)
                case .backward:
                    let own = finish[s][.forward(a.microBatch)].map { $0 < time } ?? false
                    ready = own && (s == n - 1 || (finish[s + 1][a].map { $0 < time } ?? false))
                }
                if ready { done.append((s, a)); ran = true }
            }
            for (s, a) in done {
                finish[s][a] = time
                position[s] += 1
                busy += 1
                inFlight[s] += a.direction == .forward ? 1 : -1
                maxInFlight[s] = max(maxInFlight[s], inFlight[s])
            }
            if !ran {
                XCTFail("deadlock at time \(time): positions \(position)", file: file, line: line)
                return nil
            }
        }
        return Simulation(finish: finish, maxInFlight: maxInFlight, makespan: time, busy: busy)
    }

    func testEveryMicroBatchRunsOnceInDependencyOrder() {
        for kind in PipelineScheduleKind.allCases {
            for n in 1...6 {
                for m in [1, 2, 3, 4, 5, 8, 13] {
                    let label = "\(kind.rawValue) N \(n) M \(m)"
                    let schedules = (0..<n).map { PipelineSchedule(kind, stage: $0, stages: n, microBatches: m) }
                    for s in schedules {
                        // Exactly once each, and a backward only after its own forward.
                        XCTAssertEqual(s.actions.count, 2 * m, label)
                        XCTAssertEqual(Set(s.actions), Set((0..<m).flatMap { [PipelineAction.forward($0), .backward($0)] }), label)
                        for mb in 0..<m {
                            XCTAssertLessThan(s.actions.firstIndex(of: .forward(mb))!, s.actions.firstIndex(of: .backward(mb))!, label)
                        }
                        // Ascending micro-batches in each direction (messages arrive in order; slot m % slots).
                        XCTAssertEqual(s.actions.filter { $0.direction == .forward }.map(\.microBatch), Array(0..<m), label)
                        XCTAssertEqual(s.actions.filter { $0.direction == .backward }.map(\.microBatch), Array(0..<m), label)
                    }
                    guard let sim = simulate(schedules) else { continue }
                    for s in 0..<n {
                        for mb in 0..<m {
                            if s > 0 { XCTAssertGreaterThan(sim.finish[s][.forward(mb)]!, sim.finish[s - 1][.forward(mb)]!, label) }
                            if s < n - 1 { XCTAssertGreaterThan(sim.finish[s][.backward(mb)]!, sim.finish[s + 1][.backward(mb)]!, label) }
                        }
                        // The preallocated slots are enough; 1F1B holds at most N − s ≤ N micro-batches.
                        XCTAssertLessThanOrEqual(sim.maxInFlight[s], schedules[s].slots, "\(label) stage \(s)")
                        if kind == .oneForwardOneBackward {
                            XCTAssertLessThanOrEqual(sim.maxInFlight[s], min(m, n - s), "\(label) stage \(s)")
                        } else {
                            XCTAssertEqual(sim.maxInFlight[s], m, "\(label) stage \(s)")
                        }
                    }
                    // Unit-time actions: 2(M + N − 1) steps, so each stage idles (N − 1)/(M + N − 1).
                    XCTAssertEqual(sim.makespan, 2 * (m + n - 1), label)
                    let idle = 1 - Double(sim.busy) / Double(n * sim.makespan)
                    XCTAssertEqual(idle, schedules[0].idealBubble, accuracy: 1e-12, label)
                }
            }
        }
    }

    func testOneForwardOneBackwardShape() {
        // Stage 0 of 4, M = 6: three warm-up forwards, alternate, then three backwards.
        let s = PipelineSchedule(.oneForwardOneBackward, stage: 0, stages: 4, microBatches: 6)
        XCTAssertEqual(s.actions.map(\.description), ["F0", "F1", "F2", "F3", "B0", "F4", "B1", "F5", "B2", "B3", "B4", "B5"])
        XCTAssertEqual(s.slots, 4)
        let last = PipelineSchedule(.oneForwardOneBackward, stage: 3, stages: 4, microBatches: 6)
        XCTAssertEqual(last.actions.map(\.description), ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3", "F4", "B4", "F5", "B5"])
        XCTAssertEqual(last.slots, 1)
        let g = PipelineSchedule(.gpipe, stage: 1, stages: 4, microBatches: 3)
        XCTAssertEqual(g.actions.map(\.description), ["F0", "F1", "F2", "B0", "B1", "B2"])
        XCTAssertEqual(g.slots, 3)
        XCTAssertEqual(PipelineScheduleKind(rawValue: "1f1b"), .oneForwardOneBackward)
        XCTAssertNil(PipelineScheduleKind(rawValue: "interleaved"))
    }

    func testPartitionCoversEveryBlockOnceEvenly() {
        for k in 1...9 {
            for n in 1...k {
                let ranges = (0..<n).map { PipelinePartition.blocks(stage: $0, stages: n, blockCount: k) }
                XCTAssertEqual(ranges.first!.lowerBound, 0)
                XCTAssertEqual(ranges.last!.upperBound, k)
                for s in 1..<n { XCTAssertEqual(ranges[s].lowerBound, ranges[s - 1].upperBound) }
                let sizes = ranges.map(\.count)
                XCTAssertTrue(sizes.allSatisfy { $0 >= 1 }, "\(k) blocks over \(n)")
                XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1, "\(k) blocks over \(n)")
                XCTAssertEqual(sizes, sizes.sorted(by: >), "spare blocks go to the earlier stages")
            }
        }
        XCTAssertEqual(PipelinePartition.blocks(stage: 0, stages: 2, blockCount: 3), 0..<2)
        XCTAssertEqual(PipelinePartition.blocks(stage: 1, stages: 2, blockCount: 3), 2..<3)
    }
}
