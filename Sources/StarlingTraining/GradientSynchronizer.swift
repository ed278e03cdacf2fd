import StarlingCore
import StarlingDistributed

/// Averages a model's gradients over MPI ranks (or replicas on threads) while backward is still running (as Horovod and PyTorch DDP do).
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
///
/// With a 16-bit `wire` (`--gradient-precision bf16|fp16`) a bucket is encoded into a 16-bit copy just before its
/// allreduce and the sum decoded back into the float32 gradients: half the bytes on the network, the weights and
/// the optimizer still float32. Every rank decodes the same summed bits, so the models stay identical. float16's
/// range needs a scale: a bucket's first step goes as float32, and each step sets the next step's scale to the power
/// of two that puts the largest summed gradient near 2^14 (a quarter of float16's largest, room for growth), from
/// the sum every rank holds. A sum that overflows all the same is redone in float32 from the untouched gradients.
///
/// With `shards` (ZeRO stage 1, `--shard-optimizer`: one range of the flat layout a rank, `OptimizerShards`) each bucket
/// is reduce-scattered instead of allreduced: a rank receives the sum of the bucket's part inside its own range and
/// nothing else, since its optimizer updates that range only (the trainer then allgathers the updated weights). The
/// same buckets start at the same moments; the rest of the gradient buffer is left undefined. float16 is refused there:
/// its scale and its overflow test read the whole sum, which no rank holds any more (bfloat16 needs neither).
///
/// Replicas on threads of one process with float32 gradients reduce-scattered (`train --replicas`) give back the pages
/// of each bucket outside their own range as soon as its reduce-scatter has returned (`ParameterStore.releaseGradientPages`):
/// the other replicas have read those addends, and nothing reads them again before the next backward writes them (first
/// writes store, `ParameterStore.deferGradientZeroing`). Each replica then keeps its own range of the gradients between
/// steps, the replicas a model's worth together where they kept one each, and a bucket's other part is resident only
/// from its first write in backward to its sum (the last bucket's until the next step begins, after the barrier that
/// ends this one). The cost is those pages faulted in again each step: through `train --replicas 2` (loaded) yolov2's
/// and SSD300's peaks fell 3-11 % for CPU +1-15 % and +3-9 %, the large blocks' own give-back's trade, so it goes with
/// that setting (STARLING_GIVE_BACK_FREE_PAGES=1, off by default), and only for gradient buffers of
/// `releaseMinimumBytes` and more, whose steps are long beside the faults (BENCHMARKS.md, "The replica row's memory").
public final class GradientSynchronizer {
    struct Bucket {
        var range: Range<Int>
        var parameterCount: Int
        var pending = 0
        var request: (any CollectiveRequest)?
        /// float16 only: the factor applied before encoding; nil until a float32 step has measured the sums.
        var scale: Float? = 1
        var sentAs16 = false
        /// Sharded: the bucket's elements inside each rank's range, in rank order (they lie end to end in the bucket).
        var shardCounts: [Int]?
        /// This step: the part outside this member's range has been given back (`releasesGradientPages`).
        var released = false
    }

    /// The smallest gradient buffer whose pages outside a replica's own range are given back after each bucket's sum:
    /// 64 MB (16 M parameters). yolov2 (202 MB) and SSD300 (105 MB) fault ~25 K and ~13 K pages in again a replica step
    /// against steps of seconds; the small autoencoders' steps of a millisecond would pay more than their few MB are worth.
    public static let releaseMinimumBytes = 64 << 20

    /// `releaseMinimumBytes` where free pages are given back (STARLING_GIVE_BACK_FREE_PAGES=1), else never.
    public static var defaultReleaseBytes: Int { MemoryLedger.largeGivesBackFreePages ? releaseMinimumBytes : Int.max }

    /// Whether this member gives back the pages of each bucket outside its own range once the bucket is summed.
    public let releasesGradientPages: Bool

    public let communicator: any Collective
    private let store: ParameterStore
    private var buckets: [Bucket] = []
    private var bucketOf: [ObjectIdentifier: Int] = [:]
    private var nextToLaunch = 0
    private var launchError: (any Error)?
    /// Seconds spent waiting in `finish()` for allreduces that backward did not hide (for the benchmark).
    public private(set) var exposedSeconds = 0.0

