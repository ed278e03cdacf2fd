import Foundation
import StarlingCore
import StarlingDistributed
import StarlingNN
import StarlingData

/// Chooses, before a run on one process, between one replica of the model on all of the process's threads and one
/// replica a thread (`ReplicaTraining`), by timing both on this run's model, batch and machine (issue 18 item 3).
///
/// Which wins depends on the step: the small autoencoders' 0.4-4 ms steps gained 1.0-1.3x from a second thread (a few
/// small GEMMs, each waiting for a worker), and two MPI ranks of one thread 1.6-1.9x; SSD7's 0.5 s steps gain 1.8x from
/// threads. As `ThreadCalibration` does for the thread count, no threshold on FLOPs or elements is involved: the two
/// layouts each train throwaway copies of the model (built from the run's configuration; the run's own model is not
/// touched) on the run's own batches, in interleaved blocks of about `targetBlockSeconds` after an untimed
/// warm-up step each (and, for steps shorter than a block, an untimed block each), `rounds` times with the order alternating, and the faster by the median of the rounds is kept.
/// The step timed is the trainer's (gradients zeroed, forward and loss, backward, the gradients summed over the
/// replicas, the optimizer step) with the run's data pipeline feeding it, as the run that follows will.
public struct ReplicaCalibration: Sendable {
    /// The two layouts timed.
    public enum Layout: Sendable, Hashable {
        /// One replica on all `replicas` threads.
        case oneReplica
        /// `replicas` replicas of one thread each.
        case replicas
    }
    /// The seconds a step recorded for a block: (layout, the layout's block index (0 the warm-up step, 1 the sizing
    /// step, 2 the untimed block where there is one, then the rounds'), the seconds a step measured).
    public typealias BlockTimer = @Sendable (_ layout: Layout, _ block: Int, _ measured: Double) -> Double

    /// Replicas tried against one replica on `replicas` threads.
    public let replicas: Int
    /// Seconds a step, one entry a round: one replica on `replicas` threads.
    public private(set) var threadSeconds: [Double] = []
    /// Seconds a step, one entry a round: `replicas` replicas of one thread.
    public private(set) var replicaSeconds: [Double] = []
    /// Timed steps a block: one replica on `replicas` threads, and `replicas` replicas. Each layout's blocks are sized
    /// on its own step, so that each lasts about `targetBlockSeconds`.
    public private(set) var blockSteps = (thread: 1, replica: 1)

    /// A block's length: long enough that a step's data, its rendezvous and the scheduler's moments average out (30 ms
    /// blocks of one cached batch chose wrongly for fc-ae and sparse-ae).
    public static let targetBlockSeconds = 0.08
    public static let maximumBlockSteps = 100
    /// A layout this many times slower than the other on a step of at least `targetBlockSeconds` loses at once.
    public static let clearRatio = 1.5
    /// The calibration's copies of the model (parameters, gradients and optimizer state, `replicas` + 1 of them) may
    /// take at most this share of the machine's memory; beyond it the run keeps one replica without timing.
    public static let memoryShare = 1.0 / 32

