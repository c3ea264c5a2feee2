import Core
import Distributed

/// A chain's blocks sharded over one data-parallel group (ZeRO-3), and the hooks that gather
/// and scatter them around the reference layers.
///
/// Each block's floats (`c` of them, any layout's local block: a reference block, or a
/// tensor-parallel slice in `train_3d`) are padded to `N·⌈c/N⌉` and cut into N equal shards;
/// this rank keeps shard `rank` of every block, back to back in one flat buffer, so the optimizer
/// updates them in one pass and holds state for them only. The layers themselves are the
/// unchanged layers of the blocks, all built over one shared ``GatherBuffer``; the hooks fill it
/// just before a layer needs it:
///
///     willRunForward(i):   allgather the shards of block i → full W, b in the gather buffer
///     willRunBackward(i):  allgather again; zero the full gradients
///     willRunWeightPass(i): (split backward only) zero the full gradients again
///     didRunBackward(i):   reduce-scatter the full gradients → this rank's shard of Σ_ranks ∇;
///                          add it into the shard's gradients (micro-batches accumulate)
///
/// A block may come in several parts sharded over different groups (``Part``): `train_3d --ep`
/// shards a mixture of experts' router over the dp group like every dense float, and this rank's
/// experts over the ranks that hold the same experts (``ThreeDimensional``). The parts are
/// gathered side by side into the gather buffer and reduce-scattered one by one, each over its
/// own group; a one-part block is the plain case above.
///
/// Any N works, whatever divides the widths. Biases and the embedding are sharded and reduced
/// like everything else (ml.c never reduced the bias gradients, so its ranks drifted apart).
/// Per step and rank a block moves 2 allgathers + 1 reduce-scatter of `N·⌈c/N⌉·4` bytes of
/// payload (`(N−1)/N` of it on the wire): over the model 1.5× DP's allreduce volume (ZeRO's
/// figure), for 1/N of the parameter, gradient and optimizer memory plus one gather buffer sized
/// for the largest block.
public final class ShardedParameters: LayerChainHooks {
    /// Floats of one block sharded over one group: its local count, where those floats sit in the
    /// canonical vector, and the ranks that shard it (nil: the ``ShardedParameters``' group).
    public struct Part {
        public var count: Int
        public var map: ParameterMap
        public var group: Communicator?
        public init(count: Int, map: ParameterMap, group: Communicator? = nil) {
            self.count = count
            self.map = map
            self.group = group
        }
    }

    /// One block to shard: its parts (usually one) and how to build its layer over views of
    /// them, gathered side by side. A mixture of experts under expert parallelism has two: the
    /// router, sharded like every dense float, and this rank's experts, sharded over the ranks
    /// that hold the same experts.
    public struct Block {
        public var parts: [Part]
        public var make: ([ParameterView]) -> Layer
        public init(parts: [Part], make: @escaping ([ParameterView]) -> Layer) {
            self.parts = parts
            self.make = make
        }
        /// A block of one part, sharded over the ``ShardedParameters``' group.
        public init(count: Int, map: ParameterMap, make: @escaping (ParameterView) -> Layer) {
            self.init(parts: [Part(count: count, map: map)], make: { make($0[0]) })
        }
    }

    /// One part as this rank holds it: its group, its shard, and where it is gathered.
    struct Shard {
        let group: Communicator
        let view: ParameterView
        /// The part's first float in the gather buffer.
        let offset: Int
        var padded: Int { view.count * group.size }
    }

    /// The blocks' layers, in chain order, each over its gather buffer.
    public let layers: [Layer]
    /// This rank's shards of every block, back to back.
    public let shards: ParameterBuffer
    /// Where `shards` sit in the canonical vector.
    public let map: ParameterMap
    /// One gather buffer, or two that the blocks alternate between (block `i` in buffer `i % 2`).
    let buffers: [GatherBuffer]
    /// This rank's shard of each part of each block.
    let parts: [[Shard]]
    /// With two buffers: the block whose parameters each one holds, gathered in this step's
    /// forward (−1: none). Parameters change only between steps, after every backward.
    var resident: [Int]

