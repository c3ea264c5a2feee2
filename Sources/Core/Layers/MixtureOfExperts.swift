#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A mixture-of-experts block (`--experts E --top-k K`): `[B × in]` → `[B × out]`.
///
///     p_r   = softmax(x_r · W_r)                      router, W_r [in × E], no bias
///     S_r   = the K largest p_r,e (ties: the lower e)   chosen experts, in slot order
///     g_r,k = p_r,e_k / Σ_{j ∈ S_r} p_r,j               gates, summing to 1 over the K slots
///     y_r   = Σ_{kept k} g_r,k · ReLU(x_r · W_e_k + b_e_k)
///     aux   = α · E · Σ_e f_e · P_e,   f_e = routed_e / (B·K),  P_e = (1/B) Σ_r p_r,e
///
/// **Capacity.** Dropless unless ``ExpertsConfig/capacityFactor`` is set; then each expert keeps
/// at most ⌈C · B · K / E⌉ assignments, taken in row order (then slot order) and the overflow
/// dropped: a dropped assignment adds nothing to its row, and the gates of the kept ones are
/// *not* renormalised again (a row that lost a slot simply has a smaller output). `f_e` counts
/// the assignments routed to e before any is dropped (what the router asked for).
///
/// **Computation.** The kept assignments are sorted by expert (a counting sort, stable in row
/// order) and their input rows gathered into one packed buffer, so every expert runs one
/// Linear over its contiguous rows with the same GEMM kernels as ``Linear``; nothing is
/// allocated per step (the packed buffers hold the worst case, B·K rows).
///
/// **Backward**, given dy: for each kept (r, k) with packed row q, `dg_r,k = ⟨dy_r, h_q⟩` and
/// `dh_q = g_r,k · dy_r` masked by `h_q > 0`; per expert `db_e += Σ dh`, `dW_e += X_eᵀ · dh`,
/// `dX_e = dh · W_eᵀ`. Through the renormalisation, for every chosen j (kept or dropped, with
/// `dg = 0` for dropped) `∂L/∂p_r,j = (dg_r,j − Σ_{kept k} g_r,k dg_r,k) / Σ_{i ∈ S_r} p_r,i`; the
/// aux loss adds `α E f_e / B` to `∂L/∂p_r,e` for every e (f is a count: no gradient). The softmax
/// gives `dz_r,e = p_r,e (∂L/∂p_r,e − Σ_i p_r,i ∂L/∂p_r,i)`, then `dW_r += xᵀ dz` and
/// `dx = dz · W_rᵀ + Σ_{kept} dX_e rows scattered back to their rows`.
///
/// The aux loss is a side output (``auxiliaryLoss``), not part of `y`: ``Model`` adds it to the
/// cross-entropy, and backward adds its gradient here, whatever arrives in `dy`.
///
/// **Rows over ranks.** B is the whole batch. When a layout spreads its rows over ranks (DP), an
/// ``ExpertBatchExchange`` (``attach(_:)``) makes the capacity count, f and P the whole batch's:
/// one allgather of 2E floats per forward, and the block then computes exactly as on one rank.
///
/// **Micro-batches** (a pipeline, `train_pp` or `train_3d`, with `--micro-batches M > 1`, GPipe,
/// dropless): each
/// micro-batch in flight runs in its own copy of the block (``copyForSlot()``: the same
/// parameters, its own routing state), and the copies share one ``StepRouting``, which adds up
/// the micro-batches' statistics and exchanges them once, at the step's first backward — after
/// every forward under GPipe — so that f, P, the aux loss and its gradient are the whole batch's.
///
/// **Experts over ranks.** Under expert parallelism (`train_ep`) the block holds the router and
/// only ``localExperts``, and an ``ExpertPlacement`` (``place(_:)``; `ExpertShards` in
/// `Training`) sends the packed rows of the other experts to the ranks that hold them and brings
/// their outputs back, and backward the same with the gradients, so everything around the
/// experts is unchanged.
public final class MixtureOfExperts: Layer {
    public let inputs: Int
    public let outputs: Int
    public let experts: ExpertsConfig
    /// The most rows one forward may take (the buffers' worst case).
    public let maxRows: Int
    /// The experts whose parameters this block holds (all of them, except under `train_ep`).
    public let localExperts: Range<Int>
    /// Under expert parallelism: where the other experts are computed (nil: all are local).
    var placement: ExpertPlacement?

