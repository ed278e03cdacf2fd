import Foundation
import StarlingCore
import StarlingIO
import StarlingDistributed
import StarlingNN
import StarlingData
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The flags every model family shares (`starling train --model NAME ...`). The defaults here are the flags'
/// defaults too: `TrainingFlags` reads them from a default instance rather than repeating them.
public struct TrainingOptions: Sendable {
    public var epochs = 1
    public var batchSize = 256
    /// The base learning rate: plateaus lower it, `schedule` shapes it step by step.
    public var learningRate: Float = 1e-3
    /// The learning-rate schedule (warmup, step decay, cosine), resolved to optimizer steps when a run starts.
    public var schedule = ScheduleSettings()
    public var seed: UInt64 = 0
    /// Caps the steps of an epoch (nil: one pass over the training split).
    public var stepsPerEpoch: Int?
    /// Caps the images scored for the validation loss (nil: the whole validation split).
    public var validationLimit: Int?
    public var outputDirectory = "Checkpoints"
    /// Also write the last checkpoint every N steps within an epoch (nil: at epoch ends only).
    public var checkpointEverySteps: Int?
    /// Stop (with a checkpoint) once this many optimizer steps have been taken in total, mid-epoch or not.
    public var maxSteps: Int?
    /// Epoch checkpoints kept beside `-last.h5` and `-best.h5` (0: none).
    public var keepCheckpoints = 3
    /// Size of a gradient allreduce bucket.
    public var bucketBytes = 25 << 20
    /// Start bucket allreduces during backward (off only to measure what the overlap hides).
    public var overlapCommunication = true
    /// The number format of gradients on the network (`--gradient-precision`).
    public var gradientWire = GradientWire.float32
    /// ZeRO stage 1 (`--shard-optimizer`): each rank keeps the optimizer state of its own range of the parameters
    /// (`OptimizerShards`), receives only that range's averaged gradients (reduce-scatter), updates it, and the ranks
    /// allgather the weights. The optimizer must be built for `Trainer.optimizerShard(...)`.
    public var shardOptimizer = false
    /// Stop when the monitored loss (validation, or training without validation) has not improved by more than
    /// `minDelta` for this many epochs (Keras's EarlyStopping).
    public var earlyStoppingPatience: Int?
    public var minDelta = 0.0
    /// Keras's ReduceLROnPlateau on the monitored loss; it lowers the base rate, which `schedule` then shapes.
    public var reduceOnPlateau: ReduceOnPlateau?
    /// Batch norm statistics over the global batch (`--sync-bn`) rather than each rank's slice.
    public var synchronizeBatchNorm = false
    /// Seconds a rank may wait in any collective before the watchdog warns and names missing ranks.
    public var watchdogSeconds: Double = 60
    /// Seconds after that warning before the watchdog aborts the whole job (MPI_Abort), naming the last good checkpoint.
    public var watchdogAbortSeconds: Double = 300
    /// The checkpoint this run resumes from (the last good one until the run writes its own).
    public var resumePath: String?
    /// Steps with a non-finite loss or gradient that are skipped (no update) before the run stops (0: stop at the first).
    public var skipNonFinite = 0
    /// Time the first steps on this many threads against one and keep the faster count for the rest of the run
    /// (`ThreadCalibration`); nil keeps the count the process was given. `train` sets it on one process when
    /// `--blas-threads` is not given.
    public var calibrateThreads: Int?
    /// Print the live progress line (off for benchmarks).
    public var progress = true
    /// Write checkpoints and the CSV log (off for benchmarks).
    public var writeOutputs = true
    /// The run's resolved configuration (YAML), written as `<model>-config.yaml` beside the checkpoints and into each.
    public var runConfiguration: String?
    /// Write TensorBoard event files into this folder (rank 0): losses, learning rate, images/s, validation pictures.
    public var tensorBoardDirectory: String?
    /// Figures of the model on the validation split for TensorBoard (e.g. detectors' mAP), computed by rank 0 at each
    /// validation; they are logged only and never steer training, so the other ranks need not see them.
    public var validationMetrics: (@Sendable (any Model) throws -> [(name: String, value: Double)])?
    /// Pictures of the model on the validation split for TensorBoard (PNG bytes, RGB), made by rank 0 at each
    /// validation beside `validationMetrics`: segmentation's image | truth | prediction, Mask R-CNN's drawn instances.
    public var validationPictures: (@Sendable (any Model) throws -> [(name: String, png: [UInt8], width: Int, height: Int)])?
    public init() {}
}

/// One epoch's figures, as printed and written to the CSV log.
public struct EpochRecord: Sendable {
    public var epoch: Int
    public var step: Int
    public var loss: Double
    public var validationLoss: Double?
    public var learningRate: Float
    public var seconds: Double
    public var imagesPerSecond: Double
    public var dataWaitSeconds: Double
}

/// The data-parallel training loop (one process by default, N under mpirun).
///
/// Each epoch's order is a permutation seeded by (seed, epoch), the same on every rank. The global batch B is
/// split into N equal slices; each rank reads only its slice from HDF5 on a background thread, computes the mean
/// loss of its slice, and the gradient buckets are averaged over ranks while backward runs, so N ranks at global
/// batch B compute the gradient one rank computes at batch B. Rank 0 prints and writes checkpoints; logged figures
/// are averaged over ranks; a non-finite loss on any rank stops every rank at the same step.
public final class Trainer {
    public let model: any Model
    public let optimizer: any Optimizer
    public let train: any TrainingSource
    public let validation: (any TrainingSource)?
    public let options: TrainingOptions
    public let world: any Collective
    public private(set) var state = Checkpoint.TrainingState()
    public private(set) var history: [EpochRecord] = []
    /// Seconds spent waiting for gradient allreduces after backward, summed over the run (this rank).
    public var exposedCommunicationSeconds: Double { synchronizer.exposedSeconds }
    private let synchronizer: GradientSynchronizer
    /// ZeRO stage 1: every rank's range of the parameters, in rank order (nil: not sharded, or one rank).
    private let shards: [Range<Int>]?
    /// The ranks (or replicas) a sharded run gathers and scatters over.
    private let shardWorld: (any ShardingCollective)?
    /// Replicas on threads of one process: every replica's parameters read replica 0's values (shared at the start,
    /// `ParameterStore.shareValues`), each replica's optimizer updates its range of them in place, and a barrier
    /// replaces the ranks' allgather of the weights. Gradients and batch-norm statistics stay per replica, as per rank.
    private let weightsShared: Bool
    /// Rank 0 of a sharded run resumed from a checkpoint: the whole saved optimizer state, sent to the ranks' ranges
    /// once at the start and then dropped.
    private var resumedOptimizerState: [String: [Float]]?
    private let watchdog: Watchdog
    /// The per-step [loss, non-finite flag] allreduce buffer (must outlive the non-blocking call).
    private let agreement = UnsafeMutablePointer<Double>.allocate(capacity: 2)
    private let log: (String) -> Void
    /// The thread count being chosen over the first steps (nil when the count is fixed).
    public private(set) var threadCalibration: ThreadCalibration?
    /// The data pipeline shared with the other replicas of this process (nil: this trainer reads its own slices).
    private let feed: ReplicaFeed?
    /// The clock the thread calibration times steps by. Tests give it step times of their own: the calibration's
    /// schedule (when it switches, how long its blocks are, when it decides) follows the step times, and on a loaded
    /// machine a test's real clock gave it another schedule, whose different rounding trained visibly different
    /// weights (ThreadCalibrationTests).
    package var calibrationClock: () -> Double = monotonicSeconds

