import CMPI
import Foundation
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Told by the communicator when this rank enters and leaves a collective (called on the training thread).
public protocol CollectiveObserver: AnyObject {
    func enterCollective(_ call: String)
    func leaveCollective()
}

/// Ends a job that hangs: warns when a collective has waited too long, naming the ranks that have not arrived, and
/// aborts the whole job after a second timeout with the last good checkpoint named.
///
/// A rank that dies ends the job (mpirun aborts it); a rank that is stopped (SIGSTOP, a node that stops answering, a
/// stuck file system) leaves the others in a collective forever, and a blocking MPI call cannot be interrupted from
/// the thread that made it. So the watch runs on a thread of its own, fed by the communicator, which reports every
/// collective it enters and leaves (`CollectiveObserver`): whichever collective blocks - the loss, a gradient bucket,
/// batch-norm statistics, the start-up agreement, the validation loss - the same clock runs.
///
/// Naming the missing ranks needs messages, and MPI_THREAD_FUNNELED allows MPI calls on the training thread only:
/// every other rank sends rank 0 a tiny non-blocking heartbeat (its collective count and step) as it enters each
/// collective, and rank 0 takes them in as it enters a collective and while it polls one (`wait`). The watch thread
/// only reads that table. The one MPI call it makes is MPI_Abort, which ends the process and the job (Open MPI
/// routes it through its runtime's own thread); the tests check that it does while the training thread is blocked.
public final class Watchdog: CollectiveObserver, @unchecked Sendable {
    public let communicator: any Collective
    /// Seconds in one collective before the warning.
    public let timeout: Double
    /// Seconds after the warning before the job is aborted.
    public let abortTimeout: Double
    /// The exit code of an aborted job (below 128: a refusal, not a signal).
    public static let abortCode: Int32 = 3
    private let log: @Sendable (String) -> Void

    private let lock = NSLock()
    // Guarded by `lock`: written on the training thread, read on the watch thread.
    private var sequence = 0
    private var inside: (call: String, sequence: Int, since: Double)?
    private var phaseName = "training"
    private var stepNumber = 0
    private var checkpoint: String?
    /// Rank 0 only: the last collective count and step each rank reported.
    private var lastSeen: [(sequence: Int, step: Int)]
    private var stopping = false

    private var pendingSends: [MPI_Request?] = []
    private var sendBuffers: [UnsafeMutablePointer<Int64>] = []
    private static let tag: Int32 = 7407
    private var thread: Thread?

    public init(communicator: any Collective, timeout: Double = 60, abortTimeout: Double = 300,
                log: @escaping @Sendable (String) -> Void) {
        precondition(timeout > 0 && abortTimeout > 0, "watchdog timeouts must be positive")
        self.communicator = communicator
        self.timeout = timeout
        self.abortTimeout = abortTimeout
        self.log = log
        lastSeen = Array(repeating: (-1, -1), count: communicator.size)
    }

    deinit {
        for i in pendingSends.indices { MPI_Wait(&pendingSends[i], starling_mpi_status_ignore()) }
        for b in sendBuffers { b.deallocate() }
    }

    /// Attaches to the communicator and starts the watch thread (nothing to watch on one rank). Only MPI ranks are
    /// watched: replicas on threads of one process (`InProcessCollective`) end together when one of them fails.
    public func start() {
        guard communicator is Communicator, communicator.size > 1, thread == nil else { return }
        communicator.observer = self
        let poll = min(0.25, timeout / 4)
        let watch = Thread { [self] in
            Processors.nameCurrentThread("watchdog")
            while !lock.withLock({ stopping }) {
                check()
                usleep(useconds_t(poll * 1_000_000))
            }
        }
        thread = watch
        watch.start()
    }

    /// Detaches and ends the watch thread (it holds the watchdog until then).
    public func stop() {
        if communicator.observer === self { communicator.observer = nil }
        lock.withLock { stopping = true }
    }

    /// What the training loop is doing and at which global step, for the messages.
    public func at(_ phase: String, step: Int) {
        lock.withLock { phaseName = phase; stepNumber = step }
    }

    /// The checkpoint a user would resume from if the job ended now.
    public var lastGoodCheckpoint: String? {
        get { lock.withLock { checkpoint } }
        set { lock.withLock { checkpoint = newValue } }
    }

    public func enterCollective(_ call: String) {
        guard thread != nil else { return }
        let (count, step) = lock.withLock { () -> (Int, Int) in
            sequence += 1
            inside = (call, sequence, monotonicClock())
            return (sequence, stepNumber)
        }
        if communicator.isRoot {
            lock.withLock { lastSeen[0] = (count, step) }
            drainHeartbeats()
        } else {
            sendHeartbeat(sequence: count, step: step)
        }
    }

