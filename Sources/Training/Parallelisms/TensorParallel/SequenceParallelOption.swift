/// `--sequence-parallel`, the flag of the executables that run tensor parallelism (`train_tp`,
/// `train_3d`): Megatron's sequence parallelism outside the column/row pairs (see
/// `SequenceSplit`). Off by default; with a tensor-parallel group of one rank it changes nothing.
public struct SequenceParallelOption: ParsableArguments, Sendable {
    @Flag(name: .customLong("sequence-parallel"),
          help: "Split the rows of the activations outside the tensor-parallel pairs over the tensor-parallel ranks (allgather before each column-parallel Linear, reduce-scatter after each row-parallel one); each micro-batch's rows must divide by the group size.")
    public var enabled = false

    public init() {}
}
