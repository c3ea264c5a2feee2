import Distributed

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// `mpirun -np N collectives [--max-bytes B] [--seconds S]` (and `--overlap`: Overlap.swift): latency and bandwidth of every
// collective the suite uses, through the `Distributed` API (so with the ledger's bookkeeping and
// the algorithms the layouts really run), over a sweep of sizes, with an α–β fit per collective.
// The input is written just before every call, as in training (a buffer just written costs more
// to send than one sent again unchanged), and the time of that write is subtracted:
//
//     time(bytes) ≈ α + β · bytes        (α: latency, 1/β: bandwidth)
//
// Sizes are payloads as the ledger counts them: an allreduce's or broadcast's buffer, an
// allgather's whole output and a reduce-scatter's whole input (p × the per-rank block), an
// all-to-all's blocks for the other p − 1 ranks, one send/recv message. Each point is the median over batches of calls run back to back after a
// barrier, each batch timed as the slowest rank's. Rank 0 prints the table.

/// `text` left-aligned in `width` columns.
func pad(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(1, width - text.count)) }

/// `x` with `decimals` digits after the point.
func fixed(_ x: Double, _ decimals: Int) -> String {
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let r = (x * scale).rounded() / scale
    var text = String(r)
    if let dot = text.firstIndex(of: ".") {
        let have = text.distance(from: dot, to: text.endIndex) - 1
        if have < decimals { text += String(repeating: "0", count: decimals - have) }
    }
    return text
}

