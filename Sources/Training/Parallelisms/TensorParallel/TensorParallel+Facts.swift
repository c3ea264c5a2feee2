import Core
import Distributed

extension LayoutDescription {
    /// `train_tp -np N`: every hidden Linear split N ways.
    public static func tensorParallel(ranks: Int) -> LayoutDescription {
        LayoutDescription(TensorParallel.Facts(), shape: .tensorParallel(ranks: ranks))
    }
}

extension TensorParallel {
    /// `train_tp` for the plans (``TensorParallel`` allocates and communicates what this states).
    ///
    /// **Memory:** each paired Linear's slice (``TensorParallelPlan``), the replicated blocks
    /// whole; activations at the slices' widths. Under sequence parallelism the activations
    /// outside the pairs hold 1/T of the rows, plus a full-rows scratch and the partial gradients.
    ///
    /// **Bytes per optimizer step:** ``addPairs(_:_:)``.
    struct Facts: LayoutFacts {
        static let executable = "train_tp"
        static let trainsExperts = false

        /// TP, with and without sequence parallelism, each with and without `--recompute`.
        static func candidates(_ context: CandidateContext) -> [LayoutDescription] {
            guard context.ranks > 1 else { return [] }
            var sequenceParallel = LayoutDescription.tensorParallel(ranks: context.ranks)
            sequenceParallel.sequenceParallel = true
            return CandidateContext.withRecomputation([.tensorParallel(ranks: context.ranks), sequenceParallel])
        }

        func command(_ layout: LayoutDescription) -> String {
            "train_tp -np \(layout.shape.ranks)" + (layout.sequenceParallel ? " --sequence-parallel" : "") + layout.recomputeFlag
        }

        func communication(_ rank: RankGeometry) -> CommunicationPlan {
            var result = CommunicationPlan()
            Self.addPairs(&result, rank)
            return result
        }

        /// The tensor-parallel pairs' calls on `rank` (`train_tp`, and `train_3d` on its stage's
        /// blocks), per chain run (`b` rows, K·M runs per step): an allreduce of `b × outputs`
        /// after each row-parallel Linear (forward) and of `b × inputs` before each
        /// column-parallel one (backward). Under sequence parallelism those become an allgather
        /// of `b × inputs` forward, another and a reduce-scatter backward (column), a
        /// reduce-scatter forward and an allgather backward of `b × outputs` (row); plus, per
        /// step, one allreduce of the partial gradients (``PartialGradientSum``) and the 4-byte
        /// loss over tp. A forward rerun under `--recompute` repeats its forward collective.
        static func addPairs(_ result: inout CommunicationPlan, _ rank: RankGeometry) {
            let tp = rank.size(.tp), runs = rank.runs, sequenceParallel = rank.layout.sequenceParallel && tp > 1
            guard tp > 1 else { return }
            for (c, local) in rank.blocks.enumerated() {
                let reruns = rank.reruns(chunk: c)
                for (i, block) in local.enumerated() where block.sharding != .replicated {
                    let bytes = 4 * rank.chainRows * (block.sharding == .column ? block.input : block.output)
                    let forwards = runs * (1 + reruns[i])
                    switch (block.sharding, sequenceParallel) {
                    case (.column, false): result.add(.allreduce, .tp, size: tp, stride: 1, calls: runs, bytesPerCall: bytes)
                    case (.row, false): result.add(.allreduce, .tp, size: tp, stride: 1, calls: forwards, bytesPerCall: bytes)
                    case (.column, true):
                        result.add(.allgather, .tp, size: tp, stride: 1, calls: forwards + runs, bytesPerCall: bytes)
                        result.add(.reduceScatter, .tp, size: tp, stride: 1, calls: runs, bytesPerCall: bytes)
                    default:
                        result.add(.reduceScatter, .tp, size: tp, stride: 1, calls: forwards, bytesPerCall: bytes)
                        result.add(.allgather, .tp, size: tp, stride: 1, calls: runs, bytesPerCall: bytes)
                    }
                }
            }
            if sequenceParallel {  // the partial gradients of what is used outside the pairs, and the loss
                let partial = MemoryPlan.sequenceParallelPartials(rank)
                if partial > 0 { result.add(.allreduce, .tp, size: tp, stride: 1, bytesPerCall: 4 * partial) }
                result.add(.allreduce, .tp, size: tp, stride: 1, bytesPerCall: 4)
            }
        }
    }
}
