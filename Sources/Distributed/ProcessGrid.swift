/// The world arranged as a tp × dp × pp grid, tensor-parallel ranks varying fastest (as in ml.c):
///
///     tpRank = r % tp,   dpRank = (r / tp) % dp,   ppRank = r / (tp · dp)
///
/// Ranks that share a stage and a data shard form a tensor-parallel group (neighbours in rank
/// order, so on one host their frequent activation allreduces stay in shared memory); ranks that
/// share a tensor slice and a stage form a data-parallel group; ranks that share a tensor slice and
/// a data shard form a pipeline. Every axis is a real communicator, even of size 1.
public struct ProcessGrid: Sendable {
    public let world: Communicator
    public let tp: Communicator
    public let dp: Communicator
    public let pp: Communicator

    public var tpSize: Int { tp.size }
    public var dpSize: Int { dp.size }
    public var ppSize: Int { pp.size }

    /// Grid coordinates of a world rank.
    public static func coordinates(rank r: Int, tp: Int, dp: Int) -> (tp: Int, dp: Int, pp: Int) {
        (r % tp, (r / tp) % dp, r / (tp * dp))
    }

    /// Splits `world` into the three axes. The caller has checked that tp·dp·pp == world.size.
    public init(world: Communicator, tp tpSize: Int, dp dpSize: Int, pp ppSize: Int) {
        precondition(tpSize * dpSize * ppSize == world.size, "grid \(tpSize)×\(dpSize)×\(ppSize) ≠ world \(world.size)")
        self.world = world
        let (t, d, p) = Self.coordinates(rank: world.rank, tp: tpSize, dp: dpSize)
        tp = world.split(color: p * dpSize + d, key: t)
        dp = world.split(color: p * tpSize + t, key: d)
        pp = world.split(color: d * tpSize + t, key: p)
    }
}