    /// Times the two layouts for `replicas` threads; `build` makes a fresh model and its optimizer keeping the state of
    /// the given range (nil: every parameter) (same seed, so the copies start alike).
    /// Every timed step is a whole step of the run's kind: its batch from the data pipeline (`source`'s epoch-0 order
    /// for `seed`, global batches of `batchSize`, cycling over the first `stepsPerEpoch`; a prefetch thread at the
    /// lowest priority, as in a run whose compute threads fill the cores, and the consumer making a batch itself when
    /// none is ready; each replica making its own slices through a prefetcher of its own where the source reads
    /// concurrently (a split held in memory), else the replicas sharing one feed, each taking its slice), the forward
    /// pass, the loss read, backward, the gradients summed (the replicas' reduce-scatter carrying the loss agreement, as
    /// the trainer's does) or checked for a non-finite value (one replica), the optimizer step, and the replicas' barrier. The steps timed before
    /// left the data out and timed the same cached batch again and again: they put sparse-ae's one replica on two
    /// threads at 0.56 ms a step where the epoch ran 1.6 ms, and chose it over two replicas that ran the epoch 1.43x
    /// faster (BENCHMARKS.md, "One process on 2 cores, third pass").
    /// The replicas run as `ReplicaTraining` runs them: one copy of the weights shared, each optimizer on its range,
    /// gradients reduce-scattered, a barrier after the update.
    ///
    /// `stopsIdleBLASThreads`: after each block on several threads, OpenBLAS's pool is stopped (`BLAS.stopIdleThreads()`),
    /// so that the replicas' blocks do not run beside its worker, which polls (sched_yield) for ~116 ms after its last
    /// threaded call on this machine: every replica block that followed a one-replica block ran beside a third runnable
    /// thread, the likely reason they timed fc-ae's replicas at 1.76-2.21 ms a step where their epoch ran 1.2-1.3 ms
    /// (BENCHMARKS.md, "One process on 2 cores, fourth pass"). Only for a caller that owns the
    /// process's BLAS (the train command): stopping the pool while another thread is inside a threaded sgemm could hang.
    /// `timer` turns a block's measured seconds a step into the figure recorded (the wall clock's by default; tests
    /// inject their own to check the decision).
    public static func measure(replicas: Int, rounds: Int = 3, source: any TrainingSource, batchSize: Int, seed: UInt64, stepsPerEpoch: Int,
                               stopsIdleBLASThreads: Bool = false, timer: @escaping BlockTimer = { _, _, measured in measured },
                               build: (_ shard: Range<Int>?) throws -> (model: any Model, optimizer: any Optimizer)) throws -> ReplicaCalibration {
        precondition(replicas > 1, "a calibration compares several replicas against one")
        precondition(batchSize % replicas == 0 && batchSize <= source.count, "whole slices of a batch the split holds")
        var calibration = ReplicaCalibration(replicas: replicas)
        let previousThreads = BLAS.threadCount
        defer { BLAS.setThreadCount(previousThreads) }
        // A small split is held in memory from here on, as the run's first epoch will hold it (`TrainingSource.prepare`);
        // oneDNN's sgemm kernels are generated meanwhile, so that the first block's warm-up step does not stall on them.
        do {
            defer { DNNLKernelWarmUp.wait() }
            DNNLKernelWarmUp.start()
            try source.prepare()
        }
        let single = try build(nil)
        let shards = OptimizerShards.ranges(parameterCount: single.model.parameters.count, ranks: replicas)
        let copies = try (0..<replicas).map { r in try build(shards[r]) }
        for copy in copies.dropFirst() { copy.model.parameters.shareValues(of: copies[0].model.parameters) }
        // As the replicas' trainers will run them (`Trainer.init`).
        for copy in copies { (copy.optimizer as? Adam)?.storesWeightsInBursts = replicas > 1 }

        // The run's epoch-0 order; each block reads the next global batches of it, both layouts the same ones in turn.
        var rng = RandomGenerator(seed: seed, stream: 0)
        let order = rng.permutation(source.count)
        let usable = max(1, min(stepsPerEpoch, source.count / batchSize))
        let local = batchSize / replicas
        let data = CalibrationData(source: source, order: order, batchSize: batchSize, local: local, usable: usable, seed: seed,
                                   config: single.model.config, targetEncoder: single.model.targetEncoder)

        let group = InProcessGroup(size: replicas)
        let synchronizers = copies.enumerated().map { r, copy in
            GradientSynchronizer(store: copy.model.parameters, communicator: group.member(r), shards: shards)
        }
        let feed = ReplicaFeed(replicas: replicas)
        let inputs = UncheckedCalibrationInputs(single: single, copies: copies, synchronizers: synchronizers, data: data, feed: feed)
        let times = CalibrationTimes()
        // The replicas' threads live through the whole calibration (starting threads is not part of a step): replica
        // 0's thread also runs the one-replica blocks on every thread, the others waiting at a barrier meanwhile. Each
        // block has a prefetch thread of its own, finished before the next block starts, so one thread at a time reads
        // the source (HDF5 is the serial library).
        BLAS.setThreadCount(1)
        let results = group.run(name: "calibration", prepare: { BLAS.setThreadCount(1) }) { member -> Void in
            let r = member.rank
            let (copy, sync) = (inputs.copies[r], inputs.synchronizers[r])
            var block = 0
            // Blocks of each layout so far: the timer's index (0 the warm-up, 1 the sizing step, then the blocks).
            var timed: [Layout: Int] = [:]
            func record(_ layout: Layout, _ measured: Double) -> Double {
                defer { timed[layout, default: 0] += 1 }
                return timer(layout, timed[layout, default: 0], measured)
            }
            func threadBlock(_ steps: Int) throws -> Double {
                var seconds = 0.0
                if r == 0 {
                    BLAS.setThreadCount(replicas)
                    let reader = inputs.data.prefetcher(block: block, steps: steps)
                    defer { reader.finish() }
                    let start = monotonicSeconds()
                    for _ in 0..<steps { step(inputs.single.model, inputs.single.optimizer, try reader.next()) }
                    seconds = (monotonicSeconds() - start) / Double(steps)
                    BLAS.setThreadCount(1)
                    if stopsIdleBLASThreads { BLAS.stopIdleThreads() }
                }
                block += 1
                try member.barrier()
                return record(.oneReplica, seconds)
            }
            func replicaBlock(_ steps: Int) throws -> Double {
                // As the run reads: a split held in memory through each replica's own prefetcher, else one shared feed.
                let reader = inputs.data.source.readsConcurrently
                    ? inputs.data.ownPrefetcher(block: block, steps: steps, replica: r)
                    : inputs.feed.stream(epoch: block, replica: r) { inputs.data.replicaPrefetcher(block: block, steps: steps, replicas: replicas) }
                block += 1
                try member.barrier()
                let start = monotonicSeconds()
                for _ in 0..<steps {
                    var batch = try reader.next()
                    (batch.epoch, batch.seed) = (0, inputs.data.seed)
                    copy.model.parameters.deferGradientZeroing()
                    sync.beginStep()
                    let loss = copy.model.loss(batch, training: true)
                    let value = Double(loss.item)
                    loss.backward(onLeafReady: sync.parameterReady)
                    copy.model.parameters.settleGradients()
                    // The trainer's bound test, and its round that ends after the sum when every replica passes it.
                    let bounded = value.isFinite && sync.ownGradientsSumWithoutOverflow
                    _ = try sync.finish(posting: [value.isFinite ? value : 0, value.isFinite ? 0 : 1], skipsAfterSum: bounded) { [-1, 0] }
                    copy.optimizer.step(copy.model.parameters, gradientScale: sync.averagingScale)
                    try member.barrier()
                }
                let seconds = (monotonicSeconds() - start) / Double(steps)
                reader.finish()
                try member.barrier()
                return record(.replicas, seconds)
            }
            // Warm-up: the first step of each layout allocates and faults its buffers in; the second sizes the blocks.
            var warmUp = [try threadBlock(1), try replicaBlock(1)]
            try member.allreduce(&warmUp, .max)
            // Every replica must run the same steps and decide alike: the sizing step's times are agreed (replica 0
            // alone times the one-replica step; the replicas' step is the slowest replica's).
            var sizing = [try threadBlock(1), try replicaBlock(1)]
            try member.allreduce(&sizing, .max)
            // Each layout's blocks are sized on its own step, the shorter of its warm-up and sizing steps (agreed as
            // well): one step descheduled on a busy machine (fc-ae's 1.5 ms step took 212 ms) is then caught by the
            // other, and a layout many times slower than the other under load keeps blocks of `targetBlockSeconds`
            // rather than the faster one's step count.
            let perStep = [max(min(warmUp[0], sizing[0]), 1e-6), max(min(warmUp[1], sizing[1]), 1e-6)]
            let threadSteps = max(1, min(maximumBlockSteps, Int(targetBlockSeconds / perStep[0])))
            let replicaSteps = max(1, min(maximumBlockSteps, Int(targetBlockSeconds / perStep[1])))
            // Long steps (a block's worth in both layouts) `clearRatio` times apart decide at once: timing a large model's
            // slow layout three more times would cost more than it could tell. One long step beside a short one does
            // not: it was the first batches' noise as often as the layout (fc-ae's one replica on two threads lost
            // at once at 212 ms against 32 under load).
            let faster = min(perStep[0], perStep[1])
            if faster >= targetBlockSeconds && max(perStep[0], perStep[1]) >= clearRatio * faster {
                if r == 0 { times.record(thread: perStep[0], replica: perStep[1], blockSteps: (1, 1)) }
                return
            }
            // Short steps: a block of each layout, untimed, before the rounds. After one warm-up step the replicas' next
            // steps may still grow their threads' heaps and fault pages in: the suspected reason the rounds timed fc-ae's
            // replicas at 1.22-1.30 ms a step where the epoch that followed ran 0.93 ms a step on them (BENCHMARKS.md,
            // "Replicas, quiet"). Costs about 2 x `targetBlockSeconds`.
            if faster < targetBlockSeconds {
                _ = try threadBlock(threadSteps)
                _ = try replicaBlock(replicaSteps)
            }
            for round in 0..<rounds {
                var t = 0.0, p = 0.0
                if round % 2 == 0 {
                    t = try threadBlock(threadSteps)
                    p = try replicaBlock(replicaSteps)
                } else {
                    p = try replicaBlock(replicaSteps)
                    t = try threadBlock(threadSteps)
                }
                if r == 0 { times.record(thread: t, replica: p, blockSteps: (threadSteps, replicaSteps)) }
            }
        }
        for result in results { try result.get() }
        (calibration.threadSeconds, calibration.replicaSeconds, calibration.blockSteps) = times.values
        return calibration
    }

