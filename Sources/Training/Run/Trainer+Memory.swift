import Core
import Distributed
import Foundation

/// The memory plan, checked before anything big is allocated (see ``MemoryPlan``, ``MemoryBudget``).
extension Trainer {
    /// Bytes kept back for what no plan counts: the Swift and MPI runtimes' own growth, stacks,
    /// the allocator's slack.
    static var reserve: Int { memoryReserve }

    /// Plans this rank's memory for `config` in this executable's layout and refuses, with one
    /// line, a run that does not fit ``MemoryBudget/current(environment:)``: need against have in
    /// GiB, by category, and the layouts on the same number of ranks that would fit. Also refuses
    /// sizes that overflow `Int` or an MPI call's 32-bit count. Runs on every rank (inside
    /// `agreeing`); returns the model's block plan, the plan of every rank (for `--metrics`; only
    /// this rank's without it) and the line rank 0 prints before allocating.
    func planMemory(_ config: ModelConfig, examples: Int) throws -> (BlockPlan, [MemoryPlan], String) {
        let budget = MemoryBudget.current()
        let settings = PlanSettings(options, examples: examples)
        let layout = command.layoutDescription(ranks: world.size)
        // Before the block plan is even built: Ψ in closed form, and the whole model every rank
        // builds, plus the bookkeeping of every block.
        let psi = try MemoryPlan.parameterCount(config)
        let blocks = config.layers + 2
        let floor = psi.multipliedReportingOverflow(by: 4).partialValue
            .addingReportingOverflow(blocks.multipliedReportingOverflow(by: MemoryPlan.bookkeepingPerBlock).partialValue)
        if floor.overflow || floor.partialValue + Self.reserve > budget.bytes {
            throw UsageError("\(layout.command) needs more than \(gib(floor.overflow ? .max : floor.partialValue)) GiB per rank "
                             + "for the whole model (\(psi) parameters, built on every rank before it is cut) and \(blocks) blocks, "
                             + "but rank \(world.rank) may use \(gib(budget.bytes)) GiB (\(budget.limit)); make the model smaller")
        }
        let plan = config.plan
        try layout.check(worldSize: world.size, plan: plan, batchSize: options.batchSize, accumulation: options.accumulate)
        let mine = try MemoryPlan.forRank(world.rank, plan, layout, settings)
        let need = mine.toAllocate + Self.reserve
        if need > budget.bytes {
            throw UsageError("\(layout.command) needs \(gib(need)) GiB per rank (rank \(world.rank): \(categories(mine))) "
                             + "but may use \(gib(budget.bytes)) GiB (\(budget.limit)); "
                             + alternatives(plan, settings, ranks: world.size, budget: budget.bytes))
        }
        if mine.largestMessage > Int(Int32.max) {
            throw UsageError("\(layout.command) would pass \(mine.largestMessage) floats in one MPI call, more than MPI's "
                             + "32-bit count (\(Int32.max)); make the batch or the model smaller, or use more ranks")
        }
        let all = isLeader && options.metrics != nil
            ? try MemoryPlan.perRank(plan, layout, settings) : [mine]
        let line = "memory plan: \(layout.command) needs \(gib(need)) GiB on rank \(world.rank) (\(categories(mine)), "
            + "dataset \(gib(mine.dataset)) loaded) of \(gib(budget.bytes)) GiB it may use (\(budget.limit))"
        return (plan, all, line)
    }

    /// Rank 0 prints `line` at once (flushed: what follows may take a while to allocate).
    func announce(_ line: String) {
        guard isLeader else { return }
        print(line)
        fflush(nil)  // every C stream, stdout among them
    }

    /// `parameters 1.00, gradients 1.00, …` in GiB.
    func categories(_ plan: MemoryPlan) -> String {
        let named = MemoryCategory.allCases.map { ($0.name, plan[$0]) }
            + [("staging", plan.staging), ("whole model", plan.wholeModel), ("bookkeeping", plan.bookkeeping)]
        return named.map { "\($0.0) \(gib($0.1))" }.joined(separator: ", ") + " GiB"
    }

    /// The layouts on `ranks` ranks that fit `budget` bytes per rank, smallest first, or the
    /// smallest layout if none does: the planner's candidates (``Planner/candidates()``).
    func alternatives(_ plan: BlockPlan, _ settings: PlanSettings, ranks: Int, budget: Int) -> String {
        if ranks == 1 {
            if plan.config.experts != nil {  // only train_dp takes experts besides train, and it shards nothing
                return "train is the only layout on 1 rank (on more ranks, train_dp splits the batch and train_ep shards the experts)"
            }
            return "train is the only layout on 1 rank (on more ranks, train_fsdp and train_3d shard the model and split the batch)"
        }
        let context = CandidateContext(ranks: ranks, rows: max(1, settings.batchSize / settings.accumulation), bucketBytes: 1 << 20,
                                       experts: plan.config.experts)
        var needs: [(String, Int)] = []
        for layout in Parallelisms.candidates(context) {
            guard (try? layout.check(worldSize: ranks, plan: plan, batchSize: settings.batchSize, accumulation: settings.accumulation)) != nil,
                  layout.shape.size(.pp) == 1 || plan.count <= 2000,  // the cost-balanced cut is quadratic in the blocks
                  plan.config.experts.map({ layout.facts.expertsRefusal($0, layout) == nil }) ?? true
            else { continue }
            if let need = try? MemoryPlan.largestNeed(plan, layout, settings) { needs.append((layout.planCommand, need + Self.reserve)) }
        }
        needs.sort { $0.1 < $1.1 }
        let fitting = needs.filter { $0.1 <= budget }
        if fitting.isEmpty {
            guard let smallest = needs.first else { return "no layout on \(ranks) rank(s) fits" }
            return "no layout on \(ranks) rank(s) fits (the smallest: \(smallest.0) needs \(gib(smallest.1)) GiB per rank)"
        }
        return "on \(ranks) rank(s) these fit: "
            + fitting.prefix(4).map { "\($0.0) needs \(gib($0.1)) GiB per rank" }.joined(separator: ", ")
    }
}

/// Bytes kept back per rank for what no plan counts (``Trainer/reserve``; the planner adds it too).
let memoryReserve = 32 << 20

/// Bytes in GiB with two decimals.
func gib(_ bytes: Int) -> String { String(format: "%.2f", Double(bytes) / Double(1 << 30)) }

extension MemoryPlan {
    /// The most bytes any rank of `layout` must allocate. Ranks differ only by
    /// pipeline stage (tensor- and data-parallel ranks hold equal shares) and rank 0's end-of-run
    /// copies, so one rank per stage is planned.
    public static func largestNeed(_ plan: BlockPlan, _ layout: LayoutDescription, _ settings: PlanSettings) throws(UsageError) -> Int {
        let shape = layout.shape, pp = shape.size(.pp), perStage = shape.size(.tp) * shape.size(.dp)
        let cut = RankGeometry.cut(plan, layout)
        var largest = 0
        for stage in 0..<pp {
            let memory = try forRank(RankGeometry(rank: stage * perStage, layout, plan, settings, cut: cut))
            largest = max(largest, memory.toAllocate)
        }
        return largest
    }
}
