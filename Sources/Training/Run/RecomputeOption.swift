/// `--recompute` for the executables that run one chain per micro-step (`train`, `train_dp`,
/// `train_fsdp`, `train_tp`): √n activation checkpointing of the chain (`RecomputeSegments` in
/// Core). The pipelines' `--recompute` (``PipelineOptions``) keeps stage boundaries instead.
public struct RecomputeOption: ParsableArguments, Sendable {
    @Flag(name: .customLong("recompute"),
          help: "Activation recomputation: keep only the activations at the boundaries of √n-block segments and rerun each segment's forward inside the backward (less memory, about one more forward).")
    public var enabled = false

    public init() {}
}
