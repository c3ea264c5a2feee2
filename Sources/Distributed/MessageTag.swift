/// The tag of every point-to-point message (`MPI_Send`/`MPI_Recv` and their non-blocking forms).
///
/// MPI matches a receive to a send by communicator, source and tag. Each kind of message has its
/// own tag, so two kinds exchanged between the same pair of ranks can never be taken for each
/// other, and a message sent with the wrong tag blocks visibly instead of landing in the wrong
/// buffer. Values are fixed (a mismatch between ranks built from different code would hang), and
/// all lie well below `MPI_TAG_UB`, which MPI guarantees to be at least 32767.
public enum MessageTag: Int32, Sendable {
    /// Pipeline parallelism, forward: a stage's output activations of one micro-batch, sent to
    /// the next stage, which takes them as its input (`rows × width` floats).
    case pipelineActivation = 31
    /// Pipeline parallelism, backward: the gradient with respect to a stage's input of one
    /// micro-batch, sent back to the previous stage as the gradient of its output (same shape).
    case pipelineGradient = 32

    /// The spelled-out ring reduce-scatter (``ReduceScatterAlgorithm/ring``): the block of partial
    /// sums passed to the right neighbour at each step.
    case ring = 41

    /// The `collectives` benchmark's ping-pong messages.
    case benchmark = 51

    /// `--trace`'s clock check: ping-pongs between rank 0 and each other rank before and after the
    /// traced steps (`ClockAlignment` in Training).
    case clockSync = 61
    /// `--trace`'s events, each rank's part of the file sent to rank 0 after training (`Tracer`).
    case traceEvents = 62

    /// Gathering every rank's local parameters on rank 0 (`gatherParts`: checkpoints, `--dump`,
    /// sampling, the replica check), message 1 of 3:
    /// two Int64, the length of the sender's encoded `ParameterMap` and its number of floats.
    case canonicalHeader = 71
    /// Message 2 of 3: the sender's encoded `ParameterMap` (`[start, count]` pairs as Int64).
    case canonicalMap = 72
    /// Message 3 of 3: the sender's local floats, in the order of its map.
    case canonicalValues = 73

    /// Where the tag's messages are numbered for `--trace` (``TraceMessages``): one slot per tag.
    var traceSlot: Int {
        switch self {
        case .pipelineActivation: 0
        case .pipelineGradient: 1
        case .ring: 2
        case .benchmark: 3
        case .clockSync: 4
        case .canonicalHeader: 5
        case .canonicalMap: 6
        case .canonicalValues: 7
        case .traceEvents: 8
        }
    }
    static let traceSlots = 9
}
