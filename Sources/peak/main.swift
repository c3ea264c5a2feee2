import Core

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `peak`: what this core can do, and how much of it a training step gets.
///
///     peak                                   measured single-core fp32 FMA peak, GFLOP/s
///     peak --gemm MxNxK [--transposed-a] [--transposed-b] [--cold]
///                                            one matrix product: µs, GFLOP/s (--cold: the caches
///                                            flushed before each call, operands from memory)
///     peak --model [--emb 64 --hidden 1024 --batch-size 256 --seq-len 16 --vocab 27 --layers 1]
///                                            the six matrix products and the whole training step
///                                            of that configuration: µs, GFLOP/s, % of peak, and
///                                            a breakdown of the step by phase
///
/// Every figure is the fastest of many short timed repetitions (`--repeats`, default 30, of about
/// `--seconds`, default 0.002 s, each): see ``measure(_:)``.
/// Output lines are `key: value`, so scripts can grep them.

// MARK: - Command line

func fail(_ message: String, _ code: Int32) -> Never {
    let line = "peak: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(code)
}

struct Arguments {
    var rest: [String]
    mutating func flag(_ name: String) -> Bool {
        if let i = rest.firstIndex(of: name) { rest.remove(at: i); return true }
        return false
    }
    mutating func option<T: LosslessStringConvertible>(_ name: String, _ fallback: T) -> T {
        guard let i = rest.firstIndex(of: name) else { return fallback }
        guard i + 1 < rest.count, let value = T(rest[i + 1]) else { fail("\(name) needs a value", 64) }
        rest.removeSubrange(i...i + 1)
        return value
    }
}

var parsed = Arguments(rest: Array(CommandLine.arguments.dropFirst()))
if parsed.flag("--help") || parsed.flag("-h") {
    print("""
        usage: peak [--repeats N] [--seconds S]
               peak --gemm MxNxK [--transposed-a] [--transposed-b] [--cold]
               peak --model [--emb E] [--hidden H] [--batch-size B] [--seq-len S] [--vocab V] [--layers L]
                            [--data FILE] [--no-peak] [--no-breakdown] [--steps-only] [--repeats N] [--seconds S]
        """)
    exit(0)
}
let modelMode = parsed.flag("--model")
let gemmShape: String = parsed.option("--gemm", "")
let gemmTransposedA = parsed.flag("--transposed-a")
let gemmTransposedB = parsed.flag("--transposed-b")
let gemmCold = parsed.flag("--cold")
let transposeShape: String = parsed.option("--transpose", "")
let skipPeak = parsed.flag("--no-peak")
let skipBreakdown = parsed.flag("--no-breakdown")
let stepsOnly = parsed.flag("--steps-only")
let repeats: Int = parsed.option("--repeats", 30)
let seconds: Double = parsed.option("--seconds", 0.002)
let emb: Int = parsed.option("--emb", 16)
let hidden: Int = parsed.option("--hidden", 64)
let batch: Int = parsed.option("--batch-size", 32)
let seqLen: Int = parsed.option("--seq-len", 16)
let vocabSize: Int = parsed.option("--vocab", 27)
let layerCount: Int = parsed.option("--layers", 1)
let dataPath: String = parsed.option("--data", "")
if !parsed.rest.isEmpty { fail("unknown arguments \(parsed.rest) (see --help)", 64) }

// MARK: - Timing

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

/// Seconds per call of `body`: calibrates a count so that one repetition lasts about `seconds`,
/// then times `repeats` repetitions and returns the fastest and the median.
///
/// The machine is shared: a repetition that the scheduler interrupts is slow for reasons that
/// have nothing to do with the code. Many short repetitions and their minimum give what the
/// code costs when it has the core; the median shows how much the sharing adds.
func measure(_ body: () -> Void) -> (best: Double, median: Double) {
    body()
    var count = 1
    while true {
        let start = now()
        for _ in 0..<count { body() }
        let elapsed = now() - start
        if elapsed >= seconds / 4 || count >= 1 << 30 {
            count = max(1, Int(Double(count) * seconds / max(elapsed, 1e-9)))
            break
        }
        count *= 4
    }
    var samples: [Double] = []
    for _ in 0..<repeats {
        let start = now()
        for _ in 0..<count { body() }
        samples.append((now() - start) / Double(count))
    }
    samples.sort()
    return (samples[0], samples[samples.count / 2])
}

