import XCTest
import Core
@testable import Training

/// The pipeline schedules and the stage partition, without MPI: every stage's action list is
/// executed by a simulator that enforces the data dependencies between stages.
final class PipelineScheduleTests: XCTestCase {
    /// Runs every stage's actions in list order, one time unit each, as soon as their inputs
    /// exist. Returns, per stage, the times at which each action ran and the largest number of
    /// micro-batches each chunk held (forwarded, not yet backwarded); fails on a deadlock.
    /// Interleaved, chunk `c` of stage `s` is the model's chunk `g = c·N + s`, which takes its
    /// input from chunk `g − 1` and its output gradient from chunk `g + 1`.
    struct Simulation {
        var finish: [[PipelineAction: Int]]
        /// Per stage and chunk.
        var maxInFlight: [[Int]]
        var makespan: Int
        var busy: Int
    }

    func simulate(_ schedules: [PipelineSchedule], file: StaticString = #filePath, line: UInt = #line) -> Simulation? {
        let n = schedules.count, v = schedules[0].virtualStages
        var position = [Int](repeating: 0, count: n)
        var finish = [[PipelineAction: Int]](repeating: [:], count: n)
        var inFlight = [[Int]](repeating: [Int](repeating: 0, count: v), count: n), maxInFlight = inFlight
        var time = 0, busy = 0
        while (0..<n).contains(where: { position[$0] < schedules[$0].actions.count }) {
            time += 1
            var ran = false
            var done: [(Int, PipelineAction)] = []
            for s in 0..<n where position[s] < schedules[s].actions.count {
                let a = schedules[s].actions[position[s]]
                let g = a.chunk * n + s, mb = a.microBatch
                func finished(_ stage: Int, _ action: PipelineAction) -> Bool { finish[stage][action].map { $0 < time } ?? false }
                let ready: Bool
                switch a.direction {
                case .forward:
                    ready = g == 0 || finished((g - 1) % n, .forward(mb, chunk: (g - 1) / n))
                case .backward, .inputGradient:
                    // The gradient comes from the next chunk's backward or input pass of the micro-batch.
                    let own = finished(s, .forward(mb, chunk: a.chunk))
                    let next = g == n * v - 1 || [PipelineAction.backward(mb, chunk: (g + 1) / n),
                                                  PipelineAction(direction: .inputGradient, microBatch: mb, chunk: (g + 1) / n)]
                        .contains { finished((g + 1) % n, $0) }
                    ready = own && next
                case .weightGradient:
                    ready = finished(s, .inputGradient(mb))
                }
                if ready { done.append((s, a)); ran = true }
            }
            for (s, a) in done {
                finish[s][a] = time
                position[s] += 1
                busy += 1
                if a.direction == .forward { inFlight[s][a.chunk] += 1 }
                if a.direction == .backward || a.direction == .weightGradient { inFlight[s][a.chunk] -= 1 }
                maxInFlight[s][a.chunk] = max(maxInFlight[s][a.chunk], inFlight[s][a.chunk])
            }
            if !ran {
                XCTFail("deadlock at time \(time): positions \(position)", file: file, line: line)
                return nil
            }
        }
        return Simulation(finish: finish, maxInFlight: maxInFlight, makespan: time, busy: busy)
    }

