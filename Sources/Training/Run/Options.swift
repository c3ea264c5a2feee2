@_exported import ArgumentParser
import Core

/// The flags every executable shares, with the same defaults (those of ml.c's `train.c`).
public struct TrainingOptions: ParsableArguments, Sendable {
    @Option(help: "Text file with one example per line.")
    public var data: String = "data/words.txt"

    @Option(parsing: .unconditional, help: "Total number of optimizer steps.")
    public var steps: Int = 25000

    @Option(name: .customLong("batch-size"), parsing: .unconditional, help: "Global batch size (examples per step, over all ranks).")
    public var batchSize: Int = 32

    @Option(name: .customLong("seq-len"), parsing: .unconditional, help: "Context length in characters.")
    public var seqLen: Int = 16

    @Option(parsing: .unconditional, help: "Embedding width.")
    public var emb: Int = 16

    @Option(parsing: .unconditional, help: "Hidden width of every Linear + ReLU block.")
    public var hidden: Int = 64

    @Option(parsing: .unconditional, help: "Number of hidden Linear + ReLU blocks (1 is ml.c's model).")
    public var layers: Int = 1

    @Option(parsing: .unconditional, help: "Learning rate.")
    public var lr: Float = 0.1

    @Option(help: "Optimizer: sgd or adam.")
    public var optimizer: OptimizerKind = .sgd

    @Option(parsing: .unconditional, help: "Adam's β₁.")
    public var beta1: Float = 0.9

    @Option(parsing: .unconditional, help: "Adam's β₂.")
    public var beta2: Float = 0.999

    @Option(parsing: .unconditional, help: "Adam's ε.")
    public var eps: Float = 1e-8

    @Option(name: .customLong("weight-decay"), parsing: .unconditional, help: "Decoupled weight decay (AdamW-style; also applied with sgd).")
    public var weightDecay: Float = 0

    @Option(parsing: .unconditional, help: "Seed for initialisation, batches and samples.")
    public var seed: UInt64 = 42

    @Option(name: .customLong("val-batches"), parsing: .unconditional, help: "Validation batches (of --batch-size) evaluated after training.")
    public var valBatches: Int = 100

    @Option(parsing: .unconditional, help: "Text samples generated after validation.")
    public var samples: Int = 10

    @Option(parsing: .unconditional, help: "Sampling temperature.")
    public var temperature: Float = 1.0

    @Option(name: .customLong("log-every"), parsing: .unconditional, help: "Print a progress line every this many steps.")
    public var logEvery: Int = 1000

    @Option(help: "Write JSON Lines metrics here (rank 0): one {\"step\",\"loss\"} per step, then {\"val_loss\"}.")
    public var metrics: String?

    @Option(help: "After training, write the full parameters and the last step's full gradients (canonical layout, float32) here.")
    public var dump: String?

    @Option(name: .customLong("dump-steps"),
            help: "With --dump: also write the dump after each of these step counts (e.g. 1,5), to <dump>.step<N>, to find the step where two layouts part.")
    public var dumpStepsText: String?

    /// `--dump-steps` as step counts (empty when absent).
    public var dumpSteps: Set<Int> {
        Set((dumpStepsText ?? "").split(separator: ",").compactMap { Int($0) })
    }

    @Option(name: .customLong("checkpoint-dir"), help: "Save the full training state into this directory (every --save-every steps and at the end).")
    public var checkpointDir: String?

    @Option(name: .customLong("save-every"), parsing: .unconditional, help: "Save a checkpoint every this many steps (0: only at the end). Needs --checkpoint-dir.")
    public var saveEvery: Int = 0

    @Option(help: "Continue from the newest complete checkpoint in this directory (any layout's); --steps stays the total.")
    public var resume: String?

    @Option(parsing: .unconditional,
            help: "Gradient accumulation: run each rank's rows of the global batch as this many micro-steps per optimizer step.")
    public var accumulate: Int = 1

    @Option(name: .customLong("clip-grad-norm"), parsing: .unconditional,
            help: "Clip the whole model's gradient to this L2 norm before every update (off by default).")
    public var clipGradNorm: Float?
    @Flag(name: .customLong("allow-data-change"),
          help: "With --resume: continue even if --data is not the file the checkpoint was trained on (size or CRC-32 differ).")
    public var allowDataChange = false

    @Flag(name: .customLong("check-replicas"),
          help: "After training, check that every parameter held by several ranks is bit-identical on all of them (fails the run if not).")
    public var checkReplicas = false

    // The collective watchdog (Distributed/Watchdog.swift).
    @Option(parsing: .unconditional,
            help: "End the whole job when any collective, send or receive has not completed within this many seconds (a stalled rank).")
    public var timeout: Double = 300

    // Validation curves, safetensors export and import (issue 16).
    @Option(name: .customLong("val-every"), parsing: .unconditional,
            help: "Also measure the validation loss (over --val-batches) every this many steps: in the progress line and as {\"step\",\"val_loss\"} in --metrics.")
    public var valEvery: Int?

    @Option(help: "After training, write the parameters as a .safetensors file here (canonical names, config and vocabulary in its metadata).")
    public var export: String?

    @Option(name: .customLong("init-from"), help: "Start training from the parameters in this .safetensors file (as written by --export).")
    public var initFrom: String?

