import Foundation
import Testing
import CDNNL
@testable import StarlingCore

/// The choice of GEMM (`GEMMSelection.choose`) over a table of OpenBLAS cores and CPUs, and the two GEMMs against a
/// product computed in Double, on every machine (both paths run whatever the process chose).
@Suite struct GEMMSelectionTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let core: String, cpu: VectorISA, override: String?, expected: GEMMBackend?
        /// The dense layers' GEMM on one thread (`Choice.dense`): `expected` unless given.
        var dense: GEMMBackend? = nil
        var testDescription: String { "\(core) on \(cpu)\(override.map { " STARLING_GEMM=\($0)" } ?? "")" }
    }

    static let cases: [Case] = [
        // The Emerald Rapids fallback: Debian's OpenBLAS 0.3.21 runs Prescott on an AVX-512 Xeon.
        Case(core: "Prescott", cpu: .avx512, override: nil, expected: .dnnl),
        Case(core: "Nehalem", cpu: .avx2, override: nil, expected: .dnnl),
        Case(core: "Sandybridge", cpu: .avx512, override: nil, expected: .dnnl),
        Case(core: "Haswell", cpu: .avx512, override: nil, expected: .dnnl),
        // The right kernel stays on OpenBLAS; on AVX-512 the dense layers' products on one thread run oneDNN's sgemm.
        Case(core: "Haswell", cpu: .avx2, override: nil, expected: .openblas),
        Case(core: "Zen", cpu: .avx2, override: nil, expected: .openblas),
        Case(core: "SkylakeX", cpu: .avx512, override: nil, expected: .openblas, dense: .dnnl),
        Case(core: "Cooperlake", cpu: .avx512, override: nil, expected: .openblas, dense: .dnnl),
        Case(core: "SAPPHIRERAPIDS", cpu: .avx512, override: nil, expected: .openblas, dense: .dnnl),
        Case(core: "Sandybridge", cpu: .avx, override: nil, expected: .openblas),
        // OpenBLAS with a kernel above what cpuid reports (a virtual machine hiding AVX-512 from the OS): not a fallback.
        Case(core: "SkylakeX", cpu: .avx2, override: nil, expected: .openblas),
        // Names OpenBLAS's table may grow: oneDNN follows cpuid where it has kernels.
        Case(core: "EmeraldRapids", cpu: .avx512, override: nil, expected: .dnnl),
        Case(core: "unknown", cpu: .avx2, override: nil, expected: .dnnl),
        Case(core: "", cpu: .sse3, override: nil, expected: .openblas),
        // Baseline x86-64 CPUs: OpenBLAS's SSE kernels are the best there is.
        Case(core: "Prescott", cpu: .sse3, override: nil, expected: .openblas),
        Case(core: "Prescott", cpu: .sse2, override: nil, expected: .openblas),
        Case(core: "Core2", cpu: .sse3, override: nil, expected: .openblas),
        // STARLING_GEMM wins either way; anything else is an error.
        Case(core: "Prescott", cpu: .avx512, override: "openblas", expected: .openblas),
        Case(core: "Cooperlake", cpu: .avx512, override: "DNNL", expected: .dnnl),
        Case(core: "Prescott", cpu: .sse2, override: "dnnl", expected: .dnnl),
        Case(core: "Cooperlake", cpu: .avx512, override: "mkl", expected: nil),
    ]

    @Test(arguments: cases) func choice(_ c: Case) {
        let result = GEMMSelection.choose(openBLASCore: c.core, cpu: c.cpu, override: c.override)
        switch (result, c.expected) {
        case (.success(let choice), let expected?):
            #expect(choice.backend == expected)
            #expect(choice.dense == (c.dense ?? expected))
            #expect(!choice.reason.isEmpty)
        case (.failure(let error), nil):
            #expect(error.description == "STARLING_GEMM=\(c.override ?? ""): expected openblas or dnnl")
        default:
            Issue.record("\(c.testDescription): got \(result)")
        }
    }

    @Test func everyOpenBLASCoreOfThisMachineIsKnownOrReported() {
        // The process's own choice comes out of the same function (no second rule elsewhere).
        let again = GEMMSelection.choose(openBLASCore: BLAS.coreName, cpu: VectorISA.thisCPU, override: nil)
        if GEMMSelection.overrideError == nil, case .success(let choice) = again, ProcessInfo.processInfo.environment["STARLING_GEMM"] == nil {
            #expect(choice == GEMMSelection.current)
        }
        #expect(GEMMSelection.summary.hasPrefix("GEMM "))
    }

    /// A dense layer's products take `Choice.dense` on one thread from `denseMinimumRows` rows and the process's GEMM on
    /// two or on fewer rows, and the layer's values and gradients are right on each (finite differences; on an AVX-512
    /// machine the one-thread pass of 64 rows is oneDNN's sgemm).
    @Test func denseLayerOnOneThreadAndOnTwo() {
        let many = GEMMSelection.denseMinimumRows, few = GEMMSelection.denseMinimumRows - 1
        for threads in [1, 2] {
            BLAS.withThreadCount(threads) {
                #expect(GEMMSelection.denseBackend(rows: many) == (threads == 1 ? GEMMSelection.current.dense : GEMMSelection.backend), "\(threads) thread(s)")
                #expect(GEMMSelection.denseBackend(rows: few) == GEMMSelection.backend, "\(threads) thread(s), \(few) rows")
                for rows in [few, many] {
                    let x = randomVariable([rows, 19], seed: 21), w = randomVariable([19, 23], seed: 22), b = randomVariable([23], seed: 23)
                    checkGradients([x, w, b]) { $0[0].linear($0[1], $0[2]).sigmoid() }
                }
            }
        }
    }

    /// Below `denseMinimumRows`, a product over `denseWideMinimumRows` rows or more that reads a weight matrix of
    /// `denseWideWeights` elements (a region detector's fc6 and fc7 on one replica's RoIs) takes `Choice.dense` on one
    /// thread; fewer rows, smaller weights, two threads, and the weight gradient (no weights read) keep the process's
    /// GEMM. The layer's values and its three gradients on one thread and on two (the two GEMMs on an AVX-512 machine)
    /// against the same products summed in Double.
    @Test func wideDenseLayerOnFewRows() {
        let (rows, k, n) = (GEMMSelection.denseWideMinimumRows, 1024, GEMMSelection.denseWideWeights / 1024)
        let x = randomVariable([rows, k], seed: 31, -0.5, 0.5), w = randomVariable([k, n], seed: 32, -0.05, 0.05), b = randomVariable([n], seed: 33)
        let seed = randomValues(rows * n, seed: 34)
        // Reference in Double: y = x w + b; with the upstream gradient g, dx = g w^T, dw = x^T g, db = the columns of g summed.
        let (xs, ws) = (Array(UnsafeBufferPointer(start: x.data, count: rows * k)), Array(UnsafeBufferPointer(start: w.data, count: k * n)))
        var y = [Double](repeating: 0, count: rows * n), dx = [Double](repeating: 0, count: rows * k)
        var dw = [Double](repeating: 0, count: k * n), db = [Double](repeating: 0, count: n)
        for r in 0..<rows {
            for j in 0..<n { y[r * n + j] = Double(b.data[j]); db[j] += Double(seed[r * n + j]) }
            for i in 0..<k {
                let xv = Double(xs[r * k + i])
                var d = 0.0
                for j in 0..<n {
                    let (wv, g) = (Double(ws[i * n + j]), Double(seed[r * n + j]))
                    y[r * n + j] += xv * wv
                    d += g * wv
                    dw[i * n + j] += xv * g
                }
                dx[r * k + i] = d
            }
        }
        func worst(_ got: UnsafePointer<Float>, _ want: [Double]) -> Double {
            let scale = want.reduce(0) { max($0, abs($1)) }
            return want.indices.reduce(0) { max($0, abs(Double(got[$1]) - want[$1])) } / max(scale, 1e-30)
        }
        for threads in [1, 2] {
            BLAS.withThreadCount(threads) {
                let dense = threads == 1 ? GEMMSelection.current.dense : GEMMSelection.backend
                #expect(GEMMSelection.denseBackend(rows: rows, weights: k * n) == dense, "\(threads) thread(s)")
                #expect(GEMMSelection.denseBackend(rows: rows - 1, weights: k * n) == GEMMSelection.backend, "\(threads) thread(s), \(rows - 1) rows")
                #expect(GEMMSelection.denseBackend(rows: GEMMSelection.denseMinimumRows - 1, weights: k * n - 1) == GEMMSelection.backend)
                #expect(GEMMSelection.denseBackend(rows: GEMMSelection.denseMinimumRows - 1) == GEMMSelection.backend, "the weight gradient")
                for t in [x, w, b] { t.clearGrad() }
                let out = x.linear(w, b)
                out.backward(seed: seed)
                #expect(worst(out.data, y) < 1e-5, "\(threads) thread(s): values")
                #expect(worst(x.grad, dx) < 1e-5, "\(threads) thread(s): the input's gradient")
                #expect(worst(w.grad, dw) < 1e-5, "\(threads) thread(s): the weights' gradient")
                #expect(worst(b.grad, db) < 1e-5, "\(threads) thread(s): the bias's gradient")
            }
        }
    }

    /// oneDNN's sgemm kernels generated ahead (`generateDNNLKernels`, which the trainer runs on a thread of its own while
    /// the data loads) leave the calling thread's OpenMP count as it was, whatever it was, and a product's bits as they
    /// were; a second call returns at once. On a thread of the test's own, so that no other test's thread is touched.
    @Test func generatingDNNLKernelsAheadChangesNothing() {
        let (m, n, k) = (70, 33, 65)
        var rng = SplitMix(seed: 7)
        let a = (0..<(m * k)).map { _ in rng.uniform(-1, 1) }, b = (0..<(k * n)).map { _ in rng.uniform(-1, 1) }
        @Sendable func product() -> [UInt32] {
            var c = [Float](repeating: 0, count: m * n)
            BLAS.sgemm(transA: false, transB: false, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, beta: 0, c: &c, ldc: n, backend: .dnnl)
            return c.map(\.bitPattern)
        }
        let finished = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var counts: [Int32] = [], products: [[UInt32]] = []
        Thread {
            DNNL.setThreadCount(1)
            products.append(product())
            for threads in [3, 1] {
                DNNL.setThreadCount(threads)
                GEMMSelection.generateDNNLKernels()
                GEMMSelection.generateDNNLKernels()
                counts.append(starling_omp_get_max_threads())
            }
            products.append(product())
            finished.signal()
        }.start()
        finished.wait()
        if starling_omp_get_max_threads() > 0 { #expect(counts == [3, 1]) }   // 0: no libgomp, nothing to keep
        #expect(products.count == 2 && products[0] == products[1])
    }

    /// cpuid's answer against the kernel's flags (/proc/cpuinfo).
    @Test func vectorISAAgreesWithProcCpuinfo() throws {
        #if os(Linux) && arch(x86_64)
        let text = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(line.split(separator: ":")[1].split(separator: " ").map(String.init))
        let expected: VectorISA =
            ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx2", "fma"].allSatisfy(flags.contains) ? .avx512
            : ["avx2", "fma", "avx"].allSatisfy(flags.contains) ? .avx2
            : flags.contains("avx") ? .avx : flags.contains("pni") ? .sse3 : .sse2
        #expect(VectorISA.thisCPU == expected)
        #endif
    }

    struct Shape: Sendable, CustomTestStringConvertible {
        let transA: Bool, transB: Bool, m: Int, n: Int, k: Int, pad: Int, beta: Float
        var testDescription: String { "\(transA ? "T" : "N")\(transB ? "T" : "N") \(m)x\(n)x\(k) pad \(pad) beta \(beta)" }
    }

    /// All four transpose combinations, odd shapes, leading dimensions larger than the rows, beta 0 (C holds NaN,
    /// which must not leak in) and beta 1, alpha not 1.
    static let shapes: [Shape] = [false, true].flatMap { ta in
        [false, true].flatMap { tb in
            [(1, 1, 1, 0), (7, 13, 5, 3), (33, 17, 65, 1), (64, 96, 128, 0), (130, 257, 3, 5), (5, 300, 301, 2)].flatMap { m, n, k, pad in
                [Float(0), 1].map { Shape(transA: ta, transB: tb, m: m, n: n, k: k, pad: pad, beta: $0) }
            }
        }
    } + [Shape(transA: false, transB: true, m: 4, n: 6, k: 0, pad: 1, beta: 1), Shape(transA: true, transB: false, m: 4, n: 6, k: 0, pad: 0, beta: 0)]

    @Test(arguments: shapes) func backendsAgreeWithDouble(_ s: Shape) {
        // op(A) is m x k; stored k x m when transposed. Leading dimensions are the stored row length plus `pad`.
        let (aRows, aCols) = s.transA ? (s.k, s.m) : (s.m, s.k)
        let (bRows, bCols) = s.transB ? (s.n, s.k) : (s.k, s.n)
        let lda = aCols + s.pad, ldb = bCols + s.pad, ldc = s.n + s.pad
        var rng = SplitMix(seed: UInt64(s.m * 1000 + s.n * 10 + s.k))
        let a = (0..<max(1, aRows * lda)).map { _ in rng.uniform(-1, 1) }
        let b = (0..<max(1, bRows * ldb)).map { _ in rng.uniform(-1, 1) }
        let c0 = (0..<(s.m * ldc)).map { _ in s.beta == 0 ? Float.nan : rng.uniform(-1, 1) }
        let alpha: Float = 0.75
        var expected = c0
        for i in 0..<s.m {
            for j in 0..<s.n {
                var sum = 0.0
                for p in 0..<s.k {
                    let av = s.transA ? a[p * lda + i] : a[i * lda + p]
                    let bv = s.transB ? b[j * ldb + p] : b[p * ldb + j]
                    sum += Double(av) * Double(bv)
                }
                expected[i * ldc + j] = Float(Double(alpha) * sum + (s.beta == 0 ? 0 : Double(s.beta) * Double(c0[i * ldc + j])))
            }
        }
        for backend in GEMMBackend.allCases {
            var c = c0
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    c.withUnsafeMutableBufferPointer { c in
                        BLAS.sgemm(transA: s.transA, transB: s.transB, m: s.m, n: s.n, k: s.k, alpha: alpha, a: a.baseAddress!, lda: lda,
                                   b: b.baseAddress!, ldb: ldb, beta: s.beta, c: c.baseAddress!, ldc: ldc, backend: backend)
                    }
                }
            }
            var worst: Float = 0, outside = 0
            for i in 0..<s.m {
                for j in 0..<ldc {
                    let (got, want) = (c[i * ldc + j], expected[i * ldc + j])
                    if j >= s.n {
                        // Padding between rows is not C's: it keeps what it held (NaN stays NaN).
                        #expect(got.bitPattern == want.bitPattern, "\(backend) wrote padding at \(i),\(j)")
                    } else {
                        // Float accumulation over k terms of size <= 1: a few ulps times sqrt(k), far below 2e-5.
                        let error = abs(got - want) / (1 + abs(want))
                        if !(error < 2e-5) { outside += 1 }   // NaN counts
                        if error > worst { worst = error }
                    }
                }
            }
            #expect(outside == 0, "\(backend): \(outside) elements off, worst relative error \(worst)")
        }
    }
}

/// A small deterministic generator for the test's inputs.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform(_ low: Float, _ high: Float) -> Float {
        low + (high - low) * Float(next() >> 40) / Float(1 << 24)
    }
}
