import Core
import Distributed

/// A pipeline's mixture-of-experts figures for one step: each stage holds some of the blocks, so
/// the model's aux loss (the sum over the blocks) and load (the worst block's) come from every
/// stage. After each training step every rank allgathers its stage's two figures over pp —
/// `4·2·P` bytes — and adds them up; each block's figures are already the whole batch's (the
/// same on every tp and dp rank of the stage). Nothing is allocated per step.
final class PipelineExpertStatistics {
    let mixtures: [MixtureOfExperts]
    let pp: Communicator
    /// This stage's aux loss and load, then every stage's (`2 + 2·P` floats).
    let figures: UnsafeMutablePointer<Float>
    /// The last step's, for the progress line and `--metrics`.
    private(set) var last = ExpertStatistics(auxiliaryLoss: 0, imbalance: 0)

    /// The figures of `layers`' mixtures of experts over the pipeline `pp`, or nil for a dense model.
    init?(layers: [Layer], model: ModelConfig, pp: Communicator) {
        guard model.experts != nil else { return nil }
        mixtures = layers.compactMap { $0 as? MixtureOfExperts }
        self.pp = pp
        figures = .allocate(capacity: 2 + 2 * pp.size)
        figures.initialize(repeating: 0, count: 2 + 2 * pp.size)
    }

    deinit { figures.deallocate() }

    /// Gathers the step's figures (collective over pp); returns the model's aux loss, part of the
    /// trained loss.
    func gather() -> Float {
        figures[0] = mixtures.reduce(0) { $0 + $1.auxiliaryLoss }
        figures[1] = mixtures.reduce(0) { max($0, $1.imbalance) }
        pp.allgather(figures, count: 2, into: figures + 2)
        var statistics = ExpertStatistics(auxiliaryLoss: 0, imbalance: 0)
        for stage in 0..<pp.size {
            statistics.auxiliaryLoss += figures[2 + 2 * stage]
            statistics.imbalance = max(statistics.imbalance, figures[3 + 2 * stage])
        }
        last = statistics
        return statistics.auxiliaryLoss
    }
}
