import Foundation
import StarlingCore
import StarlingDistributed
import StarlingNN
import StarlingData

/// The batches of one epoch, in order, for one trainer: its own prefetcher (a rank), or its share of the prefetcher
/// the replicas of one process share.
protocol BatchStream: AnyObject {
    func next() throws -> Batch
    /// Stops reading ahead; after the last reader's `finish()` the prefetch thread has left the data files.
    func finish()
    /// Seconds the consumer spent blocked in `next()`.
    var waitSeconds: Double { get }
}

extension Prefetcher: BatchStream {}

/// The data pipeline of replicas on threads of one process (`train --replicas N`): one prefetch thread reads each
/// global batch's slices in replica order (replica r's slice of step s is item s x N + r), and each replica takes its
/// own, so the file is read by one thread as under one process, and each replica sees the slice rank r would read
/// under mpirun. Validation reads go through `reading(_:)`, one at a time: the datasets are not safe for concurrent
/// use. Used for sources that take one reader at a time only: where the training split is held in memory
/// (`TrainingSource.readsConcurrently`) each replica reads its own slices through a prefetcher of its own, as a rank
/// does, and the replicas make their slices at the same time (`Trainer.run`).
public final class ReplicaFeed: @unchecked Sendable {
    public let replicas: Int
    private let condition = NSCondition()
    private var epochs: [Int: EpochStream] = [:]
    private let dataLock = NSLock()

    public init(replicas: Int) { self.replicas = replicas }

    /// Replica `replica`'s stream of `epoch`; the first replica to ask starts the shared prefetcher with `make`.
    func stream(epoch: Int, replica: Int, make: () -> Prefetcher) -> BatchStream {
        condition.lock()
        defer { condition.unlock() }
        let shared = epochs[epoch] ?? EpochStream(prefetcher: make(), replicas: replicas)
        epochs[epoch] = shared
        return ReplicaStream(feed: self, shared: shared, epoch: epoch, replica: replica)
    }

    /// Runs `body` (a read of a dataset) while no other replica reads.
    func reading<T>(_ body: () throws -> T) rethrows -> T {
        dataLock.lock()
        defer { dataLock.unlock() }
        return try body()
    }

    fileprivate func finished(epoch: Int, _ shared: EpochStream) {
        condition.lock()
        shared.finished += 1
        let last = shared.finished == replicas
        if last && epochs[epoch] === shared { epochs[epoch] = nil }
        condition.unlock()
        if last { shared.prefetcher.finish() }
    }

    /// One epoch's shared prefetcher and the batches taken from it for replicas that have not asked yet.
    fileprivate final class EpochStream {
        let prefetcher: Prefetcher
        let condition = NSCondition()
        var waiting: [[Result<Batch, any Error>]]
        var pulled = 0
        var pulling = false
        var finished = 0
        init(prefetcher: Prefetcher, replicas: Int) {
            self.prefetcher = prefetcher
            waiting = Array(repeating: [], count: replicas)
        }
    }

    fileprivate final class ReplicaStream: BatchStream {
        let feed: ReplicaFeed
        let shared: EpochStream
        let epoch: Int
        let replica: Int
        private(set) var waitSeconds = 0.0
        private var done = false
        init(feed: ReplicaFeed, shared: EpochStream, epoch: Int, replica: Int) {
            (self.feed, self.shared, self.epoch, self.replica) = (feed, shared, epoch, replica)
        }

        /// Takes this replica's next batch; when none is waiting, one replica at a time pulls the prefetcher's next
        /// item (blocking outside the lock) and files it under the replica it belongs to.
        func next() throws -> Batch {
            let start = monotonicSeconds()
            defer { waitSeconds += monotonicSeconds() - start }
            let s = shared
            s.condition.lock()
            defer { s.condition.unlock() }
            while true {
                if !s.waiting[replica].isEmpty { return try s.waiting[replica].removeFirst().get() }
                if s.pulling { s.condition.wait(); continue }
                s.pulling = true
                s.condition.unlock()
                let item = Result { try s.prefetcher.next() }
                s.condition.lock()
                s.pulling = false
                s.waiting[s.pulled % s.waiting.count].append(item)
                s.pulled += 1
                s.condition.broadcast()
            }
        }

        func finish() {
            guard !done else { return }
            done = true
            feed.finished(epoch: epoch, shared)
        }
    }
}

