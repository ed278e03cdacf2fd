import CMPI
import Foundation
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The MPI world this process belongs to, over Open MPI.
///
/// Started without mpirun, MPI_Init gives a singleton world of size 1: the default way to run Starling.
/// Errors come back as return codes (MPI_ERRORS_RETURN) and are thrown as `CommunicatorError`.
/// Every rank must call the collectives in the same order; all of them are called from one thread.
public final class Communicator: ShardingCollective, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    private let comm = starling_mpi_comm_world()
    private var finalized = false
    /// The reductions of 16-bit gradients, made on first use (MPI_Op_create needs MPI started).
    private var halfSums: [GradientWire: MPI_Op?] = [:]
    /// Told about every collective this rank enters and leaves (the watchdog); nil: nobody watches.
    public weak var observer: (any CollectiveObserver)?

    /// Runs a blocking collective with the observer told before and after.
    private func observed<T>(_ call: String, _ body: () throws -> T) rethrows -> T {
        guard let observer else { return try body() }
        observer.enterCollective(call)
        defer { observer.leaveCollective() }
        return try body()
    }

    /// Serialises MPI initialisation: tests create communicators from concurrent tasks.
    private static let initLock = NSLock()

    /// Initialises MPI (once per process) and reads rank and size of MPI_COMM_WORLD.
    public init() throws {
        try Self.initLock.withLock {
            var initialized: Int32 = 0
            MPI_Initialized(&initialized)
            if initialized == 0 {
                // Started without mpirun: an isolated singleton. Otherwise Open MPI forks a helper daemon inside
                // MPI_Init, and a fork while OpenBLAS threads are busy on another thread deadlocks in OpenBLAS's
                // fork handler (seen in the test process, where suites run BLAS in parallel).
                if getenv("OMPI_COMM_WORLD_SIZE") == nil && getenv("PMIX_RANK") == nil {
                    setenv("OMPI_MCA_ess_singleton_isolated", "1", 0)
                }
                var provided: Int32 = 0
                let rc = MPI_Init_thread(nil, nil, Int32(MPI_THREAD_FUNNELED), &provided)
                guard rc == MPI_SUCCESS else { throw CommunicatorError.mpi("MPI_Init_thread", rc) }
            }
        }
        MPI_Comm_set_errhandler(starling_mpi_comm_world(), starling_mpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(starling_mpi_comm_world(), &r)
        MPI_Comm_size(starling_mpi_comm_world(), &s)
        rank = Int(r)
        size = Int(s)
    }

    /// Ends MPI for this process; safe to call more than once.
    public func finalize() {
        if finalized { return }
        finalized = true
        var done: Int32 = 0
        MPI_Finalized(&done)
        if done == 0 { MPI_Finalize() }
    }

    /// Ends every rank of the job with `code` if this process is one rank of several in a running MPI job; returns
    /// otherwise. Safe from any thread (HDF5CallWatchdog's, while the training thread is stuck).
    public static func abortJobIfRunning(code: Int32) {
        var initialized: Int32 = 0, finalized: Int32 = 0
        MPI_Initialized(&initialized)
        MPI_Finalized(&finalized)
        guard initialized != 0, finalized == 0 else { return }
        var size: Int32 = 0
        MPI_Comm_size(starling_mpi_comm_world(), &size)
        if size > 1 { MPI_Abort(starling_mpi_comm_world(), code) }
    }

    /// Ends every rank of the job with `code` (used when one rank fails, so the others do not hang).
    public func abort(code: Int32) -> Never {
        MPI_Abort(comm, code)
        exit(code)
    }

    public typealias Operation = CollectiveOperation

    /// MPI counts are Int32: large buffers go in pieces of at most this many elements.
    static let maxChunk = 1 << 30
    /// The longest round of the reduce-scatter, allgather and gather over ranks' parts (`maxChunk`); `check-mpi --round`
    /// lowers it to exercise the rounds on small buffers. It must be the same on every rank.
    public var roundLimit = Communicator.maxChunk

    /// Calls `body` with the start and the Int32 length of each piece of `count` elements, in order.
    private static func forEachChunk(of count: Int, _ body: (Int, Int32) throws -> Void) rethrows {
        var start = 0
        while start < count {
            let n = min(maxChunk, count - start)
            try body(start, Int32(n))
            start += n
        }
    }

    /// In-place allreduce of `count` floats.
    public func allreduce(_ buffer: UnsafeMutablePointer<Float>, count: Int, _ op: Operation) throws {
        if size == 1 { return }
        try observed("MPI_Allreduce of \(count) floats") {
            try Self.forEachChunk(of: count) { start, n in
                try check("MPI_Allreduce", MPI_Allreduce(starling_mpi_in_place(), buffer + start, n, starling_mpi_float(), op.handle, comm))
            }
        }
    }

    /// In-place allreduce of a few doubles (losses, counts, metrics).
    public func allreduce(_ values: inout [Double], _ op: Operation) throws {
        if size == 1 || values.isEmpty { return }
        let n = Int32(values.count)
        try observed("MPI_Allreduce of \(n) doubles") { try values.withUnsafeMutableBufferPointer { buf in
            try check("MPI_Allreduce", MPI_Allreduce(starling_mpi_in_place(), buf.baseAddress, n, starling_mpi_double(), op.handle, comm))
        } }
    }

    /// A non-blocking allreduce in flight; `wait()` before reading or reusing the buffer.
    public final class Request: CollectiveRequest {
        fileprivate var handles: [MPI_Request?]
        public let count: Int
        fileprivate weak var observer: (any CollectiveObserver)?
        /// Run once when every handle has completed (a reduce-scatter moving its results into place).
        fileprivate var completion: (() -> Void)?
        fileprivate init(handles: [MPI_Request?], count: Int, observer: (any CollectiveObserver)?, completion: (() -> Void)? = nil) {
            self.handles = handles
            self.count = count
            self.observer = observer
            self.completion = completion
        }
        private func complete() {
            handles.removeAll()
            let body = completion
            completion = nil
            body?()
        }
        /// Completes the request.
        public func wait() throws {
            if handles.isEmpty { return complete() }
            observer?.enterCollective("MPI_Wait on a collective of \(count) values")
            defer { observer?.leaveCollective() }
            for i in handles.indices {
                let rc = MPI_Wait(&handles[i], starling_mpi_status_ignore())
                guard rc == MPI_SUCCESS else { throw CommunicatorError.mpi("MPI_Wait", rc) }
            }
            complete()
        }
        /// Lets MPI make progress; true once complete.
        @discardableResult
        public func test() throws -> Bool {
            var all = true
            for i in handles.indices {
                var flag: Int32 = 0
                let rc = MPI_Test(&handles[i], &flag, starling_mpi_status_ignore())
                guard rc == MPI_SUCCESS else { throw CommunicatorError.mpi("MPI_Test", rc) }
                if flag == 0 { all = false }
            }
            if all { complete() }
            return all
        }
    }

    /// Starts an in-place sum allreduce of `count` floats; the buffer must stay untouched until `wait()`.
    public func startAllreduce(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws -> any CollectiveRequest {
        var handles: [MPI_Request?] = []
        if size > 1 {
            try Self.forEachChunk(of: count) { start, n in
                var request: MPI_Request? = starling_mpi_request_null()
                try check("MPI_Iallreduce", MPI_Iallreduce(starling_mpi_in_place(), buffer + start, n, starling_mpi_float(), starling_mpi_sum(), comm, &request))
                handles.append(request)
            }
        }
        return Request(handles: handles, count: count, observer: observer)
    }

    /// The MPI sum over 16-bit floats of `wire` (MPI has none): widen, add in float32, round back. Commutative, so
    /// MPI's algorithms give every rank the same bits, as with float32.
    private func halfSum(_ wire: GradientWire) -> MPI_Op? {
        if let op = halfSums[wire] { return op }
        var op: MPI_Op? = starling_mpi_op_null()
        switch wire {
        case .bfloat16:
            MPI_Op_create({ input, accumulator, length, _ in
                guard let input, let accumulator, let length else { return }
                let a = input.assumingMemoryBound(to: UInt16.self), b = accumulator.assumingMemoryBound(to: UInt16.self)
                for i in 0..<Int(length.pointee) { b[i] = GradientWire.bfloat16Bits(GradientWire.bfloat16Value(a[i]) + GradientWire.bfloat16Value(b[i])) }
            }, 1, &op)
        default:
            MPI_Op_create({ input, accumulator, length, _ in
                guard let input, let accumulator, let length else { return }
                let a = input.assumingMemoryBound(to: UInt16.self), b = accumulator.assumingMemoryBound(to: UInt16.self)
                for i in 0..<Int(length.pointee) { b[i] = GradientWire.float16Bits(GradientWire.float16Value(a[i]) + GradientWire.float16Value(b[i])) }
            }, 1, &op)
        }
        halfSums[wire] = op
        return op
    }

    /// In-place sum allreduce of `count` 16-bit floats of `wire` (bf16 or fp16).
    public func allreduce(_ buffer: UnsafeMutablePointer<UInt16>, count: Int, wire: GradientWire) throws {
        if size == 1 { return }
        let op = halfSum(wire)
        try observed("MPI_Allreduce of \(count) \(wire.rawValue) values") {
            try Self.forEachChunk(of: count) { start, n in
                try check("MPI_Allreduce", MPI_Allreduce(starling_mpi_in_place(), buffer + start, n, starling_mpi_uint16(), op, comm))
            }
        }
    }

    /// Starts an in-place sum allreduce of `count` 16-bit floats of `wire`; the buffer must stay untouched until `wait()`.
    public func startAllreduce(_ buffer: UnsafeMutablePointer<UInt16>, count: Int, wire: GradientWire) throws -> any CollectiveRequest {
        var handles: [MPI_Request?] = []
        if size > 1 {
            let op = halfSum(wire)
            try Self.forEachChunk(of: count) { start, n in
                var request: MPI_Request? = starling_mpi_request_null()
                try check("MPI_Iallreduce", MPI_Iallreduce(starling_mpi_in_place(), buffer + start, n, starling_mpi_uint16(), op, comm, &request))
                handles.append(request)
            }
        }
        return Request(handles: handles, count: count, observer: observer)
    }

    /// Starts an in-place allreduce of a few doubles; `values` must stay alive and untouched until `wait()`.
    public func startAllreduce(_ values: UnsafeMutablePointer<Double>, count: Int, _ op: Operation) throws -> any CollectiveRequest {
        guard size > 1 else { return Request(handles: [], count: count, observer: nil) }
        var request: MPI_Request? = starling_mpi_request_null()
        try check("MPI_Iallreduce", MPI_Iallreduce(starling_mpi_in_place(), values, Int32(count), starling_mpi_double(), op.handle, comm, &request))
        return Request(handles: [request], count: count, observer: observer)
    }

    // MARK: ZeRO's collectives over a buffer split into ranks' parts
    //
    // A buffer of sum(counts) elements holds rank 0's part, then rank 1's, and so on (a part may be empty). MPI's
    // counts and displacements are Int32, so a buffer longer than `maxChunk` goes in rounds over consecutive pieces
    // of it, each piece itself split at the ranks' boundaries: the same rounds on every rank.

    /// Calls `body` for each round with the round's start in the buffer, every rank's element count in it, their
    /// displacements from the round's start, and this rank's part of the round (its place from the round's start).
    private func forEachRound(of counts: [Int], _ body: (_ start: Int, _ counts: [Int32], _ displacements: [Int32], _ mine: Range<Int>) throws -> Void) throws {
        precondition(counts.count == size && counts.allSatisfy { $0 >= 0 }, "one non-negative count a rank")
        var offsets = [0]
        for c in counts { offsets.append(offsets[offsets.count - 1] + c) }
        let total = offsets[size]
        var start = 0
        while start < total {
            let end = min(total, start + max(1, roundLimit))
            var pieces = [Int32](repeating: 0, count: size), displacements = [Int32](repeating: 0, count: size)
            var mine = 0..<0
            for q in 0..<size {
                let lower = min(max(start, offsets[q]), end), upper = max(min(end, offsets[q + 1]), lower)
                pieces[q] = Int32(upper - lower)
                displacements[q] = Int32(lower - start)
                if q == rank { mine = (lower - start)..<(upper - start) }
            }
            try body(start, pieces, displacements, mine)
            start = end
        }
    }

    /// Sum reduce-scatter in place: on return this rank's part of `buffer` (laid out by `counts`, one a rank, in rank
    /// order) holds the sum of that part over every rank; the other ranks' parts are left undefined (MPI's in-place
    /// MPI_Reduce_scatter leaves its result at the start of the buffer, and it is moved to the rank's place after).
    public func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        if size == 1 { return }
        try observed("MPI_Reduce_scatter of \(counts.reduce(0, +)) floats") {
            try forEachRound(of: counts) { start, pieces, _, mine in
                try check("MPI_Reduce_scatter", MPI_Reduce_scatter(starling_mpi_in_place(), buffer + start, pieces, starling_mpi_float(), starling_mpi_sum(), comm))
                Self.moveIntoPlace(buffer + start, mine)
            }
        }
    }

    /// Starts `reduceScatter`; the buffer must stay untouched until `wait()`, after which this rank's part is in place.
    public func startReduceScatter(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> any CollectiveRequest {
        try startReduceScatter(buffer, counts: counts, type: starling_mpi_float(), op: starling_mpi_sum())
    }

    /// `reduceScatter` of 16-bit floats of `wire` (bf16 or fp16), summed as `allreduce(_:count:wire:)` sums them.
    public func reduceScatter(_ buffer: UnsafeMutablePointer<UInt16>, counts: [Int], wire: GradientWire) throws {
        if size == 1 { return }
        let op = halfSum(wire)
        try observed("MPI_Reduce_scatter of \(counts.reduce(0, +)) \(wire.rawValue) values") {
            try forEachRound(of: counts) { start, pieces, _, mine in
                try check("MPI_Reduce_scatter", MPI_Reduce_scatter(starling_mpi_in_place(), buffer + start, pieces, starling_mpi_uint16(), op, comm))
                Self.moveIntoPlace(buffer + start, mine)
            }
        }
    }

    /// Starts the 16-bit `reduceScatter`; the buffer must stay untouched until `wait()`.
    public func startReduceScatter(_ buffer: UnsafeMutablePointer<UInt16>, counts: [Int], wire: GradientWire) throws -> any CollectiveRequest {
        try startReduceScatter(buffer, counts: counts, type: starling_mpi_uint16(), op: size > 1 ? halfSum(wire) : starling_mpi_sum())
    }

    private func startReduceScatter<T>(_ buffer: UnsafeMutablePointer<T>, counts: [Int], type: MPI_Datatype?, op: MPI_Op?) throws -> Request {
        let total = counts.reduce(0, +)
        guard size > 1 else { return Request(handles: [], count: total, observer: nil) }
        var handles: [MPI_Request?] = []
        var moves: [(start: Int, mine: Range<Int>)] = []
        // The counts stay allocated until the request completes: a non-blocking collective may read them until then.
        var countArrays: [UnsafeMutablePointer<Int32>] = []
        do {
            try forEachRound(of: counts) { start, pieces, _, mine in
                let kept = UnsafeMutablePointer<Int32>.allocate(capacity: size)
                kept.initialize(from: pieces, count: size)
                countArrays.append(kept)
                var request: MPI_Request? = starling_mpi_request_null()
                try check("MPI_Ireduce_scatter", MPI_Ireduce_scatter(starling_mpi_in_place(), buffer + start, kept, type, op, comm, &request))
                handles.append(request)
                moves.append((start, mine))
            }
        } catch {
            for kept in countArrays { kept.deallocate() }
            throw error
        }
        return Request(handles: handles, count: total, observer: observer) {
            for move in moves { Self.moveIntoPlace(buffer + move.start, move.mine) }
            for kept in countArrays { kept.deallocate() }
        }
    }

    /// Moves a reduce-scatter's result from the start of `round` to this rank's place in it (the two may overlap).
    private static func moveIntoPlace<T>(_ round: UnsafeMutablePointer<T>, _ mine: Range<Int>) {
        guard mine.lowerBound > 0, !mine.isEmpty else { return }
        memmove(round + mine.lowerBound, round, mine.count * MemoryLayout<T>.stride)
    }

    /// Allgather in place: every rank's part of `buffer` (laid out by `counts`, in rank order) goes to every rank
    /// (MPI_Allgatherv), so each ends with the whole buffer.
    public func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        if size == 1 { return }
        try observed("MPI_Allgatherv of \(counts.reduce(0, +)) floats") {
            try forEachRound(of: counts) { start, pieces, displacements, _ in
                try check("MPI_Allgatherv", MPI_Allgatherv(starling_mpi_in_place(), 0, starling_mpi_float(), buffer + start, pieces, displacements,
                                                           starling_mpi_float(), comm))
            }
        }
    }

    /// Gathers every rank's part (laid out by `counts`, in rank order) into `root`'s `buffer` of sum(counts) floats;
    /// `part` is this rank's counts[rank] floats, `buffer` is read only on `root` (nil elsewhere).
    public func gather(_ part: UnsafePointer<Float>, counts: [Int], into buffer: UnsafeMutablePointer<Float>?, root: Int = 0) throws {
        precondition(rank != root || buffer != nil, "the root needs a buffer to gather into")
        if size == 1 {
            if let buffer { buffer.update(from: part, count: counts[0]) }
            return
        }
        let offset = counts[..<rank].reduce(0, +)
        try observed("MPI_Gatherv of \(counts.reduce(0, +)) floats") {
            try forEachRound(of: counts) { start, pieces, displacements, mine in
                let source = part + (start + mine.lowerBound - offset)
                let target = rank == root ? buffer.map { $0 + start } : nil
                try check("MPI_Gatherv", MPI_Gatherv(mine.isEmpty ? part : source, pieces[rank], starling_mpi_float(), target, pieces, displacements,
                                                     starling_mpi_float(), Int32(root), comm))
            }
        }
    }

    /// Copies `count` floats from `root` to every rank.
    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
        if size == 1 { return }
        try observed("MPI_Bcast of \(count) floats") {
            try Self.forEachChunk(of: count) { start, n in
                try check("MPI_Bcast", MPI_Bcast(buffer + start, n, starling_mpi_float(), Int32(root), comm))
            }
        }
    }

    /// Root's string on every rank (configurations, checkpoint paths).
    public func broadcast(_ text: String, root: Int) throws -> String {
        if size == 1 { return text }
        return try observed("MPI_Bcast of a text") { try broadcastText(text, root: root) }
    }

    private func broadcastText(_ text: String, root: Int) throws -> String {
        var bytes = Array(text.utf8)
        var length = [Int64(bytes.count)]
        try length.withUnsafeMutableBufferPointer { try check("MPI_Bcast", MPI_Bcast($0.baseAddress, 1, starling_mpi_int64(), Int32(root), comm)) }
        if rank != root { bytes = [UInt8](repeating: 0, count: Int(length[0])) }
        try bytes.withUnsafeMutableBufferPointer { try check("MPI_Bcast", MPI_Bcast($0.baseAddress, Int32($0.count), starling_mpi_byte(), Int32(root), comm)) }
        return String(decoding: bytes, as: UTF8.self)
    }

    public func barrier() throws {
        if size == 1 { return }
        try observed("MPI_Barrier") { try check("MPI_Barrier", MPI_Barrier(comm)) }
    }

    /// Every rank's value, in rank order.
    public func allgather(_ value: Int64) throws -> [Int64] {
        if size == 1 { return [value] }
        var mine = [value]
        var all = [Int64](repeating: 0, count: size)
        try observed("MPI_Allgather") { try mine.withUnsafeMutableBufferPointer { m in
            try all.withUnsafeMutableBufferPointer { a in
                try check("MPI_Allgather", MPI_Allgather(m.baseAddress, 1, starling_mpi_int64(), a.baseAddress, 1, starling_mpi_int64(), comm))
            }
        } }
        return all
    }

    /// Every rank's `values` (the same count on each), concatenated in rank order.
    public func allgather(_ values: [Double]) throws -> [Double] {
        if size == 1 { return values }
        var all = [Double](repeating: 0, count: values.count * size)
        try observed("MPI_Allgather") { try values.withUnsafeBufferPointer { m in
            try all.withUnsafeMutableBufferPointer { a in
                try check("MPI_Allgather", MPI_Allgather(m.baseAddress, Int32(values.count), starling_mpi_double(), a.baseAddress, Int32(values.count), starling_mpi_double(), comm))
            }
        } }
        return all
    }

    /// Every rank's `values` (the same count on each), concatenated in rank order.
    public func allgather(_ values: [Int64]) throws -> [Int64] {
        if size == 1 { return values }
        var all = [Int64](repeating: 0, count: values.count * size)
        try observed("MPI_Allgather") { try values.withUnsafeBufferPointer { m in
            try all.withUnsafeMutableBufferPointer { a in
                try check("MPI_Allgather", MPI_Allgather(m.baseAddress, Int32(values.count), starling_mpi_int64(), a.baseAddress, Int32(values.count), starling_mpi_int64(), comm))
            }
        } }
        return all
    }

    /// Every rank's text, in rank order: the lengths first, then the bytes padded to the longest, so both
    /// collectives have the same size on every rank whatever the texts are.
    public func allgatherText(_ text: String) throws -> [String] {
        if size == 1 { return [text] }
        let bytes = Array(text.utf8)
        let lengths = try allgather(Int64(bytes.count))
        let width = Int(lengths.max() ?? 0)
        guard width > 0 else { return lengths.map { _ in "" } }
        let padded = bytes + [UInt8](repeating: 0, count: width - bytes.count)
        var all = [UInt8](repeating: 0, count: width * size)
        try observed("MPI_Allgather of texts") { try padded.withUnsafeBufferPointer { m in
            try all.withUnsafeMutableBufferPointer { a in
                try check("MPI_Allgather", MPI_Allgather(m.baseAddress, Int32(width), starling_mpi_byte(), a.baseAddress, Int32(width), starling_mpi_byte(), comm))
            }
        } }
        return (0..<size).map { String(decoding: all[($0 * width)..<($0 * width + Int(lengths[$0]))], as: UTF8.self) }
    }

    private func check(_ call: String, _ rc: Int32) throws {
        guard rc == MPI_SUCCESS else { throw CommunicatorError.mpi(call, rc) }
    }
}

extension CollectiveOperation {
    var handle: MPI_Op {
        switch self {
        case .sum: return starling_mpi_sum()
        case .max: return starling_mpi_max()
        case .min: return starling_mpi_min()
        }
    }
}

public enum CommunicatorError: Error, CustomStringConvertible {
    case mpi(String, Int32)
    public var description: String {
        switch self {
        case .mpi(let call, let code):
            var text = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
            var length: Int32 = 0
            MPI_Error_string(code, &text, &length)
            let message = String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return "MPI error in \(call): \(message) (code \(code))"
        }
    }
}
