/// Throughput of conv2d (forward + backward) next to that of a large square sgemm on the same BLAS threads:
/// the ratio says how much the im2col lowering, the tiling and the small-ish product shapes cost.
public enum ConvBenchmark {
    public struct Result: Sendable {
        /// GFLOP/s of forward + backward, counted as 3 x 2 * N * Cout * Hout * Wout * Cin * KH * KW
        /// (forward, input gradient, weight gradient; the bias is not counted).
        public let convGFLOPS: Double
        /// GFLOP/s of a square sgemm of side `sgemmSize`.
        public let sgemmGFLOPS: Double
        public let forwardSeconds: Double
        public let backwardSeconds: Double
        public let coreName: String
        public let threadCount: Int

        public var ratio: Double { convGFLOPS / sgemmGFLOPS }
        public var summary: String {
            func f(_ v: Double) -> String { let tenths = Int((v * 10).rounded()); return "\(tenths / 10).\(tenths % 10)" }
            return "conv fwd+bwd \(f(convGFLOPS)) GFLOP/s (fwd \(f(forwardSeconds * 1000)) ms, bwd \(f(backwardSeconds * 1000)) ms), "
                + "sgemm \(f(sgemmGFLOPS)) GFLOP/s, ratio \(f(ratio * 100))%, core \(coreName), \(threadCount) BLAS thread(s), GEMM \(GEMMSelection.backend.rawValue)"
        }
    }

    /// Times a 3x3 `same` convolution of [batch, channels, size, size] to `channels` outputs with bias.
    /// Takes the best of `iterations` runs after one warm-up, as the machine is shared.
    public static func run(batch: Int = 16, channels: Int = 64, size: Int = 56, iterations: Int = 5,
                           sgemmSize: Int = 1024) -> Result {
        var rng = RandomGenerator(seed: 1)
        func random(_ shape: [Int], scale: Float) -> [Float] {
            (0..<Tensor.elementCount(shape)).map { _ in rng.uniform(-scale, scale) }
        }
        let xShape = [batch, channels, size, size], wShape = [channels, channels, 3, 3]
        let x = Tensor.variable(shape: xShape, values: random(xShape, scale: 1))
        let w = Tensor.variable(shape: wShape, values: random(wShape, scale: 0.05))
        let b = Tensor.variable(shape: [channels], values: random([channels], scale: 0.1))

        var bestForward = Double.infinity, bestBackward = Double.infinity, bestTotal = Double.infinity
        for _ in 0...max(iterations, 1) {
            x.clearGrad(); w.clearGrad(); b.clearGrad()
            let t0 = monotonicSeconds()
            let y = x.conv2d(w, bias: b, stride: (1, 1), padding: .same)
            let t1 = monotonicSeconds()
            y.backward()
            let t2 = monotonicSeconds()
            bestForward = min(bestForward, t1 - t0)
            bestBackward = min(bestBackward, t2 - t1)
            bestTotal = min(bestTotal, t2 - t0)
        }
        let flops = 3 * 2 * Double(batch) * Double(channels * size * size) * Double(channels * 9)
        return Result(convGFLOPS: flops / bestTotal / 1e9, sgemmGFLOPS: sgemmGFLOPS(size: sgemmSize, iterations: iterations),
                      forwardSeconds: bestForward, backwardSeconds: bestBackward,
                      coreName: BLAS.coreName, threadCount: BLAS.threadCount)
    }

    /// Best-of-`iterations` GFLOP/s of C = A * B with n x n matrices.
    public static func sgemmGFLOPS(size n: Int, iterations: Int) -> Double {
        let a = FloatStorage(count: n * n), b = FloatStorage(count: n * n), c = FloatStorage(count: n * n)
        var rng = RandomGenerator(seed: 2)
        for i in 0..<(n * n) { a.pointer[i] = rng.uniform(-1, 1); b.pointer[i] = rng.uniform(-1, 1) }
        var best = Double.infinity
        for _ in 0...max(iterations, 1) {
            let t0 = monotonicSeconds()
            BLAS.sgemm(transA: false, transB: false, m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n,
                       beta: 0, c: c.pointer, ldc: n)
            best = min(best, monotonicSeconds() - t0)
        }
        return 2 * Double(n) * Double(n) * Double(n) / best / 1e9
    }
}
