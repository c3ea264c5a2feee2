/// A zeroed run of floats, owned by one object and filed in the ``MemoryLedger`` under one
/// category for as long as it lives.
///
/// For memory that is not a ``ParameterBuffer``'s pair of parameters and gradients: ZeRO-1/2's
/// full parameters (no full gradient beside them in ZeRO-2), a gradient shard, or the scratch
/// a collective reads or writes.
public final class FloatBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    public let category: MemoryCategory

    public init(count: Int, category: MemoryCategory) {
        self.count = count
        self.category = category
        pointer = .allocate(capacity: max(1, count))
        pointer.initialize(repeating: 0, count: max(1, count))
        MemoryLedger.add(category, bytes: 4 * max(1, count))
    }

    deinit {
        pointer.deallocate()
        MemoryLedger.add(category, bytes: -4 * max(1, count))
    }

    /// Sets every float to 0.
    public func zero() { pointer.update(repeating: 0, count: count) }
}