    let router: UnsafeMutablePointer<Float>
    let routerGrad: UnsafeMutablePointer<Float>
    /// Local expert i's (expert `localExperts.lowerBound + i`) weight starts at
    /// `expertValues + i · expertStride`, its bias `inputs · outputs` later.
    let expertValues: UnsafeMutablePointer<Float>
    let expertGrads: UnsafeMutablePointer<Float>
    var expertStride: Int { inputs * outputs + outputs }

    /// `[rows × E]`: value the router probabilities p, grad the logits' gradient dz.
    let routing: Activation
    /// `[rows × K]`: value the gates g, grad their gradients dg.
    let gates: Activation
    /// `[rows·K × in]` and `[rows·K × out]`: the kept assignments' inputs and expert outputs,
    /// grouped by expert (value and gradient).
    public let packedInput: Activation
    public let packedOutput: Activation
    /// Int32 state (in the ledger's activations, like the buffers above): chosen experts
    /// `[rows × K]`, packed rows `[rows × K]` (−1: dropped), then per expert the routed count
    /// (the whole batch's), the kept count and the packed start (E + 1 of them; during routing,
    /// the running capacity count).
    let integers: UnsafeMutablePointer<Int32>
    let integerCount: Int
    var choices: UnsafeMutablePointer<Int32> { integers }
    var positions: UnsafeMutablePointer<Int32> { integers + maxRows * experts.topK }
    var routed: UnsafeMutablePointer<Int32> { integers + 2 * maxRows * experts.topK }
    /// Per expert: the assignments it keeps, and the first packed row of its run.
    public var kept: UnsafeMutablePointer<Int32> { routed + experts.count }
    public var starts: UnsafeMutablePointer<Int32> { kept + experts.count }
    /// `2E` floats: this forward's routed counts and probability sums over its rows, as the
    /// ``ExpertBatchExchange`` sends them (also used without one).
    let statistics: UnsafeMutablePointer<Float>
    /// With an exchange: every rank's statistics (`ranks · 2E` floats, in the ledger's buffers).
    var exchange: ExpertBatchExchange?
    var gathered: UnsafeMutablePointer<Float>?
    /// The last forward's batch rows (global with an exchange) and capacity.
    var batchRows = 0
    var capacity = 0

    /// With micro-batches: the step's statistics, shared with the block's other slots (nil otherwise).
    var stepRouting: StepRouting?

    /// The last forward's load-balancing loss, α · E · Σ_e f_e · P_e (the last step's with
    /// micro-batches).
    public var auxiliaryLoss: Float { stepRouting?.auxiliaryLoss ?? ownAuxiliaryLoss }
    var ownAuxiliaryLoss: Float = 0

    /// The last forward's load over the whole batch: the most assignments one expert computed
    /// (after the capacity rule: min(routed, capacity)) over the mean per expert.
    public var imbalance: Float {
        if let stepRouting { return stepRouting.imbalance }
        var most = 0, total = 0
        for x in 0..<experts.count {
            let computed = Swift.min(Int(routed[x]), capacity)
            most = Swift.max(most, computed)
            total += computed
        }
        return total == 0 ? 0 : Float(most) * Float(experts.count) / Float(total)
    }

    /// Router `in × E`, then E experts of `in × out + out`.
    public static func parameterCount(inputs: Int, outputs: Int, experts: Int) -> Int {
        inputs * experts + experts * (inputs * outputs + outputs)
    }