/// The fastest time per call (see ``measure(_:)``).
func timePerCall(_ body: () -> Void) -> Double { measure(body).best }

func fixed(_ x: Double, _ decimals: Int) -> String {
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let r = (x * scale).rounded() / scale
    var s = decimals == 0 ? String(Int(r)) : String(r)
    if decimals > 0, let dot = s.firstIndex(of: ".") {
        let have = s.distance(from: dot, to: s.endIndex) - 1
        if have < decimals { s += String(repeating: "0", count: decimals - have) }
    }
    return s
}

// MARK: - FMA peak

/// The best of `max(10 · repeats, 100)` runs of ``PeakThroughput`` (a peak is a maximum, not a
/// typical value), in GFLOP/s: the same probe the training executables use for MFU.
func measurePeak() -> Double { PeakThroughput.measure(runs: max(10 * repeats, 100)) / 1e9 }

let peakGFLOPs: Double? = skipPeak ? nil : measurePeak()
if let p = peakGFLOPs {
    print("peak: \(fixed(p, 1)) GFLOP/s fp32 (one core, \(PeakThroughput.method), best of \(max(10 * repeats, 100)) runs)")
}
func ofPeak(_ gflops: Double) -> String {
    guard let peakGFLOPs else { return "" }
    return "  (\(fixed(100 * gflops / peakGFLOPs, 1))% of peak)"
}

// MARK: - One product

if !gemmShape.isEmpty {
    let dims = gemmShape.split(separator: "x").compactMap { Int($0) }
    if dims.count != 3 { fail("--gemm needs MxNxK", 64) }
    let (m, n, k) = (dims[0], dims[1], dims[2])
    var rng = SplitMix64(seed: 5)
    let a = (0..<(m * k)).map { _ in rng.symmetric(1) }
    let b = (0..<(k * n)).map { _ in rng.symmetric(1) }
    var c = [Float](repeating: 0, count: m * n)
    // `--cold`: before each call, write a 64 MiB buffer (more than the last-level cache), so the
    // product reads its operands from memory, as a pipeline's micro-batch does; fastest of 50.
    var flush = [Float](repeating: 0, count: gemmCold ? 16 << 20 : 0)
    let t = a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in c.withUnsafeMutableBufferPointer { c in
        func product() {
            if gemmTransposedB {
                Kernels.gemm(m: m, n: n, k: k, a: a.baseAddress!, rowStride: gemmTransposedA ? 1 : k,
                             depthStride: gemmTransposedA ? m : 1, transposedB: b.baseAddress!, ldb: k,
                             c: c.baseAddress!, ldc: n)
            } else {
                Kernels.gemm(m: m, n: n, k: k, a: a.baseAddress!, rowStride: gemmTransposedA ? 1 : k,
                             depthStride: gemmTransposedA ? m : 1, b: b.baseAddress!, ldb: n,
                             c: c.baseAddress!, ldc: n)
            }
        }
        guard gemmCold else { return timePerCall(product) }
        var best = Double.infinity
        for _ in 0..<50 {
            flush.withUnsafeMutableBufferPointer { f in for i in stride(from: 0, to: f.count, by: 16) { f[i] += 1 } }
            let start = now()
            product()
            best = min(best, now() - start)
        }
        return best
    } } }
    let g = 2 * Double(m * n * k) / t / 1e9
    print("gemm: \(m)×\(n)×\(k)\(gemmTransposedA ? " Aᵀ" : "")\(gemmTransposedB ? " Bᵀ" : "")\(gemmCold ? " cold" : "")  \(fixed(t * 1e6, 3)) µs  \(fixed(g, 1)) GFLOP/s\(ofPeak(g))")
}

// MARK: - One transpose

if !transposeShape.isEmpty {
    let dims = transposeShape.split(separator: "x").compactMap { Int($0) }
    if dims.count != 2 { fail("--transpose needs RxC", 64) }
    let input = [Float](repeating: 1, count: dims[0] * dims[1])
    var output = input
    let t = input.withUnsafeBufferPointer { i in output.withUnsafeMutableBufferPointer { o in
        timePerCall { Kernels.transpose(i.baseAddress!, rows: dims[0], cols: dims[1], into: o.baseAddress!) }
    } }
    print("transpose: \(dims[0])×\(dims[1])  \(fixed(t * 1e6, 3)) µs  \(fixed(t * 1e9 / Double(dims[0] * dims[1]), 3)) ns/element")
}

