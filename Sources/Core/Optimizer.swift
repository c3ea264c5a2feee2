#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which update rule.
public enum OptimizerKind: String, CaseIterable, Sendable, Codable {
    case sgd, adam
}

/// Hyperparameters of the update rule.
public struct OptimizerConfig: Equatable, Sendable, Codable {
    public var kind: OptimizerKind
    public var learningRate: Float
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    public var weightDecay: Float

    public init(kind: OptimizerKind = .sgd, learningRate: Float = 0.1, beta1: Float = 0.9, beta2: Float = 0.999,
                epsilon: Float = 1e-8, weightDecay: Float = 0) {
        self.kind = kind
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }
}

/// SGD or Adam over one flat run of parameters.
///
/// The update is elementwise, so it gives the same numbers whether it runs over the whole model
/// (`train`) or over a rank's shard (`train_fsdp`: ZeRO-1, each rank holds the Adam moments of
/// its shard only). Weight decay is decoupled (AdamW): `p −= lr · wd · p`, for SGD too.
///
///     SGD:  p −= lr · (g + wd · p)
///     Adam: m = β₁m + (1−β₁)g;  v = β₂v + (1−β₂)g²;
///           p −= lr · ( m/(1−β₁ᵗ) / (√(v/(1−β₂ᵗ)) + ε) + wd · p )
public final class Optimizer {
    public let config: OptimizerConfig
    public let count: Int
    /// Adam's first and second moments (`count` floats each), nil for SGD.
    public let moment1: UnsafeMutablePointer<Float>?
    public let moment2: UnsafeMutablePointer<Float>?

    public init(config: OptimizerConfig, count: Int) {
        self.config = config
        self.count = count
        if config.kind == .adam {
            moment1 = .allocate(capacity: max(1, count))
            moment2 = .allocate(capacity: max(1, count))
            moment1!.initialize(repeating: 0, count: max(1, count))
            moment2!.initialize(repeating: 0, count: max(1, count))
        } else {
            moment1 = nil
            moment2 = nil
        }
        MemoryLedger.add(.optimizer, bytes: stateBytes)
    }

    deinit {
        moment1?.deallocate()
        moment2?.deallocate()
        MemoryLedger.add(.optimizer, bytes: -stateBytes)
    }

    /// Bytes of optimizer state held.
    public var stateBytes: Int { config.kind == .adam ? 2 * count * MemoryLayout<Float>.size : 0 }

    /// Applies update number `t` (1-based) to `count` parameters from their gradients.
    public func step(_ parameters: UnsafeMutablePointer<Float>, _ gradients: UnsafePointer<Float>, t: Int) {
        switch config.kind {
        case .sgd:
            Kernels.sgd(parameters, gradients, count: count, learningRate: config.learningRate, weightDecay: config.weightDecay)
        case .adam:
            Kernels.adam(parameters, gradients, moment1!, moment2!, count: count,
                         learningRate: config.learningRate, beta1: config.beta1, beta2: config.beta2,
                         correction1: 1 / (1 - powf(config.beta1, Float(t))),
                         correction2: 1 / (1 - powf(config.beta2, Float(t))),
                         epsilon: config.epsilon, weightDecay: config.weightDecay)
        }
    }
}
