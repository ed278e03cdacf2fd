/// sgemm on both GEMMs (`GEMMBackend`) over the shapes Starling's models run, interleaved (A B A B ...) so that a busy
/// machine disturbs both alike: the figures behind `GEMMSelection`'s rule (BENCHMARKS.md, "Which GEMM").
public enum GEMMBenchmark {
    public struct Shape: Sendable {
        public let name: String
        public let transA: Bool, transB: Bool
        public let m: Int, n: Int, k: Int
        public var flops: Double { 2 * Double(m) * Double(n) * Double(k) }
        public var label: String { "\(name) \(transA ? "T" : "N")\(transB ? "T" : "N") \(m)x\(n)x\(k)" }
    }

    /// Dense layers are x[B, in] W[in, out]: forward NN (B, out, in), input gradient NT (B, in, out), weight
    /// gradient TN (in, out, B). The im2col convolution is W[out, patch] cols[patch, pixels] per image.
    public static let shapes: [Shape] = [
        Shape(name: "square", transA: false, transB: false, m: 1024, n: 1024, k: 1024),
        Shape(name: "fc-ae encoder forward", transA: false, transB: false, m: 256, n: 32, k: 784),
        Shape(name: "fc-ae decoder forward", transA: false, transB: false, m: 256, n: 784, k: 32),
        Shape(name: "fc-ae decoder input grad", transA: false, transB: true, m: 256, n: 32, k: 784),
        Shape(name: "fc-ae decoder weight grad", transA: true, transB: false, m: 32, n: 784, k: 256),
        Shape(name: "deep-ae 784->128 forward", transA: false, transB: false, m: 256, n: 128, k: 784),
        Shape(name: "deep-ae 784->128 weight grad", transA: true, transB: false, m: 784, n: 128, k: 256),
        Shape(name: "deep-ae 128->784 input grad", transA: false, transB: true, m: 256, n: 128, k: 784),
        Shape(name: "lstm inputs, 28 steps", transA: false, transB: false, m: 7168, n: 256, k: 28),
        Shape(name: "lstm recurrent step", transA: false, transB: false, m: 256, n: 256, k: 64),
        Shape(name: "lstm recurrent grad", transA: false, transB: true, m: 256, n: 64, k: 256),
        Shape(name: "conv 3x3 64->64 56x56 forward", transA: false, transB: false, m: 64, n: 3136, k: 576),
        Shape(name: "conv 3x3 64->64 56x56 weight grad", transA: false, transB: true, m: 64, n: 576, k: 3136),
        Shape(name: "conv 3x3 64->64 56x56 input grad", transA: true, transB: false, m: 576, n: 3136, k: 64),
        Shape(name: "rcnn fc6 forward, 128 RoIs", transA: false, transB: false, m: 128, n: 4096, k: 9216),
        Shape(name: "rcnn fc7 input grad", transA: false, transB: true, m: 128, n: 4096, k: 4096),
        Shape(name: "rcnn fc7 weight grad", transA: true, transB: false, m: 4096, n: 4096, k: 128),
        // faster-rcnn's and fast-rcnn's RoI head at width 0.25 on one replica's RoIs (20-53 of a step in the suite).
        Shape(name: "faster-rcnn fc6 forward, 40 RoIs", transA: false, transB: false, m: 40, n: 1024, k: 6272),
        Shape(name: "faster-rcnn fc6 input grad", transA: false, transB: true, m: 40, n: 6272, k: 1024),
        Shape(name: "faster-rcnn fc6 weight grad", transA: true, transB: false, m: 6272, n: 1024, k: 40),
        Shape(name: "faster-rcnn fc7 forward, 40 RoIs", transA: false, transB: false, m: 40, n: 1024, k: 1024),
    ]

    /// Every product of a stack of dense layers' training step at one batch (`sizes`: the widths from input to output):
    /// forward NN, input gradient NT (not for the first layer, whose input is data) and weight gradient TN, layer by
    /// layer. `bench --only gemm-deep-ae` runs deep-ae's at the batch of one rank on two ranks (128) and on one (256).
    public static func denseStep(name: String, sizes: [Int], batch: Int) -> [Shape] {
        (1..<sizes.count).flatMap { l -> [Shape] in
            let (inputs, outputs) = (sizes[l - 1], sizes[l])
            let layer = "\(name) \(inputs)->\(outputs) B\(batch)"
            var products = [Shape(name: "\(layer) forward", transA: false, transB: false, m: batch, n: outputs, k: inputs)]
            if l > 1 { products.append(Shape(name: "\(layer) input grad", transA: false, transB: true, m: batch, n: inputs, k: outputs)) }
            products.append(Shape(name: "\(layer) weight grad", transA: true, transB: false, m: inputs, n: outputs, k: batch))
            return products
        }
    }

    public struct Row: Sendable {
        public let shape: Shape
        /// GFLOP/s of each round, per backend.
        public let rounds: [GEMMBackend: [Double]]
        /// GFLOP/s of each round over the process's CPU time (every thread's, spinning included), per backend: on a
        /// loaded machine, what a round costs in cores rather than what it got of them.
        public let cpuRounds: [GEMMBackend: [Double]]
    }

    /// Each shape: `rounds` rounds, each timing every backend for at least `seconds` of calls.
    public static func run(shapes: [Shape] = shapes, rounds: Int = 3, seconds: Double = 0.15) -> [Row] {
        shapes.map { shape in
            let (aCount, bCount) = (shape.m * shape.k, shape.k * shape.n)
            let a = UnsafeMutablePointer<Float>.allocate(capacity: aCount), b = UnsafeMutablePointer<Float>.allocate(capacity: bCount)
            let c = UnsafeMutablePointer<Float>.allocate(capacity: shape.m * shape.n)
            defer { a.deallocate(); b.deallocate(); c.deallocate() }
            for i in 0..<aCount { a[i] = Float(i % 17) * 0.01 - 0.08 }
            for i in 0..<bCount { b[i] = Float(i % 13) * 0.01 - 0.06 }
            c.initialize(repeating: 0, count: shape.m * shape.n)
            func call(_ backend: GEMMBackend) {
                BLAS.sgemm(transA: shape.transA, transB: shape.transB, m: shape.m, n: shape.n, k: shape.k,
                           a: a, lda: shape.transA ? shape.m : shape.k, b: b, ldb: shape.transB ? shape.k : shape.n,
                           beta: 0, c: c, ldc: shape.n, backend: backend)
            }
            var results: [GEMMBackend: [Double]] = [:], cpuResults: [GEMMBackend: [Double]] = [:]
            for backend in GEMMBackend.allCases { call(backend) }   // first-call costs (buffers, JIT) out of the timing
            for _ in 0..<rounds {
                for backend in GEMMBackend.allCases {
                    var calls = 0
                    let start = monotonicSeconds(), cpuStart = ConvAlgorithmBenchmark.seconds(.cpu)
                    var elapsed = 0.0
                    repeat {
                        call(backend)
                        calls += 1
                        elapsed = monotonicSeconds() - start
                    } while elapsed < seconds
                    let cpu = ConvAlgorithmBenchmark.seconds(.cpu) - cpuStart
                    results[backend, default: []].append(shape.flops * Double(calls) / elapsed / 1e9)
                    cpuResults[backend, default: []].append(shape.flops * Double(calls) / max(cpu, 1e-9) / 1e9)
                }
            }
            return Row(shape: shape, rounds: results, cpuRounds: cpuResults)
        }
    }
}
