import Core
import Distributed
import Foundation

/// What the cost model knows of a machine, measured on it (`scripts/plan-check.sh` writes it to
/// `.build/plan-calibration.json`):
///
/// - `compute`: the forward and backward of `train`'s chain at a few batch sizes: the rows, FLOPs
///   per step (6·B·in·out over the Linears) and the rate one rank reached alone on the machine
///   (FLOP/s: the FLOPs over the step time less the update below). Small matrices run far below
///   the machine's peak, and what makes them small is the rows (the widths are the model's), so a
///   rank's rate is read off these points by the rows of its chain runs (linear in log rows
///   between points, the end points beyond them): a pipeline's 8-row micro-batch runs at the
///   8-row point, not at the point of the same FLOPs over the whole model.
/// - `update`: seconds per parameter of the per-step passes over the parameters that do not
///   shrink with the batch (zeroing the gradients and the optimizer's update), per update rule
///   (`peak --model`'s `update_us_*` over its parameter count). A rank pays it for the parameters
///   it updates: all it holds, or its shard under ZeRO.
/// - `collectives`: per kind, the α–β fit of `mpirun -np 2 collectives` (`time ≈ α + bytes / bw`
///   for the payload the ledger counts, over shared memory) and the measured points it was fitted
///   to. Over shared memory the bandwidth depends on the size (a megabyte stays in cache, four do
///   not), so where there are points the time of a call is read off them (linear in log–log
///   between points); the fit serves beyond them and for hand-written files.
/// - `experts`: the FLOP/s of mixture-of-experts products (each assignment's `6·in·out`) by the
///   rows each expert computes, from `train --experts` at a few batch sizes: its step time less
///   the update and the rest of the chain at the compute points' rate. Routing, gathering and scattering rows per expert are not
///   in the FLOP count, so this rate is what the experts really cost per FLOP.
/// - `cores`: the cores the ranks share; more ranks than cores on a host share them.
///
/// Nothing here is guessed: without a file the planner asks for `--flops` (and uses no
/// collective rates it has not measured: it then needs `--link-latency` and `--link-bandwidth`).
public struct Calibration: Codable, Sendable, Equatable {
    public struct ComputePoint: Codable, Sendable, Equatable {
        /// Rows of the chain run (the batch of the `train` run measured).
        public var rows: Int
        public var flopsPerStep: Double
        public var flopsPerSecond: Double
        public init(rows: Int, flopsPerStep: Double, flopsPerSecond: Double) {
            self.rows = rows
            self.flopsPerStep = flopsPerStep
            self.flopsPerSecond = flopsPerSecond
        }
        enum CodingKeys: String, CodingKey {
            case rows, flopsPerStep = "flops_per_step", flopsPerSecond = "flops_per_second"
        }
    }

    /// One collective's fit, at `ranks` ranks (the `collectives` run's world).
    public struct Link: Codable, Sendable, Equatable {
        /// Latency per call, µs.
        public var alphaMicroseconds: Double
        /// Payload bytes per second, in GB/s.
        public var gigabytesPerSecond: Double
        /// Measured `[bytes, seconds]` per call, by increasing bytes (may be empty).
        public var points: [[Double]]
        public init(alphaMicroseconds: Double, gigabytesPerSecond: Double, points: [[Double]] = []) {
            self.alphaMicroseconds = alphaMicroseconds
            self.gigabytesPerSecond = gigabytesPerSecond
            self.points = points
        }
        enum CodingKeys: String, CodingKey {
            case alphaMicroseconds = "alpha_us", gigabytesPerSecond = "gb_per_s", points
        }
        public init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            alphaMicroseconds = try container.decode(Double.self, forKey: .alphaMicroseconds)
            gigabytesPerSecond = try container.decode(Double.self, forKey: .gigabytesPerSecond)
            points = try container.decodeIfPresent([[Double]].self, forKey: .points) ?? []
        }

