import Foundation
import Testing
import StarlingCore
import StarlingNN
import StarlingData

/// How far the prefetch thread reads ahead: two batches, or one from 4 MB a batch (detection-size images), where a
/// second batch read ahead only added peak memory.
@Suite struct PrefetcherDepthTests {
    /// Counts the batches asked for; each is `images` images of `shape`.
    final class CountingSource: TrainingSource, @unchecked Sendable {
        let lock = NSLock()
        var asked = 0
        var path: String { "counting" }
        var split: String { "train" }
        var count: Int { 1_000 }
        func batch(indices: [Int], epoch: Int, training: Bool, config: ModelConfig) throws -> Batch {
            lock.lock(); asked += 1; lock.unlock()
            return Batch(images: Tensor(zeros: [indices.count] + config.inputShape))
        }
        func checkCompatible(with config: ModelConfig) throws {}
        var datasetDescription: DatasetDescription { DatasetDescription(path: path, sampleShape: [3, 8, 8], classNames: nil) }
        var askedSoFar: Int { lock.lock(); defer { lock.unlock() }; return asked }
    }

    @Test func largeBatchesAreReadOneAhead() throws {
        #expect(Prefetcher.defaultDepth(batchBytes: 16 * 3 * 300 * 480 * 4) == 1)    // SSD7's batch, 28 MB
        #expect(Prefetcher.defaultDepth(batchBytes: 8 * 3 * 128 * 128 * 4) == 2)     // U-Net's at 128 x 128, 1.5 MB
        #expect(Prefetcher.defaultDepth(batchBytes: 1 * 3 * 375 * 500 * 4) == 1)     // an R-CNN replica's one image, 2.25 MB
        for (side, ahead) in [(300, 1), (64, 2)] {                                   // 4 images: 4.3 MB and 0.2 MB
            let config = ModelConfig(family: "test", inputShape: [3, side, side])
            let source = CountingSource()
            let reader = Prefetcher(source: source, steps: (0..<6).map { [4 * $0, 4 * $0 + 1, 4 * $0 + 2, 4 * $0 + 3] }, epoch: 0,
                                    config: config, targetEncoder: nil)
            // The thread fills its queue and waits for a reader: give it time to read further if it would.
            for _ in 0..<200 where source.askedSoFar < ahead { Thread.sleep(forTimeInterval: 0.01) }
            Thread.sleep(forTimeInterval: 0.2)
            #expect(source.askedSoFar == ahead, "side \(side)")
            _ = try reader.next()
            for _ in 0..<200 where source.askedSoFar < ahead + 1 { Thread.sleep(forTimeInterval: 0.01) }
            Thread.sleep(forTimeInterval: 0.2)
            #expect(source.askedSoFar == ahead + 1, "side \(side)")                  // one taken: one more read
            reader.finish()
        }
    }
}
