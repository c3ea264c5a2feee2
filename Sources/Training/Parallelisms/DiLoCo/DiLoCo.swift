import Core
import Distributed

/// `train_diloco`: DiLoCo (Douillard et al. 2023), data parallelism that communicates once every
/// H steps, and its streaming form (Streaming DiLoCo, Douillard et al. 2025).
///
/// N **workers** (the ranks, the mesh's `dp` axis) each hold a whole replica and its own inner
/// optimizer (`--optimizer`: SGD or AdamW). Every step each worker draws the same global batch,
/// trains on its own B/N rows, and updates **its own** parameters θᵢ with the inner optimizer:
/// no gradient travels. A worker optimises its own mean loss, so the loss is scaled by N/B (its
/// rows), not DP's 1/B.
///
/// Every H steps (`--inner-steps H`) comes the **outer step**. All workers also keep θ, the outer
/// parameters (where every worker started H steps ago), and the outer momentum u:
///
///     Δ = (1/N) Σᵢ (θ − θᵢ)             one allreduce of Ψ floats: the pseudo-gradient
///     u ← μ·u + Δ                         SGD with Nesterov momentum μ (`--outer-momentum`, 0.9)
///     θ ← θ − η·(Δ + μ·u)                 at the outer learning rate η (`--outer-lr`, 0.7)
///     θᵢ ← θ                              every worker continues from the new outer parameters
///
/// The inner optimizer's moments are never exchanged: they stay each worker's own.
///
/// **Exactness.** With H = 1, η = 1, μ = 0 and SGD inside, θᵢ = θ − λ·gᵢ with gᵢ the gradient
/// of worker i's mean loss over its B/N rows, so Δ = λ·(1/N) Σᵢ gᵢ = λ·g, g the gradient of the
/// global batch's mean loss, and the outer step sets θ ← θ − λ·g: DP's and `train`'s update, in
/// exact arithmetic. In floats Δ is computed as θ − θᵢ after θᵢ was rounded, so the results agree
/// to float rounding, not bit for bit (the tests allow `train`'s tolerances).
///
/// **Streaming** (`--fragments F`): the Ψ floats are cut into F contiguous fragments, and
/// fragment f takes its outer step after the steps t ≡ f·H/F (mod H) (``OuterOptimizer``): every
/// fragment still travels once every H steps, but each exchange carries Ψ/F floats, so the peak
/// bytes per exchange fall F-fold and the link is busy more evenly.
///
/// **Bytes per step and rank:** Ψ floats allreduced (2·(N−1)/N·4Ψ on the wire with a ring) once
/// every H steps, a fragment of Ψ/F every H/F steps with `--fragments F`; plus the 4-byte loss
/// every step, summed so that every worker reports (and stops on) the global batch's loss.
public final class DiLoCo: TrainingLayout {
    let mesh: ProcessMesh
    /// The workers (the mesh's `dp` axis: all ranks).
    let workers: Communicator
    let model: Model
    public let local: LocalParameters
    let steps: MicroSteps
    let globalBatch: Int
    /// θ, the outer momentum, and when each fragment takes its outer step.
    let outer: OuterOptimizer

    public init(_ context: TrainingContext, settings: OuterSettings) throws(UsageError) {
        mesh = try LayoutShape.dataParallel(ranks: context.world.size).makeMesh(context)
        steps = mesh.microSteps(batch: context.batchSize, accumulation: context.options.accumulate)
        let plan = context.plan
        workers = mesh[.dp]
        globalBatch = context.batchSize
        // Each worker's own mean loss: its rows are a 1/N-th of the batch.
        model = Model(config: context.config, batchSize: steps.rowsPerStep, lossScale: 1 / Float(steps.rows.count))
        model.load(context.initialParameters)
        outer = OuterOptimizer(settings, parameters: model.parameters.value, count: plan.parameterCount, workers: workers)
        // Every worker holds the whole model; its parameters are its own between outer steps,
        // and rank 0's are the ones gathered (the outer model itself after an outer step).
        let everything = ParameterMap.contiguous(0, plan.parameterCount)
        var local = LocalParameters(map: everything, reported: workers.rank == 0 ? everything : ParameterMap(),
                                    values: model.parameters.value, gradients: model.parameters.grad,
                                    optimizer: Optimizer(config: context.optimizer, count: plan.parameterCount))
        local.ownState = DiLoCoState(local: local, outer: outer)
        self.local = local
    }

    public func forwardBackward(batch index: Int, from sampler: BatchSampler) -> Float {
        var lossSum: Float = 0
        for j in 0..<steps.count {
            sampler.fill(index: index, rows: steps.rows(j), tokens: model.tokens.value, targets: model.targets)
            lossSum += model.forward()
            if j == 0 { model.parameters.zeroGradients() }
            model.backward()
        }
        return workers.sum(lossSum) / Float(globalBatch)
    }

    /// The inner step on this worker's own parameters; then, on the steps that end a fragment's
    /// period, that fragment's outer step.
    public func update(step: Int) {
        local.optimizer.step(local.values, local.gradients, t: step)
        outer.afterInnerStep(step)
    }

    /// Each worker's model on its rows, summed: after an outer step every worker holds θ, so
    /// this is θ's loss on the global batch (validation every multiple of H evaluates θ).
    public func evaluate(batch index: Int, from sampler: BatchSampler) -> Float {
        let lossSum = model.forwardLoss(batch: index, steps, from: sampler)
        return workers.sum(lossSum) / Float(globalBatch)
    }

    public var summary: String? {
        "DiLoCo: \(workers.size) worker(s), outer step every \(outer.settings.innerSteps) inner step(s), "
            + "outer SGD lr \(outer.settings.learningRate) Nesterov momentum \(outer.settings.momentum), "
            + "\(outer.fragments.count) fragment(s)"
    }
}