    public func leaveCollective() {
        lock.withLock { inside = nil }
    }

    /// Non-root: tells rank 0 which collective this rank has reached (non-blocking; failures only cost the naming).
    private func sendHeartbeat(sequence: Int, step: Int) {
        var k = 0
        while k < pendingSends.count {
            var done: Int32 = 0
            MPI_Test(&pendingSends[k], &done, starling_mpi_status_ignore())
            if done != 0 { pendingSends.remove(at: k); sendBuffers.remove(at: k).deallocate() } else { k += 1 }
        }
        let buffer = UnsafeMutablePointer<Int64>.allocate(capacity: 2)
        buffer[0] = Int64(sequence)
        buffer[1] = Int64(step)
        var request: MPI_Request? = starling_mpi_request_null()
        guard MPI_Isend(buffer, 2, starling_mpi_int64(), 0, Self.tag, starling_mpi_comm_world(), &request) == MPI_SUCCESS else {
            buffer.deallocate()
            return
        }
        pendingSends.append(request)
        sendBuffers.append(buffer)
    }

    /// Rank 0: takes in every heartbeat that has arrived.
    private func drainHeartbeats() {
        guard communicator.isRoot, thread != nil else { return }
        while true {
            var flag: Int32 = 0
            var status = MPI_Status()
            MPI_Iprobe(-1 /* MPI_ANY_SOURCE */, Self.tag, starling_mpi_comm_world(), &flag, &status)
            if flag == 0 { return }
            var values: [Int64] = [0, 0]
            MPI_Recv(&values, 2, starling_mpi_int64(), status.MPI_SOURCE, Self.tag, starling_mpi_comm_world(), starling_mpi_status_ignore())
            let source = Int(status.MPI_SOURCE)
            lock.withLock {
                if source >= 0 && source < lastSeen.count && Int(values[0]) > lastSeen[source].sequence {
                    lastSeen[source] = (Int(values[0]), Int(values[1]))
                }
            }
        }
    }

    /// Waits for `request` by polling, so that rank 0 keeps taking in heartbeats (its names stay current).
    public func wait(_ request: any CollectiveRequest, what: String, step: Int) throws {
        at(what, step: step)
        enterCollective("MPI_Iallreduce")
        defer { leaveCollective() }
        let start = monotonicClock()
        var pause: useconds_t = 0
        while try !request.test() {
            drainHeartbeats()
            // Spin briefly (collectives usually finish in microseconds), then back off to spare the core.
            if monotonicClock() - start > 0.001 { pause = min(max(pause * 2, 50), 20_000); usleep(pause) }
        }
        drainHeartbeats()
    }

    /// The watch thread's look: warn once past `timeout`, abort past `timeout + abortTimeout`.
    private var warnedFor = -1
    private func check() {
        let snapshot = lock.withLock { () -> (call: String, sequence: Int, waited: Double, phase: String, step: Int, checkpoint: String?, seen: [(sequence: Int, step: Int)])? in
            guard let inside else { return nil }
            return (inside.call, inside.sequence, monotonicClock() - inside.since, phaseName, stepNumber, checkpoint, lastSeen)
        }
        guard let s = snapshot else { return }
        var line = "watchdog: rank \(communicator.rank) has waited \(Int(s.waited)) s in \(s.phase) (\(s.call)) at step \(s.step)"
        if communicator.isRoot {
            let missing = s.seen.indices.filter { s.seen[$0].sequence < s.sequence }
            line += missing.isEmpty ? "; every rank has reached this collective"
                : "; ranks not yet at this collective: \(missing.map { "\($0) (last seen at step \(s.seen[$0].step))" }.joined(separator: ", "))"
        }
        if s.waited >= timeout + abortTimeout {
            let resume = s.checkpoint.map { "the last good checkpoint is \($0)" } ?? "no checkpoint has been written yet"
            log(line + "; aborting the job after \(Int(timeout + abortTimeout)) s (--watchdog-seconds + --watchdog-abort-seconds); \(resume)")
            MPI_Abort(starling_mpi_comm_world(), Self.abortCode)
            _exit(Self.abortCode)
        }
        if s.waited >= timeout && warnedFor != s.sequence {
            warnedFor = s.sequence
            log(line + "; the job ends in \(Int((timeout + abortTimeout - s.waited).rounded())) s unless it arrives")
        }
    }

    private func monotonicClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}
