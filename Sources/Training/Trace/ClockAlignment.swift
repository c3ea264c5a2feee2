import Distributed
import Tracing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How each rank's clock (`CLOCK_MONOTONIC`, ``Trace/monotonicNanoseconds()``) relates to rank 0's, for putting
/// every rank's events on one time axis.
///
/// Processes on one host read the same monotonic clock, so their offset is 0 by construction.
/// Across hosts, the offset is estimated by ping-pong with rank 0 (Cristian's method): rank `r`
/// reads `t₁`, sends it, rank 0 answers with its clock `t₀`, rank `r` reads `t₃` on arrival; if
/// the two legs take equally long, rank 0 read `t₀` when rank `r`'s clock showed `(t₁ + t₃)/2`,
/// so `offset = t₀ − (t₁ + t₃)/2`, uncertain by at most half the round trip `t₃ − t₁`. Of
/// ``pings`` exchanges the one with the shortest round trip is kept. The exchange runs before the
/// traced steps (its estimate is applied to a rank on another host) and again after them: the
/// second estimate, minus the offset applied, is the clocks' residual skew at the end of the
/// window (drift, plus measurement error for ranks on rank 0's host, whose true offset is 0).
struct ClockAlignment {
    static let pings = 8

    /// Per world rank: the estimated offset to rank 0's clock (ns) and its round trip (ns).
    let offsets: [Int64]
    let roundTrips: [Int64]
    /// Per world rank: whether it runs on rank 0's host (then its applied offset is 0).
    let sharesHost: [Bool]

    /// Collective over `world`: ranks take turns with rank 0; the result is complete on every rank.
    init(world: Communicator) {
        var best = (offset: Int64(0), roundTrip: Int64.max)
        var message: [Int64] = [0]
        for r in 1..<max(world.size, 1) {
            for _ in 0..<Self.pings {
                if world.rank == 0 {
                    world.receive(&message, count: 1, from: r, tag: .clockSync)
                    message[0] = Int64(Trace.monotonicNanoseconds())
                    world.send(message, count: 1, to: r, tag: .clockSync)
                } else if world.rank == r {
                    let t1 = Int64(Trace.monotonicNanoseconds())
                    message[0] = t1
                    world.send(message, count: 1, to: 0, tag: .clockSync)
                    world.receive(&message, count: 1, from: 0, tag: .clockSync)
                    let t3 = Int64(Trace.monotonicNanoseconds())
                    if t3 - t1 < best.roundTrip { best = (message[0] - (t1 + t3) / 2, t3 - t1) }
                }
            }
        }
        if world.rank == 0 { best = (0, 0) }
        let mine: [Int64] = [best.offset, best.roundTrip, Self.hostHash()]
        let all = LedgerReport.allgather(mine, world)
        offsets = (0..<world.size).map { all[3 * $0] }
        roundTrips = (0..<world.size).map { all[3 * $0 + 1] }
        sharesHost = (0..<world.size).map { all[3 * $0 + 2] == all[2] }
    }

    /// The offset added to rank `r`'s clock: 0 on rank 0's host, the estimate elsewhere.
    func applied(_ r: Int) -> Int64 { sharesHost[r] ? 0 : offsets[r] }

    /// This host's name.
    static func hostName() -> String {
        var name = [UInt8](repeating: 0, count: 256)
        _ = name.withUnsafeMutableBufferPointer { gethostname($0.baseAddress!, 255) }
        return String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// FNV-1a of the host name: equal on the ranks of one host.
    static func hostHash() -> Int64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in hostName().utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return Int64(bitPattern: h)
    }
}
