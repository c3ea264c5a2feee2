import CMPI

/// What the watchdog knows about each communicator: the mesh axis it spans and its members'
/// world ranks, so that a stalled call can be reported as "allreduce on axis dp, waiting for
/// rank 3" rather than as an MPI handle.
///
/// A ``Communicator`` registers itself when it is made (the world at `MPI.initialize()`, each
/// axis when ``ProcessMesh`` splits the world: a handful per process, all during set-up) and
/// keeps only its index, so the record the watchdog reads stays one integer and copying a
/// communicator copies no string. Entries live in a buffer of fixed capacity allocated once and
/// are never moved or removed: the watchdog thread reads an entry only after seeing a call on
/// it stalled, i.e. after the main thread published the call with a release store that follows
/// the entry's registration, and while the main thread is still blocked in that call.
enum CommunicatorRegistry {
    struct Entry {
        /// The MPI_Comm handle's address, to find a communicator registered before.
        let handle: UInt
        /// The mesh axis ("tp", "dp", "pp", …) or "world".
        let axis: String
        /// World rank of each member, by rank in the communicator.
        let worldRanks: [Int]
        /// This process's rank in the communicator.
        let groupRank: Int
    }

    /// Indices 0 ..< capacity; a call on a communicator beyond them is reported on axis "unknown".
    static let capacity = 255

    nonisolated(unsafe) static let entries = UnsafeMutablePointer<Entry>.allocate(capacity: capacity)
    nonisolated(unsafe) static var count = 0

    /// The index of the communicator `handle` (registering it under `axis` the first time).
    /// Local MPI calls only (`MPI_Comm_group`, `MPI_Group_translate_ranks`).
    static func register(_ handle: OpaquePointer, axis: String, rank: Int, size: Int) -> Int {
        let key = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(handle)))
        for i in 0..<count where entries[i].handle == key { return i }
        guard count < capacity else { return capacity }
        var group: OpaquePointer? = nil, worldGroup: OpaquePointer? = nil
        MPI.check(MPI_Comm_group(handle, &group), "MPI_Comm_group")
        MPI.check(MPI_Comm_group(cmpi_comm_world(), &worldGroup), "MPI_Comm_group")
        var ranks = (0..<Int32(size)).map { $0 }
        var world = [Int32](repeating: -1, count: size)
        MPI.check(MPI_Group_translate_ranks(group, Int32(size), &ranks, worldGroup, &world), "MPI_Group_translate_ranks")
        MPI_Group_free(&group)
        MPI_Group_free(&worldGroup)
        (entries + count).initialize(to: Entry(handle: key, axis: axis, worldRanks: world.map { Int($0) }, groupRank: rank))
        count += 1
        return count - 1
    }

    /// The entry at `index` (a placeholder for an index beyond the capacity).
    static func entry(_ index: Int) -> Entry {
        index < capacity && index < count ? entries[index] : Entry(handle: 0, axis: "unknown", worldRanks: [], groupRank: -1)
    }
}