/// `train --replicas N`: a model trained data-parallel on N threads of this process, as N MPI ranks would train it
/// (Horovod's and PyTorch DDP's semantics), with one copy of the weights and of the optimizer state between the
/// threads: after every step the ranks' weights are identical by construction, so replicas in one address space keep
/// them once. Each replica has its own model object (its own graph, gradients and batch-norm statistics, as a rank)
/// whose parameters read replica 0's values (`ParameterStore.shareValues`, done by the trainers at the start), and
/// computes the loss of its slice of every global batch on one thread (OpenBLAS, oneDNN and Starling's loops
/// single-threaded inside it). The gradients are reduce-scattered in replica order (`InProcessCollective`: the bits of
/// MPI's sum), replica r's optimizer keeps the state of `OptimizerShards.ranges(parameterCount:ranks:)[r]` only and
/// updates that range of the shared weights in place, and a barrier ends the step: no allgather, no optimizer work
/// done twice. (float16 gradients are allreduced whole, for their scale, and each replica still updates its range.)
/// Replica 0 prints and writes the checkpoints and logs, as rank 0 does.
public enum ReplicaTraining {
    /// Trains `models.count` replicas (each model with its optimizer, built with `Trainer.optimizerShard` for replica
    /// r: its range; replica 0's weights become every replica's) and returns replica 0's epoch records. A replica's
    /// error ends every replica; the first error that is not another replica's failure is rethrown. `resume` is
    /// consumed: replica 0's trainer takes it and it is released once the trainer has restored it, not held for the run.
    public static func run(_ models: [(model: any Model, optimizer: any Optimizer)], train: any TrainingSource,
                           validation: (any TrainingSource)?, options: TrainingOptions, resume: consuming Checkpoint.Loaded? = nil,
                           log: @escaping (String) -> Void = Trainer.printLine) throws -> [EpochRecord] {
        let count = models.count
        precondition(count >= 1, "at least one replica")
        let group = InProcessGroup(size: count)
        let feed = ReplicaFeed(replicas: count)
        var options = options
        options.calibrateThreads = nil
        let inputs = UncheckedReplicaInputs(models: models, train: train, validation: validation, resume: ResumeHandoff(consume resume), log: log)
        let replicaOptions = options
        // OpenBLAS's count is the process's, held at one for the whole run (`withThreadCount`: nothing else in the
        // process changes it meanwhile); oneDNN's (OpenMP's) is each thread's, set on each replica's thread.
        let results = BLAS.withThreadCount(1) {
            group.run(prepare: { BLAS.setThreadCount(1) }) { member in
                let r = member.rank
                let trainer = try Trainer(model: inputs.models[r].model, optimizer: inputs.models[r].optimizer, train: inputs.train,
                                          validation: inputs.validation, options: replicaOptions, world: member,
                                          resume: r == 0 ? inputs.resume.take() : nil, log: inputs.log, feed: feed)
                return try trainer.run()
            }
        }
        // The failing replica's own error, not the others' echo of it.
        let errors = results.compactMap { result -> (any Error)? in if case .failure(let e) = result { return e } else { return nil } }
        if let original = errors.first(where: { !($0 is ReplicaFailure) }) ?? errors.first { throw original }
        return try results[0].get()
    }
}

/// What every replica's thread reads: the models (each replica touches only its own), the data sources (read
/// through the shared feed), the checkpoint (replica 0 only).
private struct UncheckedReplicaInputs: @unchecked Sendable {
    let models: [(model: any Model, optimizer: any Optimizer)]
    let train: any TrainingSource
    let validation: (any TrainingSource)?
    let resume: ResumeHandoff
    let log: (String) -> Void
}

/// A resumed checkpoint handed to the one trainer that restores it: taken once, then no longer held here, so its
/// weights and optimizer state (a model's worth and more) are freed when that trainer has copied them.
private final class ResumeHandoff: @unchecked Sendable {
    private let lock = NSLock()
    private var loaded: Checkpoint.Loaded?
    init(_ loaded: consuming Checkpoint.Loaded?) { self.loaded = loaded }
    func take() -> Checkpoint.Loaded? { lock.withLock { defer { loaded = nil }; return loaded } }
}