    public init(model: any Model, optimizer: any Optimizer, train: any TrainingSource, validation: (any TrainingSource)?,
                options: TrainingOptions, world: any Collective, resume: Checkpoint.Loaded? = nil,
                log: @escaping (String) -> Void = Trainer.printLine, feed: ReplicaFeed? = nil) throws {
        try train.checkCompatible(with: model.config)
        try validation?.checkCompatible(with: model.config)
        guard options.batchSize > 0 else { throw TrainingError("batch size must be positive, got \(options.batchSize)") }
        guard options.batchSize % world.size == 0 else {
            throw TrainingError("global batch size \(options.batchSize) does not split evenly over \(world.size) ranks; use a multiple of \(world.size)")
        }
        guard options.batchSize <= train.count else {
            throw TrainingError("batch size \(options.batchSize) exceeds the \(train.count) training images in \(train.path)")
        }
        if let problem = options.schedule.problem { throw TrainingError(problem) }
        let sharding = Self.splitsOptimizer(world: world, options: options)
        // Replicas share one copy of the weights: each updates its range of them, whatever --shard-optimizer says.
        let replicas = world is InProcessCollective && world.size > 1
        if sharding && !replicas && options.gradientWire == .float16 {
            throw TrainingError("--shard-optimizer cannot send gradients as fp16: fp16's scale and overflow test need the whole summed gradient, which a rank no longer receives; use --gradient-precision bf16 or fp32")
        }
        let expectedShard = Self.optimizerShard(parameterCount: model.parameters.count, world: world, options: options)
        guard optimizer.shard == expectedShard else {
            let owner = replicas ? "replica \(world.rank) of \(world.size) (replicas share one copy of the weights and optimizer state)" : "rank \(world.rank) of \(world.size)"
            throw TrainingError("the optimizer keeps state for parameters \(optimizer.shard) but \(owner) owns \(expectedShard)\(sharding && !replicas ? " under --shard-optimizer" : "") (build it with Trainer.optimizerShard)")
        }
        guard !sharding || world is any ShardingCollective else {
            throw TrainingError("--shard-optimizer needs a reduce-scatter and an allgather, which \(type(of: world)) lacks")
        }
        shardWorld = sharding ? world as? any ShardingCollective : nil
        shards = sharding ? OptimizerShards.ranges(parameterCount: model.parameters.count, ranks: world.size) : nil
        weightsShared = replicas
        // The other replicas read the weights this replica's optimizer writes (`Adam.storesWeightsInBursts`).
        (optimizer as? Adam)?.storesWeightsInBursts = replicas
        self.model = model
        self.optimizer = optimizer
        self.train = train
        self.validation = validation
        self.options = options
        self.world = world
        self.feed = feed
        self.log = world.isRoot ? log : { _ in }
        // float16's scale needs the whole sum: replicas then allreduce their gradients and still update only their range.
        synchronizer = GradientSynchronizer(store: model.parameters, communicator: world, bucketBytes: options.bucketBytes,
                                           overlap: options.overlapCommunication, wire: options.gradientWire,
                                           shards: options.gradientWire == .float16 ? nil : shards)
        watchdog = Watchdog(communicator: world, timeout: options.watchdogSeconds, abortTimeout: options.watchdogAbortSeconds,
                            log: { Trainer.printLine($0) })
        watchdog.lastGoodCheckpoint = options.resumePath
        if let aware = model as? CrossReplicaAware {
            aware.crossReplica = CrossReplica(world)
            aware.synchronizeBatchNorm = options.synchronizeBatchNorm
        }
        state.seed = options.seed
        state.worldSize = world.size
        state.worldIsReplicas = world is InProcessCollective
        state.learningRateSchedule = requestedSchedule
        state.runConfiguration = options.runConfiguration
        if let resume { try restore(resume) }
        // After the restore: the settling and the budget are shares of the steps left to train.
        if let threads = options.calibrateThreads, threads > 1 {
            threadCalibration = ThreadCalibration(threads: threads, plannedSteps: plannedSteps - state.step)
        }
        // Started only now, so that a refusal above leaves no watch thread behind.
        watchdog.start()
        watchdog.at("the start-up agreement", step: state.step)
        // oneDNN's sgemm kernels generated while the start-up agreement reads the data (the first read of a small split
        // loads it); a refusal waits for them, so that the process never exits in the middle of generating them.
        DNNLKernelWarmUp.start()
        do { try synchronizeStart() } catch { watchdog.stop(); DNNLKernelWarmUp.wait(); throw error }
    }

    deinit {
        watchdog.stop()
        agreement.deallocate()
    }

    /// The range of the flat parameter layout whose optimizer state this rank keeps: its ZeRO range with
    /// `--shard-optimizer` on several ranks, and always on several replicas (which share one copy of the weights and
    /// of the optimizer state); every parameter otherwise. Build the optimizer with it (`shard:`).
    public static func optimizerShard(parameterCount: Int, world: any Collective, options: TrainingOptions) -> Range<Int> {
        guard splitsOptimizer(world: world, options: options) else { return 0..<parameterCount }
        return OptimizerShards.ranges(parameterCount: parameterCount, ranks: world.size)[world.rank]
    }

