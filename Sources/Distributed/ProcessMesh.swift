/// The name of one axis of a ``ProcessMesh``.
public struct MeshAxis: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) { self.name = name }
    public var description: String { name }

    /// Tensor parallel: ranks that split each Linear (Megatron).
    public static let tp = MeshAxis("tp")
    /// Data parallel: ranks that split the batch (replicated or sharded parameters).
    public static let dp = MeshAxis("dp")
    /// Pipeline parallel: ranks that hold consecutive stages of the chain.
    public static let pp = MeshAxis("pp")
    /// Fully sharded data parallel: ranks that split the batch and shard the parameters, their
    /// gradients and optimizer state among themselves (PyTorch DeviceMesh's "shard").
    public static let shard = MeshAxis("shard")
    /// Hybrid sharding (HSDP): groups of `shard` ranks that hold the same shards, split the batch
    /// further and sum their gradient shards (PyTorch DeviceMesh's "replicate").
    public static let replicate = MeshAxis("replicate")
    /// Expert parallelism (`train_ep`): ranks that hold different experts of every mixture of
    /// experts and exchange token rows with all-to-alls.
    public static let expert = MeshAxis("expert")

    /// The axes along which ranks train on different rows of the batch.
    public static let dataAxes: [MeshAxis] = [.dp, .shard, .replicate]
}

/// The world arranged as an n-dimensional grid of ranks with named axes (like PyTorch's
/// DeviceMesh), the first axis varying fastest:
///
///     rank = c₀ + s₀·(c₁ + s₁·(c₂ + …))        (cₖ the coordinate on axis k of size sₖ)
///
/// `train_3d` uses `[tp, dp, pp]`: tensor-parallel ranks are neighbours in rank order (so on
/// one host their frequent activation allreduces stay in shared memory), then data-parallel,
/// then pipeline stages, as in ml.c. Each axis is one communicator: the ranks whose coordinates
/// agree on every other axis. Every axis is a real communicator even of size 1, so layouts never
/// special-case a degree of one; all of them are split once, when the mesh is built.
public struct ProcessMesh: Sendable {
    public let world: Communicator
    public let axes: [MeshAxis]
    public let sizes: [Int]
    /// This rank's coordinate on each axis.
    public let coordinates: [Int]
    let groups: [Communicator]

    /// Coordinates of world rank `rank` on a mesh of `sizes` (first axis fastest).
    public static func coordinates(rank: Int, sizes: [Int]) -> [Int] {
        var r = rank
        return sizes.map { size in
            defer { r /= size }
            return r % size
        }
    }

    /// Splits `world` into one communicator per axis (collective over `world`). The caller has
    /// checked that the sizes multiply to the world size.
    public init(world: Communicator, axes: [(MeshAxis, Int)]) {
        let sizes = axes.map(\.1)
        precondition(sizes.allSatisfy { $0 >= 1 } && sizes.reduce(1, *) == world.size,
                     "mesh \(sizes) does not match a world of \(world.size)")
        precondition(Set(axes.map(\.0)).count == axes.count, "mesh axes must have distinct names")
        self.world = world
        self.axes = axes.map(\.0)
        self.sizes = sizes
        let coordinates = Self.coordinates(rank: world.rank, sizes: sizes)
        self.coordinates = coordinates
        groups = sizes.indices.map { k in
            // Colour: the position on every other axis; key: the position on this one.
            var color = 0
            for j in sizes.indices.reversed() where j != k { color = color * sizes[j] + coordinates[j] }
            return world.split(color: color, key: coordinates[k], axis: axes[k].0.name)
        }
    }

    func position(_ axis: MeshAxis) -> Int {
        guard let k = axes.firstIndex(of: axis) else { preconditionFailure("the mesh \(axes) has no axis '\(axis)'") }
        return k
    }

    /// The communicator of `axis`: the ranks that differ from this one only along it.
    public subscript(axis: MeshAxis) -> Communicator { groups[position(axis)] }

    /// The size of `axis`.
    public func size(_ axis: MeshAxis) -> Int { sizes[position(axis)] }

    /// Whether the mesh has `axis`.
    public func contains(_ axis: MeshAxis) -> Bool { axes.contains(axis) }
}
