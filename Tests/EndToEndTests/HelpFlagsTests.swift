import Foundation
import XCTest

/// Flags mean what `--help` says: every on/off flag an executable lists in its `--help` runs
/// (3 steps) in a layout where it applies, and an executable lists no flag it would refuse in
/// every layout (`train_3d` once listed `--batch-weight-gradients` and then refused it). A flag
/// added to an executable without a run here fails the test until one is added.
final class HelpFlagsTests: XCTestCase {
    /// Per executable: its ranks and layout flags, and for each on/off flag what else it needs.
    static let layouts: [(executable: String, np: Int?, layout: [String], flags: [String: [String]])] = [
        ("train", nil, [], ["--check-replicas": [], "--recompute": [], "--allow-data-change": []]),
        ("train_dp", 2, [], ["--check-replicas": [], "--recompute": [], "--allow-data-change": []]),
        ("train_fsdp", 2, [], ["--check-replicas": [], "--recompute": [], "--allow-data-change": []]),
        ("train_tp", 2, [], ["--check-replicas": [], "--recompute": [], "--allow-data-change": [], "--sequence-parallel": []]),
        ("train_pp", 2, ["--micro-batches", "2"], ["--check-replicas": [], "--recompute": [], "--allow-data-change": [],
                                                   "--batch-weight-gradients": []]),
        ("train_3d", 2, ["--tp", "2"], ["--check-replicas": [], "--recompute": [], "--allow-data-change": [],
                                        "--sequence-parallel": []]),
        ("train_ep", 2, ["--experts", "4", "--ep", "2"], ["--check-replicas": [], "--allow-data-change": []]),
        ("train_diloco", 2, ["--inner-steps", "1"], ["--check-replicas": [], "--allow-data-change": []]),
    ]

    /// The on/off flags in `executable --help`: the options listed without a `<value>`.
    func booleanFlags(_ executable: String) throws -> Set<String> {
        let help = try Launch.run(executable, ["--help"], timeout: 60)
        XCTAssertEqual(help.status, 0, help.stderr)
        let flags = help.stdout.split(separator: "\n").compactMap { line -> String? in
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard line.hasPrefix("  --"), let flag = words.first, words.count < 2 || !words[1].hasPrefix("<") else { return nil }
            return String(flag)
        }
        return Set(flags).subtracting(["--help"])
    }

    func testEveryOnOffFlagInHelpRunsSomewhere() throws {
        let data = try SmallData.write()
        // A checkpoint trained on other data, for --allow-data-change (which needs --resume).
        let other = try SmallData.write(SmallData.names.split(separator: "\n").dropFirst().joined(separator: "\n") + "\n")
        func checkpoint(_ model: [String]) throws -> String {
            let directory = try Launch.temporaryDirectory().path
            try Launch.trained("train", np: nil, ["--data", other, "--steps", "1", "--samples", "0", "--val-batches", "1",
                                                 "--checkpoint-dir", directory] + model)
            return directory
        }
        let dense = try checkpoint([]), mixture = try checkpoint(["--experts", "4"])
        var runs: [(label: String, executable: String, np: Int?, args: [String])] = []
        for (executable, np, layout, table) in Self.layouts {
            XCTAssertEqual(try booleanFlags(executable), Set(table.keys), "\(executable): the on/off flags --help lists")
            for (flag, needs) in table.sorted(by: { $0.key < $1.key }) {
                let resume = flag == "--allow-data-change" ? ["--resume", layout.contains("--experts") ? mixture : dense] : []
                let args = ["--data", data, "--steps", "3", "--samples", "0", "--val-batches", "1"] + layout + needs + resume + [flag]
                runs.append(("\(executable) \(flag)", executable, np, args))
            }
        }
        let outcomes = try Launch.concurrently(runs.map { run in { try Launch.run(run.executable, np: run.np, run.args, timeout: 120) } })
        for (run, outcome) in zip(runs, outcomes) {
            XCTAssertEqual(outcome.status, 0, "\(run.label): \(run.args.joined(separator: " ")): \(outcome.stderr)")
        }
    }
}
