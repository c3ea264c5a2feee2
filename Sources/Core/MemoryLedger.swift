/// What a rank's memory holds, by role.
public enum MemoryCategory: Int, CaseIterable, Sendable {
    case parameters, gradients, optimizer, activations, buffers

    /// The key used in reports and in the `"memory"` object of `--metrics`.
    public var name: String {
        switch self {
        case .parameters: "parameters"
        case .gradients: "gradients"
        case .optimizer: "optimizer"
        case .activations: "activations"
        case .buffers: "buffers"
        }
    }
}

/// Bytes currently allocated by this process's model buffers, by category.
///
/// The buffers register themselves when allocated and unregister when freed (`Activation`,
/// `ParameterBuffer`, `Optimizer`, gather buffers), so the figures are the actual
/// allocation sizes, not formulas. "Buffers" are communication space: FSDP's gather
/// buffer, ZeRO-2's block gradient buffer, and the reduce-scatters' outputs.
public enum MemoryLedger {
    nonisolated(unsafe) static let bytes: UnsafeMutablePointer<Int> = {
        let p = UnsafeMutablePointer<Int>.allocate(capacity: MemoryCategory.allCases.count)
        p.initialize(repeating: 0, count: MemoryCategory.allCases.count)
        return p
    }()

    public static func add(_ category: MemoryCategory, bytes count: Int) {
        bytes[category.rawValue] += count
    }

    /// Bytes per category, in `MemoryCategory` order.
    public static func snapshot() -> [Int] {
        Array(UnsafeBufferPointer(start: bytes, count: MemoryCategory.allCases.count))
    }
}
