import XCTest
import Core
#if canImport(Glibc)
import Glibc
#endif
@testable import Training

/// The memory plan without MPI: its formulas for each layout, its refusals of sizes that
/// overflow, the largest MPI count, the candidate layouts, and the budget's limits. (That the
/// plan equals what the ledger measures in every executable is `EndToEndTests/MemoryPlanTests`.)
final class MemoryPlanTests: XCTestCase {
    let config = ModelConfig(vocab: 27, seqLen: 8, emb: 5, hidden: 9, layers: 2)
    var plan: BlockPlan { config.plan }
    let sgd = PlanSettings(batchSize: 24, optimizer: .sgd)

    /// Bytes of one chain's activations (value and gradient, at least one float each).
    func activations(rows: Int, widths: [Int]) -> Int { widths.reduce(0) { $0 + 8 * max(1, rows * $1) } }

    func testClosedFormParameterCountEqualsTheBlockPlan() throws {
        for (layers, hidden, emb) in [(1, 64, 16), (2, 9, 5), (5, 3, 1), (8, 8192, 16)] {
            let c = ModelConfig(vocab: 27, seqLen: 16, emb: emb, hidden: hidden, layers: layers)
            XCTAssertEqual(try MemoryPlan.parameterCount(c), c.plan.parameterCount, "\(c)")
        }
    }

    /// Sizes beyond `Int` are refused with a message before anything (even the block plan) is built.
    func testOverflowingSizesAreRefusedNotTrapped() {
        let huge = ModelConfig(vocab: 27, seqLen: 16, emb: 16, hidden: 1 << 24, layers: Int.max / 4)
        XCTAssertThrowsError(try MemoryPlan.parameterCount(huge)) { error in
            XCTAssertTrue("\(error)".contains("too large to count"), "\(error)")
        }
        let batch = PlanSettings(batchSize: Int.max / 2, optimizer: .sgd)
        XCTAssertThrowsError(try MemoryPlan.forRank(0, plan, .singleRank, batch)) { error in
            XCTAssertTrue("\(error)".contains("the sizes overflow"), "\(error)")
        }
    }

    func testSingleRankHoldsTheWholeModelAndOneChain() throws {
        let psi = plan.parameterCount
        let m = try XCTUnwrap(MemoryPlan.perRank(plan, .singleRank, PlanSettings(batchSize: 24, optimizer: .adam)).first)
        XCTAssertEqual(m[.parameters], 4 * psi)
        XCTAssertEqual(m[.gradients], 4 * psi)
        XCTAssertEqual(m[.optimizer], 8 * psi)
        XCTAssertEqual(m[.activations], activations(rows: 24, widths: plan.widths(0..<plan.count)))
        XCTAssertEqual(m[.buffers], 0)
        XCTAssertEqual(m.wholeModel, 4 * psi, "the initial model, and nothing at the end without samples or dump")
    }

    /// FSDP pads every block to N·⌈c/N⌉ and keeps one shard of each, plus two gather buffers
    /// (full floats and gradients of the largest even and the largest odd block: the blocks
    /// alternate between them) and their reduce-scatter outputs; with recomputation, one buffer.
    func testFullyShardedPadsShardsAndCountsTheGatherBuffer() throws {
        let n = 4
        let plans = try MemoryPlan.perRank(plan, .fullySharded(ranks: n), sgd)
        let shards = plan.blocks.map { ($0.parameterCount + n - 1) / n }
        let even = stride(from: 0, to: shards.count, by: 2).map { shards[$0] }.max()!
        let odd = stride(from: 1, to: shards.count, by: 2).map { shards[$0] }.max()!
        var recomputing = LayoutDescription.fullySharded(ranks: n)
        recomputing.recompute = true
        for m in try MemoryPlan.perRank(plan, recomputing, sgd) {
            XCTAssertEqual(m[.buffers], 8 * shards.max()! * n + 4 * shards.max()!)
        }
        for m in plans {
            XCTAssertEqual(m[.parameters], 4 * shards.reduce(0, +))
            XCTAssertEqual(m[.buffers], 8 * even * n + 4 * even + 8 * odd * n + 4 * odd)
            XCTAssertEqual(m[.activations], activations(rows: 24 / n, widths: plan.widths(0..<plan.count)))
            XCTAssertEqual(m.largestMessage, shards.max()! * n)
        }
        XCTAssertGreaterThan(plans[0].wholeModel, 0)
    }

