import CMPI
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Warns when a collective has waited too long, and names the ranks that have not arrived.
///
/// A rank that dies ends the job (mpirun aborts it); a rank that is stuck - a slow file system, a deadlock, a
/// different code path - leaves the others waiting in a collective forever. Each step every rank sends rank 0 a
/// tiny heartbeat with its step number; the step's first collective is then waited for by polling, and past
/// `timeout` seconds rank 0 names the ranks whose heartbeat for this step has not come, and every waiting rank says
/// where it waits. Everything runs on the training thread, as MPI_THREAD_FUNNELED requires.
public final class Watchdog {
    public let communicator: Communicator
    public let timeout: Double
    private let log: (String) -> Void
    /// Rank 0 only: the last step each rank reported.
    private var lastSeen: [Int]
    private var pendingSends: [MPI_Request?] = []
    private var sendBuffers: [UnsafeMutablePointer<Int64>] = []
    private static let tag: Int32 = 7407

    public init(communicator: Communicator, timeout: Double = 60, log: @escaping (String) -> Void) {
        self.communicator = communicator
        self.timeout = timeout
        self.log = log
        lastSeen = [Int](repeating: -1, count: communicator.size)
    }

    deinit {
        for i in pendingSends.indices { MPI_Wait(&pendingSends[i], starling_mpi_status_ignore()) }
        for b in sendBuffers { b.deallocate() }
    }

    /// Reports this rank's arrival at `step` to rank 0 (non-blocking).
    public func heartbeat(step: Int) throws {
        guard communicator.size > 1 else { return }
        if communicator.isRoot { lastSeen[0] = step; return }
        // Retire completed sends so their buffers can be reused.
        var k = 0
        while k < pendingSends.count {
            var done: Int32 = 0
            MPI_Test(&pendingSends[k], &done, starling_mpi_status_ignore())
            if done != 0 { pendingSends.remove(at: k); sendBuffers.remove(at: k).deallocate() } else { k += 1 }
        }
        let buffer = UnsafeMutablePointer<Int64>.allocate(capacity: 1)
        buffer.pointee = Int64(step)
        var request: MPI_Request? = starling_mpi_request_null()
        let rc = MPI_Isend(buffer, 1, starling_mpi_int64(), 0, Self.tag, starling_mpi_comm_world(), &request)
        guard rc == MPI_SUCCESS else { buffer.deallocate(); throw CommunicatorError.mpi("MPI_Isend", rc) }
        pendingSends.append(request)
        sendBuffers.append(buffer)
    }

    /// Rank 0: takes in every heartbeat that has arrived.
    private func drainHeartbeats() {
        guard communicator.isRoot else { return }
        while true {
            var flag: Int32 = 0
            var status = MPI_Status()
            MPI_Iprobe(-1 /* MPI_ANY_SOURCE */, Self.tag, starling_mpi_comm_world(), &flag, &status)
            if flag == 0 { return }
            var value: Int64 = 0
            MPI_Recv(&value, 1, starling_mpi_int64(), status.MPI_SOURCE, Self.tag, starling_mpi_comm_world(), starling_mpi_status_ignore())
            let source = Int(status.MPI_SOURCE)
            if source >= 0 && source < lastSeen.count { lastSeen[source] = max(lastSeen[source], Int(value)) }
        }
    }

    /// Waits for `request` (a collective of `step`), warning every `timeout` seconds while it is not complete.
    public func wait(_ request: Communicator.Request, what: String, step: Int) throws {
        let start = monotonicClock()
        var nextWarning = timeout
        var pause: useconds_t = 0
        while try !request.test() {
            drainHeartbeats()
            let waited = monotonicClock() - start
            if waited >= nextWarning {
                nextWarning += timeout
                var line = "watchdog: rank \(communicator.rank) has waited \(Int(waited)) s in \(what) at step \(step)"
                if communicator.isRoot {
                    let missing = lastSeen.indices.filter { lastSeen[$0] < step }
                    line += missing.isEmpty ? "; every rank has reached this step"
                        : "; ranks not yet at this step: \(missing.map { "\($0) (last seen at step \(lastSeen[$0]))" }.joined(separator: ", "))"
                }
                log(line)
            }
            // Spin briefly (collectives usually finish in microseconds), then back off to spare the core.
            if waited > 0.001 { pause = min(max(pause * 2, 50), 20_000); usleep(pause) }
        }
        drainHeartbeats()
    }

    private func monotonicClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}
