import Foundation
import XCTest
@testable import Distributed

/// Every blocking operation a `Communicator` offers is watched: while it waits for a peer that
/// has not arrived, the watchdog's record names it — which is all the watchdog needs to end the
/// job after `--timeout` (WatchdogTests shows the ending with real stalled jobs, ZeRO-2 among
/// them). Without the record a stalled peer leaves the rank waiting for ever, as the uneven
/// reduce-scatter of ZeRO-2 once did.
///
/// On 2 ranks, one operation after another: rank 1 arrives 150 ms late, and meanwhile a thread
/// of rank 0 samples the watchdog's record (it never calls MPI) and keeps every operation it
/// saw. Rank 0 must have been seen waiting in the operation it called. Blocking point-to-point
/// sends are 1 MiB, above any eager limit, so that they really wait for their receiver.
/// (`MPI_Finalize`, the last call of all, goes through the same ``MPICall/watched(_:_:_:)``.)
final class WatchedCallsTests: XCTestCase {
    /// Reads the watchdog's record on a thread of its own until told to stop.
    final class Sampler: @unchecked Sendable {
        private let lock = NSLock()
        private var seen = Set<UInt32>()
        private var stopped = false

        func start() {
            Thread.detachNewThread { [self] in
                while !lock.withLock({ stopped }) {
                    let record = UInt32(truncatingIfNeeded: Watchdog.words[0])
                    if record != 0 { lock.withLock { _ = seen.insert(WatchedCall(bits: record).operation.rawValue) } }
                    usleep(200)
                }
            }
        }

        func stop() -> Set<WatchedOperation> {
            lock.withLock {
                stopped = true
                return Set(seen.compactMap(WatchedOperation.init(rawValue:)))
            }
        }
    }

    func testEveryBlockingOperationIsWatchedWhileItWaits() {
        guard MPITestLauncher.runUnderMPI(ranks: 2, test: self) else { return }
        let world = MPI.initialize()
        let rank = world.rank, peer = 1 - rank
        let n = 1 << 18  // 1 MiB of floats
        let a = UnsafeMutablePointer<Float>.allocate(capacity: 2 * n), b = UnsafeMutablePointer<Float>.allocate(capacity: 2 * n)
        a.initialize(repeating: 1, count: 2 * n)
        b.initialize(repeating: 0, count: 2 * n)
        // Uneven reduce-scatter blocks (3 and 5 floats); all-to-all-v blocks of 4 at offsets 0 and 8.
        let counts = UnsafeMutablePointer<Int32>.allocate(capacity: 2), blocks = UnsafeMutablePointer<Int32>.allocate(capacity: 2)
        let offsets = UnsafeMutablePointer<Int32>.allocate(capacity: 2)
        counts.initialize(from: [3, 5], count: 2)
        blocks.initialize(from: [4, 4], count: 2)
        offsets.initialize(from: [0, 8], count: 2)
        var missed: [String] = []

        /// Runs `body` on both ranks, rank 1 late, and checks rank 0 was seen in `operation`.
        func check(_ name: String, _ operation: WatchedOperation, _ body: () -> Void) {
            world.barrier()
            let sampler = Sampler()
            if rank == 0 { sampler.start() } else { usleep(150_000) }
            body()
            let seen = sampler.stop()
            if rank == 0 && !seen.contains(operation) { missed.append("\(name) (saw \(seen.map(\.name).sorted()))") }
        }

        check("barrier", .barrier) { world.barrier() }
        check("allreduceSum", .allreduce) { world.allreduceSum(a, count: 16) }
        check("allreduceMax", .allreduce) { world.allreduceMax(a, count: 16) }
        check("allgather", .allgather) { world.allgather(a, count: 8, into: b) }
        check("allgather in place", .allgather) { world.allgather(UnsafePointer(b + rank * 8), count: 8, into: b) }
        check("broadcast", .broadcast) { world.broadcast(a, count: 16, root: 1) }
        check("send / receive", rank == 0 ? .send : .receive) {
            if rank == 0 { world.send(a, count: n, to: peer, tag: .benchmark) } else {
                world.receive(b, count: n, from: peer, tag: .benchmark)
            }
        }
        check("receive / send", .receive) {
            if rank == 0 { world.receive(b, count: n, from: peer, tag: .benchmark) } else {
                world.send(a, count: n, to: peer, tag: .benchmark)
            }
        }
        check("startSend then wait", .send) {
            if rank == 0 {
                var request = world.startSend(a, count: n, to: peer, tag: .benchmark)
                request.wait()
            } else {
                world.receive(b, count: n, from: peer, tag: .benchmark)
            }
        }
        check("startAllreduceSum then wait", .allreduce) {
            var request = world.startAllreduceSum(a, count: 16)
            request.wait()
        }
        check("startAllreduceMax then wait", .allreduce) {
            let flags = UnsafeMutablePointer<Int32>.allocate(capacity: 4)
            flags.initialize(repeating: 1, count: 4)
            var request = world.startAllreduceMax(flags, count: 4)
            request.wait()
            flags.deallocate()
        }
        check("reduceScatterSum (MPI)", .reduceScatter) { world.reduceScatterSum(a, into: b, count: 8, algorithm: .mpi) }
        check("reduceScatterSum (ring)", .ringExchange) { world.reduceScatterSum(a, into: b, count: 8, algorithm: .ring) }
        check("reduceScatterSum (uneven counts, ZeRO-2)", .reduceScatter) { world.reduceScatterSum(a, into: b, counts: counts) }
        check("allToAll", .allToAll) { world.allToAll(a, count: 4, into: b) }
        check("allToAllV", .allToAll) {
            world.allToAllV(a, sendCounts: blocks, sendOffsets: offsets, into: b, receiveCounts: blocks, receiveOffsets: offsets)
        }
        check("split", .split) { _ = world.split(color: 0, key: rank, axis: "test") }

        XCTAssertEqual(missed, [], "operations that waited unwatched")
        for pointer in [a, b] { pointer.deallocate() }
        for pointer in [counts, blocks, offsets] { pointer.deallocate() }
    }
}