    /// Whether each member updates only its range of the parameters: ranks with `--shard-optimizer` (ZeRO stage 1),
    /// replicas on threads always.
    static func splitsOptimizer(world: any Collective, options: TrainingOptions) -> Bool {
        world.size > 1 && (options.shardOptimizer || world is InProcessCollective)
    }

    /// The checkpoint a stopped job resumes from: every rank records it, since any rank's watchdog may be the one to abort.
    private func published(_ path: String) {
        watchdog.lastGoodCheckpoint = path
    }

    /// Fault injection for the watchdog test: STARLING_TEST_STALL="rank:step:seconds" makes that rank sleep before
    /// that step's collectives. Not a user setting; it stays out of the help.
    private func stallForTesting(step: Int) {
        guard let spec = Self.stallSpec else { return }
        let parts = spec.split(separator: ":").compactMap { Double($0) }
        guard parts.count == 3, Int(parts[0]) == world.rank, Int(parts[1]) == step else { return }
        usleep(useconds_t(parts[2] * 1_000_000))
    }

    public static func printLine(_ line: String) { StarlingNN.printLine(line) }

    /// The fault-injection settings, read once: every step of every replica looked both up with `getenv`, a walk of
    /// the environment each (0.2 % of vae's one-thread CPU by `perf`).
    private static let stallSpec = getenv("STARLING_TEST_STALL").map { String(cString: $0) }
    private static let nonFiniteSpec = getenv("STARLING_TEST_NONFINITE").map { String(cString: $0) }

    /// Fault injection for the non-finite tests: STARLING_TEST_NONFINITE="rank:step:loss" or "rank:step:gradient" makes
    /// that rank's loss NaN, or one of its gradients infinite, at that global step. Not a user setting.
    private func nonFiniteForTesting(step: Int) -> String? {
        guard let spec = Self.nonFiniteSpec else { return nil }
        let parts = spec.split(separator: ":").map(String.init)
        guard parts.count == 3, Int(parts[0]) == world.rank, Int(parts[1]) == step else { return nil }
        return parts[2]
    }

    /// Steps skipped for a non-finite loss or gradient in this run.
    private var skippedSteps = 0

    /// The first non-finite value of the averaged gradients, named. The allreduced gradients are the same on every
    /// rank and a NaN or infinity in any rank's makes their sum non-finite on all, so every rank decides alike
    /// without another collective.
    ///
    /// Sharded, a rank holds the sum of its own range only: the ranks exchange their first non-finite index and value
    /// (a few doubles), and all name the lowest.
    private func nonFiniteGradient() throws -> String? {
        let store = model.parameters
        let g = store.gradients.pointer
        if shards != nil {
            watchdog.at("the non-finite gradient check", step: state.step)
            return nonFiniteGradientNamed(try world.allgather(ownNonFiniteGradient()))
        } else if let i = firstNonFiniteIndex(g, count: store.count) {
            return nonFiniteGradientNamed([Double(i), Double(g[i])])
        }
        return nil
    }

    /// Sharded: the first non-finite value of this rank's range of the summed gradients, as [index, value] ([-1, 0]:
    /// none), for the ranks to exchange.
    private func ownNonFiniteGradient() -> [Double] {
        guard let shards else { return [-1, 0] }
        let g = model.parameters.gradients.pointer
        let mine = shards[world.rank]
        guard let i = firstNonFiniteIndex(g + mine.lowerBound, count: mine.count) else { return [-1, 0] }
        return [Double(mine.lowerBound + i), Double(g[mine.lowerBound + i])]
    }

    /// The message for the lowest index among [index, value] pairs (index -1: none), so that every rank names the
    /// same parameter; nil when there is none.
    private func nonFiniteGradientNamed(_ pairs: [Double]) -> String? {
        var found: (index: Int, value: Float)?
        for q in 0..<(pairs.count / 2) where pairs[2 * q] >= 0 {
            let index = Int(pairs[2 * q])
            if let earlier = found, earlier.index <= index { continue }
            found = (index, Float(pairs[2 * q + 1]))
        }
        guard let (i, value) = found else { return nil }
        let store = model.parameters
        let name = store.parameters.first { i >= $0.offset && i < $0.offset + $0.count }?.name ?? "?"
        return "a gradient became non-finite (\(value) in \(name))"
    }

    /// The element counts of the ranks' ranges (sharded runs only).
    private var shardCounts: [Int] { shards?.map(\.count) ?? [] }

    /// Writes a checkpoint at `path` on rank 0. Every rank calls it when outputs are written: a sharded run first
    /// gathers the optimizer state of every range to rank 0, so the file is the one an unsharded run writes (it resumes
    /// sharded or not, on any number of ranks). Rank 0 holds the whole state only while it writes.
    private func saveCheckpoint(to path: String) throws {
        guard let shards else {
            if world.isRoot { try Checkpoint.save(to: path, model: model, optimizer: optimizer, state: state) }
            return
        }
        watchdog.at("the optimizer state's gather for a checkpoint", step: state.step)
        let total = model.parameters.count
        var gathered: [(name: String, values: [Float])] = []
        for (name, storage) in optimizer.state {
            var whole = world.isRoot ? [Float](repeating: 0, count: total) : []
            try whole.withUnsafeMutableBufferPointer { buffer in
                try shardWorld?.gather(storage.pointer, counts: shards.map(\.count), into: world.isRoot ? buffer.baseAddress : nil, root: 0)
            }
            gathered.append((name, whole))
        }
        watchdog.at("training", step: state.step)
        guard world.isRoot else { return }
        let config = Checkpoint.OptimizerConfig(name: Checkpoint.optimizerName(optimizer), learningRate: optimizer.learningRate, stepCount: optimizer.stepCount)
        try Checkpoint.save(to: path, model: model, optimizer: config, optimizerValues: gathered, state: state)
    }

    /// Steps per epoch: full global batches (the last partial batch is dropped), capped by --steps-per-epoch.
    public var stepsPerEpoch: Int {
        let full = train.count / options.batchSize
        return min(full, options.stepsPerEpoch ?? full)
    }

    /// The run's optimizer steps in all, the cosine's horizon: every epoch's steps, capped by --max-steps.
    public var plannedSteps: Int {
        let (all, overflow) = options.epochs.multipliedReportingOverflow(by: stepsPerEpoch)
        return min(overflow ? Int.max : all, options.maxSteps ?? Int.max)
    }

