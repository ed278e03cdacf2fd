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

    /// Calls `body` on disjoint ranges that cover 0..<count, on up to `threads` (by default `BLAS.threadCount`) threads
    /// when `work` (elements the whole call touches) is large enough. `body` must only write what its range owns.
    static func forEachChunk(of count: Int, work: Int, threads: Int? = nil, _ body: (Range<Int>) -> Void) {
        let threads = Swift.min(threads ?? BLAS.threadCount, count)
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

    /// Below this many elements touched, an element-wise loop runs on the calling thread (`forEachAlignedChunk`).
    /// Higher than `minimumWork`: with 2 threads on a busy machine, fc-ae's 200,000-element loops split over OpenMP
    /// trained 4-6x slower than on one thread (each loop waits for a worker the scheduler has not run yet, and the
    /// OpenMP workers spin beside OpenBLAS's), so only loops long enough to pay for that split (a convolutional
    /// family's activation maps) are shared.
    static let minimumElementwiseWork = 1 << 20

    /// `forEachChunk` over elements 0..<count in ranges that start at multiples of `alignment`, so that a vectorised
    /// loop run on each range puts every element in the same lane and the same main-loop-or-tail part as one call over
    /// the whole: the results are the same bits for any thread count. `work` defaults to `count`.
    static func forEachAlignedChunk(of count: Int, alignment: Int = 64, work: Int? = nil, _ body: (Range<Int>) -> Void) {
        let blocks = (count + alignment - 1) / alignment
        if (work ?? count) < minimumElementwiseWork { return body(0..<count) }
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

/// The first index of a non-finite value (NaN or infinity) in p[0..<count], or nil: the trainer's check of every
/// gradient after each step. Pieces are tested over the process's threads with a loop that vectorises (an exponent of all ones
/// is infinity or NaN), and only a piece that holds one is searched element by element, so the answer is
/// the same index a plain scan finds.
public func firstNonFiniteIndex(_ p: UnsafePointer<Float>, count: Int, kernels: KernelDispatch.Level = KernelDispatch.current) -> Int? {
    let piece = exponentTestPiece
    let pieces = (count + piece - 1) / piece
    guard pieces > 0 else { return nil }
    let flagged = UnsafeMutablePointer<Bool>.allocate(capacity: pieces)
    defer { flagged.deallocate() }
    flagPieces(p, count: count, margin: 1, into: flagged, kernels: kernels)
    for k in 0..<pieces where flagged[k] {
        for i in (k * piece)..<Swift.min(count, (k + 1) * piece) where !p[i].isFinite { return i }
    }
    return nil
}

/// Whether every value in p[0..<count] is finite with a magnitude below 2^`power` (1...128; 128: finite only), by
/// the same test on the exponent bits as `firstNonFiniteIndex`. `summableWithoutOverflow` says why a bound matters.
public func allFinite(_ p: UnsafePointer<Float>, count: Int, below power: Int, kernels: KernelDispatch.Level = KernelDispatch.current) -> Bool {
    precondition((1...128).contains(power), "a power of two of float32's range")
    let pieces = (count + exponentTestPiece - 1) / exponentTestPiece
    guard pieces > 0 else { return true }
    let flagged = UnsafeMutablePointer<Bool>.allocate(capacity: pieces)
    defer { flagged.deallocate() }
    // |x| >= 2^power is a biased exponent of at least power + 127, which the margin carries into bit 31.
    flagPieces(p, count: count, margin: UInt32(129 - power), into: flagged, kernels: kernels)
    for k in 0..<pieces where flagged[k] { return false }
    return true
}

/// The power of two below which `terms` finite float32 values of magnitude below it add up, in any order and with
/// rounding after each addition, to a finite sum: 2^(127 - ceil(log2 terms)). Each partial sum of j terms is at most
/// j x 2^(127 - c) <= 2^127 in magnitude, a float rounding cannot pass (it is representable and rounding is monotone).
public func summableWithoutOverflow(terms: Int) -> Int {
    precondition(terms >= 1, "at least one term")
    var c = 0
    while (1 << c) < terms { c += 1 }
    return 127 - c
}

private let exponentTestPiece = 1 << 14

/// flagged[k] for each piece of `exponentTestPiece` values: whether one of them has a biased exponent e with
/// e + margin >= 256 (margin 1: infinity or NaN).
private func flagPieces(_ p: UnsafePointer<Float>, count: Int, margin: UInt32, into flagged: UnsafeMutablePointer<Bool>,
                        kernels: KernelDispatch.Level) {
    let piece = exponentTestPiece
    let pieces = (count + piece - 1) / piece
    let threaded = count >= Parallel.minimumElementwiseWork
    let added = margin << 23
    Parallel.forEachChunk(of: pieces, work: threaded ? count : 0) { range in
        for k in range {
            let start = k * piece, end = Swift.min(count, start + piece)
            // On the bits, not by arithmetic (`ExponentKernels.carry`): the sum of x * 0 it replaced was a chain of
            // 3-4-cycle adds, slowed further by subnormal gradients (3 % of vae's one-thread step; BENCHMARKS.md, "One
            // process on 2 cores, sixth pass"); through the kernel level's module, since StarlingCore's own build is
            // baseline x86-64 (BENCHMARKS.md, "... seventh pass").
            flagged[k] = KernelDispatch.exponentCarry(p + start, count: end - start, added: added, kernels: kernels) & 0x8000_0000 != 0
        }
    }
}
