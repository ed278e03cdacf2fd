import Foundation
import StarlingCore
import StarlingNN

/// Reads the batches of one epoch on a background thread, up to `depth` ahead, so compute does not wait on I/O.
///
/// HDF5 here is the serial library: while a prefetcher runs, it is the only code touching its file, and
/// `finish()` joins the thread before anyone else reads or writes HDF5 (validation, checkpoints).
package final class Prefetcher: @unchecked Sendable {
    private let condition = NSCondition()
    private var ready: [Result<Batch, any Error>] = []
    private var produced = 0
    private var consumed = 0
    private var stopped = false
    private var running = true
    private let depth: Int
    private let total: Int
    /// Seconds the consumer spent blocked in `next()`.
    package private(set) var waitSeconds = 0.0

    /// `targetEncoder`: the model's, run on each batch on the same thread (`Model.targetEncoder`). `depth` nil: by
    /// the batch's size (`defaultDepth`).
    package init(source: any TrainingSource, steps: [[Int]], epoch: Int, config: ModelConfig, targetEncoder: (any TargetEncoder)?,
                 depth: Int? = nil) {
        self.depth = depth ?? Self.defaultDepth(batchBytes: (steps.first?.count ?? 0) * config.inputShape.reduce(4, *))
        self.total = steps.count
        let thread = Thread { [self] in
            for indices in steps {
                condition.lock()
                while ready.count >= self.depth && !stopped { condition.wait() }
                let stop = stopped
                condition.unlock()
                if stop { break }
                let result = Result {
                    var batch = try source.batch(indices: indices, epoch: epoch, training: true, config: config)
                    targetEncoder?.encodeTargets(into: &batch)
                    return batch
                }
                condition.lock()
                ready.append(result)
                produced += 1
                condition.broadcast()
                condition.unlock()
                if case .failure = result { break }
            }
            condition.lock()
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
    /// peak memory (bench --suite, ssd7 1 x 2: BENCHMARKS.md, "Peak memory at half of PyTorch's on AVX2").
    package static func defaultDepth(batchBytes: Int) -> Int { batchBytes >= 4 << 20 ? 1 : 2 }

    /// The next batch in order; rethrows a read error from the background thread.
    package func next() throws -> Batch {
        let start = monotonicSeconds()
        condition.lock()
        while ready.isEmpty && running { condition.wait() }
        guard !ready.isEmpty else {
            condition.unlock()
            throw TrainingError("data reader stopped after \(produced) of \(total) batches")
        }
        let result = ready.removeFirst()
        consumed += 1
        condition.broadcast()
        condition.unlock()
        waitSeconds += monotonicSeconds() - start
        return try result.get()
    }

    /// Stops reading ahead and waits for the thread to leave HDF5.
    package func finish() {
        condition.lock()
        stopped = true
        condition.broadcast()
        while running { condition.wait() }
        ready.removeAll()
        condition.unlock()
    }

    deinit { finish() }
}
