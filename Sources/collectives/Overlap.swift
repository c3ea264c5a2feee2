import Core
import Dispatch
import Distributed

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// `mpirun -np N collectives --overlap`: can an allreduce run while the rank computes, on this
// machine? The two ways the speed issue names, measured against not overlapping at all:
//
// - **sequential**: compute, then a blocking `MPI_Allreduce` (what a layout does without overlap);
// - **polling**: start `MPI_Iallreduce`, compute in pieces and call `MPI_Test` between them (OpenMPI
//   moves a non-blocking collective only inside MPI calls), then wait;
// - **thread**: a communication thread runs the blocking `MPI_Allreduce` while the main thread
//   computes (`MPI_THREAD_SERIALIZED`: the main thread makes no MPI call until the thread is done).
//
// The compute is a run of small matrix products (the kernels backward runs), as many pieces as take
// about as long as the allreduce alone, so perfect overlap would hide all of it. Per payload it
// prints the time of each way and the share of the allreduce it hid:
//
//     hidden = (sequential − way) / allreduce alone

/// A thread that runs one job at a time for the main thread: `post` hands it over, `wait` blocks
/// until it is done. Hand-over by two semaphores (futexes): the thread sleeps while idle, and
/// nothing is allocated per job.
final class CommunicationThread: @unchecked Sendable {
    private let work = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private var job: () -> Void = {}
    private var running = true
    private var thread = pthread_t()

    init() {
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { context in
            let owner = Unmanaged<CommunicationThread>.fromOpaque(context!).takeRetainedValue()
            owner.loop()
            return nil
        }, box)
    }

    private func loop() {
        while true {
            work.wait()
            if !running { return }
            job()
            done.signal()
        }
    }

    /// Starts `job` on the thread. The caller makes no MPI call until ``wait()`` returns.
    func post(_ job: @escaping () -> Void) {
        self.job = job
        work.signal()
    }

    func wait() { done.wait() }

    /// Ends the thread (after the last job has been waited for).
    func stop() {
        running = false
        work.signal()
        pthread_join(thread, nil)
    }
}

func runOverlap(_ world: Communicator, maxBytes: Int, secondsPerPoint: Double) {
    let sizes = [74_540, 1 << 20, 4_330_000, 16_900_000].filter { $0 <= maxBytes }
    let capacity = (sizes.last ?? 4) / 4
    let buffer = UnsafeMutablePointer<Float>.allocate(capacity: capacity)
    buffer.initialize(repeating: 1, count: capacity)
    // One compute piece: [16 × 256] · [256 × 256], about 2 MFLOP (the granularity of the polling).
    let (m, n, k) = (16, 256, 256)
    let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k), b = UnsafeMutablePointer<Float>.allocate(capacity: k * n)
    let c = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
    a.initialize(repeating: 0.5, count: m * k)
    b.initialize(repeating: 0.25, count: k * n)
    c.initialize(repeating: 0, count: m * n)
    func piece() { Kernels.gemm(m: m, n: n, k: k, a: a, rowStride: k, depthStride: 1, b: b, ldb: n, c: c, ldc: n) }
    let helper = CommunicationThread()
    func measure(_ body: () -> Void) -> Double { medianSeconds(world, perPoint: secondsPerPoint, body) }

    let pieceSeconds = measure(piece)
    if world.rank == 0 {
        print("overlap: \(world.size) ranks; an allreduce of the payload against compute in pieces of \(fixed(pieceSeconds * 1e6, 1)) µs "
              + "(\(m)×\(k)·\(k)×\(n) products), as many as take about as long as the allreduce; µs per iteration, median of batches")
        print(pad("bytes", 10) + pad("allreduce", 11) + pad("pieces", 8) + pad("compute", 10) + pad("sequential", 12)
              + pad("polling", 10) + pad("thread", 10) + pad("hidden: polling", 17) + "thread")
    }
    for bytes in sizes {
        let count = bytes / 4
        let allreduce = measure { world.allreduceSum(buffer, count: count) }
        let pieces = max(1, Int((allreduce / pieceSeconds).rounded()))
        let compute = measure { for _ in 0..<pieces { piece() } }
        let sequential = measure {
            for _ in 0..<pieces { piece() }
            world.allreduceSum(buffer, count: count)
        }
        let polling = measure {
            var request = world.startAllreduceSum(buffer, count: count)
            for _ in 0..<pieces {
                piece()
                _ = request.test()
            }
            request.wait()
        }
        let threaded = measure {
            helper.post { world.allreduceSum(buffer, count: count) }
            for _ in 0..<pieces { piece() }
            helper.wait()
        }
        if world.rank == 0 {
            func hidden(_ t: Double) -> String { fixed(100 * (sequential - t) / allreduce, 0) + "%" }
            print(pad(String(bytes), 10) + pad(fixed(allreduce * 1e6, 1), 11) + pad(String(pieces), 8)
                  + pad(fixed(compute * 1e6, 1), 10) + pad(fixed(sequential * 1e6, 1), 12) + pad(fixed(polling * 1e6, 1), 10)
                  + pad(fixed(threaded * 1e6, 1), 10) + pad(hidden(polling), 17) + hidden(threaded))
        }
    }
    helper.stop()
    buffer.deallocate()
    a.deallocate()
    b.deallocate()
    c.deallocate()
}