    /// The schedule these options ask for, in this run's steps. A resumed run continues its checkpoint's instead.
    public var requestedSchedule: ResolvedSchedule {
        options.schedule.resolved(stepsPerEpoch: stepsPerEpoch, totalSteps: plannedSteps)
    }

    /// The rate plateaus have left (--lr until the first one), which the schedule shapes per step.
    private var baseLearningRate: Float { state.learningRate ?? options.learningRate }

    public var checkpointPrefix: String { "\(options.outputDirectory)/\(model.config.family)" }
    public var lastCheckpointPath: String { "\(checkpointPrefix)-last.h5" }
    public var bestCheckpointPath: String { "\(checkpointPrefix)-best.h5" }
    public var logPath: String { "\(checkpointPrefix)-log.csv" }
    public var configurationPath: String { "\(checkpointPrefix)-config.yaml" }

    /// Continues from a checkpoint: weights, optimizer moments and step, epoch and data cursor.
    private func restore(_ loaded: Checkpoint.Loaded) throws {
        guard loaded.model.config == model.config else {
            throw CheckpointError(file: loaded.path, message: "holds model \(loaded.model.config.family) \(loaded.model.config.options), not the \(model.config.family) \(model.config.options) this run trains")
        }
        model.parameters.values.copy(from: loaded.model.parameters.values)
        if let mine = model.buffers, let saved = loaded.model.buffers { mine.values.copy(from: saved.values) }
        let shard = optimizer.shard
        for (name, storage) in optimizer.state {
            guard let saved = loaded.optimizerState[name] else {
                throw CheckpointError(file: loaded.path, message: "no optimizer state '\(name)' to resume \(Checkpoint.optimizerName(optimizer)) from (an inference-only checkpoint, or one of another optimizer)")
            }
            // The file holds every parameter's state (Checkpoint.load checked the count); this rank keeps its range.
            saved.withUnsafeBufferPointer { storage.pointer.update(from: $0.baseAddress! + shard.lowerBound, count: storage.count) }
        }
        if shards != nil { resumedOptimizerState = loaded.optimizerState }
        optimizer.stepCount = loaded.optimizer?.stepCount ?? loaded.state.step
        let previous = (size: loaded.state.worldSize, replicas: loaded.state.worldIsReplicas)
        state = loaded.state
        state.worldSize = world.size
        state.worldIsReplicas = world is InProcessCollective
        state.runConfiguration = options.runConfiguration
        if previous.size != world.size || previous.replicas != state.worldIsReplicas {
            log("resuming a run of \(Self.members(previous.size, replicas: previous.replicas)) on \(Self.members(world.size, replicas: state.worldIsReplicas)): " +
                "the data cursor is global, so the sample order is unchanged")
        }
        // The schedule is part of the run being continued (old checkpoints hold none: constant).
        if state.learningRateSchedule != requestedSchedule {
            log("continuing the checkpoint's learning-rate schedule (\(state.learningRateSchedule)); this run's flags would give \(requestedSchedule)")
        }
        log("resumed at epoch \(state.epoch), step \(state.step), data cursor \(state.dataCursor)")
    }

    /// "2 rank(s)" or "2 replica(s)" (on threads of one process).
    static func members(_ count: Int, replicas: Bool) -> String { "\(count) \(replicas ? "replica(s)" : "rank(s)")" }

    /// Rank 0's configuration, parameters and optimizer state go to every rank; a rank started differently is refused
    /// first (`RunAgreement`), before any collective whose size depends on the settings.
    private func synchronizeStart() throws {
        guard world.size > 1 else { return }
        // The fingerprint reads a few samples of each split; replicas share the sources, which take one reader at a
        // time until a split is held in memory (the first read loads it): through the feed, in turn.
        let agree = { try RunAgreement(model: self.model, optimizer: self.optimizer, options: self.options, train: self.train,
                                       validation: self.validation, stepsPerEpoch: self.stepsPerEpoch) }
        try (feed.map { try $0.reading(agree) } ?? agree()).check(on: world)
        if weightsShared, let replicas = world as? InProcessCollective {
            // Replica 0's values (restored from the checkpoint, if any) become every replica's; the copies are freed,
            // and the broadcast below finds nothing to copy.
            let stores = try replicas.allgatherObjects(model.parameters)
            model.parameters.shareValues(of: stores[0])
        }
        try world.broadcast(model.parameters.values.pointer, count: model.parameters.count)
        if let buffers = model.buffers { try world.broadcast(buffers.values.pointer, count: buffers.count) }
        if let shards {
            try sendResumedOptimizerState(shards)
        } else {
            for (_, storage) in optimizer.state { try world.broadcast(storage.pointer, count: storage.count) }
        }
        // Only rank 0 read a resumed checkpoint: its progress counters go to every rank (as text, so they stay exact).
        let counters = try world.broadcast("\(state.epoch) \(state.step) \(state.dataCursor) \(optimizer.stepCount) \(state.bestValidationLoss)")
        let parts = counters.split(separator: " ")
        guard parts.count == 5, let epoch = Int(parts[0]), let step = Int(parts[1]), let cursor = Int(parts[2]),
              let optimizerSteps = Int(parts[3]), let best = Double(parts[4]) else {
            throw TrainingError("rank \(world.rank): unreadable training state from rank 0: \(counters)")
        }
        (state.epoch, state.step, state.dataCursor, state.bestValidationLoss) = (epoch, step, cursor, best)
        optimizer.stepCount = optimizerSteps
        // The callbacks' memory too (learning rate, plateau, early-stopping count, schedule), so resumed ranks act alike.
        let callbacks = Checkpoint.CallbackState(epochsWithoutImprovement: state.epochsWithoutImprovement, plateau: state.plateau,
                                                 learningRate: state.learningRate, schedule: state.learningRateSchedule)
        let text = try world.broadcast(String(decoding: try JSONEncoder().encode(callbacks), as: UTF8.self))
        let agreed = try JSONDecoder().decode(Checkpoint.CallbackState.self, from: Data(text.utf8))
        (state.epochsWithoutImprovement, state.plateau, state.learningRate) = (agreed.epochsWithoutImprovement, agreed.plateau, agreed.learningRate)
        state.learningRateSchedule = agreed.schedule ?? .constant
    }

