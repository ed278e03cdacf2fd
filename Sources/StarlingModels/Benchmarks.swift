import StarlingCore
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Measurements behind `starling bench` and BENCHMARKS.md.
public enum Benchmarks {
    public struct TrainingThroughput {
        public var imagesPerSecond: Double
        public var secondsPerStep: Double
        /// Fraction of the step spent outside sgemm (elementwise ops, loss, optimizer, data).
        public var shareOutsideBLAS: Double
    }

    /// Training steps of the FC autoencoder (784-32-784, Adam) at `batchSize`, on real data when a path is given.
    public static func fcAutoencoderTraining(dataPath: String?, batchSize: Int, steps: Int) throws -> TrainingThroughput {
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 1)
        let adam = Adam(parameterCount: model.parameters.count)
        let data = try dataPath.map { try ImageDataset(path: $0, split: "train") }
        if let data, data.count < batchSize { throw TrainingError("\(data.path): fewer than \(batchSize) training images") }
        var rng = RandomGenerator(seed: 2)
        let synthetic = Tensor(zeros: [batchSize, 784])
        for i in 0..<synthetic.count { synthetic.data[i] = rng.uniform() }
        // Real data flows as in training: shuffled batches read on the prefetch thread.
        let order = rng.permutation(data?.count ?? batchSize)
        let total = 10 + steps
        let reader = data.map { data in
            Prefetcher(dataset: data, steps: (0..<total).map { s in
                let start = (s * batchSize) % (data.count - batchSize + 1)
                return Array(order[start..<(start + batchSize)])
            }, inputShape: [784])
        }
        defer { reader?.finish() }
        func step() throws {
            let batch = try reader?.next() ?? Batch(images: synthetic)
            model.parameters.zeroGradients()
            let loss = model.loss(batch, training: true)
            loss.backward()
            adam.step(model.parameters)
        }
        for _ in 0..<10 { try step() }
        BLAS.secondsInside = 0
        BLAS.profiling = true
        defer { BLAS.profiling = false }
        let start = monotonicSeconds()
        for _ in 0..<steps { try step() }
        let elapsed = monotonicSeconds() - start
        return TrainingThroughput(imagesPerSecond: Double(steps * batchSize) / elapsed, secondsPerStep: elapsed / Double(steps),
                                  shareOutsideBLAS: 1 - BLAS.secondsInside / elapsed)
    }

    /// Peak resident set size of this process so far.
    public static func peakResidentBytes() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Int(usage.ru_maxrss) * 1024
    }
}