    /// Off: every bucket starts after backward (the benchmark's baseline for how much overlap hides).
    public let overlap: Bool

    /// The number format of the gradients on the network.
    public let wire: GradientWire
    private let wireBuffer: UnsafeMutablePointer<UInt16>?
    /// Buckets redone in float32 after a float16 sum overflowed (for tests and the benchmark).
    public private(set) var overflowCount = 0
    /// Sharded: the range of the flat layout whose summed gradients this rank receives (nil: every gradient, allreduced).
    public let ownedRange: Range<Int>?

    /// Sharded: the reduce-scatter of the ranks' (or replicas') collective.
    private let sharding: (any ShardingCollective)?

    /// `releasingFrom`: the gradient buffer's bytes from which replicas give back pages outside their range
    /// (`defaultReleaseBytes` unless given: tests).
    public init(store: ParameterStore, communicator: any Collective, bucketBytes: Int = 25 << 20, overlap: Bool = true,
                wire: GradientWire = .float32, shards: [Range<Int>]? = nil, releasingFrom: Int = GradientSynchronizer.defaultReleaseBytes) {
        precondition(shards == nil || shards?.count == communicator.size, "one shard a rank")
        precondition(shards == nil || wire != .float16, "float16 gradients need the whole sum for their scale: not with shards")
        sharding = shards != nil && communicator.size > 1 ? communicator as? any ShardingCollective : nil
        precondition(shards == nil || communicator.size == 1 || sharding != nil, "sharded gradients need a collective with a reduce-scatter")
        self.store = store
        self.communicator = communicator
        self.overlap = overlap
        self.wire = wire
        ownedRange = communicator.size > 1 ? shards?[communicator.rank] : nil
        // An MPI rank's request may still move its part into place after a test; an in-process one is done once tested.
        releasesGradientPages = ownedRange != nil && wire == .float32 && communicator is InProcessCollective
            && store.count * MemoryLayout<Float>.stride >= releasingFrom
        wireBuffer = wire == .float32 || communicator.size == 1 ? nil : .allocate(capacity: max(1, store.gradients.count))
        let limit = max(1, bucketBytes / wire.bytesPerValue)
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
        if wire == .float16 { for k in buckets.indices { buckets[k].scale = nil } }
        if let shards, communicator.size > 1 {
            for k in buckets.indices {
                let r = buckets[k].range
                buckets[k].shardCounts = shards.map { max(0, min(r.upperBound, $0.upperBound) - max(r.lowerBound, $0.lowerBound)) }
            }
        }
    }

    deinit { wireBuffer?.deallocate() }

    public var bucketCount: Int { buckets.count }

    /// Call before each backward. Replicas: only once every member has passed a rendezvous after the last step's
    /// `finish` (the trainer's barrier after the update; a skipped step's sum took its second wait), since the parts
    /// still held outside this member's range are given back here: the last bucket's, and at the first step every
    /// bucket's (the buffer was zero-filled when allocated).
    public func beginStep() {
        for k in buckets.indices { releaseSummed(k) }
        for i in buckets.indices { buckets[i].pending = buckets[i].parameterCount; buckets[i].request = nil; buckets[i].released = false }
        nextToLaunch = 0
    }

    /// The parts of `range` below and above this member's own range.
    private func outsideOwnRange(_ range: Range<Int>) -> [Range<Int>] {
        guard let owned = ownedRange else { return [range] }
        return [range.lowerBound..<max(range.lowerBound, min(range.upperBound, owned.lowerBound)),
                min(range.upperBound, max(range.lowerBound, owned.upperBound))..<range.upperBound].filter { !$0.isEmpty }
    }

    /// Bucket `k`'s reduce-scatter has returned (every replica has read this one's addends): gives back the pages of
    /// its part outside this replica's range, where `releasesGradientPages`.
    private func releaseSummed(_ k: Int) {
        guard releasesGradientPages, !buckets[k].released else { return }
        buckets[k].released = true
        for part in outsideOwnRange(buckets[k].range) { store.releaseGradientPages(part) }
    }

