import Core
import Distributed
import Foundation

/// The planner's output: a table for people, JSON for machines.
public enum PlanReport {
    /// Kinds shown as columns (receives mirror sends; the stop vote is the loop's, not the layout's).
    static let kinds: [CommunicationKind] = [.allreduce, .allgather, .reduceScatter, .send, .broadcast]

    /// The columns for `planner`'s model: with experts, `train_ep`'s all-to-alls too.
    static func kinds(_ planner: Planner) -> [CommunicationKind] {
        planner.plan.config.experts == nil ? kinds : kinds + [.allToAll, .allToAllV]
    }

    /// `bytes` as B, KB, MB or GB (powers of 1000), three significant digits.
    static func size(_ bytes: Int) -> String {
        if bytes == 0 { return "0" }
        let units = [("B", 1.0), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)]
        let (unit, scale) = units.last { Double(bytes) >= $0.1 } ?? units[0]
        let value = Double(bytes) / scale
        return (unit == "B" ? "\(bytes)" : String(format: value < 10 ? "%.2f" : value < 100 ? "%.1f" : "%.0f", value)) + " " + unit
    }

    static func micros(_ seconds: Double) -> String {
        let us = seconds * 1e6
        return us < 10 ? String(format: "%.2f", us) : us < 1000 ? String(format: "%.1f", us) : String(format: "%.0f", us)
    }

    static func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - text.count))
        return right ? fill + text : text + fill
    }

    /// The table, fastest first; `top` limits the rows (nil: all); the refused layouts follow.
    public static func table(_ planner: Planner, _ result: (entries: [Planner.Entry], refused: [Planner.Refusal]), top: Int?) -> String {
        let c = planner.plan.config
        var lines = ["plan: \(c), batch \(planner.settings.batchSize)"
                        + (planner.settings.accumulation > 1 ? " (--accumulate \(planner.settings.accumulation))" : "")
                        + ", \(planner.settings.optimizer.rawValue), \(planner.plan.parameterCount) parameters, \(planner.ranks) rank(s); "
                        + "\(result.entries.count) layouts, fastest first (memory: the busiest rank, fits ≤ \(gib(planner.memoryPerRank)) GiB; "
                        + "bytes per step: payload as the ledger counts it, on the rank that moves the most)"]
        let shown = result.entries.prefix(top ?? result.entries.count)
        let width = (shown.map { $0.layout.planCommand.count }.max() ?? 0) + 2
        let kinds = Self.kinds(planner)
        let header = [pad("#", 4), pad("layout", width), pad("GiB/rank", 13, right: true)]
            + kinds.map { pad($0.name == "send" ? "send(=recv)" : $0.name, 15, right: true) }
            + [pad("compute µs", 12, right: true), pad("comm µs", 11, right: true), pad("bubble", 8, right: true),
               pad("µs/step", 11, right: true)]
        lines.append(header.joined())
        for (i, entry) in shown.enumerated() {
            let p = entry.prediction
            let row = [pad("\(i + 1)", 4), pad(entry.layout.planCommand, width),
                       pad(gib(entry.memory) + (entry.fits ? "   " : " ✗ "), 13, right: true)]
                + kinds.map { pad(size(entry.bytes[$0] ?? 0), 15, right: true) }
                + [pad(micros(p.computeSeconds), 12, right: true), pad(micros(p.communicationSeconds), 11, right: true),
                   pad(String(format: "%.0f%%", 100 * p.bubble), 8, right: true), pad(micros(p.seconds), 11, right: true)]
            lines.append(row.joined())
        }
        if let top, result.entries.count > top { lines.append("… \(result.entries.count - top) more (--top)") }
        if result.entries.contains(where: { !$0.fits }) { lines.append("✗: does not fit --memory-per-rank") }
        // One line per reason: the first layout it refuses and how many more.
        var reasons: [String] = [], first: [String: (String, Int)] = [:]
        for refusal in result.refused {
            if let seen = first[refusal.reason] {
                first[refusal.reason] = (seen.0, seen.1 + 1)
            } else {
                reasons.append(refusal.reason)
                first[refusal.reason] = (refusal.layout.planCommand, 0)
            }
        }
        for reason in reasons {
            let (command, more) = first[reason]!
            lines.append("cannot run: \(command)" + (more > 0 ? " and \(more) more" : "") + ": \(reason)")
        }
        return lines.joined(separator: "\n")
    }

    static func quote(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// One JSON object: the configuration (with experts: `experts`, `top_k`, `capacity_factor`), then `"layouts"` fastest first, each with its command,
    /// memory, fit, prediction and `"comm_per_rank"` (calls and bytes per step by kind, in the
    /// ledger's keys), then `"refused"`.
    public static func json(_ planner: Planner, _ result: (entries: [Planner.Entry], refused: [Planner.Refusal])) -> String {
        let c = planner.plan.config
        let layouts = result.entries.map { entry in
            let perRank = entry.communication.map { comm in
                "{" + CommunicationKind.allCases.map { "\"\($0.name)\":{\"calls\":\(comm.calls($0)),\"bytes\":\(comm.bytes($0))}" }
                    .joined(separator: ",") + "}"
            }
            let p = entry.prediction
            return "{\"command\":\(quote(entry.layout.planCommand)),\"memory_per_rank\":\(entry.memory),\"fits\":\(entry.fits),"
                + "\"predicted_us\":\(p.seconds * 1e6),\"compute_us\":\(p.computeSeconds * 1e6),"
                + "\"communication_us\":\(p.communicationSeconds * 1e6),\"bubble\":\(p.bubble),"
                + "\"expert_flops\":\(p.expertFlops),\"expert_us\":\(p.expertSeconds * 1e6),"
                + "\"comm_per_rank\":[\(perRank.joined(separator: ","))]}"
        }
        let refused = result.refused.map { "{\"command\":\(quote($0.layout.planCommand)),\"reason\":\(quote($0.reason))}" }
        let experts = c.experts.map { "\"experts\":\($0.count),\"top_k\":\($0.topK),\"capacity_factor\":\($0.capacityFactor.map { "\($0)" } ?? "null")," }
        return "{\"vocab\":\(c.vocab),\"seq_len\":\(c.seqLen),\"emb\":\(c.emb),\"hidden\":\(c.hidden),\"layers\":\(c.layers),"
            + (experts ?? "")
            + "\"batch_size\":\(planner.settings.batchSize),\"accumulate\":\(planner.settings.accumulation),"
            + "\"parameters\":\(planner.plan.parameterCount),\"ranks\":\(planner.ranks),\"memory_budget\":\(planner.memoryPerRank),"
            + "\"layouts\":[\(layouts.joined(separator: ","))],\"refused\":[\(refused.joined(separator: ","))]}"
    }
}
