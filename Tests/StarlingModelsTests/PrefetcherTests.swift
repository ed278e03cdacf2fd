import Foundation
import Testing
@testable import StarlingModels
import StarlingCore
import StarlingDistributed

/// The prefetcher's batches are the same, in the same order, whoever makes them: its low-priority thread, or the
/// consumer when none is ready (issue 18 item 3).
@Suite struct PrefetcherTests {
    /// Batch k of `steps` holds its indices as pixel values; a failure at `failAt` (a step's first index).
    final class CountingSource: TrainingSource, @unchecked Sendable {
        let path = "counting", split = "train", count = 1_000
        let failAt: Int?
        let delay: useconds_t
        init(failAt: Int? = nil, delay: useconds_t = 0) { (self.failAt, self.delay) = (failAt, delay) }
        func batch(indices: [Int], epoch: Int, training: Bool, config: ModelConfig) throws -> Batch {
            if delay > 0 { usleep(delay) }
            if let failAt, indices.first == failAt { throw TrainingError("injected read error at \(failAt)") }
            let t = Tensor(zeros: [indices.count, 1])
            for (k, i) in indices.enumerated() { t.data[k] = Float(i + epoch) }
            return Batch(images: t, indices: indices)
        }
        func checkCompatible(with config: ModelConfig) throws {}
        var datasetDescription: DatasetDescription { DatasetDescription(path: path, sampleShape: [1]) }
    }

    static let config = ModelConfig(family: "test", inputShape: [1])
    static let steps = (0..<40).map { s in (0..<3).map { s * 7 + $0 } }

    func drain(_ prefetcher: Prefetcher, pause: useconds_t = 0) throws -> [[Float]] {
        var out: [[Float]] = []
        for _ in Self.steps.indices {
            let batch = try prefetcher.next()
            out.append(Array(UnsafeBufferPointer(start: batch.images.data, count: batch.images.count)))
            if pause > 0 { usleep(pause) }
        }
        return out
    }

    @Test(arguments: [0, 1, 2, 4])
    func batchesInOrderWhoeverMakesThem(depth: Int) throws {
        let expected = Self.steps.map { $0.map { Float($0 + 3) } }
        // Fast consumer (it makes batches whenever the thread is behind), slow source, and a slow consumer.
        for (delay, pause) in [(useconds_t(0), useconds_t(0)), (300, 0), (0, 300)] {
            let prefetcher = Prefetcher(source: CountingSource(delay: delay), steps: Self.steps, epoch: 3, config: Self.config,
                                        targetEncoder: nil, depth: depth)
            #expect(try drain(prefetcher, pause: pause) == expected, "depth \(depth), delay \(delay), pause \(pause)")
            #expect(prefetcher.madeByConsumer <= Self.steps.count)
            // Depth 0 reads nothing ahead: the consumer made every batch.
            if depth == 0 { #expect(prefetcher.madeByConsumer == Self.steps.count) }
            // Past the end: an error, not a wait.
            #expect(throws: TrainingError.self) { try prefetcher.next() }
            prefetcher.finish()
        }
    }

    @Test(arguments: [0, 2])
    func aReadErrorReachesTheConsumerInOrder(depth: Int) throws {
        let prefetcher = Prefetcher(source: CountingSource(failAt: 5 * 7), steps: Self.steps, epoch: 0, config: Self.config,
                                    targetEncoder: nil, depth: depth)
        for k in 0..<5 { #expect(try prefetcher.next().indices == Self.steps[k]) }
        #expect(throws: TrainingError.self) { try prefetcher.next() }
        prefetcher.finish()
    }

    /// The sum's pointer loops add in replica order as the generic reduction did: ((a + b) + c) element by element,
    /// over shares that do not divide the count evenly.
    @Test func inProcessFloatSumIsReplicaOrdered() throws {
        let count = 10_007
        var rng = RandomGenerator(seed: 7, stream: 0)
        let inputs = (0..<3).map { _ in (0..<count).map { _ in rng.uniform(-1e4, 1e4) } }
        let expected = (0..<count).map { i in (inputs[0][i] + inputs[1][i]) + inputs[2][i] }
        let results = InProcessGroup(size: 3).run { member -> [Float] in
            var values = inputs[member.rank]
            try values.withUnsafeMutableBufferPointer { try member.allreduce($0.baseAddress!, count: count, .sum) }
            return values
        }
        for result in results { #expect(try result.get().map(\.bitPattern) == expected.map(\.bitPattern)) }
    }

    /// The non-finite scan's eight lanes find what an element-by-element scan finds, wherever the value is.
    @Test func nonFiniteScanFindsTheFirst() {
        let count = 3 * (1 << 14) + 5
        var values = [Float](repeating: 1.5, count: count)
        #expect(values.withUnsafeBufferPointer { firstNonFiniteIndex($0.baseAddress!, count: count) } == nil)
        for (place, bad) in [(0, Float.nan), (7, .infinity), (1 << 14, -.infinity), (count - 1, .nan), (count - 3, .infinity)] {
            values[place] = bad
            #expect(values.withUnsafeBufferPointer { firstNonFiniteIndex($0.baseAddress!, count: count) } == values.firstIndex { !$0.isFinite })
        }
    }
}