    // Mixture of experts (issue 13; ExpertsOptions.swift checks these).
    @Option(parsing: .unconditional, help: "Experts per hidden block: every hidden Linear + ReLU becomes a mixture of experts (0: the dense model).")
    public var experts: Int = 0

    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "With --experts: the experts each row is sent to (1 ≤ K ≤ E).")
    public var topK: Int = 2

    @Option(name: .customLong("capacity-factor"), parsing: .unconditional,
            help: "With --experts: each expert takes at most ⌈C · batch · K / E⌉ assignments, the overflow dropped in row order (default: dropless).")
    public var capacityFactor: Float?

    @Option(name: .customLong("aux-loss-coef"), parsing: .unconditional, help: "With --experts: α of the load-balancing loss α · E · Σ f_e · P_e.")
    public var auxLossCoef: Float = 0.01

    // Measured timelines (issue 24; Trace/TraceOptions.swift checks these).
    @Option(help: "Write a Chrome trace (Perfetto, chrome://tracing) of every rank's compute and communication over --trace-steps here (rank 0, after training).")
    public var trace: String?

    @Option(name: .customLong("trace-steps"), help: "With --trace: the steps A:B to record, counted from 1 as the progress line does (default 4:13, clipped to --steps).")
    public var traceStepsText: String?

    public init() {}

    public var model: (Int) -> ModelConfig {
        { vocab in ModelConfig(vocab: vocab, seqLen: seqLen, emb: emb, hidden: hidden, layers: layers, experts: expertsConfig) }
    }

    public var optimizerConfig: OptimizerConfig {
        OptimizerConfig(kind: optimizer, learningRate: lr, beta1: beta1, beta2: beta2, epsilon: eps, weightDecay: weightDecay)
    }

    /// Checks every numeric flag when the command line is parsed; the error names the flag and
    /// the value. (What depends on the world size or the data is checked by ``LayoutShape``.)
    public func validate() throws {
        func positive(_ value: Int, _ flag: String) throws(UsageError) { try requirePositive(value, flag) }
        try positive(steps, "steps")
        try positive(batchSize, "batch-size")
        try positive(seqLen, "seq-len")
        try positive(emb, "emb")
        try positive(hidden, "hidden")
        try positive(layers, "layers")
        try positive(valBatches, "val-batches")
        try positive(logEvery, "log-every")
        try positive(accumulate, "accumulate")
        if saveEvery < 0 { throw UsageError("--save-every must not be negative (got \(saveEvery))") }
        if saveEvery > 0 && checkpointDir == nil { throw UsageError("--save-every needs --checkpoint-dir") }
        if allowDataChange && resume == nil { throw UsageError("--allow-data-change needs --resume") }
        if samples < 0 { throw UsageError("--samples must not be negative (got \(samples))") }
        if !lr.isFinite || lr <= 0 { throw UsageError("--lr must be a positive finite number (got \(lr))") }
        if !temperature.isFinite || temperature <= 0 {
            throw UsageError("--temperature must be a positive finite number (got \(temperature))")
        }
        if !(beta1 >= 0 && beta1 < 1) { throw UsageError("--beta1 must be in [0, 1) (got \(beta1))") }
        if !(beta2 >= 0 && beta2 < 1) { throw UsageError("--beta2 must be in [0, 1) (got \(beta2))") }
        if !eps.isFinite || eps <= 0 { throw UsageError("--eps must be a positive finite number (got \(eps))") }
        if !weightDecay.isFinite || weightDecay < 0 {
            throw UsageError("--weight-decay must be a finite number ≥ 0 (got \(weightDecay))")
        }
        if let clip = clipGradNorm, !clip.isFinite || clip <= 0 {
            throw UsageError("--clip-grad-norm must be a positive finite number (got \(clip))")
        }
        if !timeout.isFinite || timeout <= 0 { throw UsageError("--timeout must be a positive finite number of seconds (got \(timeout))") }
        if let valEvery { try positive(valEvery, "val-every") }
        if let text = dumpStepsText {
            let counts = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0) }
            if counts.isEmpty || counts.contains(where: { ($0 ?? 0) <= 0 }) {
                throw UsageError("--dump-steps must be positive step counts separated by commas, e.g. 1,5 (got '\(text)')")
            }
            if dump == nil { throw UsageError("--dump-steps needs --dump (the files are named after it)") }
            if let beyond = counts.compactMap({ $0 }).first(where: { $0 > steps }) {
                throw UsageError("--dump-steps \(beyond) is beyond --steps \(steps): that dump would never be written")
            }
        }
        if initFrom != nil && resume != nil {
            throw UsageError("--init-from and --resume cannot be used together (a checkpoint already holds the parameters)")
        }
        if seqLen * emb > 1 << 24 || hidden > 1 << 24 { throw UsageError("--seq-len × --emb and --hidden must stay below 2^24") }
        try validateExperts()
        try validateTrace()
    }
}

extension OptimizerKind: ExpressibleByArgument {}

/// A problem with the command line or the layout, reported as one line.
public struct UsageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Throws unless `value` (the value of `--flag`) is a positive integer.
public func requirePositive(_ value: Int, _ flag: String) throws(UsageError) {
    if value <= 0 { throw UsageError("--\(flag) must be a positive integer (got \(value))") }
}
