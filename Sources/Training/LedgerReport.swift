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
    /// Per rank: `(calls, bytes, seconds)` per kind, flattened.
    let comm: [[Double]]
    /// Per rank: bytes per memory category.
    let memory: [[Int]]

    /// Collective: every rank calls it; the result is complete on rank 0.
    init(world: Communicator, steps: Int) {
        self.steps = steps
        let kinds = CommunicationKind.allCases.count, categories = MemoryCategory.allCases.count
        var mine = Ledger.snapshot() + MemoryLedger.snapshot().map(Double.init)
        var all = [Double](repeating: 0, count: world.size * mine.count)
        let width = mine.count
        mine.withUnsafeMutableBufferPointer { m in
            all.withUnsafeMutableBufferPointer { a in world.allgather(m.baseAddress!, count: width, into: a.baseAddress!) }
        }
        comm = (0..<world.size).map { Array(all[$0 * width ..< $0 * width + kinds * 3]) }
        memory = (0..<world.size).map { r in (0..<categories).map { Int(all[r * width + kinds * 3 + $0]) } }
    }

    static func commJSON(_ counters: [Double]) -> String {
        let items = CommunicationKind.allCases.map { kind in
            let c = counters[kind.rawValue * 3 ..< kind.rawValue * 3 + 3].map { $0 }
            return "\"\(kind.name)\":{\"calls\":\(Int(c[0])),\"bytes\":\(Int(c[1])),\"seconds\":\(c[2])}"
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
            let i = kind.rawValue * 3
            let total = comm.reduce(0) { $0 + $1[i + 1] }
            if comm.allSatisfy({ $0[i] == 0 }) { continue }
            lines.append("  " + pad(kind.name, 14) + pad(format(Float(comm[0][i] * perStep), 2), 7, left: true)
                         + pad(String(Int((comm[0][i + 1] * perStep).rounded())), 17, left: true)
                         + pad(String(Int((total * perStep).rounded())), 20, left: true)
                         + pad(format(Float(comm[0][i + 2] * perStep * 1e6), 1), 21, left: true))
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
