import Foundation
import XCTest

/// `train_ep --ep E'`: the same model as `train` (per-step loss and gradient norm, the gradients
/// after one step, the parameters after one and five), for E' = N and E' < N, K = 1 and 2, with
/// and without a capacity factor; the all-to-all bytes the ledger counts against the rows the
/// routing sends; checkpoints; and the bad layouts refused with one line.
final class ExpertParallelTests: XCTestCase {
    static let data = try! SmallData.write()
    static let flags = ["--data", data, "--val-batches", "2", "--samples", "0", "--log-every", "1000"]

    func train(_ extra: [String], np: Int? = nil, executable: String = "train_ep") throws -> (Launch.Outcome, Metrics?) {
        try Launch.runWithMetrics(executable, np: np, Self.flags + extra, timeout: 180)
    }

    /// E' = N = 2: each rank holds half the experts and the group is the whole world; K = 1 and 2,
    /// dropless and with a capacity factor. Also the aux loss and the load each step reports: the
    /// whole batch's, as train's.
    func testOneGroupOfTwoMatchesTrain() throws {
        for common in [["--experts", "4", "--top-k", "2"], ["--experts", "4", "--top-k", "2", "--capacity-factor", "0.5"],
                       ["--experts", "4", "--top-k", "1", "--layers", "2"],
                       ["--experts", "4", "--top-k", "1", "--capacity-factor", "1", "--layers", "2"]] {
            try Equivalence.check("train_ep", np: 2, common, extra: ["--ep", "2"], data: Self.data, steps: 300)
        }
        try Equivalence.checkExpertStatistics("train_ep", np: 2, Self.flags + ["--experts", "4", "--layers", "2"], extra: ["--ep", "2"])
    }

    /// E' = 2 < N = 4: two groups, each expert held twice (its gradient summed over `replicate`).
    func testTwoGroupsOfTwoMatchTrain() throws {
        for common in [["--experts", "4", "--top-k", "2"], ["--experts", "4", "--top-k", "2", "--capacity-factor", "0.5"],
                       ["--experts", "6", "--top-k", "1", "--layers", "2"],
                       ["--experts", "6", "--top-k", "1", "--capacity-factor", "1", "--layers", "2"]] {
            try Equivalence.check("train_ep", np: 4, common, extra: ["--ep", "2"], data: Self.data, steps: 300)
        }
    }

    /// With K = E every row goes to every expert, so the routing is known without running the
    /// model: a rank's kept rows are its rows of the global batch below the capacity (all of
    /// them when dropless). Rank r sends each kept row to the m = E/E' experts of every other
    /// rank of its group and receives theirs; per block and step the all-to-all-v moves
    /// 4·(s + r)·(in + out) bytes (in out and out back forward, out out and in back backward) in 4
    /// calls, and the counts' all-to-all 4·(E'−1)·m bytes in 1.
    func testLedgerCountsTheRowsTheRoutingSends() throws {
        let steps = 10, hidden = 64, flat = 16 * 16
        for (np, ep, experts, capacity, layers) in [(2, 2, 4, nil as String?, 2), (4, 2, 4, "0.5", 1), (4, 4, 4, nil, 1)] {
            var args = ["--steps", "\(steps)", "--ep", "\(ep)", "--experts", "\(experts)", "--top-k", "\(experts)", "--layers", "\(layers)"]
            if let capacity { args += ["--capacity-factor", capacity] }
            let (run, metrics) = try train(args, np: np)
            XCTAssertEqual(run.status, 0, run.stderr)
            let perRank = try XCTUnwrap(metrics?.final?["comm_per_rank"] as? [[String: [String: Any]]], "\(args)")
            XCTAssertEqual(perRank.count, np)
            let batch = 32, rows = batch / np, m = experts / ep
            let cap = capacity.map { Int((Double($0)! * Double(batch * experts) / Double(experts)).rounded(.up)) } ?? batch
            func kept(_ rank: Int) -> Int { (rank * rows ..< (rank + 1) * rows).filter { $0 < cap }.count }
            let widths = (1...layers).map { ($0 == 1 ? flat : hidden) + hidden }.reduce(0, +)
            for rank in 0..<np {
                let group = (rank / ep * ep ..< rank / ep * ep + ep).filter { $0 != rank }
                let sent = kept(rank) * m * group.count, received = group.map { kept($0) * m }.reduce(0, +)
                let label = "rank \(rank) of \(np), --ep \(ep), \(args)"
                XCTAssertEqual(perRank[rank]["all_to_all_v"]?["bytes"] as? Int, steps * 4 * (sent + received) * widths, label)
                XCTAssertEqual(perRank[rank]["all_to_all_v"]?["calls"] as? Int, steps * 4 * layers, label)
                XCTAssertEqual(perRank[rank]["all_to_all"]?["bytes"] as? Int, steps * layers * 4 * (ep - 1) * m, label)
                XCTAssertEqual(perRank[rank]["all_to_all"]?["calls"] as? Int, steps * layers, label)
            }
        }
    }