    func testEveryMicroBatchRunsOnceInDependencyOrder() {
        for kind in PipelineScheduleKind.allCases where kind != .interleaved {
            let split = kind == .zeroBubble
            // What one micro-batch runs on a stage: forward then backward, or forward, input and weight passes.
            let passes: (Int) -> [PipelineAction] = { mb in split ? [.forward(mb), .inputGradient(mb), .weightGradient(mb)] : [.forward(mb), .backward(mb)] }
            let gradient: (Int) -> PipelineAction = { mb in split ? .inputGradient(mb) : .backward(mb) }
            for n in 1...6 {
                for m in [1, 2, 3, 4, 5, 8, 13] {
                    let label = "\(kind.rawValue) N \(n) M \(m)"
                    let schedules = (0..<n).map { PipelineSchedule(kind, stage: $0, stages: n, microBatches: m) }
                    for s in schedules {
                        // Exactly once each, and each pass of a micro-batch after the one before it.
                        XCTAssertEqual(s.actions.count, passes(0).count * m, label)
                        XCTAssertEqual(Set(s.actions), Set((0..<m).flatMap(passes)), label)
                        for mb in 0..<m {
                            let order = passes(mb).map { s.actions.firstIndex(of: $0)! }
                            XCTAssertEqual(order, order.sorted(), label)
                        }
                        // Ascending micro-batches in each direction (messages arrive in order; slot m % slots).
                        for direction in Set(passes(0).map(\.direction)) {
                            XCTAssertEqual(s.actions.filter { $0.direction == direction }.map(\.microBatch), Array(0..<m), label)
                        }
                    }
                    guard let sim = simulate(schedules) else { continue }
                    for s in 0..<n {
                        for mb in 0..<m {
                            if s > 0 { XCTAssertGreaterThan(sim.finish[s][.forward(mb)]!, sim.finish[s - 1][.forward(mb)]!, label) }
                            if s < n - 1 { XCTAssertGreaterThan(sim.finish[s][gradient(mb)]!, sim.finish[s + 1][gradient(mb)]!, label) }
                        }
                        // The preallocated slots are exactly enough; 1F1B holds at most N − s ≤ N micro-batches, ZB-H1 N.
                        XCTAssertEqual(sim.maxInFlight[s], [schedules[s].slots], "\(label) stage \(s)")
                        switch kind {
                        case .gpipe: XCTAssertEqual(sim.maxInFlight[s], [m], "\(label) stage \(s)")
                        case .oneForwardOneBackward: XCTAssertLessThanOrEqual(sim.maxInFlight[s][0], min(m, n - s), "\(label) stage \(s)")
                        case .zeroBubble: XCTAssertLessThanOrEqual(sim.maxInFlight[s][0], min(m, n), "\(label) stage \(s)")
                        case .interleaved: XCTFail("tested in testInterleavedRunsEveryChunkOnceInDependencyOrder")
                        }
                    }
                    // Unit-time actions: GPipe and 1F1B take 2(M + N − 1) steps, so each stage idles
                    // (N − 1)/(M + N − 1). ZB-H1 (F, I and W one unit each) takes 3M + N − 1 once M ≥ N,
                    // idling (N − 1)/(3M + N − 1); with fewer micro-batches than stages the tail has too
                    // few weight passes to fill it, and it still never takes longer than 1F1B with a
                    // two-unit backward, 3(M + N − 1).
                    if split && m < n {
                        XCTAssertLessThanOrEqual(sim.makespan, 3 * (m + n - 1), label)
                        continue
                    }
                    XCTAssertEqual(sim.makespan, split ? 3 * m + n - 1 : 2 * (m + n - 1), label)
                    let idle = 1 - Double(sim.busy) / Double(n * sim.makespan)
                    XCTAssertEqual(idle, schedules[0].idealBubble, accuracy: 1e-12, label)
                }
            }
        }
    }

