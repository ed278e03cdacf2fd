import StarlingCore
import StarlingNN
import StarlingData

/// The batches of one epoch made on the thread that trains them, each when it is asked for: no prefetch thread.
///
/// Where the run's compute threads fill the cores (two replicas or two ranks of one thread on two cores), a prefetch
/// thread has no core of its own: at nice 19 it ran in a compute thread's time slice anyway, or the consumer made the
/// batch itself (`Prefetcher.madeByConsumer`), and replicas sharing one prefetcher (`ReplicaFeed`) made their slices one
/// after the other, since only one thread at a time may be inside a source that reads a file. A source whose batches
/// are gathers from memory (`TrainingSource.readsConcurrently`) lets each replica make its own slice on its own thread
/// at the start of its step, both at once, with no thread to wake and no lock to share (issue 18 item 3). The batches
/// are the ones the prefetcher would hand out, in the same order.
final class InlineBatches: BatchStream {
    private let source: any TrainingSource
    private let steps: [[Int]]
    private let epoch: Int
    private let config: ModelConfig
    private let targetEncoder: (any TargetEncoder)?
    private var position = 0
    /// Seconds spent making batches in `next()`: the data pipeline's share of the steps.
    private(set) var waitSeconds = 0.0

    init(source: any TrainingSource, steps: [[Int]], epoch: Int, config: ModelConfig, targetEncoder: (any TargetEncoder)?) {
        precondition(source.readsConcurrently, "inline batches need a source that reads from memory")
        (self.source, self.steps, self.epoch, self.config, self.targetEncoder) = (source, steps, epoch, config, targetEncoder)
    }

    func next() throws -> Batch {
        guard position < steps.count else { throw TrainingError("data reader stopped after \(steps.count) of \(steps.count) batches") }
        let start = monotonicSeconds()
        defer { waitSeconds += monotonicSeconds() - start }
        var batch = try source.batch(indices: steps[position], epoch: epoch, training: true, config: config)
        targetEncoder?.encodeTargets(into: &batch)
        position += 1
        return batch
    }

    func finish() {}
}
