import StarlingCore
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Measurements behind `starling bench` and BENCHMARKS.md.
public enum Benchmarks {
    /// GFLOP/s of a square sgemm, after one warm-up call.
    public static func sgemm(size n: Int, iterations: Int) -> Double {
        let a = Tensor(zeros: [n, n]), b = Tensor(zeros: [n, n]), c = Tensor(zeros: [n, n])
        var rng = RandomGenerator(seed: 1)
        for i in 0..<(n * n) { a.data[i] = rng.uniform(-1, 1); b.data[i] = rng.uniform(-1, 1) }
        BLAS.sgemm(transA: false, transB: false, m: n, n: n, k: n, a: a.data, lda: n, b: b.data, ldb: n, beta: 0, c: c.data, ldc: n)
        let start = monotonicSeconds()
        for _ in 0..<iterations {
            BLAS.sgemm(transA: false, transB: false, m: n, n: n, k: n, a: a.data, lda: n, b: b.data, ldb: n, beta: 0, c: c.data, ldc: n)
        }
        return 2 * Double(n * n * n) * Double(iterations) / (monotonicSeconds() - start) / 1e9
    }

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
        let order = rng.permutation(data?.count ?? batchSize)
        func step(_ s: Int) throws {
            let batch: Batch
            if let data {
                let start = (s * batchSize) % (data.count - batchSize + 1)
                batch = try data.batch(indices: Array(order[start..<(start + batchSize)]), modelInputShape: [784])
            } else {
                batch = Batch(images: synthetic)
            }
            model.parameters.zeroGradients()
            let loss = model.loss(batch, training: true)
            loss.backward()
            adam.step(model.parameters)
        }
        for s in 0..<10 { try step(s) }
        BLAS.secondsInside = 0
        BLAS.profiling = true
        defer { BLAS.profiling = false }
        let start = monotonicSeconds()
        for s in 0..<steps { try step(s) }
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
