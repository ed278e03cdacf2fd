import CCPU
import CDNNL
import COpenBLAS
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The library that runs Starling's single-precision matrix products (`BLAS.sgemm`).
public enum GEMMBackend: String, Sendable, CaseIterable {
    /// OpenBLAS's cblas_sgemm, with the kernel OpenBLAS chose for the CPU (`BLAS.coreName`).
    case openblas
    /// oneDNN's dnnl_sgemm, which picks its JIT kernel (AVX2, AVX-512, AMX) from cpuid on every CPU.
    case dnnl
}

/// The vector instruction sets that matter for an sgemm kernel, in the order each adds to the one before.
public enum VectorISA: Int, Sendable, Comparable, CaseIterable, CustomStringConvertible {
    case sse2, sse3, avx, avx2, avx512

    public static func < (a: VectorISA, b: VectorISA) -> Bool { a.rawValue < b.rawValue }

    public var description: String {
        switch self {
        case .sse2: "SSE2"
        case .sse3: "SSE3"
        case .avx: "AVX"
        case .avx2: "AVX2+FMA"
        case .avx512: "AVX-512"
        }
    }

    /// What this CPU and its OS support (cpuid and xgetbv).
    public static let thisCPU: VectorISA = VectorISA(rawValue: Int(starling_cpu_vector_isa())) ?? .sse2
}

/// Which GEMM a process runs, and why: the decision behind `BLAS.sgemm`.
///
/// A Debian OpenBLAS that does not know a CPU model falls back to its Prescott (SSE3) kernels: on an Emerald Rapids
/// Xeon (family 6 model 207, AVX-512) that made sgemm 4-5x slower than the SkylakeX kernels the CPU can run, and
/// OpenBLAS only says so through its core name. oneDNN's sgemm reads cpuid itself and has kernels for every x86 vector
/// level, so when OpenBLAS's kernel is below what the CPU offers, or its name is one this table does not know, the
/// product runs oneDNN's instead. Where OpenBLAS has the right kernel it stays: it is as fast or faster on Starling's
/// shapes (BENCHMARKS.md, "Which GEMM") and its threading is what the rest of the project was tuned with; only the
/// dense layers' products on one thread of an AVX-512 CPU run oneDNN's there (`Choice.dense`).
/// `STARLING_GEMM=openblas|dnnl` overrides the choice. Tests and CI leave OPENBLAS_CORETYPE alone; this choice is
/// made at run time from what OpenBLAS reports.
public enum GEMMSelection {
    public struct Choice: Sendable, Equatable {
        public let backend: GEMMBackend
        /// One line for run headers: what runs and why.
        public let reason: String
        /// The GEMM of a dense layer's products (`Tensor.linear`, `linearReLU`) made on one thread (`denseBackend`):
        /// `backend`, except where OpenBLAS's AVX-512 kernel runs on an AVX-512 CPU. There oneDNN's sgemm did deep-ae's
        /// 784-wide products (~90 % of its multiply-adds) at 1.05-1.18x OpenBLAS's rate on one core of a Zen 4, over
        /// CPU time, and fc-ae's at 1.12-1.23x (BENCHMARKS.md, "The dense autoencoders on AVX-512", "Which GEMM"),
        /// while its two-thread OpenMP sgemm beside OpenBLAS's pool fell to a few GFLOP/s on a loaded machine:
        /// products on more than one thread keep `backend`.
        public let dense: GEMMBackend

        public init(backend: GEMMBackend, reason: String, dense: GEMMBackend? = nil) {
            self.backend = backend
            self.reason = reason
            self.dense = dense ?? backend
        }
    }

    /// The vector instruction set of the sgemm kernel OpenBLAS 0.3's DYNAMIC_ARCH build runs for a core name
    /// (`openblas_get_corename`), or nil for a name not in its x86-64 table.
    public static func kernelInstructionSet(ofOpenBLASCore name: String) -> VectorISA? {
        switch name.lowercased() {
        case "katmai", "coppermine", "northwood", "banias", "athlon": .sse2
        case "prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "nano", "opteron", "opteron_sse3",
             "barcelona", "bobcat": .sse3
        case "sandybridge", "bulldozer", "piledriver", "steamroller", "excavator": .avx
        case "haswell", "zen": .avx2
        case "skylakex", "cooperlake", "sapphirerapids": .avx512
        default: nil
        }
    }

