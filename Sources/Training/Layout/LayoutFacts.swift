import Core
import Distributed

/// What the planning side needs to know about one parallelism, stated once, in the
/// parallelism's own folder (`Parallelisms/<name>/<name>+Facts.swift`), next to the runtime
/// layout that allocates and communicates what it describes.
///
/// ``MemoryPlan``, ``CommunicationPlan``, ``CostModel`` and ``Planner`` know nothing of any
/// particular parallelism: they walk a rank's ``RankGeometry`` (its mesh coordinates, the blocks
/// it runs, its rows and schedule, computed once) and ask the layout's facts for the rest —
/// how the parameters are held, what moves per step, which flags and rules apply, which
/// layouts are worth planning. A new parallelism conforms a value type to this protocol and
/// adds one line to ``Parallelisms/all``.
protocol LayoutFacts: Sendable {
    /// The executable that runs this parallelism (`train_fsdp`).
    static var executable: String { get }
    /// Whether that executable trains mixtures of experts (`--experts`).
    static var trainsExperts: Bool { get }
    /// The layouts of this parallelism worth planning on `context.ranks` ranks (none when it
    /// needs a different rank count).
    static func candidates(_ context: CandidateContext) -> [LayoutDescription]

    /// How to run `layout`, for messages: `train_fsdp -np 4 --zero 2`.
    func command(_ layout: LayoutDescription) -> String
    /// Flags the planner's table adds to ``command(_:)`` (DP's `--bucket-kb`); "" by default.
    var planFlags: String { get }
    /// Throws the first reason `layout` cannot run on `worldSize` ranks beyond ``LayoutShape/check``'s
    /// (HSDP's replicas must divide the ranks); nothing by default.
    func check(_ layout: LayoutDescription, worldSize: Int) throws(UsageError)
    /// Why `layout` cannot train `experts` (nil: it can), in the executable's own words.
    func expertsRefusal(_ experts: ExpertsConfig, _ layout: LayoutDescription) -> String?

    /// E' when each mixture of experts in a rank's blocks holds only E/E' experts (`train_3d
    /// --ep`); 1 by default (`train_ep` plans its experts in ``addMemory(_:_:_:)``).
    func expertGroupInBlocks(_ layout: LayoutDescription) -> Int
    /// Adds the parameters, gradients and sharding buffers of `blocks` (this rank's, every
    /// chunk's) to `memory`, and returns the floats the rank's optimizer updates. By default one
    /// flat buffer of all of them.
    func holdParameters(_ memory: inout MemoryPlan, _ blocks: [LocalBlock], _ rank: RankGeometry,
                        _ checked: inout Checked) -> Int
    /// Whether a mixture of experts gathers every data-parallel rank's routing statistics each
    /// forward (`D·2E` floats); false by default.
    var gathersRoutingStatistics: Bool { get }
    /// Adds what the chain's walk does not see: DP's largest bucket, `train_ep`'s experts, a
    /// pipeline's packed weights. Nothing by default.
    func addMemory(_ memory: inout MemoryPlan, _ rank: RankGeometry, _ checked: inout Checked)
    /// Everything the layout communicates per optimizer step on `rank` (the training loop's
    /// own calls apart: ``CommunicationPlan/forRank(_:gradientNorm:)``).
    func communication(_ rank: RankGeometry) -> CommunicationPlan
    /// Whether every rank holds the whole model's gradients (then the gradient norm needs no
    /// allreduce); false by default.
    func holdsWholeModel(_ layout: LayoutDescription) -> Bool
}

extension LayoutFacts {
    var planFlags: String { "" }
    func check(_ layout: LayoutDescription, worldSize: Int) throws(UsageError) {}
    func expertGroupInBlocks(_ layout: LayoutDescription) -> Int { 1 }
    var gathersRoutingStatistics: Bool { false }
    func addMemory(_ memory: inout MemoryPlan, _ rank: RankGeometry, _ checked: inout Checked) {}
    func holdsWholeModel(_ layout: LayoutDescription) -> Bool { false }

    func expertsRefusal(_ experts: ExpertsConfig, _ layout: LayoutDescription) -> String? {
        Self.trainsExperts ? nil : Parallelisms.expertsUnsupported(by: Self.executable)
    }

    func holdParameters(_ memory: inout MemoryPlan, _ blocks: [LocalBlock], _ rank: RankGeometry,
                        _ checked: inout Checked) -> Int {
        let held = blocks.reduce(0) { checked.plus($0, $1.count) }
        memory[.parameters] = checked.times(4, max(1, held))
        memory[.gradients] = memory[.parameters]
        return held
    }
}

/// What a parallelism's ``LayoutFacts/candidates(_:)`` may vary: the ranks, the rows a pipeline
/// can cut into micro-batches, DP's bucket size and the model's experts.
struct CandidateContext {
    var ranks: Int
    /// Rows of one micro-step of the global batch (B / K).
    var rows: Int
    var bucketBytes: Int
    var experts: ExpertsConfig?

    /// Micro-batch counts tried for a pipeline of `stages` whose micro-step has `rows` rows:
    /// M = 1, P, 2P, 4P, 8P and the powers of two up to 8P, those that divide the rows, in
    /// increasing order.
    static func microBatchCounts(stages: Int, rows: Int) -> [Int] {
        let powers = (0...20).map { 1 << $0 }.filter { $0 <= 8 * stages }
        let counts = Set([1, stages, 2 * stages, 4 * stages, 8 * stages] + powers).filter { $0 <= rows && rows % $0 == 0 }
        return counts.sorted()
    }

    /// The divisors of ``ranks``.
    var divisors: [Int] { (1...ranks).filter { ranks % $0 == 0 } }

    /// `layouts`, each also with `--recompute`.
    static func withRecomputation(_ layouts: [LayoutDescription]) -> [LayoutDescription] {
        layouts.flatMap { layout -> [LayoutDescription] in
            var recompute = layout
            recompute.recompute = true
            return [layout, recompute]
        }
    }
}

/// Every layout the suite plans for: the registry.
enum Parallelisms {
    /// One line per parallelism.
    static let all: [any LayoutFacts.Type] = [
        SingleRank.Facts.self,
        DataParallel.Facts.self,
        FullyShardedDataParallel.Facts.self,
        TensorParallel.Facts.self,
        ExpertParallel.Facts.self,
        PipelineParallel.Facts.self,
        ThreeDimensional.Facts.self,
        DiLoCo.Facts.self,
    ]

    /// Every layout of every parallelism worth planning in `context`.
    static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
        all.flatMap { $0.candidates(context) }
    }

    /// `--experts is not supported by train_tp: use train, train_dp, train_ep, train_pp or train_3d`.
    static func expertsUnsupported(by executable: String) -> String {
        let names = all.filter { $0.trainsExperts }.map { $0.executable }
        let list = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names.last! : names.joined()
        return "--experts is not supported by \(executable): use \(list)"
    }
}