    /// The reference block over `parameters`: the router, then all E experts (canonical order).
    public convenience init(inputs: Int, outputs: Int, experts: ExpertsConfig, rows: Int, parameters: ParameterView) {
        precondition(parameters.count == Self.parameterCount(inputs: inputs, outputs: outputs, experts: experts.count))
        let routerCount = inputs * experts.count
        self.init(inputs: inputs, outputs: outputs, experts: experts, rows: rows,
                  router: ParameterView(value: parameters.value, grad: parameters.grad, count: routerCount),
                  localExperts: 0..<experts.count,
                  expertParameters: ParameterView(value: parameters.value + routerCount, grad: parameters.grad + routerCount,
                                                  count: parameters.count - routerCount))
    }

    /// A block that holds the router (`in × E`) and only the experts `localExperts`
    /// (`expertParameters`: theirs, `in × out + out` each, in order). Every expert must be held
    /// here unless ``shard(over:maxReceived:)`` hands the others to the ranks that hold them (`train_ep`).
    public init(inputs: Int, outputs: Int, experts: ExpertsConfig, rows: Int, router: ParameterView,
                localExperts: Range<Int>, expertParameters: ParameterView) {
        precondition(router.count == inputs * experts.count
                     && expertParameters.count == localExperts.count * (inputs * outputs + outputs))
        precondition(experts.count >= 1 && experts.topK >= 1 && experts.topK <= experts.count && rows >= 1)
        precondition(localExperts.lowerBound >= 0 && localExperts.upperBound <= experts.count)
        self.inputs = inputs
        self.outputs = outputs
        self.experts = experts
        self.localExperts = localExperts
        maxRows = rows
        self.router = router.value
        routerGrad = router.grad
        expertValues = expertParameters.value
        expertGrads = expertParameters.grad
        routing = Activation(rows: rows, cols: experts.count)
        gates = Activation(rows: rows, cols: experts.topK)
        packedInput = Activation(rows: rows * experts.topK, cols: inputs)
        packedOutput = Activation(rows: rows * experts.topK, cols: outputs)
        integerCount = 2 * rows * experts.topK + 3 * experts.count + 1
        integers = .allocate(capacity: integerCount)
        integers.initialize(repeating: 0, count: integerCount)
        statistics = .allocate(capacity: 2 * experts.count)
        statistics.initialize(repeating: 0, count: 2 * experts.count)
        MemoryLedger.add(.activations, bytes: 4 * (integerCount + 2 * experts.count))
    }

    deinit {
        integers.deallocate()
        statistics.deallocate()
        MemoryLedger.add(.activations, bytes: -4 * (integerCount + 2 * experts.count))
        if let gathered, let exchange {
            gathered.deallocate()
            MemoryLedger.add(.buffers, bytes: -4 * exchange.ranks * 2 * experts.count)
        }
    }

    /// Makes the block see the whole batch through `exchange` (data parallelism); allocates the
    /// gathered statistics once, here.
    public func attach(_ exchange: ExpertBatchExchange) {
        precondition(self.exchange == nil)
        self.exchange = exchange
        let count = exchange.ranks * 2 * experts.count
        gathered = .allocate(capacity: count)
        gathered!.initialize(repeating: 0, count: count)
        MemoryLedger.add(.buffers, bytes: 4 * count)
    }

    // MARK: - Forward

