import Distributed

/// Seconds per call of `body` on `world`: the median over batches of calls run back to back after
/// a barrier, each batch timed as the slowest rank's. The batch grows until it takes about 1 ms
/// (the same count on every rank); batches are timed for `perPoint` seconds (5 to 101 of them).
func medianSeconds(_ world: Communicator, perPoint: Double, _ body: () -> Void) -> Double {
    body()
    var calls = 1
    while true {
        world.barrier()
        let start = MPI.time()
        for _ in 0..<calls { body() }
        let elapsed = world.max(MPI.time() - start)
        if elapsed > 1e-3 || calls >= 1 << 16 { break }
        calls *= 2
    }
    var times: [Double] = []
    let started = MPI.time()
    while times.count < 5 || (world.max(MPI.time() - started) < perPoint && times.count < 101) {
        world.barrier()
        let start = MPI.time()
        for _ in 0..<calls { body() }
        times.append(world.max(MPI.time() - start) / Double(calls))
    }
    times.sort()
    return times[times.count / 2]
}