    /// Sharded: rank 0's resumed optimizer state goes to every rank's range, broadcast in pieces of 4 M values (each
    /// rank keeps the piece's part in its range), so that no rank holds more than a piece beyond its own state. A
    /// fresh run's state is zero on every rank already.
    private func sendResumedOptimizerState(_ shards: [Range<Int>]) throws {
        let resumed = try world.broadcast(resumedOptimizerState == nil ? "fresh" : "resumed") == "resumed"
        defer { resumedOptimizerState = nil }
        guard resumed else { return }
        let total = model.parameters.count, pieceLength = 1 << 22
        let piece = UnsafeMutablePointer<Float>.allocate(capacity: min(total, pieceLength))
        defer { piece.deallocate() }
        let mine = shards[world.rank]
        for (name, storage) in optimizer.state {
            let saved = resumedOptimizerState?[name]
            var start = 0
            while start < total {
                let range = start..<min(total, start + pieceLength)
                if let saved { saved.withUnsafeBufferPointer { piece.update(from: $0.baseAddress! + range.lowerBound, count: range.count) } }
                try world.broadcast(piece, count: range.count)
                let overlap = range.clamped(to: mine)
                if !overlap.isEmpty {
                    (storage.pointer + (overlap.lowerBound - mine.lowerBound)).update(from: piece + (overlap.lowerBound - range.lowerBound), count: overlap.count)
                }
                start = range.upperBound
            }
        }
    }

