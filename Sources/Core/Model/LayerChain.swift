import Tracing

/// What a layout hangs on a ``LayerChain``: code that runs around each block.
///
/// The chain calls, for block `i` (its position in the chain):
///
///     forward:   willRunForward(i);  layers[i].forward
///     backward:  willRunBackward(i); layers[i].backward; didRunBackward(i)
///
/// FSDP gathers a block's parameters in `willRun…` and reduce-scatters its gradients in
/// `didRunBackward`; DP starts a gradient bucket's allreduce in `didRunBackward` once the bucket's
/// last block is done. The reference computation never changes; only what surrounds it.
public protocol LayerChainHooks: AnyObject {
    func willRunForward(_ block: Int)
    /// Before a block's backward (or, split, its input pass).
    func willRunBackward(_ block: Int)
    /// Before a split block's weight pass (``LayerChain/backwardWeights()``), which may come
    /// after other blocks' backwards.
    func willRunWeightPass(_ block: Int)
    /// After a block's parameter gradients are complete: its backward, or its weight pass.
    func didRunBackward(_ block: Int)
}

extension LayerChainHooks {
    public func willRunForward(_ block: Int) {}
    public func willRunBackward(_ block: Int) {}
    public func willRunWeightPass(_ block: Int) {}
    public func didRunBackward(_ block: Int) {}
}

/// The one walk over the layers that every layout runs: layers, the activations between them,
/// the targets and (at the end of the model) the loss, with per-block hooks.
///
/// `activations[0]` is the chain's input (token ids when the chain starts at the embedding),
/// `activations[i + 1]` is layer `i`'s output. A chain that ends with the head owns the loss:
/// ``forward()`` returns the batch's summed loss and ``backward()`` starts from it. A chain that
/// ends earlier (a pipeline stage before the last) has no loss: the caller writes the output's
/// gradient before ``backward()``. Several chains may share the same layers (a pipeline stage
/// keeps one chain per micro-batch in flight). Nothing is allocated after `init`.
///
/// Under `--trace` each block's forward, backward, input and weight pass, and the loss's forward
/// and backward, are one compute event each (``Trace``), measured after the block's hook ran, so
/// that FSDP's gathers count as communication, not as the block's compute.
public final class LayerChain {
    public let layers: [Layer]
    /// Each layer as a ``SplitBackward``, or nil when it does not split (looked up once).
    let split: [SplitBackward?]
    public let activations: [Activation]
    /// The target token of each row (read only by the loss).
    public let targets: UnsafeMutablePointer<Int32>
    public let loss: SoftmaxCrossEntropy?
    /// What runs around each block; set by the layout that owns the chain.
    public var hooks: LayerChainHooks?
    /// Rows of the chain's output: the rows the loss and ``targets`` cover.
    public let rows: Int
    /// With recomputation, the blocks in segments (``RecomputeSegments``); nil without.
    public let segments: RecomputeSegments?
    /// The shared storage of the segments' interior activations (kept alive here).
    let scratch: [Activation]

    /// - Parameters:
    ///   - widths: the input's width, then each layer's output width (`layers.count + 1`).
    ///   - rows: rows of the batch the chain runs on.
    ///   - loss: the loss after the last layer, or nil for a chain that ends before the head.
    ///   - recompute: keep only the segments' boundary activations and rerun each segment's forward
    ///     inside the backward (``RecomputeSegments``).
    public convenience init(layers: [Layer], widths: [Int], rows: Int, loss: SoftmaxCrossEntropy?, hooks: LayerChainHooks? = nil,
                            recompute: Bool = false) {
        self.init(layers: layers, widths: widths, activationRows: Array(repeating: rows, count: widths.count), loss: loss, hooks: hooks,
                  recompute: recompute)
    }

    /// A chain whose activations need not all have the same rows: under sequence parallelism a
    /// rank holds only its `1/T` of the rows outside the tensor-parallel pairs (see
    /// `SequenceSplit` in `Training`), and the layers between them gather and scatter rows.
    ///
    /// - Parameter activationRows: the rows of each activation (`widths.count` of them).
    public init(layers: [Layer], widths: [Int], activationRows: [Int], loss: SoftmaxCrossEntropy?, hooks: LayerChainHooks? = nil,
                recompute: Bool = false) {
        precondition(widths.count == layers.count + 1 && activationRows.count == widths.count)
        self.layers = layers
        split = layers.map { $0 as? SplitBackward }
        let rows = activationRows[activationRows.count - 1]
        self.rows = rows
        self.loss = loss
        self.hooks = hooks
        let sizes = zip(activationRows, widths).map { $0 * $1 }
        let segments = recompute ? RecomputeSegments(blocks: layers.count) : nil
        self.segments = segments
        // Kept activations own their memory; interior ones borrow the scratch slot of their
        // position in the segment (the same slot for every segment).
        let scratch = segments?.scratchCapacities(sizes).map { Activation(rows: 1, cols: $0) } ?? []
        self.scratch = scratch
        activations = (0..<widths.count).map { i in
            guard let segments, let slot = segments.scratchSlot(i) else { return Activation(rows: activationRows[i], cols: widths[i]) }
            return Activation(rows: activationRows[i], cols: widths[i], borrowing: scratch[slot].value, grad: scratch[slot].grad)
        }
        targets = .allocate(capacity: max(1, rows))
        targets.initialize(repeating: 0, count: max(1, rows))
    }

    deinit { targets.deallocate() }

    public var input: Activation { activations[0] }
    public var output: Activation { activations[activations.count - 1] }