    /// One training step of `model` on `batch` on this thread (the one-replica layout), with the trainer's loss read
    /// and check of the gradients for a non-finite value.
    /// (The copies are thrown away: what they find is not acted on; the run checks its own steps.)
    private static func step(_ model: any Model, _ optimizer: any Optimizer, _ batch: Batch) {
        model.parameters.deferGradientZeroing()
        let loss = model.loss(batch, training: true)
        let finite = loss.item.isFinite
        loss.backward()
        model.parameters.settleGradients()
        if finite && firstNonFiniteIndex(model.parameters.gradients.pointer, count: model.parameters.count) == nil {
            optimizer.step(model.parameters)
        }
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .infinity }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    /// Whether the calibration's copies of a model of `parameters` parameters fit in `memoryShare` of the machine's
    /// memory: the one replica's weights, gradients and `optimizerBuffers` optimizer buffers of as many values, and the
    /// replicas' one shared copy of the weights and of the optimizer state beside a gradient buffer each.
    public static func copiesFit(parameters: Int, optimizerBuffers: Int, replicas: Int) -> Bool {
        let values = Double(parameters) * (2 + Double(optimizerBuffers) + Double(1 + replicas + optimizerBuffers))
        return values * 4 <= memoryShare * Double(ProcessInfo.processInfo.physicalMemory)
    }