    /// Runs the remaining epochs; returns the per-epoch records.
    @discardableResult
    public func run() throws -> [EpochRecord] {
        Timeline.register(world is InProcessCollective && world.size > 1 ? "replica-\(world.rank)" : "rank-\(world.rank)")
        let csv = CSVLog(path: logPath)
        var board: TrainingBoard?
        let writes = world.isRoot && options.writeOutputs
        if writes {
            try makeDirectory(options.outputDirectory)
            let stale = AtomicFile.removeStaleTemporaries(in: options.outputDirectory)
            if !stale.isEmpty { log("removed \(stale.count) temporary file(s) left in \(options.outputDirectory) by a killed write: \(stale.joined(separator: ", "))") }
            try csv.start(header: "epoch,step,loss,val_loss,lr,seconds,images_per_second,data_wait_seconds", append: state.epoch > 0 || state.dataCursor > 0)
            if let directory = options.tensorBoardDirectory {
                board = try TrainingBoard(directory: directory)
                log("TensorBoard events: \(board?.writer.path ?? directory)")
            }
            if let configuration = options.runConfiguration {
                try AtomicFile.write(Array(configuration.utf8), to: configurationPath)
                log("configuration: \(configurationPath)")
            }
        }
        let steps = stepsPerEpoch
        let local = options.batchSize / world.size
        let bound = ((world as? InProcessCollective)?.group.processorBinding).map { " bound to processors \($0.map(String.init).joined(separator: ", "))" } ?? ""
        let layout = world is InProcessCollective ? "\(world.size) replica(s) on threads of one process\(bound)" : "\(world.size) rank(s)"
        // Only rank 0 prints; the others' plain lines go to their no-op log.
        var display = world.isRoot && options.progress ? ProgressDisplay.forStandardOutput(worldSize: world.size) : ProgressDisplay(mode: .plain)
        let live = display.mode == .live
        log("training \(model.config.family) (\(model.parameters.count) parameters) on \(train.count) images of \(train.path) " +
            "[\(train.split)], global batch \(options.batchSize) over \(layout), \(steps) steps per epoch, " +
            "\(options.epochs) epochs, BLAS \(BLAS.coreName) x\(BLAS.threadCount); \(GEMMSelection.summary); \(WinogradSetting.summary)")
        if let shards, weightsShared {
            log("weights and optimizer state: one copy shared by the \(world.size) replicas, each updating its range in place: replica 0 parameters \(shards[0].lowerBound)..<\(shards[0].upperBound) of \(model.parameters.count)")
        } else if let shards {
            log("optimizer state sharded over \(world.size) ranks (ZeRO stage 1): rank 0 keeps that of parameters \(shards[0].lowerBound)..<\(shards[0].upperBound) of \(model.parameters.count)")
        }
        let schedule = state.learningRateSchedule
        if !schedule.isConstant { log("learning rate: \(schedule), on the base rate \(baseLearningRate)") }
        optimizer.learningRate = schedule.rate(base: baseLearningRate, step: state.step, epoch: state.epoch)
        if state.plateau == nil { state.plateau = options.reduceOnPlateau }
        // Start-up work of the data (a small split read into memory) before the first epoch's clock starts; oneDNN's
        // sgemm kernels, generated meanwhile on a thread of their own since `init`, are ready before it starts too.
        do {
            defer { DNNLKernelWarmUp.wait() }
            if let feed { try feed.reading { try train.prepare() } } else { try train.prepare() }
        }
        while state.epoch < options.epochs && !(options.maxSteps.map { state.step >= $0 } ?? false) {
            let epoch = state.epoch
            var rng = RandomGenerator(seed: options.seed, stream: UInt64(epoch))
            let order = rng.permutation(train.count)
            let firstStep = state.dataCursor / options.batchSize
            // Rank (or replica) r's images of a step: its slice of the global batch.
            func slice(_ step: Int, _ r: Int) -> [Int] {
                let begin = step * options.batchSize + r * local
                return Array(order[begin..<(begin + local)])
            }
            // The prefetch thread yields to compute where compute fills the cores (`Prefetcher`): replicas or ranks
            // times their threads (the thread calibration's choice, or the most it may choose) against the cores.
            let threads = threadCalibration.map { $0.chosen ?? $0.candidates.max() ?? 1 } ?? BLAS.threadCount
            let computeThreads = world.size * threads
            let lowPriority = computeThreads >= Processors.usable
            let reader: any BatchStream
            if let feed, !train.readsConcurrently {
                // One prefetcher for every replica, each step's slices in replica order: the source takes one reader
                // at a time (HDF5 is the serial library). A split held in memory takes several: each replica then has a
                // prefetcher of its own, as a rank does (below), and the replicas make their slices at the same time.
                // Through the shared one they made them in turn, on their critical path: the replica that pulled first
                // made the next slice in order, often the other's, while the other waited for it (BENCHMARKS.md, "One
                // process on 2 cores, fifth pass").
                reader = feed.stream(epoch: epoch, replica: world.rank) {
                    let all = (firstStep..<steps).flatMap { step in (0..<world.size).map { slice(step, $0) } }
                    return Prefetcher(source: train, steps: all, epoch: epoch, config: model.config, targetEncoder: model.targetEncoder,
                                      depth: 2 * world.size, lowPriority: lowPriority)
                }
            } else {
                reader = Prefetcher(source: train, steps: (firstStep..<steps).map { slice($0, world.rank) }, epoch: epoch,
                                    config: model.config, targetEncoder: model.targetEncoder, lowPriority: lowPriority)
            }
            let start = monotonicSeconds()
            var sums = [0.0, 0.0]   // loss sum over this epoch's steps, step count
            var lastPrint = start
            do {
                defer { reader.finish(); display.finishLine() }
                for step in firstStep..<steps {
                    let stepStart = calibrationClock()
                    Timeline.mark(.stepStart)
                    if let threads = threadCalibration?.threadsForNextStep, threads != BLAS.threadCount { BLAS.setThreadCount(threads) }
                    var batch = try reader.next()
                    Timeline.mark(.batchReady)
                    (batch.epoch, batch.seed) = (epoch, options.seed)   // keys of per-sample noise (see Batch)
                    // No pass over the gradient buffer: the step's first write of each gradient stores, and
                    // `settleGradients()` after backward zeroes what no op wrote.
                    model.parameters.deferGradientZeroing()
                    synchronizer.beginStep()
                    watchdog.at("the forward pass (cross-replica statistics)", step: state.step)
                    let loss = model.loss(batch, training: true)
                    // Agree on the loss before acting on it: every rank stops at the same step or none does. This is
                    // the step's first collective, so the watchdog waits on it.
                    stallForTesting(step: state.step)
                    let injected = nonFiniteForTesting(step: state.step)
                    let value = injected == "loss" ? Double.nan : Double(loss.item)
                    Timeline.mark(.forwardDone)
                    agreement[0] = value.isFinite ? value : 0
                    agreement[1] = value.isFinite ? 0 : 1
                    var agreed: [Double]
                    var fault: String?
                    if synchronizer.foldsStepScalars {
                        // Replicas: the loss agreement and the non-finite check ride on the gradients' reduce-scatter,
                        // one collective round a step. Backward runs whatever the loss (every replica's, so every
                        // replica reaches the sum); the decisions below are on the values all replicas received.
                        watchdog.at("the gradient reduce-scatter", step: state.step)
                        loss.backward(onLeafReady: synchronizer.parameterReady)
                        model.parameters.settleGradients()
                        Timeline.mark(.backwardDone)
                        if injected == "gradient" { model.parameters.gradients.pointer[0] = .infinity }
                        // The check of the summed range, and the round's second wait that hands it to the others, are
                        // needed only where a sum could be non-finite: not when every replica's loss is finite and its
                        // own gradients (summed or addends) lie below the bound at which the replicas' sum cannot
                        // overflow. Then the update follows the sum at once and the barrier after it is the step's
                        // second and last rendezvous; the decisions are those of the check (no fault), the bits the same.
                        let bounded = agreement[1] == 0 && synchronizer.ownGradientsSumWithoutOverflow
                        let exchanged = try synchronizer.finish(posting: [agreement[0], agreement[1]], skipsAfterSum: bounded,
                                                                afterSum: ownNonFiniteGradient)
                        Timeline.mark(.reduceDone)
                        // Summed in replica order, as the in-process allreduce of doubles adds them.
                        agreed = exchanged.posted[0]
                        for q in exchanged.posted.indices.dropFirst() { agreed[0] += exchanged.posted[q][0]; agreed[1] += exchanged.posted[q][1] }
                        if agreed[1] != 0 {
                            fault = "the loss became non-finite on \(Self.members(Int(agreed[1]), replicas: true))"
                        } else {
                            fault = nonFiniteGradientNamed(exchanged.afterSum.flatMap { $0 })
                        }
                    } else {
                        try watchdog.wait(try world.startAllreduce(agreement, count: 2), what: "the loss allreduce", step: state.step)
                        agreed = [agreement[0], agreement[1]]
                        if agreed[1] != 0 {
                            // Every rank skips backward together, so no rank is left alone in the gradient allreduce.
                            fault = "the loss became non-finite on \(Self.members(Int(agreed[1]), replicas: world is InProcessCollective))"
                        } else {
                            watchdog.at("the gradient allreduce", step: state.step)
                            loss.backward(onLeafReady: synchronizer.parameterReady)
                            model.parameters.settleGradients()
                            Timeline.mark(.backwardDone)
                            if injected == "gradient" { model.parameters.gradients.pointer[0] = .infinity }
                            try synchronizer.finish()
                            Timeline.mark(.reduceDone)
                            fault = try nonFiniteGradient()
                        }
                    }
                    watchdog.at("training", step: state.step + 1)
                    if let fault {
                        skippedSteps += 1
                        let place = "at epoch \(epoch + 1), step \(step + 1) (global step \(state.step))"
                        guard skippedSteps <= options.skipNonFinite else {
                            let resume = watchdog.lastGoodCheckpoint.map { "the last good checkpoint is \($0)" } ?? "no checkpoint was written"
                            let budget = options.skipNonFinite > 0 ? " after \(options.skipNonFinite) skipped step(s) (--skip-nonfinite)" : " (--skip-nonfinite N skips such steps)"
                            throw AgreedRefusal("\(fault) \(place): training stopped on every rank\(budget); \(resume)")
                        }
                        log("\(fault) \(place): step skipped without an update (\(skippedSteps) of \(options.skipNonFinite) allowed by --skip-nonfinite)")
                    } else {
                        // From the global step and epoch, which every rank shares and a checkpoint restores.
                        optimizer.learningRate = schedule.rate(base: baseLearningRate, step: state.step, epoch: epoch)
                        optimizer.step(model.parameters, gradientScale: synchronizer.averagingScale)
                        Timeline.mark(.updateDone)
                        if weightsShared {
                            // No replica reads the shared weights of the next step before every range is updated.
                            watchdog.at("the replicas' barrier after the update", step: state.step)
                            try world.barrier()
                        } else if shards != nil {
                            watchdog.at("the weights' allgather", step: state.step)
                            try shardWorld?.allgather(model.parameters.values.pointer, counts: shardCounts)
                        }
                        Timeline.mark(.stepEnd)
                        sums[0] += agreed[0] / Double(world.size)
                        sums[1] += 1
                    }
                    state.step += 1
                    state.dataCursor = (step + 1) * options.batchSize
                    try recordForThreadCalibration(stepSeconds: calibrationClock() - stepStart)
                    let now = monotonicSeconds()
                    if step + 1 == steps || (live && now - lastPrint > 0.2) || (!live && ProgressDisplay.plainLineDue(step: step, steps: steps)) {
                        lastPrint = now
                        let done = Double(step + 1 - firstStep)
                        let rate = done * Double(options.batchSize) / (now - start)
                        let eta = (now - start) / done * Double(steps - step - 1)
                        display.show(epoch: epoch + 1, epochs: options.epochs, step: step + 1, steps: steps, imagesPerSecond: rate, eta: eta,
                                     loss: format(sums[0] / max(sums[1], 1)), plain: log)
                        try board?.progress(step: state.step, loss: sums[0] / max(sums[1], 1), learningRate: optimizer.learningRate, imagesPerSecond: rate)
                    }
                    let stopping = options.maxSteps.map { state.step >= $0 } ?? false
                    if let every = options.checkpointEverySteps, (step + 1) % every == 0, step + 1 < steps, !stopping {
                        if options.writeOutputs { try saveCheckpoint(to: lastCheckpointPath) }
                        if options.writeOutputs { published(lastCheckpointPath) }
                    }
                    if stopping && step + 1 < steps {
                        if options.writeOutputs { try saveCheckpoint(to: lastCheckpointPath) }
                        if options.writeOutputs { published(lastCheckpointPath) }
                        display.finishLine()
                        log("stopped at step \(state.step) (--max-steps) in epoch \(epoch + 1); resume with --resume \(lastCheckpointPath)")
                        return history
                    }
                }
            }
            let seconds = monotonicSeconds() - start
            watchdog.at("the epoch's end (data-wait and validation-loss allreduces)", step: state.step)
            let dataWait = try world.allreduce(reader.waitSeconds, .max)
            let trainLoss = sums[0] / max(sums[1], 1)
            let validationLoss = try validation.map { try evaluateLoss($0) }
            state.epoch = epoch + 1
            state.dataCursor = 0
            let stepsRun = Double(sums[1])
            let record = EpochRecord(epoch: epoch + 1, step: state.step, loss: trainLoss, validationLoss: validationLoss,
                                     learningRate: optimizer.learningRate, seconds: seconds,
                                     imagesPerSecond: stepsRun * Double(options.batchSize) / seconds, dataWaitSeconds: dataWait)
            history.append(record)
            if let board {
                try board.epoch(record)
                if let validation { try board.validationPictures(model: model, validation: validation, step: state.step) }
                if validation != nil, let metrics = options.validationMetrics {
                    for (name, value) in try GradMode.disabled({ try metrics(model) }) { try board.writer.scalar("validation/\(name)", value, step: state.step) }
                }
                if validation != nil, let pictures = options.validationPictures {
                    for picture in try GradMode.disabled({ try pictures(model) }) {
                        try board.writer.image("validation/\(picture.name)", png: picture.png, width: picture.width, height: picture.height, channels: 3, step: state.step)
                    }
                }
            }
            var summary = "epoch \(epoch + 1)/\(options.epochs) done in \(formatDuration(seconds))  loss \(format(trainLoss))"
            if let validationLoss { summary += "  val_loss \(format(validationLoss))" }
            summary += "  data wait \(formatDuration(dataWait))"
            // Callbacks act on the monitored loss, which is averaged over ranks: every rank takes the same decision.
            let monitored = validationLoss ?? trainLoss
            let improved = monitored < state.bestValidationLoss - options.minDelta
            if monitored < state.bestValidationLoss { state.bestValidationLoss = monitored }
            state.epochsWithoutImprovement = improved ? 0 : state.epochsWithoutImprovement + 1
            // The plateau lowers the base rate; the schedule shapes the new base from the next step on.
            var base = baseLearningRate
            if var plateau = state.plateau {
                let lowered = plateau.observe(Float(monitored), currentRate: base)
                if lowered != base { summary += "  \(schedule.isConstant ? "lr" : "base lr") -> \(lowered) (plateau)" }
                base = lowered
                state.plateau = plateau
            }
            state.learningRate = base
            optimizer.learningRate = schedule.rate(base: base, step: state.step, epoch: state.epoch)
            if writes {
                try csv.append("\(record.epoch),\(record.step),\(record.loss),\(record.validationLoss.map { "\($0)" } ?? ""),\(record.learningRate),\(seconds),\(record.imagesPerSecond),\(dataWait)")
            }
            if options.writeOutputs {
                try saveEpochCheckpoint(epoch: epoch + 1, best: monitored <= state.bestValidationLoss, loss: trainLoss, validationLoss: validationLoss)
                if writes && monitored <= state.bestValidationLoss { summary += "  (best, saved)" }
            }
            if options.writeOutputs { published(lastCheckpointPath) }
            watchdog.at("training", step: state.step)
            log(summary)
            if let patience = options.earlyStoppingPatience, state.epochsWithoutImprovement >= patience {
                log("early stopping: \(validation == nil ? "loss" : "val_loss") has not improved by more than \(options.minDelta) for \(patience) epochs")
                break
            }
        }
        log("checkpoints: \(lastCheckpointPath), \(bestCheckpointPath); log: \(logPath)")
        return history
    }

