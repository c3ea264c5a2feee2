import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How many bytes this process may still allocate, and which limit says so.
///
/// The smallest of what the machine and the process's limits leave:
///
/// - `MemAvailable` (`/proc/meminfo`), shared by the ranks on this host: divided by
///   `OMPI_COMM_WORLD_LOCAL_SIZE`;
/// - the cgroup's limit less its usage, shared the same way: cgroup v2's `memory.max −
///   memory.current` for this process's cgroup and every ancestor, or v1's
///   `memory.limit_in_bytes − memory.usage_in_bytes`;
/// - `RLIMIT_AS` (`ulimit -v`) less the address space in use (`VmSize`), and `RLIMIT_DATA`
///   less the data segment in use (`VmData`): per process, not divided.
///
/// A limit that cannot be read (no `/proc`, no cgroup files) is not counted.
public struct MemoryBudget: Sendable {
    public var bytes: Int
    /// The limit that gave ``bytes``, for the refusal line.
    public var limit: String

    public static func current(environment: [String: String] = ProcessInfo.processInfo.environment) -> MemoryBudget {
        let localRanks = max(1, Int(environment["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "") ?? 1)
        let shared = localRanks > 1 ? " / \(localRanks) ranks on this host" : ""
        var candidates: [MemoryBudget] = []
        if let available = kilobytes("/proc/meminfo", "MemAvailable:") {
            candidates.append(MemoryBudget(bytes: available / localRanks, limit: "MemAvailable\(shared)"))
        }
        if let (left, name) = cgroupRoom() {
            candidates.append(MemoryBudget(bytes: left / localRanks, limit: name + shared))
        }
        for (resource, name, key) in [(RLIMIT_AS, "RLIMIT_AS (ulimit -v)", "VmSize:"), (RLIMIT_DATA, "RLIMIT_DATA (ulimit -d)", "VmData:")] {
            var limit = rlimit()
            guard getrlimit(__rlimit_resource_t(resource.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { continue }
            let used = kilobytes("/proc/self/status", key) ?? 0
            let cap = limit.rlim_cur > UInt(Int.max) ? Int.max : Int(limit.rlim_cur)
            candidates.append(MemoryBudget(bytes: max(0, cap - used), limit: name))
        }
        return candidates.min { $0.bytes < $1.bytes } ?? MemoryBudget(bytes: .max, limit: "no limit found")
    }

    /// The `kB` figure after `key` in a `/proc` file, in bytes.
    static func kilobytes(_ path: String, _ key: String) -> Int? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let value = Int(fields[1]) else { return nil }
            return value * 1024
        }
        return nil
    }

    /// Room left under the tightest cgroup memory limit on this process's path, with its name.
    static func cgroupRoom() -> (Int, String)? {
        guard let text = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8) else { return nil }
        var best: (Int, String)?
        func consider(_ limitFile: String, _ usageFile: String, _ name: String) {
            guard let limitText = try? String(contentsOfFile: limitFile, encoding: .utf8),
                  let limit = Int(limitText.trimmingCharacters(in: .whitespacesAndNewlines)),
                  limit < 1 << 60 else { return }  // "max", or v1's "no limit" near 2^63
            let usage = (try? String(contentsOfFile: usageFile, encoding: .utf8))
                .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
            let left = max(0, limit - usage)
            if best == nil || left < best!.0 { best = (left, name) }
        }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let path = String(parts[2])
            if parts[1].isEmpty {  // cgroup v2: this cgroup and its ancestors
                var directory = "/sys/fs/cgroup" + (path == "/" ? "" : path)
                while directory.hasPrefix("/sys/fs/cgroup") {
                    consider(directory + "/memory.max", directory + "/memory.current", "cgroup memory.max")
                    guard let slash = directory.lastIndex(of: "/"), directory != "/sys/fs/cgroup" else { break }
                    directory = String(directory[..<slash])
                }
            } else if parts[1].split(separator: ",").contains("memory") {  // cgroup v1
                for directory in ["/sys/fs/cgroup/memory" + path, "/sys/fs/cgroup/memory"] {
                    consider(directory + "/memory.limit_in_bytes", directory + "/memory.usage_in_bytes", "cgroup memory.limit_in_bytes")
                }
            }
        }
        return best
    }
}
