import Core
import Distributed

/// A layout as the memory plan sees it: which executable, on how many ranks, with which mesh,
/// micro-batches, schedule and bucket size. Pure data, no MPI, so a plan can be made for any
/// layout at any rank count (the refusal line lists the layouts that would fit).
public struct LayoutDescription: Sendable {
    public enum Kind: Sendable, Equatable {
        case singleRank, dataParallel, fullySharded, tensorParallel, pipeline, threeDimensional
    }

    public var kind: Kind
    public var shape: LayoutShape
    /// The pipeline schedule (`train_pp`, `train_3d`).
    public var schedule: PipelineScheduleKind = .oneForwardOneBackward
    /// DP's gradient bucket size in bytes (`train_dp --bucket-kb`).
    public var bucketBytes = 1 << 20
    /// `train_fsdp --zero` (1, 2 or 3) and `--replicate R` (HSDP).
    public var zero = 3
    public var replicate = 1
    /// `--recompute`: a pipeline stage keeps only each micro-batch's boundary; one chain keeps
    /// only its √n segments' boundaries (``RecomputeSegments``).
    public var recompute = false
    /// `--sequence-parallel` (`train_tp`, `train_3d`): rows split over tp outside the pairs.
    public var sequenceParallel = false
    /// `train_pp --batch-weight-gradients`: each chunk stages every micro-batch's inputs and
    /// output gradients of its splitting layers, for one weight pass per run.
    public var batchWeightGradients = false

    public static var singleRank: LayoutDescription { LayoutDescription(kind: .singleRank, shape: .singleRank) }

    public static func dataParallel(ranks: Int, bucketBytes: Int) -> LayoutDescription {
        LayoutDescription(kind: .dataParallel, shape: .dataParallel(ranks: ranks), bucketBytes: bucketBytes)
    }

    /// `train_fsdp`: ZeRO stage `zero` over shard groups of `ranks / replicate` (the caller checks
    /// that `replicate` divides `ranks`: ``LayoutShape/fullySharded(ranks:replicate:)``).
    public static func fullySharded(ranks: Int, zero: Int = 3, replicate: Int = 1) -> LayoutDescription {
        let shape = LayoutShape(executable: .oneAxis, axes: [(.shard, max(1, ranks / replicate)), (.replicate, replicate)],
                                microBatches: nil)
        return LayoutDescription(kind: .fullySharded, shape: shape, zero: zero, replicate: replicate)
    }

    public static func tensorParallel(ranks: Int) -> LayoutDescription {
        LayoutDescription(kind: .tensorParallel, shape: .tensorParallel(ranks: ranks))
    }

    public static func pipeline(stages: Int, microBatches: Int, schedule: PipelineScheduleKind,
                                partition: [Int]? = nil) -> LayoutDescription {
        LayoutDescription(kind: .pipeline, shape: .pipeline(stages: stages, microBatches: microBatches, partition: partition),
                          schedule: schedule)
    }

    public static func threeDimensional(tp: Int, dp: Int, pp: Int, microBatches: Int, schedule: PipelineScheduleKind,
                                        partition: [Int]? = nil) -> LayoutDescription {
        LayoutDescription(kind: .threeDimensional,
                          shape: .threeDimensional(tp: tp, dp: dp, pp: pp, microBatches: microBatches, partition: partition),
                          schedule: schedule)
    }

    /// A pipeline as the flags of `train_pp` describe it.
    public static func pipeline(stages: Int, _ options: PipelineOptions) -> LayoutDescription {
        var layout = LayoutDescription.pipeline(stages: stages, microBatches: options.microBatches, schedule: options.schedule,
                                                partition: options.partition)
        layout.recompute = options.recompute
        layout.batchWeightGradients = options.batchWeightGradients
        layout.shape.virtualStages = options.virtualStages
        return layout
    }

    /// A grid as the flags of `train_3d` describe it.
    public static func threeDimensional(tp: Int, dp: Int, pp: Int, _ options: PipelineOptions) -> LayoutDescription {
        var layout = LayoutDescription.threeDimensional(tp: tp, dp: dp, pp: pp, microBatches: options.microBatches,
                                                        schedule: options.schedule, partition: options.partition)
        layout.recompute = options.recompute
        layout.shape.virtualStages = options.virtualStages
        return layout
    }

    /// How to run it, for messages: `train_fsdp -np 4`, `train_3d -np 12 --tp 2 --dp 2 --pp 3`.
    public var command: String {
        let n = shape.ranks, chunks = shape.virtualStages > 1 ? " --virtual-stages \(shape.virtualStages)" : ""
        switch kind {
        case .singleRank: return "train" + (recompute ? " --recompute" : "")
        case .dataParallel: return shape.expertGroup.map { "train_ep -np \(n) --ep \($0)" } ?? "train_dp -np \(n)" + (recompute ? " --recompute" : "")
        case .fullySharded:
            return "train_fsdp -np \(n)" + (zero != 3 ? " --zero \(zero)" : "") + (replicate > 1 ? " --replicate \(replicate)" : "")
                + (recompute ? " --recompute" : "")
        case .tensorParallel:
            return "train_tp -np \(n)" + (sequenceParallel ? " --sequence-parallel" : "") + (recompute ? " --recompute" : "")
        case .pipeline:
            return "train_pp -np \(n) --schedule \(schedule.rawValue)" + chunks + (recompute ? " --recompute" : "")
                + (batchWeightGradients ? " --batch-weight-gradients" : "")
        case .threeDimensional:
            return "train_3d -np \(n) --tp \(shape.size(.tp)) --dp \(shape.size(.dp)) --pp \(shape.size(.pp))"
                + (schedule != .oneForwardOneBackward ? " --schedule \(schedule.rawValue)" + chunks : "")
                + (recompute ? " --recompute" : "") + (sequenceParallel ? " --sequence-parallel" : "")
                + (shape.expertGroup.map { $0 > 1 ? " --ep \($0)" : "" } ?? "")
        }
    }
}
