import StarlingCore
import StarlingDistributed

/// Averages a model's gradients over MPI ranks while backward is still running (as Horovod and PyTorch DDP do).
///
/// Parameters live in one flat gradient buffer in declaration order, so a bucket is a contiguous range of it.
/// Buckets are formed from the last parameter backwards (about `bucketBytes` each), because backward produces the
/// last layers' gradients first. A bucket's non-blocking allreduce starts once all of its parameters are final
/// *and* every bucket before it has started: the launch order is then the same fixed order on every rank, whatever
/// order the graph reports leaves in, so collectives always match. (Which buckets start during backward depends only
/// on the graph's structure, which is the same on every rank for every model here: the same op sequence, whatever
/// the data.) `finish()` reduces the buckets backward did not
/// start with blocking MPI_Allreduce (Open MPI's tuned algorithms move large buffers ~2x faster than the libnbc
/// schedules behind MPI_Iallreduce) and waits for the rest. Gradients are left summed: the optimizer scales them
/// by `averagingScale` in its own pass.
public final class GradientSynchronizer {
    struct Bucket {
        var range: Range<Int>
        var parameterCount: Int
        var pending = 0
        var request: Communicator.Request?
    }

    public let communicator: Communicator
    private let store: ParameterStore
    private var buckets: [Bucket] = []
    private var bucketOf: [ObjectIdentifier: Int] = [:]
    private var nextToLaunch = 0
    private var launchError: (any Error)?
    /// Seconds spent waiting in `finish()` for allreduces that backward did not hide (for the benchmark).
    public private(set) var exposedSeconds = 0.0

    /// Off: every bucket starts after backward (the benchmark's baseline for how much overlap hides).
    public let overlap: Bool

    public init(store: ParameterStore, communicator: Communicator, bucketBytes: Int = 25 << 20, overlap: Bool = true) {
        self.store = store
        self.communicator = communicator
        self.overlap = overlap
        let limit = max(1, bucketBytes / 4)
        var current: Bucket?
        for p in store.parameters.reversed() {
            let range = p.offset..<(p.offset + p.count)
            if var b = current, b.range.count + p.count <= limit {
                b.range = range.lowerBound..<b.range.upperBound
                b.parameterCount += 1
                current = b
            } else {
                if let b = current { buckets.append(b) }
                current = Bucket(range: range, parameterCount: 1)
            }
            bucketOf[ObjectIdentifier(p.value)] = buckets.count
        }
        if let b = current { buckets.append(b) }
    }

    public var bucketCount: Int { buckets.count }

    /// Call before each backward.
    public func beginStep() {
        for i in buckets.indices { buckets[i].pending = buckets[i].parameterCount; buckets[i].request = nil }
        nextToLaunch = 0
    }

    /// The backward hook: a parameter's gradient is final.
    public func parameterReady(_ tensor: Tensor) {
        guard overlap, communicator.size > 1, let k = bucketOf[ObjectIdentifier(tensor)] else { return }
        buckets[k].pending -= 1
        launchReady()
        // Give MPI a chance to progress the buckets in flight (Open MPI progresses only inside MPI calls).
        for b in buckets[..<nextToLaunch] { _ = try? b.request?.test() }
    }

    /// The last bucket is complete only when backward ends, so it is left to `finish()`'s faster blocking path.
    private func launchReady() {
        while nextToLaunch < buckets.count - 1 && buckets[nextToLaunch].pending == 0 {
            launch(nextToLaunch)
        }
    }

    private func launch(_ k: Int) {
        let r = buckets[k].range
        // Backward cannot throw: a failed start is kept and rethrown by finish().
        do { buckets[k].request = try communicator.startAllreduce(store.gradients.pointer + r.lowerBound, count: r.count) } catch { launchError = error }
        nextToLaunch = k + 1
    }

    /// 1/N: the factor that turns the summed gradients into the average over ranks.
    public var averagingScale: Float { 1 / Float(communicator.size) }

    /// Reduces what backward did not start (parameters it never reached, or everything without overlap) and
    /// waits for the rest, in bucket order on every rank.
    public func finish() throws {
        guard communicator.size > 1 else { return }
        let start = monotonicSeconds()
        for k in buckets.indices {
            if let request = buckets[k].request {
                try request.wait()
            } else if k >= nextToLaunch {
                let r = buckets[k].range
                try communicator.allreduce(store.gradients.pointer + r.lowerBound, count: r.count)
            }
        }
        nextToLaunch = buckets.count
        if let launchError { self.launchError = nil; throw launchError }
        exposedSeconds += monotonicSeconds() - start
    }
}
