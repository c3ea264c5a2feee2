import ArgumentParser
import Core
import Foundation
import Training

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `plan --ranks N [model flags]`: every layout and factorisation of the model on N ranks, with
/// the memory per rank, the bytes per step per collective and a predicted step time, fastest
/// first (see ``Planner`` and ``CostModel``). Runs no MPI: a plan for 1,024 ranks is made here.
struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Every layout of a model on N ranks: memory per rank, bytes per step, predicted µs/step.")

    @Option(parsing: .unconditional, help: "Ranks to plan for.")
    var ranks: Int
    @Option(help: "Text file with one example per line: the vocabulary comes from it.")
    var data: String?
    @Option(parsing: .unconditional, help: "Vocabulary size when no --data is given.")
    var vocab: Int = 27
    @Option(name: .customLong("batch-size"), parsing: .unconditional, help: "Global batch size.")
    var batchSize = 32
    @Option(name: .customLong("seq-len"), parsing: .unconditional, help: "Context length in characters.")
    var seqLen = 16
    @Option(parsing: .unconditional, help: "Embedding width.")
    var emb = 16
    @Option(parsing: .unconditional, help: "Hidden width of every Linear + ReLU block.")
    var hidden = 64
    @Option(parsing: .unconditional, help: "Number of hidden Linear + ReLU blocks.")
    var layers = 1
    @Option(help: "Optimizer: sgd or adam.")
    var optimizer: OptimizerKind = .sgd
    @Option(parsing: .unconditional, help: "Micro-steps per optimizer step (gradient accumulation).")
    var accumulate = 1
    // Mixture of experts: the flags and checks of training (ExpertsOptions.swift).
    @Option(parsing: .unconditional, help: "Experts per hidden block (0: the dense model); plans train_dp and train_ep --ep E'.")
    var experts = 0
    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "With --experts: the experts each row is sent to (1 ≤ K ≤ E).")
    var topK = 2
    @Option(name: .customLong("capacity-factor"), parsing: .unconditional,
            help: "With --experts: each expert takes at most ⌈C · batch · K / E⌉ assignments (default: dropless).")
    var capacityFactor: Float?
    @Option(name: .customLong("memory-per-rank"), parsing: .unconditional, help: "GiB a rank may use (default: this machine's budget).")
    var memoryPerRank: Double?
    @Option(parsing: .unconditional, help: "GFLOP/s of one rank, instead of the calibrated rates.")
    var flops: Double?
    @Option(name: .customLong("link-latency"), parsing: .unconditional, help: "µs per message step between hosts.")
    var linkLatency: Double?
    @Option(name: .customLong("link-bandwidth"), parsing: .unconditional, help: "GB/s of one link between hosts.")
    var linkBandwidth: Double?
    @Option(name: .customLong("ranks-per-host"), parsing: .unconditional, help: "Ranks on one host (default: all).")
    var ranksPerHost: Int?
    @Option(name: .customLong("bucket-kb"), parsing: .unconditional, help: "DP's gradient bucket size in KiB (as train_dp).")
    var bucketKB = 1024
    @Option(help: "The calibration file (default: .build/plan-calibration.json, written by scripts/plan-check.sh).")
    var calibration: String?
    @Flag(help: "Include the gradient norm that --metrics computes (an 8-byte allreduce per step).")
    var metrics = false
    @Option(parsing: .unconditional, help: "Show only the fastest N layouts.")
    var top: Int?
    @Flag(help: "Print JSON instead of the table.")
    var json = false
    @Option(help: "Write the predicted timeline of one layout's step here, as the training executables' --trace does.")
    var trace: String?
    @Option(name: .customLong("trace-layout"), help: "With --trace: the layout with this command, else the fastest whose command contains this text (default: the fastest), e.g. \"--schedule zb1p --micro-batches 8\".")
    var traceLayout: String?

    func validate() throws {
        for (value, flag) in [(ranks, "ranks"), (vocab, "vocab"), (batchSize, "batch-size"), (seqLen, "seq-len"), (emb, "emb"),
                              (hidden, "hidden"), (layers, "layers"), (accumulate, "accumulate"), (bucketKB, "bucket-kb")] {
            try requirePositive(value, flag)
        }
        if let ranksPerHost { try requirePositive(ranksPerHost, "ranks-per-host") }
        if let top { try requirePositive(top, "top") }
        for (value, flag) in [(memoryPerRank, "memory-per-rank"), (flops, "flops"), (linkBandwidth, "link-bandwidth")] {
            if let value, !(value.isFinite && value > 0) { throw UsageError("--\(flag) must be a positive finite number (got \(value))") }
        }
        if let linkLatency, !(linkLatency.isFinite && linkLatency >= 0) {
            throw UsageError("--link-latency must be a finite number ≥ 0 (got \(linkLatency))")
        }
        try TrainingOptions.checkExperts(experts, topK: topK, capacityFactor: capacityFactor, auxLossCoef: 0.01, accumulate: accumulate)
        if ranks > 1 << 16 { throw UsageError("--ranks \(ranks) is more than the planner enumerates (at most 65536)") }
        if traceLayout != nil && trace == nil { throw UsageError("--trace-layout needs --trace") }
        if seqLen * emb > 1 << 24 || hidden > 1 << 24 { throw UsageError("--seq-len × --emb and --hidden must stay below 2^24") }
    }

    func run() throws {
        var vocabulary = vocab, examples = 0
        if let data {
            do {
                let dataset = try Dataset.load(path: data, seqLen: seqLen)
                vocabulary = dataset.vocabulary.count
                examples = dataset.train.count + dataset.validation.count
            } catch {
                throw UsageError("\(error)")
            }
        }
        let expertsConfig = experts > 0 ? ExpertsConfig(count: experts, topK: topK, capacityFactor: capacityFactor) : nil
        let config = ModelConfig(vocab: vocabulary, seqLen: seqLen, emb: emb, hidden: hidden, layers: layers, experts: expertsConfig)
        _ = try MemoryPlan.parameterCount(config)
        var loaded: Calibration?
        let path = calibration ?? Calibration.defaultPath
        if calibration != nil || FileManager.default.fileExists(atPath: path) || flops == nil {
            loaded = try Calibration.load(path: path)
        }
        let model = CostModel(calibration: loaded, flops: flops.map { $0 * 1e9 }, linkLatency: linkLatency.map { $0 * 1e-6 },
                              linkBandwidth: linkBandwidth.map { $0 * 1e9 }, ranksPerHost: ranksPerHost)
        let budget = memoryPerRank.map { Int($0 * Double(1 << 30)) } ?? MemoryBudget.current().bytes
        var planner = Planner(plan: config.plan, settings: PlanSettings(batchSize: batchSize, optimizer: optimizer, accumulation: accumulate,
                                                                       examples: examples),
                              ranks: ranks, model: model, memoryPerRank: budget)
        planner.gradientNorm = metrics
        planner.bucketBytes = bucketKB * 1024
        let result = try planner.evaluate()
        if result.entries.isEmpty {
            throw UsageError("no layout can run this model on \(ranks) rank(s): "
                             + (result.refused.first.map { "\($0.layout.planCommand): \($0.reason)" } ?? "none"))
        }
        print(json ? PlanReport.json(planner, result) : PlanReport.table(planner, result, top: top))
        if let trace { try writeTrace(trace, result.entries, model) }
    }
}