    /// Interleaved 1F1B, every N ≤ 5, V ∈ {2, 3}, M a multiple of N: each (chunk, micro-batch)
    /// runs forward and backward exactly once, after what it depends on, without deadlock; each
    /// chunk's preallocated slots are exactly what it holds; and with unit-time chunk passes the
    /// step takes 2(V·M + N − 1) units, so each stage idles (N − 1)/(V·M + N − 1).
    func testInterleavedRunsEveryChunkOnceInDependencyOrder() {
        for n in 1...5 {
            for v in [2, 3] {
                for m in [n, 2 * n, 3 * n] {
                    let label = "interleaved N \(n) V \(v) M \(m)"
                    let schedules = (0..<n).map { PipelineSchedule(.interleaved, stage: $0, stages: n, microBatches: m, virtualStages: v) }
                    let everything = (0..<v).flatMap { c in (0..<m).flatMap { [PipelineAction.forward($0, chunk: c), .backward($0, chunk: c)] } }
                    for s in schedules {
                        XCTAssertEqual(s.actions.count, 2 * v * m, label)
                        XCTAssertEqual(Set(s.actions), Set(everything), label)
                        for c in 0..<v {
                            // Per chunk, ascending micro-batches in each direction (slot m % chunkSlots[c]).
                            XCTAssertEqual(s.actions.filter { $0.chunk == c && $0.direction == .forward }.map(\.microBatch), Array(0..<m), label)
                            XCTAssertEqual(s.actions.filter { $0.chunk == c && $0.direction == .backward }.map(\.microBatch), Array(0..<m), label)
                        }
                        XCTAssertEqual(s.forwardOnly.count, v * m, label)
                        XCTAssertEqual(Set(s.forwardOnly), Set(everything.filter { $0.direction == .forward }), label)
                    }
                    guard let sim = simulate(schedules) else { continue }
                    for s in 0..<n {
                        for c in 0..<v {
                            let g = c * n + s
                            for mb in 0..<m {
                                XCTAssertLessThan(sim.finish[s][.forward(mb, chunk: c)]!, sim.finish[s][.backward(mb, chunk: c)]!, label)
                                if g > 0 {
                                    XCTAssertGreaterThan(sim.finish[s][.forward(mb, chunk: c)]!,
                                                         sim.finish[(g - 1) % n][.forward(mb, chunk: (g - 1) / n)]!, label)
                                }
                                if g < n * v - 1 {
                                    XCTAssertGreaterThan(sim.finish[s][.backward(mb, chunk: c)]!,
                                                         sim.finish[(g + 1) % n][.backward(mb, chunk: (g + 1) / n)]!, label)
                                }
                            }
                        }
                        XCTAssertEqual(sim.maxInFlight[s], schedules[s].chunkSlots, "\(label) stage \(s)")
                        XCTAssertLessThanOrEqual(sim.maxInFlight[s][0], min(m, 2 * n), "\(label) stage \(s)")
                    }
                    XCTAssertEqual(sim.makespan, 2 * (v * m + n - 1), label)
                    let idle = 1 - Double(sim.busy) / Double(n * sim.makespan)
                    XCTAssertEqual(idle, schedules[0].idealBubble, accuracy: 1e-12, label)
                    XCTAssertEqual(schedules[0].idealBubble, Double(n - 1) / Double(v * m + n - 1), accuracy: 1e-12, label)
                }
            }
        }
    }

    /// The stage code matches messages by order only (one tag per direction, whatever the
    /// chunk): between every pair of stages, the (micro-batch, chunk) pairs a sender sends must
    /// be exactly those the receiver receives, in the same order. Activations go from chunk g to
    /// g + 1 in the forward sequence, gradients from g + 1 to g in the backward sequence.
    func testInterleavedMessagesArriveInTheOrderTheyAreReceived() {
        for n in 1...5 {
            for v in [2, 3] {
                for m in [n, 2 * n] {
                    let schedules = (0..<n).map { PipelineSchedule(.interleaved, stage: $0, stages: n, microBatches: m, virtualStages: v) }
                    for from in 0..<n {
                        for to in 0..<n {
                            for direction in [PipelineAction.Direction.forward, .backward] {
                                let step = direction == .forward ? 1 : -1
                                // What `from` sends to `to`, named by the receiving (micro-batch, global chunk).
                                let sent = schedules[from].actions.compactMap { a -> [Int]? in
                                    let g = a.chunk * n + from, target = g + step
                                    guard a.direction == direction, (0..<(n * v)).contains(target), target % n == to else { return nil }
                                    return [a.microBatch, target]
                                }
                                let received = schedules[to].actions.compactMap { a -> [Int]? in
                                    let g = a.chunk * n + to, source = g - step
                                    guard a.direction == direction, (0..<(n * v)).contains(source), source % n == from else { return nil }
                                    return [a.microBatch, g]
                                }
                                XCTAssertEqual(sent, received, "N \(n) V \(v) M \(m): \(direction) \(from) → \(to)")
                            }
                        }
                    }
                }
            }
        }
    }

    func testInterleavedShape() {
        // N = 2, V = 2, M = 4: stage 0 warms up with 2(N − 1) + (V − 1)N = 4 forwards over the virtual
        // sequence (micro-batches 0, 1 of chunk 0, then of chunk 1, then 2, 3 ...); backwards start at the last chunk.
        let first = PipelineSchedule(.interleaved, stage: 0, stages: 2, microBatches: 4, virtualStages: 2)
        XCTAssertEqual(first.actions.map(\.description),
                       ["F0", "F1", "F0.1", "F1.1", "F2", "B0.1", "F3", "B1.1", "F2.1", "B0", "F3.1", "B1", "B2.1", "B3.1", "B2", "B3"])
        let last = PipelineSchedule(.interleaved, stage: 1, stages: 2, microBatches: 4, virtualStages: 2)
        XCTAssertEqual(last.actions.map(\.description),
                       ["F0", "F1", "F0.1", "B0.1", "F1.1", "B1.1", "F2", "B0", "F3", "B1", "F2.1", "B2.1", "F3.1", "B3.1", "B2", "B3"])
        XCTAssertEqual(first.chunkSlots, [4, 2])
        XCTAssertEqual(last.chunkSlots, [3, 1])
        XCTAssertEqual(first.idealBubbleFormula, "(N−1)/(V·M+N−1)")
        XCTAssertEqual(first.idealBubble, 1.0 / 9.0, accuracy: 1e-12)
        XCTAssertEqual(PipelineScheduleKind(rawValue: "interleaved"), .interleaved)
    }