    /// A pipeline stage keeps one chain per slot: M under GPipe, min(M, N − s) under 1F1B; with
    /// `--accumulate K` each holds a K-th of the rows.
    func testPipelineActivationsFollowTheSchedulesSlots() throws {
        let m = 4, n = 3
        let cut = PipelinePartition.stages(plan, stages: n, override: nil)
        for schedule in PipelineScheduleKind.allCases where schedule != .interleaved {  // below, with its chunks
            let plans = try MemoryPlan.perRank(plan, .pipeline(stages: n, microBatches: m, schedule: schedule), sgd)
            let accumulating = try MemoryPlan.perRank(plan, .pipeline(stages: n, microBatches: m, schedule: schedule),
                                                      PlanSettings(batchSize: 24, optimizer: .sgd, accumulation: 2))
            for (s, range) in cut.enumerated() {
                XCTAssertEqual(2 * accumulating[s][.activations], plans[s][.activations], "\(schedule) stage \(s), K = 2")
                let slots = switch schedule {
                case .gpipe: m
                case .oneForwardOneBackward: min(m, n - s)
                // ZB-H1: stage s warms up with N − s − 1 forwards, then holds one more for its
                // steady forward, and keeps s chains alive past their input pass for the weight
                // passes it defers: N − s − 1 + 1 + s = N at the peak, and never more than M.
                case .zeroBubble: min(m, n)
                case .interleaved: 0
                }
                XCTAssertEqual(plans[s][.activations], slots * activations(rows: 24 / m, widths: plan.widths(range)), "\(schedule) stage \(s)")
            }
        }
    }

    /// Interleaved, a stage holds chunks s, s + N, … of the N·V-chunk cut, each with the slots its
    /// actions need (``PipelineSchedule/chunkSlots``), and the activations add up over the chunks.
    func testInterleavedActivationsAddUpOverTheChunks() throws {
        let n = 2, v = 2, m = 4
        let cut = PipelinePartition.stages(plan, stages: n * v, override: nil)
        var layout = LayoutDescription.pipeline(stages: n, microBatches: m, schedule: .interleaved)
        layout.shape.virtualStages = v
        let plans = try MemoryPlan.perRank(plan, layout, sgd)
        for s in 0..<n {
            let slots = PipelineSchedule(.interleaved, stage: s, stages: n, microBatches: m, virtualStages: v).chunkSlots
            let expected = (0..<v).reduce(0) { $0 + slots[$1] * activations(rows: 24 / m, widths: plan.widths(cut[$1 * n + s])) }
            XCTAssertEqual(plans[s][.activations], expected, "stage \(s)")
        }
        XCTAssertEqual(layout.command, "train_pp -np 2 --schedule interleaved --virtual-stages 2")
    }

    /// TP's per-rank floats are those of ``TensorParallelPlan`` (which builds the maps).
    func testTensorParallelCountsEqualTheTensorParallelPlan() throws {
        let wide = ModelConfig(vocab: 27, seqLen: 8, emb: 5, hidden: 12, layers: 3).plan
        for tp in [2, 3, 4] {
            let plans = try MemoryPlan.perRank(wide, .tensorParallel(ranks: tp), sgd)
            for rank in 0..<tp {
                let layout = try TensorParallelPlan(wide, blocks: 0..<wide.count, tpSize: tp, tpRank: rank)
                XCTAssertEqual(plans[rank][.parameters], 4 * layout.parameterCount)
                XCTAssertEqual(plans[rank][.activations], activations(rows: 24, widths: layout.widths))
            }
        }
    }

    /// MPI takes 32-bit counts: the plan knows each layout's largest message, so a tensor-parallel
    /// activation of more than 2³¹ − 1 floats is seen before anything is allocated.
    func testLargestMessageIsKnownBeforeAllocation() throws {
        let dp = try MemoryPlan.perRank(plan, .dataParallel(ranks: 2, bucketBytes: 1 << 20), sgd)
        XCTAssertEqual(dp[0].largestMessage, plan.parameterCount, "one bucket holds every gradient")
        let buckets = GradientBuckets.buckets(plan: plan, bucketBytes: 64)
        let small = try MemoryPlan.perRank(plan, .dataParallel(ranks: 2, bucketBytes: 64), sgd)
        XCTAssertEqual(small[0].largestMessage, buckets.map(\.range.count).max())
        XCTAssertEqual(try MemoryPlan.perRank(plan, .singleRank, sgd)[0].largestMessage, 0, "one rank sends nothing")
        let big = ModelConfig(vocab: 27, seqLen: 16, emb: 1 << 20, hidden: 64, layers: 2).plan
        let tp = try MemoryPlan.forRank(0, big, .tensorParallel(ranks: 2), PlanSettings(batchSize: 256, optimizer: .sgd))
        XCTAssertEqual(tp.largestMessage, 256 * 16 << 20, "fc1's input gradient, B × seq·emb")
        XCTAssertGreaterThan(tp.largestMessage, Int(Int32.max))
    }