    public func forward(_ input: Activation, _ output: Activation) {
        let rows = input.rows, e = experts.count, k = experts.topK
        precondition(rows <= maxRows)
        let p = routing.value
        // Router logits, then a numerically safe softmax per row.
        Kernels.gemm(m: rows, n: e, k: inputs, a: input.value, rowStride: inputs, depthStride: 1,
                     b: router, ldb: e, c: p, ldc: e)
        for r in 0..<rows { Self.softmax(p + r * e, count: e) }
        route(rows: rows)
        // Gather each kept assignment's input row into its expert's packed rows.
        for a in 0..<rows * k where positions[a] >= 0 {
            Kernels.copy(input.value + (a / k) * inputs, into: packedInput.value + Int(positions[a]) * inputs, count: inputs)
        }
        if let placement {
            placement.forward(self)  // every expert's rows to its rank and back
        } else {
            precondition(localExperts.count == e, "a block without some experts needs shard(_:)")
            for x in 0..<e where kept[x] > 0 {
                let start = Int(starts[x])
                runExpert(x, rows: Int(kept[x]), input: packedInput.value + start * inputs, output: packedOutput.value + start * outputs)
            }
        }
        // y_r = Σ_{kept k} g_r,k · h, in slot order.
        Kernels.zero(output.value, count: rows * outputs)
        for a in 0..<rows * k where positions[a] >= 0 {
            let y = output.value + (a / k) * outputs, h = packedOutput.value + Int(positions[a]) * outputs, g = gates.value[a]
            for o in 0..<outputs { y[o] += g * h[o] }
        }
        // aux = α · E · Σ_e f_e · P_e over the whole batch (``route(rows:)`` left its sums).
        var sum: Float = 0
        for x in 0..<e {
            sum += Float(routed[x]) / Float(batchRows * k) * (statistics[e + x] / Float(batchRows))
        }
        ownAuxiliaryLoss = experts.auxiliaryLossCoefficient * Float(e) * sum
    }

    /// Top-K per row (ties to the lower expert) and the gates; then, over the whole batch, the
    /// routed counts and probability sums (exchanged when the rows are spread over ranks), the
    /// capacity rule in row order, and the packed position of every kept assignment.
    func route(rows: Int) {
        let e = experts.count, k = experts.topK, p = routing.value
        for x in 0..<e { routed[x] = 0; kept[x] = 0; starts[x] = 0 }
        for r in 0..<rows {
            let row = p + r * e, chosen = choices + r * k
            var total: Float = 0
            for slot in 0..<k {
                var best = -1
                for x in 0..<e where !Self.contains(chosen, slot, Int32(x)) {
                    if best < 0 || row[x] > row[best] { best = x }
                }
                chosen[slot] = Int32(best)
                total += row[best]
            }
            for slot in 0..<k {
                gates.value[r * k + slot] = row[Int(chosen[slot])] / total
                routed[Int(chosen[slot])] += 1
            }
        }
        for x in 0..<e {
            var sum: Float = 0
            for r in 0..<rows { sum += p[r * e + x] }
            statistics[x] = Float(routed[x])
            statistics[e + x] = sum
        }
        // Whole batch: `starts` counts, per expert, the assignments in the rows before this
        // rank's (the capacity count continues from there); `routed` and the sums become global.
        batchRows = rows
        if let exchange, let gathered {
            exchange.allgather(statistics, count: 2 * e, into: gathered)
            batchRows = exchange.batchRows
            for x in 0..<e {
                var before: Float = 0, all: Float = 0, sum: Float = 0
                for rank in 0..<exchange.ranks {
                    let theirs = gathered + rank * 2 * e
                    if rank < exchange.rank { before += theirs[x] }
                    all += theirs[x]
                    sum += theirs[e + x]
                }
                starts[x] = Int32(before)
                routed[x] = Int32(all)
                statistics[e + x] = sum
            }
        }
        stepRouting?.add(statistics, rows: rows)  // micro-batches: the whole batch's come at the first backward
        capacity = experts.capacity(rows: batchRows)
        for a in 0..<rows * k {
            let x = Int(choices[a])
            if Int(starts[x]) < capacity {
                positions[a] = kept[x]  // the rank inside the expert for now; made global below
                kept[x] += 1
            } else {
                positions[a] = -1
            }
            starts[x] += 1
        }
        starts[0] = 0
        for x in 0..<e { starts[x + 1] = starts[x] + kept[x] }
        for a in 0..<rows * k where positions[a] >= 0 { positions[a] += starts[Int(choices[a])] }
    }