    /// An uneven routing known in advance: from a model whose first router is zero, every
    /// probability is 1/E, so every row picks experts 0 … K−1 (ties go to the lower index), and
    /// with a capacity each of them keeps the first ⌈C·B·K/E⌉ rows of the batch. One step (the
    /// update moves the router): rank q sends each kept assignment of its rows to the rank of
    /// its group holding the expert, so ranks differ in what they send and receive.
    func testLedgerCountsAnUnevenRouting() throws {
        let dir = try Launch.temporaryDirectory()
        let file = dir.appendingPathComponent("m.safetensors").path, zeroed = dir.appendingPathComponent("z.safetensors").path
        let (exported, _) = try train(["--experts", "4", "--top-k", "2", "--steps", "1", "--export", file], executable: "train")
        XCTAssertEqual(exported.status, 0, exported.stderr)
        let model = try SafeTensorsFile(path: file)
        let router = try XCTUnwrap(model.entries.first { $0.name == "fc1.router.weight" })
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        for i in 8 + model.headerLength + router.begin ..< 8 + model.headerLength + router.end { bytes[i] = 0 }
        try Data(bytes).write(to: URL(fileURLWithPath: zeroed))
        let experts = 4, k = 2, batch = 32, width = 16 * 16 + 64
        for (np, ep, capacity) in [(4, 4, nil as Double?), (4, 4, 1.5), (4, 2, nil), (2, 2, 1.5)] {
            var args = ["--experts", "\(experts)", "--top-k", "\(k)", "--ep", "\(ep)", "--steps", "1", "--init-from", zeroed]
            if let capacity { args += ["--capacity-factor", "\(capacity)"] }
            let (run, metrics) = try train(args, np: np)
            XCTAssertEqual(run.status, 0, run.stderr)
            let perRank = try XCTUnwrap(metrics?.final?["comm_per_rank"] as? [[String: [String: Any]]], "\(args)")
            let rows = batch / np, m = experts / ep
            let cap = capacity.map { Int(($0 * Double(batch * k) / Double(experts)).rounded(.up)) } ?? batch
            var sent = [Int](repeating: 0, count: np), received = sent
            for q in 0..<np {
                for row in q * rows ..< (q + 1) * rows where row < cap {
                    for x in 0..<k {
                        let owner = q / ep * ep + x / m
                        if owner != q { sent[q] += 1; received[owner] += 1 }
                    }
                }
            }
            for q in 0..<np {
                XCTAssertEqual(perRank[q]["all_to_all_v"]?["bytes"] as? Int, 4 * (sent[q] + received[q]) * width,
                               "rank \(q): sends \(sent[q]), receives \(received[q]) rows; \(args)")
                XCTAssertEqual(perRank[q]["all_to_all_v"]?["calls"] as? Int, 4, "rank \(q), \(args)")
            }
        }
    }

    /// A train_ep checkpoint resumes bit-identically in train_ep, continues in train as train's
    /// own run does, and every replica (dense floats on all ranks, experts on their groups) agrees.
    func testCheckpointsResumeAndReplicasAgree() throws {
        let flags = ["--experts", "4", "--top-k", "2", "--optimizer", "adam", "--lr", "0.005", "--layers", "2", "--ep", "2"]
        let (wholeRun, whole) = try train(flags + ["--steps", "60", "--check-replicas"], np: 4)
        XCTAssertEqual(wholeRun.status, 0, wholeRun.stderr)
        XCTAssertTrue(wholeRun.stdout.contains("all bit-identical"), wholeRun.stdout)
        let dir = try Launch.temporaryDirectory().path
        let (firstRun, _) = try train(flags + ["--steps", "40", "--checkpoint-dir", dir], np: 4)
        XCTAssertEqual(firstRun.status, 0, firstRun.stderr)
        let (run, rest) = try train(flags + ["--steps", "60", "--resume", dir], np: 4)
        XCTAssertEqual(run.status, 0, run.stderr)
        let full = try XCTUnwrap(whole).losses
        XCTAssertEqual(try XCTUnwrap(rest).losses.map(\.bitPattern), full[40..<60].map(\.bitPattern))

        let single = Array(flags.dropLast(2))
        let (_, own) = try train(single + ["--steps", "60"], executable: "train")
        let (continuedRun, continued) = try train(single + ["--steps", "60", "--resume", dir], executable: "train")
        XCTAssertEqual(continuedRun.status, 0, continuedRun.stderr)
        let theirs = try XCTUnwrap(own).losses, ours = try XCTUnwrap(continued).losses
        XCTAssertEqual(ours.count, 20)
        for (i, (a, b)) in zip(ours, theirs[40...]).enumerated() {
            XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "train_ep -np 4 --ep 2 → train at step \(40 + i)")
        }
    }

    func testBadLayoutsFailWithOneLine() throws {
        let cases: [(String, Int, [String], String)] = [
            ("train_ep", 2, ["--experts", "4", "--ep", "3"], "--experts 4 is not divisible by --ep 3"),
            ("train_ep", 3, ["--experts", "4", "--ep", "2", "--batch-size", "30"], "--ep 2 does not divide the 3 ranks"),
            ("train_ep", 2, ["--ep", "2"], "--ep needs --experts"),
            ("train_ep", 2, ["--experts", "2", "--top-k", "3", "--ep", "2"], "--top-k must be between 1 and --experts 2 (got 3)"),
            ("train_ep", 2, ["--experts", "4", "--ep", "0"], "--ep must be a positive integer (got 0)"),
            ("train_ep", 4, ["--experts", "4", "--ep", "2", "--batch-size", "30"], "--batch-size 30 is not divisible by the 4 data-parallel ranks"),
            ("train_fsdp", 2, ["--experts", "4"], "--experts is not supported by train_fsdp: use train, train_dp, train_ep, train_pp or train_3d"),
        ]
        for (executable, np, args, expected) in cases {
            try Equivalence.expectError(executable, np: np, ["--data", Self.data, "--steps", "2"] + args, expected)
        }
    }
}
