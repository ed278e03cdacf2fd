import Foundation
import StarlingCore
import StarlingNN
import StarlingDistributed
#if canImport(Glibc)
import Glibc
#endif

/// Reads the batches of one epoch on a background thread, up to `depth` ahead, so compute does not wait on I/O.
///
/// The consumer makes a batch itself when none is ready and the thread is not making it, rather than wait for the
/// scheduler to run the thread. With `lowPriority` (the run's compute threads fill the cores) the thread runs at nice 19:
/// on two cores, two compute threads (`--blas-threads 2`, or two replicas) and a prefetch thread of equal weight made
/// three runnable threads, each wake-up of the prefetcher preempting a compute thread in the middle of its step while
/// the other replica waited for it at the next sum (issue 18 item 3); at nice 19 it fills the cores' idle moments (a
/// replica waiting at a sum). A one-thread run keeps it at the normal priority: there it has a core of its own, and on a
/// busy machine at nice 19 it got so little CPU that the compute thread made most batches itself (fc-ae's third epoch
/// 0.87x). Either way the batches are the same, in the same order.
///
/// HDF5 here is the serial library: one thread at a time is inside the source (`producing`), and `finish()` joins the
/// thread before anyone else reads or writes HDF5 (validation, checkpoints).
package final class Prefetcher: @unchecked Sendable {
    private let condition = NSCondition()
    // Guarded by `condition`.
    /// Batches made and not yet taken, by step.
    private var ready: [Int: Result<Batch, any Error>] = [:]
    /// Steps handed out to be made (by the thread or the consumer), and steps taken by the consumer.
    private var claimed = 0
    private var consumed = 0
    /// Whether a thread is inside the source now.
    private var producing = false
    private var stopped = false
    private var running = true
    private let depth: Int
    private let steps: [[Int]]
    private let make: ([Int]) -> Result<Batch, any Error>
    /// Seconds the consumer spent in `next()`: waiting for the thread, or making the batch itself.
    package private(set) var waitSeconds = 0.0
    /// Batches the consumer made itself because none was ready (the rest came from the thread).
    package private(set) var madeByConsumer = 0

    /// `targetEncoder`: the model's, run on each batch on the same thread (`Model.targetEncoder`). `depth` 0 reads
    /// nothing ahead: every batch is made by the consumer in `next()`; nil: by the batch's size (`defaultDepth`).
    package init(source: any TrainingSource, steps: [[Int]], epoch: Int, config: ModelConfig, targetEncoder: (any TargetEncoder)?, depth: Int? = nil,
                 lowPriority: Bool = false) {
        self.depth = depth ?? Self.defaultDepth(batchBytes: (steps.first?.count ?? 0) * config.inputShape.reduce(4, *))
        self.steps = steps
        make = { indices in
            Result {
                var batch = try source.batch(indices: indices, epoch: epoch, training: true, config: config)
                targetEncoder?.encodeTargets(into: &batch)
                return batch
            }
        }
        let thread = Thread { [self] in
            Processors.nameCurrentThread("prefetch")
            Timeline.register("prefetch")
            // Made on a replica's thread bound to one processor (`InProcessGroup.processorBinding`), it would inherit
            // that one: it runs in whichever core's idle moment comes, as before replicas were bound.
            Processors.leaveBinding()
            #if canImport(Glibc)
            // On Linux the nice value is a thread's and `who` 0 names the calling thread: the compute threads keep
            // theirs. A refusal leaves the normal priority, which only costs speed.
            if lowPriority { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19) }
            #endif
            condition.lock()
            while true {
                while !stopped && claimed < self.steps.count && (producing || claimed - consumed >= self.depth) { condition.wait() }
                if stopped || claimed == self.steps.count { break }
                let step = claimed
                claimed += 1
                producing = true
                condition.unlock()
                Timeline.mark(.makeStart)
                let result = make(self.steps[step])
                Timeline.mark(.makeEnd)
                condition.lock()
                producing = false
                ready[step] = result
                condition.broadcast()
                if case .failure = result { break }
            }
            running = false
            condition.broadcast()
            condition.unlock()
        }
        thread.stackSize = 1 << 22
        thread.start()
    }

    /// Batches read ahead by default: two, or one for batches of 4 MB and more (detection-size images: SSD7's 16 at
    /// 300 x 480 are 28 MB). Such a batch takes milliseconds to copy or decode against a step of hundreds, so one
    /// batch ahead, read while the step runs, leaves the step as little data wait as two, and the second batch was
    /// peak memory (bench --suite, ssd7 1 x 2: BENCHMARKS.md, "Peak memory at half of PyTorch's on AVX2"). From 2 MB:
    /// a replica's one image of the R-CNNs at 375 x 500 (2.25 MB) takes a second against ~1 ms to make, and each of
    /// the two replicas' prefetchers held two of them ahead (4.5 MB of the 2-replica row's peak).
    package static func defaultDepth(batchBytes: Int) -> Int { batchBytes >= 2 << 20 ? 1 : 2 }

    /// The next batch in order; rethrows a read error from the background thread.
    package func next() throws -> Batch {
        let start = monotonicSeconds()
        defer { waitSeconds += monotonicSeconds() - start }
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let result = ready.removeValue(forKey: consumed) {
                consumed += 1
                condition.broadcast()
                return try result.get()
            }
            if claimed == consumed && !producing && !stopped && consumed < steps.count {
                // Nothing made and nobody making it: make it here rather than wait for the thread to be scheduled.
                let step = claimed
                claimed += 1
                producing = true
                condition.unlock()
                Timeline.mark(.makeStart)
                let result = make(steps[step])
                Timeline.mark(.makeEnd)
                condition.lock()
                producing = false
                consumed += 1
                madeByConsumer += 1
                condition.broadcast()
                return try result.get()
            }
            guard running || producing || claimed > consumed else {
                throw TrainingError("data reader stopped after \(consumed) of \(steps.count) batches")
            }
            condition.wait()
        }
    }

    /// Stops reading ahead and waits for the thread to leave HDF5.
    package func finish() {
        condition.lock()
        stopped = true
        condition.broadcast()
        while running || producing { condition.wait() }
        ready.removeAll()
        condition.unlock()
    }

    deinit { finish() }
}