    @inline(__always)
    static func contains(_ chosen: UnsafeMutablePointer<Int32>, _ count: Int, _ x: Int32) -> Bool {
        for i in 0..<count where chosen[i] == x { return true }
        return false
    }

    /// `v ← softmax(v)` over `count` floats: `exp(v − max)`, then normalised.
    static func softmax(_ v: UnsafeMutablePointer<Float>, count: Int) {
        var top = v[0]
        for i in 1..<count { top = Swift.max(top, v[i]) }
        var sum: Float = 0
        for i in 0..<count {
            v[i] = expf(v[i] - top)
            sum += v[i]
        }
        for i in 0..<count { v[i] /= sum }
    }

    /// `output = ReLU(input · W_x + b_x)` over `rows` rows, x a local expert (global index).
    @inline(__always)
    public func runExpert(_ x: Int, rows: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) {
        let weight = expertValues + (x - localExperts.lowerBound) * expertStride
        Kernels.gemm(m: rows, n: outputs, k: inputs, a: input, rowStride: inputs, depthStride: 1,
                     b: weight, ldb: outputs, c: output, ldc: outputs,
                     epilogue: .init(bias: UnsafePointer(weight + inputs * outputs), relu: true))
    }

    /// Local expert x's Linear backward over `rows` rows whose output gradient (ReLU mask and
    /// gate applied) is `outputGrad`: adds `db_x += Σ dh`, `dW_x += Xᵀ·dh`; writes `dX = dh·W_xᵀ`.
    @inline(__always)
    public func backwardExpert(_ x: Int, rows: Int, input: UnsafePointer<Float>, outputGrad: UnsafePointer<Float>,
                        inputGrad: UnsafeMutablePointer<Float>) {
        let weight = expertValues + (x - localExperts.lowerBound) * expertStride
        let grad = expertGrads + (x - localExperts.lowerBound) * expertStride
        Kernels.columnSums(outputGrad, rows: rows, cols: outputs, into: grad + inputs * outputs, accumulate: true)
        Kernels.gemm(m: inputs, n: outputs, k: rows, a: input, rowStride: 1, depthStride: inputs,
                     b: outputGrad, ldb: outputs, c: grad, ldc: outputs, epilogue: .init(accumulate: true))
        Kernels.gemm(m: rows, n: inputs, k: outputs, a: outputGrad, rowStride: outputs, depthStride: 1,
                     transposedB: weight, ldb: outputs, c: inputGrad, ldc: inputs)
    }

    // MARK: - Backward

    public func backward(_ input: Activation, _ output: Activation) {
        let rows = input.rows, e = experts.count, k = experts.topK
        let p = routing.value, dz = routing.grad, dg = gates.grad
        if let stepRouting {  // the whole batch's f (routed counts) and B for the aux gradient
            stepRouting.exchangeIfNeeded()
            routed.update(from: stepRouting.routed, count: e)
            batchRows = stepRouting.batchRows
        }
        // dg and dh per kept assignment.
        for a in 0..<rows * k {
            guard positions[a] >= 0 else { dg[a] = 0; continue }
            let dy = output.grad + (a / k) * outputs, q = Int(positions[a])
            let h = packedOutput.value + q * outputs, dh = packedOutput.grad + q * outputs, g = gates.value[a]
            var dot: Float = 0
            for o in 0..<outputs {
                dot += dy[o] * h[o]
                dh[o] = h[o] > 0 ? g * dy[o] : 0
            }
            dg[a] = dot
        }
        // Each expert's Linear backward over its packed rows (on its own rank under train_ep).
        if let placement {
            placement.backward(self)
        } else {
            for x in 0..<e where kept[x] > 0 {
                let start = Int(starts[x])
                backwardExpert(x, rows: Int(kept[x]), input: packedInput.value + start * inputs,
                               outputGrad: packedOutput.grad + start * outputs, inputGrad: packedInput.grad + start * inputs)
            }
        }
        // ∂L/∂p (gates and aux), then through the softmax.
        let auxScale = experts.auxiliaryLossCoefficient * Float(e) / Float(batchRows)
        for r in 0..<rows {
            let row = p + r * e, d = dz + r * e, chosen = choices + r * k
            var total: Float = 0, weighted: Float = 0
            for slot in 0..<k {
                total += row[Int(chosen[slot])]
                weighted += gates.value[r * k + slot] * dg[r * k + slot]
            }
            for x in 0..<e { d[x] = auxScale * Float(routed[x]) / Float(batchRows * k) }
            for slot in 0..<k { d[Int(chosen[slot])] += (dg[r * k + slot] - weighted) / total }
            var inner: Float = 0
            for x in 0..<e { inner += row[x] * d[x] }
            for x in 0..<e { d[x] = row[x] * (d[x] - inner) }
        }
        // dW_r += xᵀ · dz; dx = dz · W_rᵀ, plus the experts' input gradients scattered back.
        Kernels.gemm(m: inputs, n: e, k: rows, a: input.value, rowStride: 1, depthStride: inputs,
                     b: dz, ldb: e, c: routerGrad, ldc: e, epilogue: .init(accumulate: true))
        Kernels.gemm(m: rows, n: inputs, k: e, a: dz, rowStride: e, depthStride: 1,
                     transposedB: router, ldb: e, c: input.grad, ldc: inputs)
        for a in 0..<rows * k where positions[a] >= 0 {
            Kernels.add(packedInput.grad + Int(positions[a]) * inputs, into: input.grad + (a / k) * inputs, count: inputs)
        }
    }
}