    /// The backward hook: a parameter's gradient is final.
    public func parameterReady(_ tensor: Tensor) {
        guard overlap, communicator.size > 1, let k = bucketOf[ObjectIdentifier(tensor)] else { return }
        buckets[k].pending -= 1
        launchReady()
        // Give MPI a chance to progress the buckets in flight (Open MPI progresses only inside MPI calls). An
        // in-process bucket is summed by its test.
        for k in 0..<nextToLaunch where (try? buckets[k].request?.test()) == true { releaseSummed(k) }
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
        do {
            if let wireBuffer, let scale = buckets[k].scale {
                wire.encode(store.gradients.pointer + r.lowerBound, scale: scale, into: wireBuffer + r.lowerBound, count: r.count)
                if let counts = buckets[k].shardCounts {
                    buckets[k].request = try sharding!.startReduceScatter(wireBuffer + r.lowerBound, counts: counts, wire: wire)
                } else {
                    buckets[k].request = try communicator.startAllreduce(wireBuffer + r.lowerBound, count: r.count, wire: wire)
                }
                buckets[k].sentAs16 = true
            } else if let counts = buckets[k].shardCounts {
                buckets[k].request = try sharding!.startReduceScatter(store.gradients.pointer + r.lowerBound, counts: counts)
            } else {
                buckets[k].request = try communicator.startAllreduce(store.gradients.pointer + r.lowerBound, count: r.count)
            }
        } catch { launchError = error }
        nextToLaunch = k + 1
    }

    /// A bucket's blocking allreduce, in the wire's format when it has a scale.
    private func reduce(_ k: Int) throws {
        let r = buckets[k].range
        if let wireBuffer, let scale = buckets[k].scale {
            wire.encode(store.gradients.pointer + r.lowerBound, scale: scale, into: wireBuffer + r.lowerBound, count: r.count)
            if let counts = buckets[k].shardCounts {
                try sharding!.reduceScatter(wireBuffer + r.lowerBound, counts: counts, wire: wire)
            } else {
                try communicator.allreduce(wireBuffer + r.lowerBound, count: r.count, wire: wire)
            }
            buckets[k].sentAs16 = true
        } else if let counts = buckets[k].shardCounts {
            try sharding!.reduceScatter(store.gradients.pointer + r.lowerBound, counts: counts)
        } else {
            try communicator.allreduce(store.gradients.pointer + r.lowerBound, count: r.count)
        }
    }

    /// Turns a bucket's 16-bit sum into float32 gradients and sets float16's next scale, from the sum all ranks share.
    /// A float16 sum that overflowed (the same on every rank) is redone in float32 from the gradients, still intact.
    private func decode(_ k: Int) throws {
        guard let wireBuffer, wire != .float32 else { return }
        if buckets[k].shardCounts != nil, let owned = ownedRange {
            // bfloat16 only (no scale): this rank's part of the bucket's sum, where the reduce-scatter left it.
            let r = buckets[k].range.clamped(to: owned)
            if buckets[k].sentAs16 && !r.isEmpty {
                wire.decode(wireBuffer + r.lowerBound, scale: 1, into: store.gradients.pointer + r.lowerBound, count: r.count)
            }
            buckets[k].sentAs16 = false
            return
        }
        let r = buckets[k].range
        let gradients = store.gradients.pointer + r.lowerBound
        if buckets[k].sentAs16, let scale = buckets[k].scale {
            buckets[k].sentAs16 = false
            if wire == .float16 && !GradientWire.float16AllFinite(wireBuffer + r.lowerBound, count: r.count) {
                overflowCount += 1
                try communicator.allreduce(gradients, count: r.count)
            } else {
                let largest = wire.decode(wireBuffer + r.lowerBound, scale: scale, into: gradients, count: r.count)
                if wire == .float16 { buckets[k].scale = Self.float16Scale(largest: largest, previous: scale) }
                return
            }
        }
        if wire == .float16 {
            var largest: Float = 0
            for i in 0..<r.count { largest = max(largest, abs(gradients[i])) }
            buckets[k].scale = Self.float16Scale(largest: largest, previous: buckets[k].scale ?? 1)
        }
    }