func run() {
    let arguments = Array(CommandLine.arguments.dropFirst())
    let overlap = arguments.contains("--overlap")
    let world = MPI.initialize(threads: overlap ? .serialized : .funneled)
    func option(_ name: String, _ fallback: Double) -> Double {
        guard let i = arguments.firstIndex(of: name), i + 1 < arguments.count, let value = Double(arguments[i + 1]), value > 0 else {
            if arguments.contains(name) { MPI.abort("error: \(name) needs a positive number") }
            return fallback
        }
        return value
    }
    if arguments.contains("--help") {
        if world.rank == 0 { print("usage: mpirun -np N collectives [--overlap] [--max-bytes B (16777216)] [--seconds S per point (0.2)]") }
        MPI.finalize()
        exit(0)
    }
    let maxBytes = Int(option("--max-bytes", 16 * 1024 * 1024))
    let secondsPerPoint = option("--seconds", 0.2)
    let p = world.size
    if overlap {
        Ledger.isRecording = false
        runOverlap(world, maxBytes: maxBytes, secondsPerPoint: secondsPerPoint)
        MPI.finalize()
        exit(0)
    }

    /// Sizes: 4 B, then ×4 up to `maxBytes`, plus the two payloads the README's figures use
    /// (the default model's Ψ floats, 74.5 KB, and the big configuration's, 4.3 MB).
    var sizes = [4]
    while sizes.last! * 4 <= maxBytes { sizes.append(sizes.last! * 4) }
    sizes += [74_540, 4_330_000].filter { $0 <= maxBytes }
    sizes.sort()

    let capacity = (maxBytes / 4 + 64) * max(1, p)
    let a = UnsafeMutablePointer<Float>.allocate(capacity: capacity)
    let b = UnsafeMutablePointer<Float>.allocate(capacity: capacity)
    a.initialize(repeating: 0, count: capacity)
    b.initialize(repeating: 0, count: capacity)

    func measure(_ body: () -> Void) -> Double { medianSeconds(world, perPoint: secondsPerPoint, body) }

    struct Series {
        var name: String
        /// Elements handed to the call for a payload of `bytes`, or nil when the size does not apply.
        var elements: (Int) -> Int?
        /// Elements of `a` the call reads: written before every call, as a training step writes
        /// its gradients or activations just before it sends them.
        var input: (Int) -> Int
        var run: (Int) -> Void
    }

    let peer = world.rank ^ 1
    let blocks = { (bytes: Int) -> Int? in bytes % (4 * p) == 0 ? bytes / (4 * p) : nil }
    var series: [Series] = [
        Series(name: "allreduce (mpi)", elements: { $0 / 4 }, input: { $0 }, run: { world.allreduceSum(a, count: $0) }),
        Series(name: "allgather (mpi)", elements: blocks, input: { $0 },
               run: { world.allgather(UnsafePointer(a), count: $0, into: b) }),
    ]
    for algorithm in ReduceScatterAlgorithm.allCases {
        series.append(Series(name: "reduce-scatter (\(algorithm.rawValue))", elements: blocks, input: { $0 * p },
                             run: { world.reduceScatterSum(a, into: b, count: $0, algorithm: algorithm) }))
    }
    // All-to-all (`train_ep`'s counts and, with per-peer counts, its rows): the payload is what the
    // ledger counts, the bytes a rank sends to the *other* p − 1 ranks ((p − 1) blocks); each rank
    // also copies its own block to itself, which the ledger leaves out.
    if p > 1 {
        series.append(Series(name: "all-to-all (mpi)", elements: { $0 % (4 * (p - 1)) == 0 ? $0 / (4 * (p - 1)) : nil },
                             input: { $0 * p }, run: { world.allToAll(UnsafePointer(a), count: $0, into: b) }))
    }
    series.append(Series(name: "broadcast (mpi)", elements: { $0 / 4 }, input: { $0 }, run: { world.broadcast(a, count: $0, root: 0) }))
    if p % 2 == 0 {
        // Ping-pong between rank pairs (0↔1, 2↔3, …); the time is per message, half the round trip.
        series.append(Series(name: "send/recv (mpi, one way)", elements: { $0 / 4 }, input: { $0 }, run: { n in
            if world.rank % 2 == 0 {
                world.send(UnsafePointer(a), count: n, to: peer, tag: .benchmark)
                world.receive(b, count: n, from: peer, tag: .benchmark)
            } else {
                world.receive(b, count: n, from: peer, tag: .benchmark)
                world.send(UnsafePointer(a), count: n, to: peer, tag: .benchmark)
            }
        }))
    }

    Ledger.isRecording = false
    if world.rank == 0 {
        print("collectives: \(p) rank(s); time per call in µs (payload as the ledger counts it), median of batches")
        print(pad("bytes", 10) + series.map { pad($0.name, 26) }.joined())
    }
    var points = [[(Double, Double)]](repeating: [], count: series.count)
    for bytes in sizes {
        var row = pad(String(bytes), 10)
        for (k, s) in series.enumerated() {
            guard let n = s.elements(bytes), n > 0 else {
                row += pad("—", 26)
                continue
            }
            let touch = s.input(n)
        let writing = measure { a.update(repeating: 1, count: touch) }
        let both = measure {
            a.update(repeating: 1, count: touch)
            s.run(n)
        }
        let seconds = max(0, both - writing) / (s.name.hasPrefix("send/recv") ? 2 : 1)
            points[k].append((Double(bytes), seconds))
            row += pad(fixed(seconds * 1e6, 1), 26)
        }
        if world.rank == 0 { print(row) }
    }

    // α–β fit by least squares of the relative error (weights 1/t²), so small sizes count as
    // much as large ones: latency from the former, bandwidth from the latter.
    if world.rank == 0 {
        print("fit: time ≈ α + bytes / bandwidth (least squares of the relative error over the sizes above)")
        for (k, s) in series.enumerated() where points[k].count >= 2 {
            var sw = 0.0, swb = 0.0, swbb = 0.0, swt = 0.0, swbt = 0.0
            for (bytes, t) in points[k] {
                let w = 1 / (t * t)
                sw += w; swb += w * bytes; swbb += w * bytes * bytes; swt += w * t; swbt += w * bytes * t
            }
            let det = sw * swbb - swb * swb
            let alpha = (swt * swbb - swb * swbt) / det, beta = (sw * swbt - swb * swt) / det
            print("  \(pad(s.name, 26)) α = \(fixed(alpha * 1e6, 2)) µs   bandwidth = \(fixed(1 / beta / 1e9, 2)) GB/s")
        }
    }
    a.deallocate()
    b.deallocate()
    MPI.finalize()
}

run()