extension MixtureOfExperts: SlotCopyable {
    /// Makes the block, and the copies ``copyForSlot()`` makes of it, route a pipeline's
    /// micro-batches as one batch through `routing` (instead of ``attach(_:)``).
    public func shareStepRouting(_ routing: StepRouting) {
        precondition(exchange == nil && stepRouting == nil && experts.capacityFactor == nil)
        stepRouting = routing
    }

    /// A block over the same parameters with its own routing state and exchange buffers, for
    /// another micro-batch in flight (pipelines with ``StepRouting`` only).
    public func copyForSlot() -> Layer {
        guard let stepRouting else { preconditionFailure("a mixture of experts is copied for a pipeline slot only with a StepRouting") }
        let copy = MixtureOfExperts(inputs: inputs, outputs: outputs, experts: experts, rows: maxRows,
                                    router: ParameterView(value: router, grad: routerGrad, count: inputs * experts.count),
                                    localExperts: localExperts,
                                    expertParameters: ParameterView(value: expertValues, grad: expertGrads,
                                                                    count: localExperts.count * expertStride))
        copy.stepRouting = stepRouting
        if let placement { copy.place(placement.copy(for: copy)) }
        return copy
    }
}

/// Where a mixture of experts computes the experts it does not hold (expert parallelism): after
/// routing, the block's kept assignments sit in ``MixtureOfExperts/packedInput``, grouped by
/// expert (``MixtureOfExperts/kept`` rows from ``MixtureOfExperts/starts``); ``forward(_:)``
/// must leave every one's expert output in ``MixtureOfExperts/packedOutput`` and ``backward(_:)``
/// every one's input gradient in `packedInput.grad`, adding the held experts' parameter
/// gradients (``MixtureOfExperts/runExpert(_:rows:input:output:)``,
/// ``MixtureOfExperts/backwardExpert(_:rows:input:outputGrad:inputGrad:)``).
public protocol ExpertPlacement: AnyObject {
    func forward(_ block: MixtureOfExperts)
    func backward(_ block: MixtureOfExperts)
    /// The same placement, with its own buffers, for `block`: a copy of the block for another
    /// pipeline slot.
    func copy(for block: MixtureOfExperts) -> ExpertPlacement
}

extension MixtureOfExperts {
    /// Makes this block compute the experts it does not hold through `placement`.
    public func place(_ placement: ExpertPlacement) {
        precondition(self.placement == nil)
        self.placement = placement
    }
}