    func testZeroBubbleShape() {
        // Stage 0 of 4 defers nothing (each input pass followed by its weight pass); the last stage
        // defers three weight passes into the tail, where 1F1B's last stage would sit idle.
        let first = PipelineSchedule(.zeroBubble, stage: 0, stages: 4, microBatches: 5)
        XCTAssertEqual(first.actions.map(\.description),
                       ["F0", "F1", "F2", "F3", "I0", "W0", "F4", "I1", "W1", "I2", "W2", "I3", "W3", "I4", "W4"])
        let last = PipelineSchedule(.zeroBubble, stage: 3, stages: 4, microBatches: 5)
        XCTAssertEqual(last.actions.map(\.description),
                       ["F0", "I0", "F1", "I1", "F2", "I2", "F3", "I3", "W0", "F4", "I4", "W1", "W2", "W3", "W4"])
        XCTAssertEqual(first.slots, 4)
        XCTAssertEqual(last.slots, 4)
        XCTAssertEqual(PipelineScheduleKind(rawValue: "zb1p"), .zeroBubble)
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
    }

    /// The balanced cut is optimal: over random costs, no contiguous cut into non-empty stages
    /// has a smaller most expensive stage (checked against every cut), and every block lands in
    /// exactly one stage.
    func testBalancedPartitionIsOptimal() {
        var rng = SplitMix64(seed: 3)
        for _ in 0..<200 {
            let k = 1 + rng.below(8), n = 1 + rng.below(k)
            let costs = (0..<k).map { _ in Double(rng.below(5)) * Double(1 + rng.below(100)) }
            let counts = PipelinePartition.balanced(costs: costs, stages: n)
            XCTAssertEqual(counts.count, n)
            XCTAssertEqual(counts.reduce(0, +), k)
            XCTAssertTrue(counts.allSatisfy { $0 >= 1 })
            func worst(_ counts: [Int]) -> Double {
                var start = 0
                return counts.map { c in defer { start += c }; return costs[start..<start + c].reduce(0, +) }.max()!
            }
            // Every composition of k into n positive parts.
            func compositions(_ k: Int, _ n: Int) -> [[Int]] {
                if n == 1 { return [[k]] }
                return (1...max(1, k - n + 1)).flatMap { first in compositions(k - first, n - 1).map { [first] + $0 } }
            }
            let best = compositions(k, n).map(worst).min()!
            XCTAssertEqual(worst(counts), best, "costs \(costs) over \(n): \(counts)")
        }
    }

    /// The model's cuts: the free embedding joins the first Linear, ties give the earlier stages
    /// more blocks, and `--partition` overrides.
    func testModelCuts() {
        // ml.c's model on two stages: fc1 (256 × 64) outweighs the head (64 × 27), so the head is alone.
        let small = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 64, layers: 1).plan
        XCTAssertEqual(PipelinePartition.stages(small, stages: 2, override: nil), [0..<2, 2..<3])
        // Four equal 1024 × 1024 Linears and a small head over two stages: two big blocks each.
        let big = ModelConfig(vocab: 27, seqLen: 16, emb: 64, hidden: 1024, layers: 4).plan
        XCTAssertEqual(PipelinePartition.stages(big, stages: 2, override: nil), [0..<3, 3..<6])
        XCTAssertEqual(PipelinePartition.stages(big, stages: 2, override: [2, 4]), [0..<2, 2..<6])
        // All-zero costs: every cut ties, and the earlier stages keep the spare blocks.
        XCTAssertEqual(PipelinePartition.balanced(costs: [0, 0, 0, 0, 0], stages: 2), [4, 1])
        XCTAssertTrue(PipelinePartition.describe(small, [0..<2, 2..<3]).hasPrefix("pipeline cut: stage 0: embedding fc1 ("))
    }
}
