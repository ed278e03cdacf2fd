import CDNNL
import COpenBLAS
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The one door to OpenBLAS. Every sgemm goes through here so that the benchmark can measure the share of a
/// training step spent inside BLAS (`BLAS.profile`), and so that the process runs the GEMM chosen for its CPU
/// (`GEMMSelection`: OpenBLAS, or oneDNN's sgemm where OpenBLAS fell back to a generic kernel).
public enum BLAS {
    /// Accumulated seconds inside sgemm while profiling is on (benchmarks only; off by default).
    nonisolated(unsafe) public static var profiling = false
    nonisolated(unsafe) public static var secondsInside: Double = 0
    nonisolated(unsafe) public static var flops: Double = 0

    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }
    public static var threadCount: Int { Int(openblas_get_num_threads()) }
    /// Threads of OpenBLAS and of oneDNN's convolutions (its OpenMP pool) together. OpenBLAS is told only when its count
    /// changes: OpenBLAS 0.3.21 starts a stopped pool again inside `openblas_set_num_threads`, whatever the count
    /// (`stopIdleThreads`), and a fresh worker polls beside the run for ~116 ms; oneDNN's count is each thread's, so
    /// every caller's thread is told.
    public static func setThreadCount(_ n: Int) {
        if openblas_get_num_threads() != Int32(n) { openblas_set_num_threads(Int32(n)) }
        DNNL.setThreadCount(n)
    }

    /// Joins OpenBLAS's idle worker threads (`blas_thread_shutdown_`, OpenBLAS's own fork handler); OpenBLAS starts
    /// them again at its next threaded call or `openblas_set_num_threads`. After its last threaded call a worker of
    /// OpenBLAS 0.3 (pthreads) polls its queue with sched_yield for 2^28 TSC cycles before it sleeps (`THREAD_TIMEOUT`;
    /// 116 ms on a 2-core Zen 3, seen runnable in /proc): a third runnable thread beside two replicas on two cores
    /// (the replica calibration's blocks, and the replica run after it). Looked up at run time: a BLAS without it
    /// (another build, OpenMP's) is left as it is. The caller must own the process's BLAS: no other thread may be
    /// inside a threaded call (stopping the pool under one could hang it).
    public static func stopIdleThreads() { _ = openBLASShutdown?() }

    private typealias Shutdown = @convention(c) () -> Int32
    private static let openBLASShutdown: Shutdown? = {
        // The process's global scope: the executable and the libraries it loaded (OpenBLAS among them).
        guard let process = dlopen(nil, RTLD_NOW), let symbol = dlsym(process, "blas_thread_shutdown_") else { return nil }
        return unsafeBitCast(symbol, to: Shutdown.self)
    }()

    /// Runs `body` with the process's thread count (`setThreadCount`) at `n`, and puts the previous count back after.
    /// The count is the process's, not the caller's: a stretch of work that sets it and relies on it (a replica run,
    /// which needs OpenBLAS on one thread; a test comparing one thread with two, or training a run fixed at a count)
    /// holds it through this, and every other such stretch of the process waits until it ends. Tests run in parallel
    /// in one process: without this, one test's `setThreadCount(2)` landed in the middle of another's run fixed at one
    /// thread (ThreadCalibrationTests' fixed run took steps 370-374 of 465 on two threads: different rounding, and a
    /// run no longer the one it claimed to be). Re-entrant on the same thread (a test's scope around a replica run,
    /// which opens its own). Threads that set the count for themselves inside a holder's stretch (a replica's thread,
    /// the trainer's calibration, `withOneThread`) call `setThreadCount` directly: they work for the holder, which may
    /// be waiting for them.
    public static func withThreadCount<R>(_ n: Int, _ body: () throws -> R) rethrows -> R {
        threadCountScope.lock()
        defer { threadCountScope.unlock() }
        let previous = threadCount
        setThreadCount(n)
        defer { setThreadCount(previous) }
        return try body()
    }

    /// The lock `withThreadCount` holds (recursive, so that a holder may open a nested stretch).
    private static let threadCountScope = RecursiveMutex()

    /// Runs `body` with OpenBLAS on one thread: sgemm calls made then from several threads at once (each thread of a
    /// `Parallel` region its own product) each run on their caller's thread, where a threaded call would hand its
    /// work to OpenBLAS's own pool, whose threads spin beside the region's. oneDNN's sgemm inside a region runs on
    /// its caller already. The count is the process's: callers are the process's one compute thread (replicas run
    /// OpenBLAS on one thread throughout, and this then changes nothing).
    static func withOneThread<R>(_ body: () -> R) -> R {
        let previous = openblas_get_num_threads()
        if previous > 1 { openblas_set_num_threads(1) }
        defer { if previous > 1 { openblas_set_num_threads(previous) } }
        return body()
    }

    /// C[m x n] = alpha * op(A) * op(B) + beta * C, row-major, with leading dimensions given by the shapes; on the
    /// process's GEMM (`GEMMSelection.backend`) unless `backend` names one (tests run both). With beta 0, C is not read.
    @inline(__always)
    public static func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, backend: GEMMBackend = GEMMSelection.backend) {
        if m == 0 || n == 0 { return }
        let start = profiling ? monotonicSeconds() : 0
        switch backend {
        case .openblas:
            cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                        blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
        case .dnnl:
            dnnlSGEMM(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                      beta: beta, c: c, ldc: ldc)
        }
        if profiling {
            secondsInside += monotonicSeconds() - start
            flops += 2 * Double(m) * Double(n) * Double(k)
        }
    }

    /// oneDNN's row-major sgemm. An empty product (k = 0) leaves beta * C, as cblas does, without asking oneDNN.
    private static func dnnlSGEMM(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if k == 0 {
            for i in 0..<m {
                let row = c + i * ldc
                for j in 0..<n { row[j] = beta == 0 ? 0 : beta * row[j] }
            }
            return
        }
        let status = dnnl_sgemm(transA ? 84 : 78, transB ? 84 : 78, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda),
                                b, Int64(ldb), beta, c, Int64(ldc))   // 'T' and 'N'
        precondition(status == dnnl_success, "dnnl_sgemm \(m)x\(n)x\(k) (lda \(lda), ldb \(ldb), ldc \(ldc)): status \(status.rawValue)")
    }

    /// `sgemm` in double precision, for sums that must stay exact over many rows (R-CNN's ridge statistics); not
    /// profiled, it runs outside training steps.
    public static func dgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double = 1,
                             a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                             beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        if m == 0 || n == 0 { return }
        cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }
}

/// Seconds from a monotonic clock.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// A pthread mutex its holder may take again (`BLAS.withThreadCount`'s nested stretches).
final class RecursiveMutex: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() {
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_RECURSIVE))
        pthread_mutex_init(mutex, &attributes)
        pthread_mutexattr_destroy(&attributes)
    }
    deinit { pthread_mutex_destroy(mutex); mutex.deallocate() }
    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
}