    /// The faster layout's replica count: `replicas`, or 1 (one replica on `replicas` threads).
    public var chosen: Int { Self.median(replicaSeconds) < Self.median(threadSeconds) ? replicas : 1 }

    /// The log line: the choice, both layouts' step times and how they were measured.
    public var summary: String {
        let replicaStep = formatMilliseconds(Self.median(replicaSeconds)), threadStep = formatMilliseconds(Self.median(threadSeconds))
        let choice = chosen > 1 ? "\(replicas) on threads of this process, one thread each" : "1 (one replica on \(replicas) threads)"
        return "replicas: \(choice), the faster layout on this run's first batches (a step: \(replicas) replicas x 1 thread \(replicaStep), " +
            "1 replica x \(replicas) threads \(threadStep); \(replicaSeconds.count == 1 && blockSteps == (1, 1) ? "one step each, \(Self.clearRatio)x apart" : "median of \(replicaSeconds.count) round(s) of \(blockSteps.replica) and \(blockSteps.thread) step(s)")); " +
            "--replicas N fixes the count"
    }
}

/// The copies, synchronizers and data each calibration thread reads (each only its own replica's copy).
private struct UncheckedCalibrationInputs: @unchecked Sendable {
    let single: (model: any Model, optimizer: any Optimizer)
    let copies: [(model: any Model, optimizer: any Optimizer)]
    let synchronizers: [GradientSynchronizer]
    let data: CalibrationData
    let feed: ReplicaFeed
}