    /// The power of two that maps `largest` to [2^13, 2^14]; `previous` when the sum is zero or not finite.
    static func float16Scale(largest: Float, previous: Float) -> Float {
        guard largest > 0, largest.isFinite else { return previous }
        let exponent = 13 - Int(largest.exponent)
        return Float(sign: .plus, exponent: max(-100, min(100, exponent)), significand: 1)
    }

    /// Whether `finish(posting:afterSum:)` folds a step's scalars into the gradients' own collective: replicas on
    /// threads of one process (`InProcessCollective`) whose float32 gradients are reduce-scattered. Elsewhere (MPI
    /// ranks, 16-bit wires, one member) the trainer agrees its scalars in a collective of their own.
    public var foldsStepScalars: Bool {
        communicator.size > 1 && communicator is InProcessCollective && wire == .float32 && ownedRange != nil && !buckets.isEmpty
    }

    /// `finish()` whose last bucket's reduce-scatter also carries the step's scalars (`foldsStepScalars` only): every
    /// member's `scalars`, and every member's `afterSum` values, run once all of this member's own range of the
    /// gradients is summed, in member order. One collective round a step instead of three. `skipsAfterSum`: as
    /// `InProcessCollective.reduceScatter(_:counts:posting:skipsAfterSum:afterSum:)` (the round's second wait left out
    /// when every member posts it).
    public func finish(posting scalars: [Double], skipsAfterSum: Bool = false,
                       afterSum: () -> [Double]) throws -> (posted: [[Double]], afterSum: [[Double]], endedEarly: Bool) {
        precondition(foldsStepScalars, "the step's scalars fold into float32 reduce-scatters between replicas only")
        let replicas = communicator as! InProcessCollective
        let start = monotonicSeconds()
        let last = buckets.count - 1
        for k in buckets.indices.dropLast() {
            if let request = buckets[k].request {
                try request.wait()
            } else if k >= nextToLaunch {
                try reduce(k)
            }
            releaseSummed(k)
        }
        // The last bucket is never started during backward (`launchReady`): its reduce-scatter is this step's last. Its
        // pages are given back at the next `beginStep`: this exchange may end before the others have read them
        // (`skipsAfterSum`).
        let r = buckets[last].range
        let exchanged = try replicas.reduceScatter(store.gradients.pointer + r.lowerBound, counts: buckets[last].shardCounts!,
                                                   posting: scalars, skipsAfterSum: skipsAfterSum, afterSum: afterSum)
        nextToLaunch = buckets.count
        if let launchError { self.launchError = nil; throw launchError }
        exposedSeconds += monotonicSeconds() - start
        return exchanged
    }

    /// Whether this member's own gradients are all finite and below the bound at which a sum over the group's members
    /// cannot overflow (`summableWithoutOverflow(terms:)`): where every member posts it as `skipsAfterSum`, no sum can be
    /// non-finite, so `finish(posting:skipsAfterSum:afterSum:)` leaves out the check of the summed ranges and its wait.
    /// Where buckets' parts outside this member's range were given back, those parts are left out: they are the other
    /// members' ranges, already summed, which their owners check.
    public var ownGradientsSumWithoutOverflow: Bool {
        let bound = summableWithoutOverflow(terms: communicator.size), g = store.gradients.pointer
        guard releasesGradientPages, let owned = ownedRange else { return allFinite(g, count: store.count, below: bound) }
        let parts = [owned] + buckets.filter { !$0.released }.flatMap { outsideOwnRange($0.range) }
        return parts.allSatisfy { $0.isEmpty || allFinite(g + $0.lowerBound, count: $0.count, below: bound) }
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
                try reduce(k)
            }
            try decode(k)
            releaseSummed(k)
        }
        nextToLaunch = buckets.count
        if let launchError { self.launchError = nil; throw launchError }
        exposedSeconds += monotonicSeconds() - start
    }
}
