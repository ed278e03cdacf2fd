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

    /// The processors in the calling thread's affinity mask, in increasing order; empty where the system does not say.
    public static var allowed: [Int] {
        var cpus = [Int32](repeating: 0, count: 4096)
        let count = Int(starling_affinity_processors(&cpus, Int32(cpus.count)))
        return cpus.prefix(min(count, cpus.count)).map(Int.init)
    }

    /// Restricts the calling thread to `cpus`; false where the system refused (the thread keeps its mask).
    @discardableResult
    public static func bindCurrentThread(to cpus: [Int]) -> Bool {
        guard !cpus.isEmpty else { return false }
        let ids = cpus.map(Int32.init)
        return starling_bind_thread(ids, Int32(ids.count)) == 0
    }

    /// Names the calling thread where `top -H`, perf and /proc/PID/task/TID/comm show it (Linux keeps 15 bytes):
    /// Foundation's `Thread.name` does not reach the OS there, so every thread showed the binary's name.
    public static func nameCurrentThread(_ name: String) { starling_name_current_thread(name) }

    /// The processor the calling thread runs on at this moment (nil where unknown).
    public static var current: Int? {
        let cpu = Int(starling_current_processor())
        return cpu >= 0 ? cpu : nil
    }

    private static let originLock = NSLock()
    nonisolated(unsafe) private static var origin: [Int]?

    /// Called before threads are bound to single processors (`InProcessGroup`'s replicas) with the mask they had:
    /// a thread such a thread starts (a prefetch thread) inherits its one processor, and `leaveBinding()` gives it
    /// this mask back.
    public static func recordUnboundMask(_ cpus: [Int]) {
        originLock.withLock { if origin == nil { origin = cpus } }
    }

    /// Widens the calling thread to the mask threads had before replicas were bound (`recordUnboundMask`), where it
    /// is narrower: a helper thread (a prefetcher at nice 19) made on a bound replica's thread then runs on whichever
    /// core idles, not only its replica's. Nothing where no binding was made or the thread already has that mask.
    public static func leaveBinding() {
        guard let wide = originLock.withLock({ origin }) else { return }
        let mine = allowed
        if !mine.isEmpty && mine.count < wide.count { bindCurrentThread(to: wide) }
    }
}