    /// Feeds the step's time to the thread calibration; the figures it asks the ranks to agree on are the largest over
    /// ranks (the slowest rank sets the step), so every rank switches and decides at the same step.
    private func recordForThreadCalibration(stepSeconds: Double) throws {
        guard var calibration = threadCalibration, calibration.chosen == nil else { return }
        if var figures = calibration.record(seconds: stepSeconds) {
            if world.size > 1 {
                watchdog.at("the thread calibration's allreduce", step: state.step)
                try world.allreduce(&figures, .max)
            }
            calibration.agree(figures)
        }
        threadCalibration = calibration
        guard let chosen = calibration.chosen else { return }
        BLAS.setThreadCount(chosen)
        let times = zip(calibration.candidates, calibration.medianSecondsPerStep)
            .map { "\($0.0) thread\($0.0 == 1 ? "" : "s") \(formatMilliseconds($0.1))" }.joined(separator: ", ")
        log("threads: \(chosen), the faster over the first \(calibration.steps) steps (a step: \(times); median of " +
            "\(calibration.secondsPerStep.count) round(s) of \(calibration.blockSteps ?? 1) timed step(s) a count, after " +
            "\(calibration.settleSteps) on one thread); --blas-threads N fixes the count")
    }

    /// Four decimals, as in a file name.
    private func fixed(_ x: Double) -> String {
        let scaled = Int((x * 10_000).rounded())
        let digits = String(abs(scaled) % 10_000)
        return (scaled < 0 ? "-" : "") + "\(abs(scaled) / 10_000)." + String(repeating: "0", count: 4 - digits.count) + digits
    }

