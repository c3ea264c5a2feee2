import Core
import Distributed

/// `train_diloco`'s own flags, as values: H, the outer SGD's learning rate and momentum, and F.
public struct OuterSettings: Sendable, Equatable {
    /// H: inner steps between two outer steps of a fragment (`--inner-steps`).
    public var innerSteps: Int
    /// η (`--outer-lr`).
    public var learningRate: Float
    /// μ, Nesterov momentum (`--outer-momentum`).
    public var momentum: Float
    /// F: fragments synchronised at staggered steps (`--fragments`); F divides H.
    public var fragments: Int

    public init(innerSteps: Int, learningRate: Float, momentum: Float, fragments: Int) {
        (self.innerSteps, self.learningRate, self.momentum, self.fragments) = (innerSteps, learningRate, momentum, fragments)
    }

    /// The canonical floats of each of the F fragments: Ψ cut into F contiguous runs, the first
    /// Ψ mod F one float longer.
    public static func fragmentRanges(count: Int, fragments: Int) -> [Range<Int>] {
        let base = count / fragments, longer = count % fragments
        var start = 0
        return (0..<fragments).map { f in
            let size = base + (f < longer ? 1 : 0)
            defer { start += size }
            return start ..< start + size
        }
    }

    /// The step offset of fragment `f`: it takes its outer step after the steps t with
    /// t ≡ f·H/F (mod H), fragment 0 after H, 2H, … (Streaming DiLoCo's staggering).
    public func offset(fragment f: Int) -> Int { f * (innerSteps / fragments) }
}

/// DiLoCo's outer state and outer step (see ``DiLoCo``): θ (Ψ floats, filed as parameters),
/// the Nesterov momentum u (Ψ floats, filed as optimizer state), and the fragments.
///
/// The outer step of one fragment needs no buffer of its own: the worker's parameters θᵢ are
/// overwritten with θ − θᵢ, allreduced (summed) in place, and then, float by float, scaled by
/// 1/N into Δ, folded into u and θ, and replaced by the new θ.
final class OuterOptimizer {
    let settings: OuterSettings
    /// The worker's own parameters θᵢ (the model's flat buffer).
    let parameters: UnsafeMutablePointer<Float>
    let count: Int
    let workers: Communicator
    /// θ, identical on every worker.
    let outerParameters: FloatBuffer
    /// u, identical on every worker.
    let momentum: FloatBuffer
    let fragments: [Range<Int>]

    init(_ settings: OuterSettings, parameters: UnsafeMutablePointer<Float>, count: Int, workers: Communicator) {
        self.settings = settings
        self.parameters = parameters
        self.count = count
        self.workers = workers
        outerParameters = FloatBuffer(count: count, category: .parameters)
        momentum = FloatBuffer(count: count, category: .optimizer)
        fragments = OuterSettings.fragmentRanges(count: count, fragments: settings.fragments)
        // Every worker starts from the same θᵢ = θ.
        Kernels.copy(parameters, into: outerParameters.pointer, count: count)
    }

    /// After inner step `step` (1-based): the outer step of every fragment whose period ends here.
    func afterInnerStep(_ step: Int) {
        for f in fragments.indices where step % settings.innerSteps == settings.offset(fragment: f) {
            outerStep(fragments[f])
        }
    }

    /// One fragment's outer step: Δ = mean over workers of θ − θᵢ (one allreduce of its floats),
    /// u ← μu + Δ, θ ← θ − η(Δ + μu), θᵢ ← θ.
    func outerStep(_ range: Range<Int>) {
        let local = parameters + range.lowerBound, outer = outerParameters.pointer + range.lowerBound
        let u = momentum.pointer + range.lowerBound, n = range.count
        for i in 0..<n { local[i] = outer[i] - local[i] }
        workers.allreduceSum(local, count: n)
        let mean = 1 / Float(workers.size), mu = settings.momentum, lr = settings.learningRate
        for i in 0..<n {
            let delta = local[i] * mean
            let v = mu * u[i] + delta
            u[i] = v
            outer[i] -= lr * (delta + mu * v)
            local[i] = outer[i]
        }
    }
}
