/// A small, portable random number generator (SplitMix64, Steele et al. 2014).
///
/// The same seed gives the same sequence on every platform, every compiler and every rank: only
/// 64-bit integer arithmetic is involved. Streams derived with ``init(seed:stream:index:)`` let any
/// rank reproduce, say, the batch of step 1,234 without replaying steps 0…1,233, which is what
/// makes the global batch a pure function of (seed, step).
public struct SplitMix64: RandomNumberGenerator, Sendable, Equatable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// An independent stream for `(seed, stream, index)`: e.g. stream 1 = training batches with
    /// index = step, stream 2 = validation batches, stream 3 = text samples.
    public init(seed: UInt64, stream: UInt64, index: UInt64) {
        var s = SplitMix64(seed: seed)
        s.state ^= Self.mix(stream &* 0xD1B5_4A32_D192_ED03)
        s.state = Self.mix(s.state ^ Self.mix(index &+ 0x9E37_79B9_7F4A_7C15))
        state = s.state
    }

    @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return Self.mix(state)
    }

    /// Uniform integer in `0..<n` without modulo bias (Lemire's multiply-shift with rejection).
    @inline(__always)
    public mutating func below(_ n: Int) -> Int {
        precondition(n > 0)
        let bound = UInt64(n)
        while true {
            let product = next().multipliedFullWidth(by: bound)
            if product.low >= bound || product.low >= (0 &- bound) % bound {
                return Int(product.high)
            }
        }
    }

    /// Uniform float in [0, 1) with 24 random bits.
    @inline(__always)
    public mutating func unit() -> Float {
        Float(next() >> 40) * 0x1p-24
    }

    /// Uniform float in [-bound, bound).
    @inline(__always)
    public mutating func symmetric(_ bound: Float) -> Float {
        (2 * unit() - 1) * bound
    }
}

/// The named streams of one run. Keeping them apart means that, e.g., drawing text samples
/// never shifts which batches training sees.
public enum RandomStream: UInt64, Sendable {
    case initialization = 0
    case trainingBatches = 1
    case validationBatches = 2
    case samples = 3
}