    /// Writes `<family>-epochNNNN_loss-L[_val_loss-V].h5` once and publishes it as `-last.h5` (and `-best.h5`) by hard links, then
    /// removes epoch files beyond the newest `keepCheckpoints`. With keepCheckpoints 0 only last and best are kept.
    /// Every rank calls it (`saveCheckpoint`); only rank 0 touches files.
    private func saveEpochCheckpoint(epoch: Int, best: Bool, loss: Double, validationLoss: Double?) throws {
        guard options.keepCheckpoints > 0 else {
            try saveCheckpoint(to: lastCheckpointPath)
            if best && world.isRoot { try AtomicFile.publish(lastCheckpointPath, as: bestCheckpointPath) }
            return
        }
        let digits = String(epoch)
        // Epoch and losses in the name, as ssd_keras's ModelCheckpoint names them.
        var path = "\(checkpointPrefix)-epoch\(String(repeating: "0", count: max(0, 4 - digits.count)) + digits)_loss-\(fixed(loss))"
        if let validationLoss { path += "_val_loss-\(fixed(validationLoss))" }
        path += ".h5"
        try saveCheckpoint(to: path)
        guard world.isRoot else { return }
        try AtomicFile.publish(path, as: lastCheckpointPath)
        if best { try AtomicFile.publish(path, as: bestCheckpointPath) }
        let prefix = "\(model.config.family)-epoch"
        guard let dir = opendir(options.outputDirectory) else { return }
        var epochFiles: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(prefix) && name.hasSuffix(".h5") { epochFiles.append(name) }
        }
        closedir(dir)
        for name in epochFiles.sorted().dropLast(options.keepCheckpoints) { unlink("\(options.outputDirectory)/\(name)") }
    }

    /// Mean training objective over the validation split (or its first `validationLimit` images) without dropout,
    /// and with the fixed evaluation noise where a model draws any: each rank scores an equal share, and the sums
    /// are allreduced.
    public func evaluateLoss(_ data: any TrainingSource) throws -> Double {
        let n = min(data.count, options.validationLimit ?? data.count)
        let share = (n + world.size - 1) / world.size
        let mine = (world.rank * share)..<min(n, (world.rank + 1) * share)
        // The ranks' shares may hold different numbers of batches, so no collective may run inside the loss here: a
        // model that normalises over the global batch in training (SSD's positive anchors, the R-CNN family's sampled
        // RoIs) normalises over this rank's batch while it validates; the total below is the one allreduce.
        let aware = model as? any CrossReplicaAware
        let crossReplica = aware?.crossReplica
        aware?.crossReplica = .single
        defer { if let crossReplica { aware?.crossReplica = crossReplica } }
        var total = [0.0]
        var start = mine.lowerBound
        while start < mine.upperBound {
            let end = min(mine.upperBound, start + options.batchSize)
            let indices = Array(start..<end)
            let batch = try feed.map { try $0.reading { try data.batch(indices: indices, epoch: 0, training: false, for: model) } }
                ?? data.batch(indices: indices, epoch: 0, training: false, for: model)
            let loss = GradMode.disabled { model.loss(batch, training: false) }
            total[0] += Double(loss.item) * Double(end - start)
            start = end
        }
        try world.allreduce(&total)
        return total[0] / Double(max(n, 1))
    }
}

/// Milliseconds with three significant digits (thread calibration's log line).
func formatMilliseconds(_ seconds: Double) -> String {
    let ms = seconds * 1000
    let digits = ms >= 100 ? 0 : ms >= 10 ? 1 : 2
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    return "\((ms * scale).rounded() / scale) ms"
}

func formatDuration(_ seconds: Double) -> String {
    if seconds < 60 { return "\((seconds * 10).rounded() / 10)s" }
    let s = Int(seconds.rounded())
    return s >= 3600 ? "\(s / 3600)h\((s % 3600) / 60)m" : "\(s / 60)m\(s % 60)s"
}

/// A CSV file written line by line and flushed, so a crashed run still leaves its log.
final class CSVLog {
    let path: String
    private var handle: UnsafeMutablePointer<FILE>?
    init(path: String) { self.path = path }
    deinit { if let handle { fclose(handle) } }

    func start(header: String, append: Bool) throws {
        guard let f = fopen(path, append ? "a" : "w") else { throw TrainingError("cannot write log \(path): \(String(cString: strerror(errno)))") }
        handle = f
        fseek(f, 0, SEEK_END)
        if !append || ftell(f) == 0 { try self.append(header) }
    }

    func append(_ line: String) throws {
        guard let handle else { return }
        guard fputs(line + "\n", handle) >= 0, fflush(handle) == 0 else { throw TrainingError("cannot write log \(path)") }
    }
}

/// oneDNN's sgemm kernels generated on a thread of their own, once a process (`GEMMSelection.generateDNNLKernels`),
/// while the trainer does other start-up work (the start-up agreement's and the first epoch's reads of the data): its
/// first step then does not stall on them. Nothing is started where no product of the process runs oneDNN's sgemm.
enum DNNLKernelWarmUp {
    /// Starts the generation if it has not started (any thread, any number of times).
    static func start() { _ = started }

    /// Waits until the kernels are ready (at once if nothing was started, or they are).
    static func wait() { started?.wait() }

    private static let started: DispatchGroup? = {
        guard GEMMSelection.mayRunDNNL else { return nil }
        let done = DispatchGroup()
        done.enter()
        let thread = Thread {
            Processors.nameCurrentThread("dnnl-kernels")
            GEMMSelection.generateDNNLKernels()
            done.leave()
        }
        thread.start()
        return done
    }()
}
