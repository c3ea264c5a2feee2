import Core
import Distributed

extension LayoutDescription {
    /// `train_pp -np P --schedule S --micro-batches M`, blocks cut by cost unless `partition` says.
    public static func pipeline(stages: Int, microBatches: Int, schedule: PipelineScheduleKind,
                                partition: [Int]? = nil) -> LayoutDescription {
        LayoutDescription(PipelineParallel.Facts(), shape: .pipeline(stages: stages, microBatches: microBatches, partition: partition),
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
}

extension PipelineParallel {
    /// `train_pp` for the plans (``PipelineParallel`` allocates and communicates what this states).
    ///
    /// **Memory:** the stage's blocks (every chunk's, interleaved); one chain per slot the
    /// schedule keeps in flight (``PipelineSchedule/chunkSlots``), of `b/M` rows; with
    /// `--recompute` one working chain and each slot's boundary; with M > 1 each Linear's weights
    /// packed once per run (two packed copies of W: ``Linear/keepPackedWeights()``).
    ///
    /// **Bytes per optimizer step:** ``addBoundaries(_:_:)``.
    struct Facts: LayoutFacts {
        static let executable = "train_pp"
        static let trainsExperts = true

        /// Every schedule at each micro-batch count (``CandidateContext/microBatchCounts(stages:rows:)``);
        /// at the most micro-batches, `--recompute` and `--batch-weight-gradients` (not for ZB-H1);
        /// interleaved with two chunks per stage where M is a multiple of P.
        static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
            let n = context.ranks
            guard n > 1 else { return [] }
            let counts = CandidateContext.microBatchCounts(stages: n, rows: context.rows)
            var result: [LayoutDescription] = []
            for kind in PipelineScheduleKind.allCases where kind != .interleaved {
                for m in counts { result.append(.pipeline(stages: n, microBatches: m, schedule: kind)) }
                if kind != .zeroBubble, let m = counts.last {
                    var recompute = LayoutDescription.pipeline(stages: n, microBatches: m, schedule: kind)
                    recompute.recompute = true
                    result.append(recompute)
                    if m > 1 {  // one weight pass per step over all the micro-batches' rows
                        var batched = LayoutDescription.pipeline(stages: n, microBatches: m, schedule: kind)
                        batched.batchWeightGradients = true
                        result.append(batched)
                    }
                }
            }
            for m in counts where m % n == 0 {  // interleaved, two chunks per stage
                var interleaved = LayoutDescription.pipeline(stages: n, microBatches: m, schedule: .interleaved)
                interleaved.shape.virtualStages = 2
                result.append(interleaved)
            }
            return result
        }

        func command(_ layout: LayoutDescription) -> String {
            "train_pp -np \(layout.shape.ranks)" + layout.scheduleFlags + layout.recomputeFlag
                + (layout.batchWeightGradients ? " --batch-weight-gradients" : "")
        }

        func expertsRefusal(_ experts: ExpertsConfig, _ layout: LayoutDescription) -> String? {
            do { try PipelineOptions(layout).checkExperts(experts) } catch { return error.description }
            return nil
        }

        /// With M > 1 micro-batches `train_pp` packs each Linear's weights once per run for its
        /// micro-batches (``Linear/keepPackedWeights()``): two packed copies of W.
        func addMemory(_ memory: inout MemoryPlan, _ rank: RankGeometry, _ checked: inout Checked) {
            guard (rank.layout.shape.microBatches ?? 1) > 1 else { return }
            for i in rank.chunks.joined() where rank.plan[i].kind == .dense || rank.plan[i].kind == .head {
                let copies = Linear.packedCount(inputs: rank.plan[i].weightRows, outputs: rank.plan[i].weightColumns)
                memory[.buffers] = checked.plus(memory[.buffers], checked.times(4, copies))
            }
        }

        func communication(_ rank: RankGeometry) -> CommunicationPlan {
            var result = CommunicationPlan()
            Self.addBoundaries(&result, rank)
            return result
        }

        /// The pipeline's calls on `rank` (`train_pp`, and `train_3d` between its stages): per
        /// micro-batch and chunk, a boundary's activation forward and its gradient back (one send
        /// and one receive each side; 1/T of the rows outside the pairs under sequence
        /// parallelism), per schedule run (K of them) the 4-byte loss broadcast from the last
        /// stage, and with experts every stage's aux loss and load allgathered once per step
        /// (``PipelineExpertStatistics``).
        static func addBoundaries(_ result: inout CommunicationPlan, _ rank: RankGeometry) {
            let pp = rank.size(.pp), stride = rank.stride(.pp), plan = rank.plan
            guard pp > 1 else { return }
            for (c, range) in rank.chunks.enumerated() {
                let local = rank.blocks[c], rows = rank.activationRows(chunk: c)
                let input = 4 * rows[0] * local[0].input, output = 4 * rows[local.count] * local[local.count - 1].output
                if range.lowerBound > 0 {
                    result.add(.receive, .pp, size: pp, stride: stride, calls: rank.runs, bytesPerCall: input)
                    result.add(.send, .pp, size: pp, stride: stride, calls: rank.runs, bytesPerCall: input)
                }
                if range.upperBound < plan.count {
                    result.add(.send, .pp, size: pp, stride: stride, calls: rank.runs, bytesPerCall: output)
                    result.add(.receive, .pp, size: pp, stride: stride, calls: rank.runs, bytesPerCall: output)
                }
            }
            result.add(.broadcast, .pp, size: pp, stride: stride, calls: rank.settings.accumulation, bytesPerCall: 4)
            if plan.config.experts != nil { result.add(.allgather, .pp, size: pp, stride: stride, bytesPerCall: 4 * 2 * pp) }
        }
    }
}

extension PipelineOptions {
    /// The flags that would describe `layout`'s pipeline (for its rules).
    init(_ layout: LayoutDescription) {
        self.init()
        microBatches = layout.shape.microBatches ?? 1
        schedule = layout.schedule
        recompute = layout.recompute
        batchWeightGradients = layout.batchWeightGradients
    }
}