    /// The choice for an OpenBLAS core name on a CPU, with STARLING_GEMM's value if set. A pure function: the table
    /// of cases is tested (`GEMMSelectionTests`). An override other than `openblas` or `dnnl` is an error.
    public static func choose(openBLASCore core: String, cpu: VectorISA, override: String?) -> Result<Choice, GEMMOverrideError> {
        if let override {
            guard let backend = GEMMBackend(rawValue: override.lowercased()) else { return .failure(GEMMOverrideError(value: override)) }
            return .success(Choice(backend: backend, reason: "STARLING_GEMM=\(backend.rawValue)"))
        }
        guard let kernel = kernelInstructionSet(ofOpenBLASCore: core) else {
            // A name this table does not know: oneDNN's kernel follows cpuid, OpenBLAS's is a guess. On a CPU without
            // AVX oneDNN's sgemm is no better than OpenBLAS's SSE kernels, so OpenBLAS stays.
            return cpu >= .avx
                ? .success(Choice(backend: .dnnl, reason: "OpenBLAS core \(core) is not a known kernel; the CPU has \(cpu)"))
                : .success(Choice(backend: .openblas, reason: "OpenBLAS core \(core), the CPU has \(cpu) only"))
        }
        // oneDNN's sgemm has AVX, AVX2 and AVX-512 kernels; below AVX it has nothing better than OpenBLAS's SSE ones.
        if kernel < cpu && cpu >= .avx {
            return .success(Choice(backend: .dnnl, reason: "OpenBLAS core \(core) runs \(kernel) kernels on a CPU with \(cpu)"))
        }
        if kernel == .avx512 && cpu == .avx512 {
            return .success(Choice(backend: .openblas, reason: "OpenBLAS core \(core) matches the CPU's \(cpu); dense layers of \(denseMinimumRows)+ rows (\(denseWideMinimumRows)+ over \(denseWideWeights)+ weights) on one thread: dnnl_sgemm",
                                   dense: .dnnl))
        }
        return .success(Choice(backend: .openblas, reason: "OpenBLAS core \(core) matches the CPU's \(cpu)"))
    }

    /// STARLING_GEMM's value, checked (the CLI refuses to start with a bad one: `overrideError`).
    public static let selected: Result<Choice, GEMMOverrideError> = {
        let override = getenv("STARLING_GEMM").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        return choose(openBLASCore: BLAS.coreName, cpu: VectorISA.thisCPU, override: override)
    }()

    /// The choice this process runs: with a bad STARLING_GEMM (which the CLI reports before starting), the automatic one.
    public static let current: Choice = {
        switch selected {
        case .success(let choice): return choice
        case .failure: return (try? choose(openBLASCore: BLAS.coreName, cpu: VectorISA.thisCPU, override: nil).get())
            ?? Choice(backend: .openblas, reason: "")
        }
    }()

    public static var backend: GEMMBackend { current.backend }

    /// The fewest rows (images) of a dense layer's batch for which `Choice.dense` runs. Below it OpenBLAS's small-matrix
    /// kernels win: vae's 16-row products (a replica's or a rank's half of its batch of 32) took 1.09-1.19x the CPU a
    /// step on oneDNN's sgemm on a Zen 4, where its 32-row step was level and deep-ae's and fc-ae's 128- and 256-row
    /// steps 0.88-0.94x (BENCHMARKS.md, "After the twelfth session's merges").
    public static let denseMinimumRows = 64

    /// Below `denseMinimumRows`, the products that read a weight matrix of at least `denseWideWeights` elements (4 MB)
    /// over at least `denseWideMinimumRows` rows still run `Choice.dense`: the forward product and the input's gradient
    /// of a region detector's fc6 and fc7 (6,272 x 1,024 and 1,024 x 1,024 at width 0.25) on one replica's RoIs, 20-53
    /// rows of the 40-106 one process gives the same two images. Their cost is reading the weights, which OpenBLAS
    /// first copies into its packed panels; oneDNN's sgemm took 0.81-0.85x OpenBLAS's CPU time on fc6's forward
    /// product, 0.92-0.96x on its input gradient and 0.56-0.87x on fc7's forward at 16-64 rows on one core of the Zen 4
    /// (BENCHMARKS.md, "The region detectors on one process"). The weight gradient (the weights' shape written, not read,
    /// with a product over the rows) was level there, 0.97-1.14x, and keeps `denseMinimumRows`. vae's 16-row products,
    /// which lost on oneDNN, read 784 x 512 weights at most, a tenth of this.
    public static let denseWideWeights = 1 << 20
    public static let denseWideMinimumRows = 16

