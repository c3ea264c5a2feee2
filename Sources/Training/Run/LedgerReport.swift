import Core
import Distributed

/// The communication and memory ledger of every rank, collected on rank 0 at the end of training.
///
/// Communication comes from `Ledger` (every call in `Distributed` during the training steps);
/// memory from `MemoryLedger` (the model buffers allocated when training ends). Both are per
/// rank; rank 0 prints them as a table and writes them into the final `--metrics` record:
///
///     "comm":   rank 0's totals over the training steps, {"allreduce": {"calls", "bytes", "seconds"}, …}
///     "memory": rank 0's bytes, {"parameters", "gradients", "optimizer", "activations", "buffers"}
///     "comm_per_rank", "memory_per_rank": the same for every rank, in rank order
///     "train_steps": the number of steps the comm figures cover
struct LedgerReport {
    let steps: Int
    /// Per rank: one counter per communication kind, in `CommunicationKind` order.
    let comm: [[CommunicationCounter]]
    /// Per rank: bytes per memory category.
    let memory: [[Int]]

    /// Collective: every rank calls it; the result is complete on rank 0.
    ///
    /// Two allgathers: the integers (calls and bytes per kind, then bytes per memory category) as
    /// Int64, exactly, and the seconds per kind as Double.
    init(world: Communicator, steps: Int) {
        self.steps = steps
        let kinds = CommunicationKind.allCases.count, categories = MemoryCategory.allCases.count
        let counters = Ledger.snapshot()
        let integers = counters.flatMap { [Int64($0.calls), Int64($0.bytes)] } + MemoryLedger.snapshot().map(Int64.init)
        let allIntegers = Self.allgather(integers, world)
        let allSeconds = Self.allgather(counters.map(\.seconds), world)
        let width = integers.count
        comm = (0..<world.size).map { r in
            (0..<kinds).map { k in
                CommunicationCounter(calls: Int(allIntegers[r * width + 2 * k]), bytes: Int(allIntegers[r * width + 2 * k + 1]),
                                     seconds: allSeconds[r * kinds + k])
            }
        }
        memory = (0..<world.size).map { r in (0..<categories).map { Int(allIntegers[r * width + 2 * kinds + $0]) } }
    }

    /// A report of given figures (for tests).
    init(steps: Int, comm: [[CommunicationCounter]], memory: [[Int]]) {
        self.steps = steps
        self.comm = comm
        self.memory = memory
    }

    /// Every rank's `values`, in rank order, on every rank.
    static func allgather<T: MPIScalar & Numeric>(_ values: [T], _ world: Communicator) -> [T] {
        var all = [T](repeating: 0, count: world.size * values.count)
        values.withUnsafeBufferPointer { m in
            all.withUnsafeMutableBufferPointer { a in world.allgather(m.baseAddress!, count: m.count, into: a.baseAddress!) }
        }
        return all
    }

    static func commJSON(_ counters: [CommunicationCounter]) -> String {
        let items = CommunicationKind.allCases.map { kind in
            let c = counters[kind.rawValue]
            return "\"\(kind.name)\":{\"calls\":\(c.calls),\"bytes\":\(c.bytes),\"seconds\":\(c.seconds)}"
        }
        return "{" + items.joined(separator: ",") + "}"
    }

    static func memoryJSON(_ bytes: [Int]) -> String {
        "{" + MemoryCategory.allCases.map { "\"\($0.name)\":\(bytes[$0.rawValue])" }.joined(separator: ",") + "}"
    }

    /// The keys added to the final metrics record.
    var json: String {
        "\"train_steps\":\(steps),\"comm\":\(Self.commJSON(comm[0])),\"memory\":\(Self.memoryJSON(memory[0])),"
            + "\"comm_per_rank\":[\(comm.map(Self.commJSON).joined(separator: ","))],"
            + "\"memory_per_rank\":[\(memory.map(Self.memoryJSON).joined(separator: ","))]"
    }

    /// A compact table: communication per step (rank 0 and the sum over ranks), then memory per rank.
    var table: String {
        let perStep = 1 / Double(max(1, steps))
        var lines = ["communication per training step (rank 0 | all ranks), over \(steps) steps:",
                     "  kind            calls   bytes (rank 0)   bytes (all ranks)   µs in MPI (rank 0)"]
        for kind in CommunicationKind.allCases {
            let mine = comm[0][kind.rawValue]
            let total = comm.reduce(0) { $0 + $1[kind.rawValue].bytes }
            if comm.allSatisfy({ $0[kind.rawValue].calls == 0 }) { continue }
            lines.append("  " + pad(kind.name, 14) + pad(format(Float(Double(mine.calls) * perStep), 2), 7, left: true)
                         + pad(String(Int((Double(mine.bytes) * perStep).rounded())), 17, left: true)
                         + pad(String(Int((Double(total) * perStep).rounded())), 20, left: true)
                         + pad(format(Float(mine.seconds * perStep * 1e6), 1), 21, left: true))
        }
        if lines.count == 2 { lines.append("  (none: a single rank)") }
        lines.append("memory per rank (bytes):")
        lines.append("  rank" + MemoryCategory.allCases.map { pad($0.name, 13, left: true) }.joined() + pad("total", 12, left: true))
        for (rank, bytes) in memory.enumerated() {
            lines.append("  " + pad(String(rank), 4) + bytes.map { pad(String($0), 13, left: true) }.joined()
                         + pad(String(bytes.reduce(0, +)), 12, left: true))
        }
        return lines.joined(separator: "\n")
    }

    func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - s.count))
        return left ? fill + s : s + fill
    }
}