    /// One candidate generator (each parallelism's facts) serves `plan` and the refusal line:
    /// on one rank only `train`; on four every executable, `train_ep` only for experts, and
    /// every candidate of a model with experts either trains them or says why not.
    func testCandidatesOnNRanks() {
        func planner(_ config: ModelConfig, ranks: Int) -> Planner {
            Planner(plan: config.plan, settings: PlanSettings(batchSize: 32, optimizer: .sgd), ranks: ranks,
                    model: CostModel(calibration: nil), memoryPerRank: 1 << 30)
        }
        let dense = ModelConfig(vocab: 27, seqLen: 4, emb: 4, hidden: 8, layers: 2)
        XCTAssertEqual(planner(dense, ranks: 1).candidates().map(\.command), ["train"])
        let four = Set(planner(dense, ranks: 4).candidates().map(\.executable))
        XCTAssertEqual(four, ["train_dp", "train_fsdp", "train_tp", "train_pp", "train_3d", "train_diloco"])
        var experts = dense
        experts.experts = ExpertsConfig(count: 4, topK: 2)
        let moe = planner(experts, ranks: 4).candidates()
        XCTAssertEqual(Set(moe.map(\.executable)), ["train_dp", "train_fsdp", "train_tp", "train_ep", "train_pp", "train_3d"])
        XCTAssertEqual(moe.filter { $0.executable == "train_ep" }.map(\.command), ["train_ep -np 4 --ep 2", "train_ep -np 4 --ep 4"])
        XCTAssertTrue(moe.contains { $0.command == "train_3d -np 4 --tp 1 --dp 2 --pp 2 --schedule gpipe --ep 2" })
    }

    /// Ranks differ by stage and by rank 0's end-of-run copies: the largest need is the largest
    /// of every rank's plan.
    func testLargestNeedIsTheLargestRank() throws {
        let settings = PlanSettings(batchSize: 24, optimizer: .adam, samples: 10)
        let layout = LayoutDescription.threeDimensional(tp: 1, dp: 2, pp: 2, microBatches: 2, schedule: .gpipe)
        let all = try MemoryPlan.perRank(plan, layout, settings)
        XCTAssertEqual(try MemoryPlan.largestNeed(plan, layout, settings), all.map(\.toAllocate).max())
        // Without samples, the last stage (fc1, fc2 and the head) is the largest, not rank 0.
        let quiet = PlanSettings(batchSize: 24, optimizer: .adam)
        let pipeline = LayoutDescription.pipeline(stages: 2, microBatches: 2, schedule: .gpipe, partition: [1, 3])
        let stages = try MemoryPlan.perRank(plan, pipeline, quiet)
        XCTAssertGreaterThan(stages[1].toAllocate, stages[0].toAllocate)
        XCTAssertEqual(try MemoryPlan.largestNeed(plan, pipeline, quiet), stages[1].toAllocate)
    }

    func testBudgetReadsProcFilesAndDividesSharedMemory() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("meminfo-\(UUID().uuidString)")
        try "MemTotal:       24000000 kB\nMemAvailable:    1000 kB\n".write(to: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(MemoryBudget.kilobytes(file.path, "MemAvailable:"), 1000 * 1024)
        XCTAssertNil(MemoryBudget.kilobytes(file.path, "VmSize:"))
        let alone = MemoryBudget.current(environment: [:])
        let shared = MemoryBudget.current(environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "1000"])
        if alone.limit == "MemAvailable" {
            XCTAssertEqual(shared.limit, "MemAvailable / 1000 ranks on this host")
            XCTAssertLessThan(shared.bytes, alone.bytes / 100)
        }
    }

    /// `ulimit -v` in-process: the budget is the limit less the address space in use.
    func testBudgetHonoursRlimitAS() throws {
        var saved = rlimit()
        XCTAssertEqual(getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &saved), 0)
        let used = try XCTUnwrap(MemoryBudget.kilobytes("/proc/self/status", "VmSize:"))
        var tight = saved
        tight.rlim_cur = rlim_t(used + (1 << 30))
        guard saved.rlim_cur == rlim_t.max || saved.rlim_cur > tight.rlim_cur else { throw XCTSkip("already limited") }
        XCTAssertEqual(setrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &tight), 0)
        let budget = MemoryBudget.current(environment: [:])
        XCTAssertEqual(setrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &saved), 0)
        XCTAssertEqual(budget.limit, "RLIMIT_AS (ulimit -v)")
        // The address space in use moves by a few pages between the two reads (other threads map
        // and unmap), so the budget is 1 GiB give or take a little, not exactly.
        XCTAssertLessThanOrEqual(budget.bytes, (1 << 30) + (16 << 20))
        XCTAssertGreaterThan(budget.bytes, 1 << 29)
    }
}