        /// Seconds per call of `bytes` at two ranks: read off the measured points (linear in
        /// log–log between the two around it) inside their range, the α–β fit outside it.
        public func seconds(perCall bytes: Double) -> Double {
            let fit = alphaMicroseconds * 1e-6 + bytes / (gigabytesPerSecond * 1e9)
            guard points.count >= 2, let first = points.first, let last = points.last,
                  bytes >= first[0], bytes <= last[0] else { return fit }
            let upper = points.firstIndex { $0[0] >= bytes }!
            if upper == 0 { return first[1] }
            let a = points[upper - 1], b = points[upper]
            let t = log(bytes / a[0]) / log(b[0] / a[0])
            return exp(log(a[1]) + t * (log(b[1]) - log(a[1])))
        }
    }

    public var cores: Int
    /// The world size of the `collectives` run the fits come from.
    public var ranks: Int
    public var compute: [ComputePoint]
    /// Keyed by ``CommunicationKind/name`` (`allreduce`, `allgather`, `reduce_scatter`,
    /// `broadcast`, `send`, and `all_to_all` and `all_to_all_v`, both from the benchmark's
    /// all-to-all series; a file without them cannot price `train_ep`).
    public var collectives: [String: Link]
    /// Seconds per updated parameter, keyed by ``OptimizerKind`` (`sgd`, `adam`).
    public var update: [String: Double]
    /// FLOP/s of a mixture of experts' expert products (`6·in·out` per assignment) by the rows each
    /// expert computes, measured in `train --experts` (empty: they are priced at the chain's rate).
    public var experts: [ComputePoint]

    public init(cores: Int, ranks: Int, compute: [ComputePoint], collectives: [String: Link], update: [String: Double],
                experts: [ComputePoint] = []) {
        self.cores = cores
        self.ranks = ranks
        self.compute = compute
        self.collectives = collectives
        self.update = update
        self.experts = experts
    }

    enum CodingKeys: String, CodingKey {
        case cores, ranks, compute, collectives, update = "update_seconds_per_parameter", experts
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        cores = try container.decode(Int.self, forKey: .cores)
        ranks = try container.decode(Int.self, forKey: .ranks)
        compute = try container.decode([ComputePoint].self, forKey: .compute)
        collectives = try container.decode([String: Link].self, forKey: .collectives)
        update = try container.decode([String: Double].self, forKey: .update)
        experts = try container.decodeIfPresent([ComputePoint].self, forKey: .experts) ?? []
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
        var rates: [Double] = compute.flatMap { [Double($0.rows), $0.flopsPerStep, $0.flopsPerSecond] }
        rates += collectives.values.flatMap { [$0.alphaMicroseconds + 1, $0.gigabytesPerSecond] }
        rates += update.values
        rates += collectives.values.flatMap { link in link.points.flatMap { $0.count == 2 ? $0 : [-1] } }
        rates += experts.flatMap { [Double($0.rows), $0.flopsPerStep, $0.flopsPerSecond] }
        if OptimizerKind.allCases.contains(where: { update[$0.rawValue] == nil }) {
            throw UsageError("the calibration \(path) has no update cost for \(OptimizerKind.allCases.map(\.rawValue).filter { update[$0] == nil }.joined(separator: ", ")): run scripts/plan-check.sh again")
        }
        if compute.isEmpty || cores < 1 || ranks < 2 || rates.contains(where: { !($0.isFinite && $0 > 0) }) {
            throw UsageError("the calibration \(path) has no compute points, or a count, rate, update cost, measured point or expert rate that is not positive")
        }
    }

    /// FLOP/s of one rank (alone on its cores) for chain runs of `rows` rows: interpolated in log
    /// rows between the measured points, the nearest end point outside them.
    public func rate(forRows rows: Double) -> Double { Self.interpolate(compute, rows: rows) }

    /// FLOP/s at `rows` read off `points`: linear in log rows between them, the nearest end outside.
    public static func interpolate(_ points: [ComputePoint], rows: Double) -> Double {
        let points = points.sorted { $0.rows < $1.rows }
        guard let first = points.first, let last = points.last else { return 0 }
        if rows <= Double(first.rows) { return first.flopsPerSecond }
        if rows >= Double(last.rows) { return last.flopsPerSecond }
        let upper = points.firstIndex { Double($0.rows) >= rows }!
        let a = points[upper - 1], b = points[upper]
        let t = log(rows / Double(a.rows)) / log(Double(b.rows) / Double(a.rows))
        return a.flopsPerSecond + t * (b.flopsPerSecond - a.flopsPerSecond)
    }
}
