import StarlingCore
import StarlingDistributed

/// The collectives a loss or a layer needs inside the forward pass, when its value depends on the whole global batch
/// rather than on this rank's slice: SSD's number of positive anchors and its hard-negative cut-off, synchronised
/// batch-norm statistics. On one process both are identities.
///
/// Forward passes cannot throw; an MPI failure here ends the job (every rank would otherwise wait forever).
public struct CrossReplica: @unchecked Sendable {
    public let size: Int
    /// Sums the values over ranks, in place.
    public let sum: (UnsafeMutableBufferPointer<Double>) -> Void
    /// Every rank's values (the same count on each rank), concatenated in rank order.
    public let allgather: ([Double]) -> [Double]

    public static let single = CrossReplica(size: 1, sum: { _ in }, allgather: { $0 })

    public init(size: Int, sum: @escaping (UnsafeMutableBufferPointer<Double>) -> Void, allgather: @escaping ([Double]) -> [Double]) {
        self.size = size
        self.sum = sum
        self.allgather = allgather
    }

    public init(_ world: any Collective) {
        guard world.size > 1 else { self = .single; return }
        self.init(size: world.size, sum: { buffer in
            var values = Array(buffer)
            do { try world.allreduce(&values) } catch { CrossReplica.fail(world, error) }
            for i in buffer.indices { buffer[i] = values[i] }
        }, allgather: { values in
            do { return try world.allgather(values) } catch { CrossReplica.fail(world, error) }
        })
    }

    static func fail(_ world: any Collective, _ error: any Error) -> Never {
        printLine("rank \(world.rank): error: \(error)")
        world.abort(code: 1)
    }
}

/// A model whose forward pass needs collectives (set by the trainer before training).
public protocol CrossReplicaAware: AnyObject {
    var crossReplica: CrossReplica { get set }
    /// Batch norm with statistics over the global batch (`--sync-bn`) instead of each rank's slice.
    var synchronizeBatchNorm: Bool { get set }
}