/// The calibration's batches: block b reads global batches from b x `maximumBlockSteps` on (modulo the usable steps)
/// of the run's epoch-0 order, through a prefetcher as the run's.
private struct CalibrationData: @unchecked Sendable {
    let source: any TrainingSource
    let order: [Int]
    let batchSize: Int
    let local: Int
    let usable: Int
    let seed: UInt64
    let config: ModelConfig
    let targetEncoder: (any TargetEncoder)?

    private func globalBatch(_ block: Int, _ k: Int) -> Int { (block * ReplicaCalibration.maximumBlockSteps + k) % usable }

    /// One replica on every thread: block `block`'s `steps` global batches.
    func prefetcher(block: Int, steps: Int) -> BatchStream {
        let list = (0..<steps).map { k in
            let g = globalBatch(block, k)
            return Array(order[(g * batchSize)..<((g + 1) * batchSize)])
        }
        return SeededStream(Prefetcher(source: source, steps: list, epoch: 0, config: config, targetEncoder: targetEncoder, lowPriority: true), seed: seed)
    }

    /// Replica `replica`'s own prefetcher of block `block` (a source that reads concurrently): its slice of each step.
    func ownPrefetcher(block: Int, steps: Int, replica: Int) -> BatchStream {
        let list = (0..<steps).map { k in
            let g = globalBatch(block, k)
            return Array(order[(g * batchSize + replica * local)..<(g * batchSize + (replica + 1) * local)])
        }
        return Prefetcher(source: source, steps: list, epoch: 0, config: config, targetEncoder: targetEncoder, lowPriority: true)
    }

    /// The replicas' shared prefetcher of block `block`: each step's slices in replica order.
    func replicaPrefetcher(block: Int, steps: Int, replicas: Int) -> Prefetcher {
        let list = (0..<steps).flatMap { k in
            let g = globalBatch(block, k)
            return (0..<replicas).map { r in Array(order[(g * batchSize + r * local)..<(g * batchSize + (r + 1) * local)]) }
        }
        return Prefetcher(source: source, steps: list, epoch: 0, config: config, targetEncoder: targetEncoder, depth: 2 * replicas, lowPriority: true)
    }
}

/// A prefetcher whose batches carry the run's noise keys (epoch 0 and the seed), as the trainer sets them.
private final class SeededStream: BatchStream {
    let reader: Prefetcher
    let seed: UInt64
    init(_ reader: Prefetcher, seed: UInt64) { (self.reader, self.seed) = (reader, seed) }
    func next() throws -> Batch {
        var batch = try reader.next()
        (batch.epoch, batch.seed) = (0, seed)
        return batch
    }
    func finish() { reader.finish() }
    var waitSeconds: Double { reader.waitSeconds }
}

/// Replica 0's timings, read after its thread ends.
private final class CalibrationTimes: @unchecked Sendable {
    private let lock = NSLock()
    private var thread: [Double] = [], replica: [Double] = [], steps = (thread: 1, replica: 1)
    func record(thread t: Double, replica p: Double, blockSteps: (thread: Int, replica: Int)) { lock.withLock { thread.append(t); replica.append(p); steps = blockSteps } }
    var values: ([Double], [Double], (thread: Int, replica: Int)) { lock.withLock { (thread, replica, steps) } }
}