    /// The GEMM for a dense layer's product of `rows` rows on the calling thread: `Choice.dense` where the product
    /// runs on this thread alone (OpenBLAS on one thread, and the OpenMP team a oneDNN call made here would start, one
    /// thread or no OpenMP at all) over at least `denseMinimumRows` rows, or over at least `denseWideMinimumRows` rows
    /// of a weight matrix of `weights` >= `denseWideWeights` elements (pass 0 for a product that writes the weights'
    /// shape rather than reading it: the weight gradient), the process's `backend` otherwise.
    @inline(__always)
    public static func denseBackend(rows: Int, weights: Int = 0) -> GEMMBackend {
        let choice = current
        if choice.dense == choice.backend { return choice.backend }
        guard rows >= denseMinimumRows || (rows >= denseWideMinimumRows && weights >= denseWideWeights) else { return choice.backend }
        return BLAS.threadCount == 1 && starling_omp_get_max_threads() <= 1 ? choice.dense : choice.backend
    }

    /// Whether any product of this process may run oneDNN's sgemm (all of them, or the dense layers' on one thread).
    public static var mayRunDNNL: Bool { current.backend == .dnnl || current.dense == .dnnl }

    /// Makes oneDNN's sgemm generate its JIT code now, once a process; later calls return at once. oneDNN (2.6)
    /// generates all of its sgemm kernels (packing and compute, every transposition and beta) at the process's first
    /// dnnl_sgemm call: ~28 ms of CPU on one thread of a Zen 4, during which every other caller waits. A `train` run's
    /// first step paid it (both replicas stalled 30-100 ms on the loaded machine), so fc-ae's one-epoch `train`
    /// measurement (~0.15-0.3 s an epoch) lost 10-20 % where the suite's warmed-up steps gained 1.06-1.15x
    /// (BENCHMARKS.md, "oneDNN's dense products through train"). The trainer runs this on a thread of its own while
    /// the data loads (`Trainer.run`). Small products of each form a dense layer calls (NN, NT, TN; beta 0 and 1; a
    /// 32-wide side as fc-ae's code), on the calling thread alone (its OpenMP count set to 1 for the call and put back).
    public static func generateDNNLKernels() { _ = dnnlKernelsGenerated }

    private static let dnnlKernelsGenerated: Void = {
        let previous = starling_omp_get_max_threads()
        _ = starling_omp_set_num_threads(1)
        defer { if previous > 0 { _ = starling_omp_set_num_threads(previous) } }
        let (m, n, k) = (64, 32, 64)
        let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
        let b = UnsafeMutablePointer<Float>.allocate(capacity: k * m)
        let c = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
        defer { a.deallocate(); b.deallocate(); c.deallocate() }
        a.initialize(repeating: 0, count: m * k)
        b.initialize(repeating: 0, count: k * m)
        c.initialize(repeating: 0, count: m * k)
        for beta: Float in [0, 1] {
            // y[m, n] = x[m, k] W[k, n]; dx[m, k] = dy[m, n] W^T; dW[k, n] += x^T dy (the dense layer's three products).
            BLAS.sgemm(transA: false, transB: false, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, beta: beta, c: c, ldc: n, backend: .dnnl)
            BLAS.sgemm(transA: false, transB: true, m: m, n: k, k: n, a: a, lda: n, b: b, ldb: n, beta: beta, c: c, ldc: k, backend: .dnnl)
            BLAS.sgemm(transA: true, transB: false, m: k, n: n, k: m, a: a, lda: k, b: b, ldb: n, beta: beta, c: c, ldc: n, backend: .dnnl)
        }
    }()

    /// The error a bad STARLING_GEMM gives, or nil.
    public static var overrideError: GEMMOverrideError? {
        if case .failure(let error) = selected { return error }
        return nil
    }

    /// For suite rows' kernels: "openblas", or "openblas, dense layers of 64+ rows (16+ over 1048576+ weights) on one thread dnnl"
    /// where they differ.
    public static var shortName: String {
        current.dense == current.backend ? current.backend.rawValue : "\(current.backend.rawValue), dense layers of \(denseMinimumRows)+ rows (\(denseWideMinimumRows)+ over \(denseWideWeights)+ weights) on one thread \(current.dense.rawValue)"
    }

    /// For run headers and benchmarks: "GEMM openblas (OpenBLAS core Cooperlake matches the CPU's AVX-512)".
    public static var summary: String {
        let kernel = current.backend == .dnnl ? "dnnl_sgemm, oneDNN \(DNNLActivation.instructionSet)" : "openblas, core \(BLAS.coreName)"
        return "GEMM \(kernel) (\(current.reason))"
    }
}

public struct GEMMOverrideError: Error, Equatable, CustomStringConvertible {
    public let value: String
    public var description: String { "STARLING_GEMM=\(value): expected openblas or dnnl" }
}
