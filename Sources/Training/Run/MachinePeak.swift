import Core
import Foundation

/// This machine's single-core fp32 peak, the denominator of MFU: **measured once and cached**.
///
/// The first run on a machine measures it (``PeakThroughput``: the best of 300 runs of 8 MFLOP
/// of independent FMAs, about 10 ms) and writes `$XDG_CACHE_HOME/parallelisms-swift/peak.json`
/// (`~/.cache/…` without XDG_CACHE_HOME); later runs read it. Why a cache: under mpirun every
/// other rank is already spinning in MPI while rank 0 would measure, and with more ranks than
/// cores that steals the core and understates the peak; a value measured once, and kept, also
/// makes MFU comparable between runs. The cache holds the host name, the CPU model and the
/// probe (AVX-512 or AVX2 build) it was measured with; a file that is missing, unreadable,
/// malformed or for another host, CPU or probe is measured again and rewritten. A cache that
/// cannot be written is only noted: it never stops a run. Delete the file to measure again.
struct MachinePeak {
    /// Peak FLOP/s of one core.
    var flopsPerSecond: Double
    /// Where the figure comes from, for the start-up line.
    var source: String

    /// The cached figure, or a fresh measurement (then cached). Call on one rank.
    static func current(environment: [String: String] = ProcessInfo.processInfo.environment) -> MachinePeak {
        let identity = Record.identity
        let path = cachePath(environment)
        if let path, let data = FileManager.default.contents(atPath: path),
           let record = try? JSONDecoder().decode(Record.self, from: data),
           record.version == Record.version, record.host == identity.host, record.cpu == identity.cpu,
           record.method == identity.method, record.flopsPerSecond.isFinite, record.flopsPerSecond > 0 {
            return MachinePeak(flopsPerSecond: record.flopsPerSecond, source: "cached in \(path), measured \(record.measured)")
        }
        let runs = 300
        let record = Record(version: Record.version, host: identity.host, cpu: identity.cpu, method: identity.method,
                            flopsPerSecond: PeakThroughput.measure(runs: runs), runs: runs,
                            measured: ISO8601DateFormatter().string(from: Date()))
        let measured = "measured now (best of \(runs) runs of \(identity.method))"
        guard let path else { return MachinePeak(flopsPerSecond: record.flopsPerSecond, source: measured + ", not cached: no HOME") }
        do {
            let directory = (path as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try encoder.encode(record).write(to: URL(fileURLWithPath: path), options: .atomic)
            return MachinePeak(flopsPerSecond: record.flopsPerSecond, source: measured + ", cached in \(path)")
        } catch {
            return MachinePeak(flopsPerSecond: record.flopsPerSecond, source: measured + ", not cached: \(error.localizedDescription)")
        }
    }

    /// `$XDG_CACHE_HOME/parallelisms-swift/peak.json`, or under `$HOME/.cache`; nil without either.
    static func cachePath(_ environment: [String: String]) -> String? {
        if let cache = environment["XDG_CACHE_HOME"], cache.hasPrefix("/") { return cache + "/parallelisms-swift/peak.json" }
        if let home = environment["HOME"], !home.isEmpty { return home + "/.cache/parallelisms-swift/peak.json" }
        return nil
    }

    /// The cache file's content.
    struct Record: Codable {
        static let version = 1
        var version: Int
        var host: String
        var cpu: String
        var method: String
        var flopsPerSecond: Double
        var runs: Int
        var measured: String

        enum CodingKeys: String, CodingKey {
            case version, host, cpu, method, runs, measured
            case flopsPerSecond = "flops_per_second"
        }

        /// This process's host, CPU model (`/proc/cpuinfo`) and probe.
        static var identity: (host: String, cpu: String, method: String) {
            let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
            let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
                .flatMap { $0.split(separator: ":", maxSplits: 1).last }
                .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
            var name = [CChar](repeating: 0, count: 256)
            let host = gethostname(&name, name.count - 1) == 0 ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "unknown"
            return (host, model, PeakThroughput.method)
        }
    }
}