extension Plan {
    /// `--trace`: the predicted timeline of the `--trace-layout` entry (``PredictedTimeline``).
    func writeTrace(_ path: String, _ entries: [Planner.Entry], _ model: CostModel) throws {
        let exact = entries.first { $0.layout.planCommand == traceLayout }
        guard let entry = exact ?? entries.first(where: { traceLayout.map($0.layout.planCommand.contains) ?? true }) else {
            throw UsageError("--trace-layout '\(traceLayout ?? "")' matches no layout the planner made")
        }
        do { try PredictedTimeline(entry: entry, model: model).json().write(toFile: path, atomically: false, encoding: .utf8) } catch {
            throw UsageError("cannot write trace file '\(path)': \(error)")
        }
        if !json { print("predicted timeline of \(entry.layout.planCommand) written to \(path)") }
    }
}

do {
    var command = try Plan.parseAsRoot(Array(CommandLine.arguments.dropFirst()))
    try command.run()
    exit(0)
} catch {
    if Plan.exitCode(for: error) == .success {
        print(Plan.fullMessage(for: error))
        exit(0)
    }
    let message = error is UsageError ? "\(error)" : Plan.message(for: error)
    FileHandle.standardError.write(Data(("error: " + message.split(separator: "\n").joined(separator: " ") + "\n").utf8))
    exit(64)
}
