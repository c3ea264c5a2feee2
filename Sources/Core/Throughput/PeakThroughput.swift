#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The single-core fp32 peak of this machine, measured: the denominator of model FLOPs
/// utilisation (MFU) and of the `peak` executable's "% of peak".
///
/// The probe runs `runs` rounds of 16 independent chains of 16-wide fused multiply-adds (12 of
/// 8-wide in the portable AVX2 build) and keeps the fastest: a peak is a maximum, not a typical
/// value, and on a shared machine a short run (about 35 µs, 8 MFLOP) that the scheduler leaves
/// alone shows what the core can do.
public enum PeakThroughput {
    /// What the probe runs, e.g. `16 chains of 16-wide`: part of the peak's identity (an AVX2
    /// build has a different peak on the same CPU).
    public static let method = chains + " FMA"

    /// The best FLOP/s of `runs` timed runs on the calling thread's core (a few milliseconds).
    public static func measure(runs: Int = 300) -> Double {
        let iterations = 1 << 14  // 8 MFLOP: about 35 µs, short enough to run between interruptions
        var sink: Float = 0
        var best = 0.0
        _ = fmaChains(1 << 16, 1e-10)
        for _ in 0..<max(1, runs) {
            let start = monotonicSeconds()
            sink += fmaChains(iterations, 1e-10)
            let elapsed = monotonicSeconds() - start
            best = max(best, Double(iterations) * flopsPerRound / elapsed)
        }
        if sink.isNaN { print("") }
        return best
    }

    static func monotonicSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }
}

/// `iterations` rounds of 16 independent 16-wide FMAs (`acc += x·y`): 512 FLOP per round.
///
/// A Zen 4/5 or Ice Lake+ core retires two 512-bit FMAs per cycle with a latency of 4 cycles, so
/// at least 8 chains must be in flight; 16 chains leave margin and still fit the 32 registers
/// with x and y. The accumulators grow by 1e-20 per round, so nothing overflows or goes
/// denormal, and the final sum keeps the loop from being optimised away.
#if PARALLELISMS_AVX2
/// The same with 8-wide vectors and 12 chains (16 registers in AVX2): 192 FLOP per round.
private let flopsPerRound = 192.0
private let chains = "12 chains of 8-wide"
@inline(never)
private func fmaChains(_ iterations: Int, _ x: Float) -> Float {
    typealias V = SIMD8<Float>
    let a = V(repeating: x), b = V(repeating: 1e-10)
    var c0 = V(), c1 = V(), c2 = V(), c3 = V(), c4 = V(), c5 = V(), c6 = V(), c7 = V()
    var c8 = V(), c9 = V(), c10 = V(), c11 = V()
    for _ in 0..<iterations {
        c0.addProduct(a, b); c1.addProduct(a, b); c2.addProduct(a, b); c3.addProduct(a, b)
        c4.addProduct(a, b); c5.addProduct(a, b); c6.addProduct(a, b); c7.addProduct(a, b)
        c8.addProduct(a, b); c9.addProduct(a, b); c10.addProduct(a, b); c11.addProduct(a, b)
    }
    let s = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) + ((c8 + c9) + (c10 + c11))
    return s.sum()
}
#else
private let flopsPerRound = 512.0
private let chains = "16 chains of 16-wide"
@inline(never)
private func fmaChains(_ iterations: Int, _ x: Float) -> Float {
    typealias V = SIMD16<Float>
    let a = V(repeating: x), b = V(repeating: 1e-10)
    var c0 = V(), c1 = V(), c2 = V(), c3 = V(), c4 = V(), c5 = V(), c6 = V(), c7 = V()
    var c8 = V(), c9 = V(), c10 = V(), c11 = V(), c12 = V(), c13 = V(), c14 = V(), c15 = V()
    for _ in 0..<iterations {
        c0.addProduct(a, b); c1.addProduct(a, b); c2.addProduct(a, b); c3.addProduct(a, b)
        c4.addProduct(a, b); c5.addProduct(a, b); c6.addProduct(a, b); c7.addProduct(a, b)
        c8.addProduct(a, b); c9.addProduct(a, b); c10.addProduct(a, b); c11.addProduct(a, b)
        c12.addProduct(a, b); c13.addProduct(a, b); c14.addProduct(a, b); c15.addProduct(a, b)
    }
    let s = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) + ((c8 + c9) + (c10 + c11)) + ((c12 + c13) + (c14 + c15))
    return s.sum()
}
#endif
