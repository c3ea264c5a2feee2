import Core
import Distributed

/// What a DiLoCo checkpoint holds beyond the canonical files, so that a run resumes bit for bit
/// at any step, between outer steps too (``LayoutState``):
///
/// | file | floats |
/// |---|---|
/// | `diloco_outer_parameters.f32` | θ, Ψ |
/// | `diloco_outer_momentum.f32` | u, Ψ |
/// | `diloco_worker_parameters.f32` | every worker's θᵢ, N·Ψ in rank order |
/// | `diloco_worker_adam_m.f32`, `diloco_worker_adam_v.f32` | every worker's inner moments, N·Ψ (Adam only) |
///
/// The canonical `parameters.f32` and `adam_*.f32` are worker 0's: any other layout resumes a
/// DiLoCo checkpoint as worker 0's model (θ itself when saved right after an outer step), and
/// DiLoCo resumes any other layout's checkpoint with θ and every θᵢ its parameters, u zero and
/// its moments on every worker.
///
/// Saving gathers the workers' vectors with allgathers of Ψ floats each (kept by rank 0);
/// loading broadcasts them whole, each worker keeping its own: N·Ψ floats held for a moment.
final class DiLoCoState: LayoutState {
    let local: LocalParameters
    let outer: OuterOptimizer

    static let outerParameters = "diloco_outer_parameters.f32", outerMomentum = "diloco_outer_momentum.f32"

    init(local: LocalParameters, outer: OuterOptimizer) {
        self.local = local
        self.outer = outer
    }

    /// The per-worker files and the buffers they come from.
    var workerFiles: [(name: String, values: UnsafeMutablePointer<Float>)] {
        var files = [("diloco_worker_parameters.f32", local.values)]
        if let m = local.optimizer.moment1, let v = local.optimizer.moment2 {
            files += [("diloco_worker_adam_m.f32", m), ("diloco_worker_adam_v.f32", v)]
        }
        return files
    }

    func gather(_ world: Communicator) -> [String: [Float]]? {
        let count = outer.count
        var files: [String: [Float]] = [:]
        for (name, values) in workerFiles {
            var all = [Float](repeating: 0, count: world.size * count)
            all.withUnsafeMutableBufferPointer { world.allgather(values, count: count, into: $0.baseAddress!) }
            files[name] = all
        }
        guard world.rank == 0 else { return nil }
        files[Self.outerParameters] = Array(UnsafeBufferPointer(start: outer.outerParameters.pointer, count: count))
        files[Self.outerMomentum] = Array(UnsafeBufferPointer(start: outer.momentum.pointer, count: count))
        return files
    }

    func load(_ files: [String: [Float]]?, _ world: Communicator) throws(UsageError) {
        let count = outer.count, workers = world.size
        let names = [Self.outerParameters, Self.outerMomentum] + workerFiles.map(\.name)
        // Rank 0 decides: 0 none of DiLoCo's files (another layout's checkpoint), 1 all of them, 2 a mismatch.
        var problem: String?
        if let files, names.contains(where: { files[$0] != nil }) {
            if let missing = names.first(where: { files[$0] == nil }) {
                problem = "the checkpoint's DiLoCo state has no \(missing)"
            } else if files[Self.outerParameters]!.count != count || files[Self.outerMomentum]!.count != count {
                problem = "the checkpoint's outer parameters or momentum do not have \(count) floats"
            } else if let (name, _) = workerFiles.first(where: { files[$0.name]!.count != workers * count }) {
                problem = "the checkpoint holds \(files[name]!.count / max(1, count)) workers' state (\(name)), this run has \(workers)"
            }
        }
        var status: Int32 = problem != nil ? 2 : (files.map { names.allSatisfy($0.keys.contains) } ?? false) ? 1 : 0
        world.broadcast(&status, count: 1, root: 0)
        if status == 2 { throw UsageError(problem ?? "the checkpoint's DiLoCo state does not fit this run") }
        guard status == 1 else {
            // Another layout's checkpoint: every worker starts from its parameters, θ = θᵢ, u = 0.
            Kernels.copy(local.values, into: outer.outerParameters.pointer, count: count)
            outer.momentum.zero()
            return
        }
        for (name, target) in [(Self.outerParameters, outer.outerParameters.pointer), (Self.outerMomentum, outer.momentum.pointer)] {
            if let values = files?[name] { target.update(from: values, count: count) }
            world.broadcast(target, count: count, root: 0)
        }
        for (name, values) in workerFiles {
            var all = files?[name] ?? [Float](repeating: 0, count: workers * count)
            all.withUnsafeMutableBufferPointer { world.broadcast($0.baseAddress!, count: workers * count, root: 0) }
            all.withUnsafeBufferPointer { values.update(from: $0.baseAddress! + world.rank * count, count: count) }
        }
    }
}