    /// - Parameter gatherBuffers: 1, or 2 to keep the last two blocks of a forward gathered for
    ///   the backward that follows it (a single chain: `train_fsdp` without recomputation). The
    ///   blocks alternate between two buffers, so when the forward ends, blocks n − 1 and n − 2
    ///   are still whole and the backward starts without gathering them: per micro-step 2n − 2
    ///   allgathers instead of 2n, for one more buffer of the largest block (Megatron-FSDP also
    ///   keeps at most two units unsharded).
    public init(blocks: [Block], group: Communicator, initialParameters: [Float], gatherBuffers: Int = 1) {
        precondition(gatherBuffers == 1 || gatherBuffers == 2)
        let groups = blocks.map { $0.parts.map { $0.group ?? group } }
        let shardCounts = zip(blocks, groups).map { block, groups in zip(block.parts, groups).map { ($0.count + $1.size - 1) / $1.size } }
        let padded = zip(shardCounts, groups).map { counts, groups in zip(counts, groups).reduce(0) { $0 + $1.0 * $1.1.size } }
        let buffers = (0..<gatherBuffers).map { b in
            let mine = blocks.indices.filter { $0 % gatherBuffers == b }
            return GatherBuffer(capacity: mine.map { padded[$0] }.max() ?? 0, shardCapacity: mine.flatMap { shardCounts[$0] }.max() ?? 0)
        }
        let shards = ParameterBuffer(count: shardCounts.joined().reduce(0, +))
        var map = ParameterMap()
        var offset = 0
        let parts = blocks.indices.map { b in
            var gathered = 0
            return blocks[b].parts.indices.map { p in
                let s = shardCounts[b][p], g = groups[b][p]
                let mine = blocks[b].parts[p].map.slice(g.rank * s ..< (g.rank + 1) * s)
                mine.extract(from: initialParameters, into: shards.value + offset)
                map.append(mine)
                defer { offset += s; gathered += s * g.size }
                return Shard(group: g, view: shards.view(offset: offset, count: s), offset: gathered)
            }
        }
        layers = blocks.indices.map { b in
            let buffer = buffers[b % gatherBuffers]
            return blocks[b].make(zip(blocks[b].parts, parts[b]).map { buffer.full.view(offset: $1.offset, count: $0.count) })
        }
        self.parts = parts
        self.shards = shards
        self.map = map
        self.buffers = buffers
        resident = Array(repeating: -1, count: gatherBuffers)
    }

    @inline(__always)
    func buffer(_ block: Int) -> GatherBuffer { buffers[block % buffers.count] }

    func gather(_ block: Int) {
        let full = buffer(block).full.value
        for part in parts[block] { part.group.allgather(part.view.value, count: part.view.count, into: full + part.offset) }
        if buffers.count > 1 { resident[block % buffers.count] = block }
    }

    /// Floats of block `block` in the gather buffer, padding included.
    func paddedCount(_ block: Int) -> Int { parts[block].reduce(0) { $0 + $1.padded } }

    public func willRunForward(_ block: Int) { gather(block) }

    public func willRunBackward(_ block: Int) {
        if buffers.count == 1 || resident[block % buffers.count] != block { gather(block) }
        Kernels.zero(buffer(block).full.grad, count: paddedCount(block))
    }

    /// A split backward (zero-bubble pipelines) computes the parameter gradients later, after
    /// other blocks have used the gather buffer: start them from zero again.
    public func willRunWeightPass(_ block: Int) {
        Kernels.zero(buffer(block).full.grad, count: paddedCount(block))
    }

    public func didRunBackward(_ block: Int) {
        let buffer = buffer(block)
        for part in parts[block] {
            part.group.reduceScatterSum(buffer.full.grad + part.offset, into: buffer.reduced, count: part.view.count)
            Kernels.add(buffer.reduced, into: part.view.grad, count: part.view.count)
        }
    }
}

/// The one place a rank holds full parameters: sized for the largest block, reused by all.
public final class GatherBuffer {
    /// Full (padded) parameters and gradients of the block being computed.
    public let full: ParameterBuffer
    /// The reduce-scattered gradient shard, before it is added into the shard's gradients.
    let reduced: UnsafeMutablePointer<Float>
    let shardCapacity: Int

    init(capacity: Int, shardCapacity: Int) {
        full = ParameterBuffer(count: capacity, isScratch: true)
        self.shardCapacity = shardCapacity
        reduced = .allocate(capacity: max(1, shardCapacity))
        reduced.initialize(repeating: 0, count: max(1, shardCapacity))
        MemoryLedger.add(.buffers, bytes: 4 * max(1, shardCapacity))
    }

    deinit {
        reduced.deallocate()
        MemoryLedger.add(.buffers, bytes: -4 * max(1, shardCapacity))
    }
}
