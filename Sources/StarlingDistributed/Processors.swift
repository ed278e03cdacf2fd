import Foundation
import CCPU

/// The processors this process may run on, for rules that must not put more busy threads than that on them (replicas
/// polling at a rendezvous, the prefetch thread's priority): the calling thread's affinity mask where the system gives
/// it (`taskset -c 0`, `mpirun --bind-to core`, a container's cpuset), never more than the machine's online processors.
/// `ProcessInfo.activeProcessorCount` alone counts the machine's, whatever the mask: under `taskset -c 0` on 2 cores it
/// says 2. OpenBLAS sizes its thread pool from the same mask.
public enum Processors {
    public static var usable: Int {
        let online = ProcessInfo.processInfo.activeProcessorCount
        let bound = Int(starling_affinity_processor_count())
        return bound > 0 ? min(bound, online) : online
    }
}
