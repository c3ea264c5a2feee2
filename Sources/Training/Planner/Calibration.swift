import Core
import Distributed
import Foundation

/// What the cost model knows of a machine, measured on it (`scripts/plan-check.sh` writes it to
/// `.build/plan-calibration.json`):
///
/// - `compute`: the forward and backward of `train`'s chain at a few batch sizes, as FLOPs per
///   step (6·B·in·out over the Linears) and the rate one rank reached alone on the machine
///   (FLOP/s: the FLOPs over the step time less the update below). Small matrices run far below
///   the machine's peak, so the rate of a rank's share of a step is read off these points by its
///   FLOPs per chain run (linear in log FLOPs between points, the end points beyond them).
/// - `update`: seconds per parameter of the per-step passes over the parameters that do not
///   shrink with the batch (zeroing the gradients and the optimizer's update), per update rule
///   (`peak --model`'s `update_us_*` over its parameter count). A rank pays it for the parameters
///   it updates: all it holds, or its shard under ZeRO.
/// - `collectives`: the α–β fit of `mpirun -np 2 collectives` per kind: `time ≈ α + bytes / bw`
///   for the payload the ledger counts, over shared memory (ranks on one host).
/// - `cores`: the cores the ranks share; more ranks than cores on a host share them.
///
/// Nothing here is guessed: without a file the planner asks for `--flops` (and uses no
/// collective rates it has not measured: it then needs `--link-latency` and `--link-bandwidth`).
public struct Calibration: Codable, Sendable, Equatable {
    public struct ComputePoint: Codable, Sendable, Equatable {
        public var flopsPerStep: Double
        public var flopsPerSecond: Double
        public init(flopsPerStep: Double, flopsPerSecond: Double) {
            self.flopsPerStep = flopsPerStep
            self.flopsPerSecond = flopsPerSecond
        }
        enum CodingKeys: String, CodingKey {
            case flopsPerStep = "flops_per_step", flopsPerSecond = "flops_per_second"
        }
    }

    /// One collective's fit, at `ranks` ranks (the `collectives` run's world).
    public struct Link: Codable, Sendable, Equatable {
        /// Latency per call, µs.
        public var alphaMicroseconds: Double
        /// Payload bytes per second, in GB/s.
        public var gigabytesPerSecond: Double
        public init(alphaMicroseconds: Double, gigabytesPerSecond: Double) {
            self.alphaMicroseconds = alphaMicroseconds
            self.gigabytesPerSecond = gigabytesPerSecond
        }
        enum CodingKeys: String, CodingKey {
            case alphaMicroseconds = "alpha_us", gigabytesPerSecond = "gb_per_s"
        }
    }

    public var cores: Int
    /// The world size of the `collectives` run the fits come from.
    public var ranks: Int
    public var compute: [ComputePoint]
    /// Keyed by ``CommunicationKind/name`` (`allreduce`, `allgather`, `reduce_scatter`,
    /// `broadcast`, `send`).
    public var collectives: [String: Link]
    /// Seconds per updated parameter, keyed by ``OptimizerKind`` (`sgd`, `adam`).
    public var update: [String: Double]

    public init(cores: Int, ranks: Int, compute: [ComputePoint], collectives: [String: Link], update: [String: Double]) {
        self.cores = cores
        self.ranks = ranks
        self.compute = compute
        self.collectives = collectives
        self.update = update
    }

    enum CodingKeys: String, CodingKey {
        case cores, ranks, compute, collectives, update = "update_seconds_per_parameter"
    }

    /// The file in the build directory of the running executable: `.build/plan-calibration.json`
    /// (the first `.build` above it), else `.build/plan-calibration.json` under the current directory.
    public static var defaultPath: String {
        var url = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        while url.path != "/" {
            url.deleteLastPathComponent()
            if url.lastPathComponent == ".build" { return url.appendingPathComponent("plan-calibration.json").path }
        }
        return FileManager.default.currentDirectoryPath + "/.build/plan-calibration.json"
    }

    /// Reads `path`; one-line errors for a missing or malformed file.
    public static func load(path: String) throws(UsageError) -> Calibration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw UsageError("no calibration at \(path): run scripts/plan-check.sh (it measures this machine and writes it), or pass --calibration FILE or --flops")
        }
        let calibration: Calibration
        do {
            calibration = try JSONDecoder().decode(Calibration.self, from: data)
        } catch DecodingError.keyNotFound(let key, _) {
            throw UsageError("the calibration \(path) has no '\(key.stringValue)' (written by an older plan-check?): run scripts/plan-check.sh again")
        } catch {
            throw UsageError("the calibration \(path) is not valid: \("\(error)".split(separator: "\n").joined(separator: " "))")
        }
        try calibration.check(path)
        return calibration
    }

    func check(_ path: String) throws(UsageError) {
        let rates = compute.flatMap { [$0.flopsPerStep, $0.flopsPerSecond] }
            + collectives.values.flatMap { [$0.alphaMicroseconds + 1, $0.gigabytesPerSecond] } + update.values
        if OptimizerKind.allCases.contains(where: { update[$0.rawValue] == nil }) {
            throw UsageError("the calibration \(path) has no update cost for \(OptimizerKind.allCases.map(\.rawValue).filter { update[$0] == nil }.joined(separator: ", ")): run scripts/plan-check.sh again")
        }
        if compute.isEmpty || cores < 1 || ranks < 2 || rates.contains(where: { !($0.isFinite && $0 > 0) }) {
            throw UsageError("the calibration \(path) has no compute points, or a count, rate or update cost that is not positive")
        }
    }

    /// FLOP/s of one rank (alone on its cores) for chain runs of `flops` FLOPs: interpolated in
    /// log FLOPs between the measured points, the nearest end point outside them.
    public func rate(forFlops flops: Double) -> Double {
        let points = compute.sorted { $0.flopsPerStep < $1.flopsPerStep }
        guard let first = points.first, let last = points.last else { return 0 }
        if flops <= first.flopsPerStep { return first.flopsPerSecond }
        if flops >= last.flopsPerStep { return last.flopsPerSecond }
        let upper = points.firstIndex { $0.flopsPerStep >= flops }!
        let a = points[upper - 1], b = points[upper]
        let t = log(flops / a.flopsPerStep) / log(b.flopsPerStep / a.flopsPerStep)
        return a.flopsPerSecond + t * (b.flopsPerSecond - a.flopsPerSecond)
    }
}