    /// Runs every layer forward (no loss).
    public func forwardLayers() {
        for i in 0..<layers.count {
            hooks?.willRunForward(i)
            let start = Trace.begin()
            layers[i].forward(activations[i], activations[i + 1])
            Trace.compute("forward", block: i, since: start)
        }
    }

    /// Runs every layer forward, then the loss if the chain has one: returns the summed loss over
    /// the rows (0 without a loss).
    public func forward() -> Float {
        forwardLayers()
        guard let loss else { return 0 }
        let start = Trace.begin()
        defer { Trace.compute("loss", since: start) }
        return loss.forward(output, targets)
    }

    /// Backpropagates the last forward, adding into the layers' parameter gradients. Without a
    /// loss, `output.grad` must hold the gradient of the chain's output.
    public func backward() {
        lossBackward()
        guard let segments else {
            for i in stride(from: layers.count - 1, through: 0, by: -1) { backwardBlock(i) }
            return
        }
        // Segments last to first. The last one's interior is still the forward's; every earlier
        // one first reruns its forward from its kept input (hooks included: FSDP gathers again).
        for (k, segment) in segments.ranges.enumerated().reversed() {
            if k < segments.ranges.count - 1 {
                for i in segment.lowerBound ..< segment.upperBound - 1 {
                    hooks?.willRunForward(i)
                    let start = Trace.begin()
                    layers[i].forward(activations[i], activations[i + 1])
                    Trace.compute("forward (recompute)", block: i, since: start)
                }
            }
            for i in segment.reversed() { backwardBlock(i) }
        }
    }

    @inline(__always)
    func backwardBlock(_ i: Int) {
        hooks?.willRunBackward(i)
        let start = Trace.begin()
        layers[i].backward(activations[i], activations[i + 1])
        Trace.compute("backward", block: i, since: start)
        hooks?.didRunBackward(i)
    }

    /// The loss's backward (when the chain has a loss), traced as "loss backward".
    @inline(__always)
    func lossBackward() {
        guard let loss else { return }
        let start = Trace.begin()
        loss.backward(output, targets)
        Trace.compute("loss backward", since: start)
    }

    /// The first half of a split backward: the loss's and every layer's input gradient, so that
    /// `input.grad` is ready as early as possible. Layers that do not split run their whole
    /// backward here (hooks as in ``backward()``).
    public func backwardInput() {
        precondition(segments == nil, "a split backward needs every activation: no recomputation")
        lossBackward()
        for i in stride(from: layers.count - 1, through: 0, by: -1) {
            hooks?.willRunBackward(i)
            let start = Trace.begin()
            if let layer = split[i] {
                layer.backwardInput(activations[i], activations[i + 1])
                Trace.compute("backward (input)", block: i, since: start)
            } else {
                layers[i].backward(activations[i], activations[i + 1])
                Trace.compute("backward", block: i, since: start)
                hooks?.didRunBackward(i)
            }
        }
    }

    /// The second half: the parameter gradients of the layers that split, from the output
    /// gradients ``backwardInput()`` left. Together the two halves add exactly what
    /// ``backward()`` adds, in the same order per parameter.
    public func backwardWeights() {
        for i in stride(from: layers.count - 1, through: 0, by: -1) {
            guard let layer = split[i] else { continue }
            hooks?.willRunWeightPass(i)
            let start = Trace.begin()
            layer.backwardWeights(activations[i], activations[i + 1])
            Trace.compute("weight pass", block: i, since: start)
            hooks?.didRunBackward(i)
        }
    }
}

/// Activation recomputation for one chain (`--recompute` outside pipelines), the √n checkpointing
/// of Chen et al. (2016): the `n` blocks are cut into segments of `s = ⌈√n⌉` blocks; the chain
/// keeps the activations at segment boundaries (its input and every segment's output), and the
/// `s − 1` activations inside a segment live in scratch slots that all segments share. Backward
/// walks the segments last to first, reruns each one's forward from its kept input (the last
/// segment's interior is still the forward's), then backpropagates through it.
///
/// Every activation here is a block boundary (a block's output is the next block's input), so
/// there is nothing to drop within a block: the saving is the interior of the segments, from
/// `Σ_i` over all activations to `Σ_kept + Σ_slots max over segments`, for about one more forward.
public struct RecomputeSegments: Sendable, Equatable {
    /// The blocks of each segment, in order.
    public let ranges: [Range<Int>]

    public init(blocks n: Int) {
        var s = 1
        while s * s < n { s += 1 }
        ranges = stride(from: 0, to: n, by: s).map { $0 ..< Swift.min(n, $0 + s) }
    }

    /// The scratch slot of activation `i` (nil when the chain keeps it: its input and the segments'
    /// outputs). Interior activation `i` of a segment starting at block `b` is slot `i − b − 1`.
    public func scratchSlot(_ i: Int) -> Int? {
        guard let segment = ranges.first(where: { $0.lowerBound < i && i < $0.upperBound }) else { return nil }
        return i - segment.lowerBound - 1
    }

    /// Floats per scratch slot for activations of `sizes[i]` floats: the largest it ever holds.
    public func scratchCapacities(_ sizes: [Int]) -> [Int] {
        var capacities: [Int] = []
        for i in sizes.indices {
            guard let slot = scratchSlot(i) else { continue }
            while capacities.count <= slot { capacities.append(0) }
            capacities[slot] = Swift.max(capacities[slot], sizes[i])
        }
        return capacities
    }
}
