import Foundation
import Testing
@testable import StarlingModels
@testable import StarlingTraining
import StarlingCore

/// Batches made on the compute threads (`InlineBatches`, issue 18 item 3): a resident split read by several threads at
/// once gives the bits one reader gets from the file, and the inline stream hands out the prefetcher's batches in its order.
@Suite struct InlineBatchesTests {
    static let config = ModelConfig(family: "fc-ae", inputShape: [784])

    func values(_ batch: Batch) -> [UInt32] {
        Array(UnsafeBufferPointer(start: batch.images.data, count: batch.images.count)).map(\.bitPattern)
    }

    @Test func residentSplitReadsConcurrentlyAsTheFileReads() throws {
        let path = try Fixture.sampleHDF5()
        let resident = try ImageDataset(path: path, split: "train")
        let fromFile = try ImageDataset(path: path, split: "train", residentLimit: 0)
        #expect(!resident.readsConcurrently)
        try resident.prepare()
        try fromFile.prepare()
        #expect(resident.readsConcurrently && !fromFile.readsConcurrently)
        var rng = RandomGenerator(seed: 5, stream: 0)
        let batches = (0..<12).map { _ in Array(rng.permutation(resident.count).prefix(48)) } + [[3, 4, 5, 5, 0, resident.count - 1]]
        let expected = try batches.map { try fromFile.batch(indices: $0, epoch: 0, training: true, config: Self.config) }
        // Four threads, each making every batch, in a different order, all at once.
        let results = ConcurrentResults(count: 4 * batches.count)
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for k in batches.indices {
                let b = (k + 3 * t) % batches.count
                results.set(t * batches.count + b, Result { try resident.batch(indices: batches[b], epoch: 0, training: true, config: Self.config) })
            }
        }
        for t in 0..<4 {
            for b in batches.indices {
                let got = try results.get(t * batches.count + b)
                #expect(values(got) == values(expected[b]), "thread \(t), batch \(b)")
                #expect(got.labels == expected[b].labels && got.labels != nil && got.indices == expected[b].indices)
                #expect(got.images.shape == [batches[b].count, 784])
            }
        }
        // A model whose input does not hold a sample is refused, naming the file.
        #expect(throws: DataError.self) { _ = try resident.batch(indices: [0], modelInputShape: [28, 27]) }
    }

    @Test func inlineBatchesAreThePrefetchersBatches() throws {
        let path = try Fixture.sampleHDF5()
        let source = try ImageDataset(path: path, split: "train")
        try source.prepare()
        var rng = RandomGenerator(seed: 9, stream: 1)
        let order = rng.permutation(source.count)
        let steps = (0..<(source.count / 40)).map { Array(order[($0 * 40)..<(($0 + 1) * 40)]) }
        let inline = InlineBatches(source: source, steps: steps, epoch: 2, config: Self.config, targetEncoder: nil)
        let prefetched = Prefetcher(source: source, steps: steps, epoch: 2, config: Self.config, targetEncoder: nil)
        defer { prefetched.finish() }
        for step in steps.indices {
            let (a, b) = (try inline.next(), try prefetched.next())
            #expect(values(a) == values(b) && a.labels == b.labels && a.indices == b.indices, "step \(step)")
        }
        #expect(throws: TrainingError.self) { _ = try inline.next() }
        #expect(inline.waitSeconds > 0)
    }
}

/// Results written by several threads, each into its own slots.
private final class ConcurrentResults: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Result<Batch, any Error>?]
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ r: Result<Batch, any Error>) { lock.withLock { slots[i] = r } }
    func get(_ i: Int) throws -> Batch {
        guard let r = lock.withLock({ slots[i] }) else { throw TrainingError("slot \(i) was never written") }
        return try r.get()
    }
}
