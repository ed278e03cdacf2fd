import StarlingCore
import StarlingDistributed

/// Averages a model's gradients over MPI ranks while backward is still running (as Horovod and PyTorch DDP do).
///
/// Parameters live in one flat gradient buffer in declaration order, so a bucket is a contiguous range of it.
/// Buckets are formed from the last parameter backwards (about `bucketBytes` each), because backward produces the
/// last layers' gradients first. A bucket's non-blocking allreduce starts once all of its parameters are final
/// *and* every bucket before it has started: the launch order is then the same fixed order on every rank, whatever
/// order the graph reports leaves in, so collectives always match. `finish()` waits for all and divides by N.
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

    public init(store: ParameterStore, communicator: Communicator, bucketBytes: Int = 25 << 20) {
        self.store = store
        self.communicator = communicator
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
        guard communicator.size > 1, let k = bucketOf[ObjectIdentifier(tensor)] else { return }
        buckets[k].pending -= 1
        launchReady()
        // Give MPI a chance to progress the buckets in flight (Open MPI progresses only inside MPI calls).
        for b in buckets[..<nextToLaunch] { _ = try? b.request?.test() }
    }

    private func launchReady() {
        while nextToLaunch < buckets.count && buckets[nextToLaunch].pending == 0 {
            launch(nextToLaunch)
        }
    }

    private func launch(_ k: Int) {
        let r = buckets[k].range
        // Backward cannot throw: a failed start is kept and rethrown by finish().
        do { buckets[k].request = try communicator.startAllreduce(store.gradients.pointer + r.lowerBound, count: r.count) } catch { launchError = error }
        nextToLaunch = k + 1
    }

    /// Starts what backward did not (parameters it never reached), waits for all, and averages.
    public func finish() throws {
        guard communicator.size > 1 else { return }
        let start = monotonicSeconds()
        for k in nextToLaunch..<buckets.count { buckets[k].pending = 0 }
        launchReady()
        for b in buckets { try b.request?.wait() }
        if let launchError { self.launchError = nil; throw launchError }
        let scale = 1 / Float(communicator.size)
        let g = store.gradients.pointer
        for i in 0..<store.count { g[i] *= scale }
        exposedSeconds += monotonicSeconds() - start
    }
}