// MARK: - Model: the six products and the whole step

if modelMode {
    // A synthetic data set: random lower-case words, so the vocabulary is `vocabSize` tokens and
    // the sampler does exactly the work it does in `train`. Or the real file, if given.
    let dataset: Dataset
    do {
        if dataPath.isEmpty {
            var rng = SplitMix64(seed: 1)
            var bytes: [UInt8] = []
            for _ in 0..<5000 {
                for _ in 0..<(3 + rng.below(6)) { bytes.append(UInt8(0x61 + rng.below(max(1, vocabSize - 1)))) }
                bytes.append(0x0A)
            }
            for c in 0..<(vocabSize - 1) { bytes.append(UInt8(0x61 + c)); bytes.append(0x0A) }
            dataset = try Dataset(bytes: bytes, seqLen: seqLen, name: "synthetic")
        } else {
            dataset = try Dataset.load(path: dataPath, seqLen: seqLen)
        }
    } catch {
        fail("\(error)", 1)
    }
    let config = ModelConfig(vocab: dataset.vocabulary.count, seqLen: seqLen, emb: emb, hidden: hidden, layers: layerCount)
    let model = Model(config: config, batchSize: batch)
    model.load(config.initialParameters(seed: 42))
    let optimizer = Optimizer(config: OptimizerConfig(kind: .sgd, learningRate: 0.1), count: model.parameters.count)
    let sampler = BatchSampler(examples: dataset.train, batchSize: batch, seed: 42, stream: .trainingBatches)
    print("model: \(config), batch \(batch), \(config.parameterCount) parameters")

    let flops = config.plan.trainingFlops(batchSize: batch)
    print("flops_per_step: \(fixed(flops / 1e6, 3)) MFLOP (6·B·in·out summed over the Linears)")

    // The reference step of `SingleRank`: sample → forward → zero grads → backward → update.
    var step = 0
    var lossSink: Float = 0
    func trainStep() {
        sampler.fill(index: step, rows: 0..<batch, tokens: model.tokens.value, targets: model.targets)
        lossSink += model.forward()
        model.parameters.zeroGradients()
        model.backward()
        optimizer.step(model.parameters.value, model.parameters.grad, t: step + 1)
        step += 1
    }
    // Keep the weights where training would take them, so the ReLU pattern is realistic, then
    // put them back before every timed phase (a long timed run at lr 0.1 could diverge).
    for _ in 0..<200 { trainStep() }
    let trained = Array(UnsafeBufferPointer(start: model.parameters.value, count: model.parameters.count))
    let reload = { model.load(trained) }

    let (stepTime, stepMedian) = measure(trainStep)
    reload()
    let stepGFLOPs = flops / stepTime / 1e9
    print("step_us: \(fixed(stepTime * 1e6, 2)) (fastest of \(repeats) repetitions; median \(fixed(stepMedian * 1e6, 2)))")
    print("step_gflops: \(fixed(stepGFLOPs, 1))\(ofPeak(stepGFLOPs))")

    // The per-step work over all Ψ parameters that does not shrink with the batch: zeroing the
    // gradients and the optimizer's update, for each update rule (the median: in a step these
    // passes find the parameters out of cache more often than a tight loop does). `plan`'s cost
    // model charges it per parameter a rank updates, apart from the chain's forward and backward.
    for kind in OptimizerKind.allCases {
        let update = Optimizer(config: OptimizerConfig(kind: kind, learningRate: 1e-9), count: model.parameters.count)
        var t = 0
        let time = measure {
            model.parameters.zeroGradients()
            update.step(model.parameters.value, model.parameters.grad, t: t + 1)
            t += 1
        }.median
        print("update_us_\(kind.rawValue): \(fixed(time * 1e6, 2)) (zero the gradients + one \(kind.rawValue) update of \(model.parameters.count) parameters; median of \(repeats))")
    }
    reload()
    if stepsOnly { exit(0) }

    // The matrix products alone, with exactly the arguments the layers pass in the step.
    let acts = model.chain.activations
    var productTime = 0.0
    var rows: [(String, Double, Double)] = []
    for block in model.plan.blocks where block.kind.isLinear {
        let i = block.index
        let s = (inputs: block.weightRows, outputs: block.weightColumns)
        let layer = model.chain.layers[i] as! Linear
        let x = acts[i], y = acts[i + 1]
        let name = block.name
        let f = 2 * Double(batch) * Double(s.inputs) * Double(s.outputs)
        let forward = timePerCall {
            Kernels.gemm(m: batch, n: s.outputs, k: s.inputs, a: x.value, rowStride: s.inputs, depthStride: 1,
                         b: layer.weight, ldb: s.outputs, c: y.value, ldc: s.outputs,
                         epilogue: .init(bias: UnsafePointer(layer.bias), relu: layer.relu))
        }
        let dW = timePerCall {
            Kernels.gemm(m: s.inputs, n: s.outputs, k: batch, a: x.value, rowStride: 1, depthStride: s.inputs,
                         b: y.grad, ldb: s.outputs, c: layer.weightGrad, ldc: s.outputs)  // overwritten, as in the step
        }
        let dX = timePerCall {
            Kernels.gemm(m: batch, n: s.inputs, k: s.outputs, a: y.grad, rowStride: s.outputs, depthStride: 1,
                         transposedB: layer.weight, ldb: s.outputs, c: x.grad, ldc: s.inputs)
        }
        rows.append(("\(name) forward  x·W    \(batch)×\(s.inputs)·\(s.inputs)×\(s.outputs)", forward, f))
        rows.append(("\(name) backward xᵀ·dy   \(s.inputs)×\(batch)·\(batch)×\(s.outputs)", dW, f))
        rows.append(("\(name) backward dy·Wᵀ   \(batch)×\(s.outputs)·\(s.outputs)×\(s.inputs)", dX, f))
        productTime += forward + dW + dX
    }
    reload()
    for (label, t, f) in rows {
        let g = f > 0 ? "  \(fixed(f / t / 1e9, 1)) GFLOP/s\(ofPeak(f / t / 1e9))" : ""
        print("product: \(label)  \(fixed(t * 1e6, 2)) µs\(g)")
    }
    let productGFLOPs = flops / productTime / 1e9
    print("products_us: \(fixed(productTime * 1e6, 2))")
    print("products_gflops: \(fixed(productGFLOPs, 1))\(ofPeak(productGFLOPs))")

    if !skipBreakdown {
        // The step phase by phase, each timed alone in a loop (so caches are warmer than in a
        // real step: the sum is a lower bound of the step time).
        var phases: [(String, Double)] = []
        var sampleIndex = 1_000_000
        phases.append(("sample batch", timePerCall {
            sampler.fill(index: sampleIndex, rows: 0..<batch, tokens: model.tokens.value, targets: model.targets)
            sampleIndex += 1
        }))
        let loss = model.chain.loss!
        for (i, layer) in model.chain.layers.enumerated() {
            let name = model.plan[i].name
            phases.append(("\(name) forward", timePerCall { layer.forward(acts[i], acts[i + 1]) }))
        }
        let lossForward = timePerCall { lossSink += loss.forward(model.logits, model.targets) }
        phases.append(("loss forward (softmax)", lossForward))

        // Backward of the loss turns the probabilities into gradients in place: redo forward each time.
        let lossBoth = timePerCall {
            lossSink += loss.forward(model.logits, model.targets)
            loss.backward(model.logits, model.targets)
        }
        phases.append(("loss backward", max(0, lossBoth - lossForward)))
        for i in stride(from: model.chain.layers.count - 1, through: 0, by: -1) {
            let name = model.plan[i].name
            if let linear = model.chain.layers[i] as? Linear {
                phases.append(("\(name) backward", timePerCall { linear.backward(acts[i], acts[i + 1], accumulate: false) }))
            } else if let embedding = model.chain.layers[i] as? Embedding {
                phases.append(("\(name) backward", timePerCall { embedding.backward(acts[i], acts[i + 1], accumulate: false) }))
            }
        }
        reload()
        phases.append(("optimizer (sgd)", timePerCall {
            optimizer.step(model.parameters.value, model.parameters.grad, t: 1)
        }))
        reload()
        let total = phases.reduce(0) { $0 + $1.1 }
        for (name, t) in phases {
            print("phase: \(name)  \(fixed(t * 1e6, 2)) µs  \(fixed(100 * t / total, 1))%")
        }
        print("phases_us: \(fixed(total * 1e6, 2)) (sum of phases timed alone)")
    }
    if lossSink.isNaN { print("") }
}
