import CDNNL
import Dispatch

/// Element-wise work shared out over the threads the user gave the libraries (`BLAS.setThreadCount`, `--threads`):
/// sgemm and oneDNN already use them, and an op that runs alone on one core between two convolutions would leave the
/// other idle. The threads are oneDNN's OpenMP pool (one pool, as in PyTorch): a second pool (Dispatch's) made the two
/// spin against each other and SSD7's inference varied by 15 %. With one thread (every rank under mpirun) the body
/// runs inline.
enum Parallel {
    /// Below this many elements touched, splitting costs more than it saves.
    static let minimumWork = 1 << 16

    /// Calls `body` on disjoint ranges that cover 0..<count, on up to `BLAS.threadCount` threads when `work` (elements
    /// the whole call touches) is large enough. `body` must only write what its range owns.
    static func forEachChunk(of count: Int, work: Int, _ body: (Range<Int>) -> Void) {
        let threads = Swift.min(BLAS.threadCount, count)
        if threads <= 1 || work < minimumWork { return body(0..<count) }
        withoutActuallyEscaping(body) { body in
            let job = Unmanaged.passRetained(Job(body))
            defer { job.release() }
            let ran = starling_omp_parallel({ context, begin, end in
                Unmanaged<Job>.fromOpaque(context!).takeUnretainedValue().body(Int(begin)..<Int(end))
            }, job.toOpaque(), count, Int32(threads))
            if ran == 0 {
                let shared = job.takeUnretainedValue()
                DispatchQueue.concurrentPerform(iterations: threads) { t in
                    shared.body((count * t / threads)..<(count * (t + 1) / threads))
                }
            }
        }
    }

    /// `forEachChunk` over elements 0..<count in ranges that start at multiples of `alignment`, so that a vectorised
    /// loop run on each range puts every element in the same lane and the same main-loop-or-tail part as one call over
    /// the whole: the results are the same bits for any thread count. `work` defaults to `count`.
    static func forEachAlignedChunk(of count: Int, alignment: Int = 64, work: Int? = nil, _ body: (Range<Int>) -> Void) {
        let blocks = (count + alignment - 1) / alignment
        forEachChunk(of: blocks, work: work ?? count) { range in
            body((range.lowerBound * alignment)..<Swift.min(count, range.upperBound * alignment))
        }
    }

    /// The body, handed to other threads; the ranges it is given never overlap.
    private final class Job: @unchecked Sendable {
        let body: (Range<Int>) -> Void
        init(_ body: @escaping (Range<Int>) -> Void) { self.body = body }
    }
}
