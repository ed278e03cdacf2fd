import CMPI

/// The MPI world this process belongs to. Without mpirun, MPI_Init gives a singleton world of size 1,
/// which is the default way to run Starling.
public final class Communicator: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    private var finalized = false

    /// Initialises MPI (once per process) and reads rank and size of MPI_COMM_WORLD.
    public init() throws {
        var initialized: Int32 = 0
        MPI_Initialized(&initialized)
        if initialized == 0 {
            var provided: Int32 = 0
            let rc = MPI_Init_thread(nil, nil, Int32(MPI_THREAD_FUNNELED), &provided)
            guard rc == MPI_SUCCESS else { throw CommunicatorError.mpi("MPI_Init_thread", Int(rc)) }
        }
        MPI_Comm_set_errhandler(starling_mpi_comm_world(), starling_mpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(starling_mpi_comm_world(), &r)
        MPI_Comm_size(starling_mpi_comm_world(), &s)
        rank = Int(r)
        size = Int(s)
    }

    public var isRoot: Bool { rank == 0 }

    /// Ends MPI for this process; safe to call more than once.
    public func finalize() {
        if finalized { return }
        finalized = true
        var done: Int32 = 0
        MPI_Finalized(&done)
        if done == 0 { MPI_Finalize() }
    }
}

public enum CommunicatorError: Error, CustomStringConvertible {
    case mpi(String, Int)
    public var description: String {
        switch self {
        case .mpi(let call, let code): return "MPI error in \(call): code \(code)"
        }
    }
}
