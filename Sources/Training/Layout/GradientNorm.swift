import Core
import Distributed

/// The norm of the whole model's gradient, ‖g‖₂ over all Ψ canonical floats, computed the same
/// way in every layout, and global gradient-norm clipping (`--clip-grad-norm`).
///
/// A layout's ranks hold the gradient in pieces: FSDP shards, TP slices, pipeline stages, and
/// replicas (DP's full copies, TP's embedding and head on every TP rank, 3D's both). Summing
/// every rank's Σ g² would count each replica as often as it is held — the mistake peers make
/// under pipelines and replicated parameters. Here every canonical float has one **owner**, the
/// lowest world rank that holds it, and
///
///     ‖g‖² = Σ over ranks r of Σ over the floats r owns of g²,
///
/// which is exactly the single-rank sum, up to the order of the additions. Padding (floats a
/// shard holds only to round its size up) belongs to nobody.
///
/// **Communication.** Once, at start-up: an allreduce-max of Ψ `Int32` over the world to learn
/// the owners. Per step: one allreduce of one `Double` (8 bytes) over the world — unless every
/// rank holds the whole model (DP), where the summed gradient is already on every rank and each
/// computes the same norm alone, communicating nothing.
///
/// **Clipping** follows `torch.nn.utils.clip_grad_norm_`: when ‖g‖ exceeds `C`, every rank
/// multiplies its gradient floats (replicas included, so they stay identical) by C / (‖g‖ + 10⁻⁶)
/// before the optimizer step. The update then sees the gradient of norm ≈ C that `train` sees.
public struct GradientNorm {
    /// Local float ranges of the gradient buffer this rank owns.
    let owned: [Range<Int>]
    /// Where the per-rank sums are added up; nil when every rank holds the whole model.
    let group: Communicator?
    let gradients: UnsafeMutablePointer<Float>
    /// Every local float, owned or not (what clipping scales).
    let localCount: Int

    /// Collective over `world`: works out which of this rank's floats it owns.
    public init(local: LocalParameters, world: Communicator, total: Int) {
        gradients = local.gradients
        localCount = local.map.count
        let held = local.map.runs.reduce(0) { $0 + ($1.start == nil ? 0 : $1.count) }
        // Does every rank hold all Ψ floats? (A map never holds a canonical float twice.)
        let everyoneHoldsAll = world.max(Int32(held == total ? 0 : 1)) == 0
        if everyoneHoldsAll {
            owned = [0..<localCount]
            group = nil
            return
        }
        // owner[c] = size − (lowest rank holding c): the maximum of size − rank over holders.
        var owner = [Int32](repeating: 0, count: total)
        let mine = Int32(world.size - world.rank)
        var offset = 0
        for run in local.map.runs {
            if let start = run.start { for c in start..<start + run.count { owner[c] = Swift.max(owner[c], mine) } }
            offset += run.count
        }
        owner.withUnsafeMutableBufferPointer { world.allreduceMax($0.baseAddress!, count: total) }
        var ranges: [Range<Int>] = []
        offset = 0
        for run in local.map.runs {
            if let start = run.start {
                var i = 0
                while i < run.count {
                    while i < run.count && owner[start + i] != mine { i += 1 }
                    let first = i
                    while i < run.count && owner[start + i] == mine { i += 1 }
                    if i > first { ranges.append(offset + first..<offset + i) }
                }
            }
            offset += run.count
        }
        owned = ranges
        group = world
    }

    /// ‖g‖₂ of the whole model's current gradient (collective when ``group`` is set).
    public func norm() -> Float {
        var squares = 0.0
        for range in owned { squares += Kernels.sumOfSquares(gradients + range.lowerBound, count: range.count) }
        if let group { squares = group.sum(squares) }
        return Float(squares.squareRoot())
    }

    /// Scales this rank's gradient so that the whole model's has norm `maxNorm` when `norm`
    /// (the value ``norm()`` returned) is larger; returns the factor applied (1: unchanged).
    @discardableResult
    public func clip(norm: Float, to maxNorm: Float) -> Float {
        let factor = maxNorm / (norm + 1e-6)
        guard factor < 1 else { return 1 }
        Kernels.scale(gradients, count: localCount, by: factor)
        return factor
    }
}
