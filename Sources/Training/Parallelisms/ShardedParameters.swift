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
/// Any N works, whatever divides the widths. Biases and the embedding are sharded and reduced
/// like everything else (ml.c never reduced the bias gradients, so its ranks drifted apart).
/// Per step and rank a block moves 2 allgathers + 1 reduce-scatter of `N·⌈c/N⌉·4` bytes of
/// payload (`(N−1)/N` of it on the wire): over the model 1.5× DP's allreduce volume (ZeRO's
/// figure), for 1/N of the parameter, gradient and optimizer memory plus one gather buffer sized
/// for the largest block.
public final class ShardedParameters: LayerChainHooks {
    /// One block to shard: its local float count, where those floats sit in the canonical
    /// vector, and how to build its layer over a view of them.
    public struct Block {
        public var count: Int
        public var map: ParameterMap
        public var make: (ParameterView) -> Layer
        public init(count: Int, map: ParameterMap, make: @escaping (ParameterView) -> Layer) {
            self.count = count
            self.map = map
            self.make = make
        }
    }

    /// The blocks' layers, in chain order, all over ``buffer``.
    public let layers: [Layer]
    /// This rank's shards of every block, back to back.
    public let shards: ParameterBuffer
    /// Where `shards` sit in the canonical vector.
    public let map: ParameterMap
    public let buffer: GatherBuffer
    /// This rank's shard of each block.
    let shardViews: [ParameterView]
    let group: Communicator

    public init(blocks: [Block], group: Communicator, initialParameters: [Float]) {
        let n = group.size
        let shardCounts = blocks.map { ($0.count + n - 1) / n }
        let largest = shardCounts.max() ?? 0
        let buffer = GatherBuffer(capacity: largest * n, shardCapacity: largest)
        let shards = ParameterBuffer(count: shardCounts.reduce(0, +))
        var map = ParameterMap()
        var views: [ParameterView] = []
        var offset = 0
        for (block, s) in zip(blocks, shardCounts) {
            let mine = block.map.slice(group.rank * s ..< (group.rank + 1) * s)
            mine.extract(from: initialParameters, into: shards.value + offset)
            map.append(mine)
            views.append(shards.view(offset: offset, count: s))
            offset += s
        }
        layers = blocks.map { $0.make(buffer.full.view(offset: 0, count: $0.count)) }
        self.shards = shards
        self.map = map
        self.buffer = buffer
        shardViews = views
        self.group = group
    }

    func gather(_ block: Int) {
        let shard = shardViews[block]
        group.allgather(shard.value, count: shard.count, into: buffer.full.value)
    }

    public func willRunForward(_ block: Int) { gather(block) }

    public func willRunBackward(_ block: Int) {
        gather(block)
        Kernels.zero(buffer.full.grad, count: shardViews[block].count * group.size)
    }

    /// A split backward (zero-bubble pipelines) computes the parameter gradients later, after
    /// other blocks have used the gather buffer: start them from zero again.
    public func willRunWeightPass(_ block: Int) {
        Kernels.zero(buffer.full.grad, count: shardViews[block].count * group.size)
    }

    public func didRunBackward(_ block: Int) {
        let shard = shardViews[block]
        group.reduceScatterSum(buffer.full.grad, into: buffer.reduced, count: shard.count)
        Kernels.add(buffer.reduced, into: shard.grad, count: shard.count)
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
