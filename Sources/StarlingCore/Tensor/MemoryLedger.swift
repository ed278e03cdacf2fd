#if canImport(Glibc)
import Glibc
#endif

/// Where a process's memory is, from the allocators' own counts (issue 18 item 5: peak memory against PyTorch's):
/// Starling's block allocator (`LargeBlocks`: tensors of 64 KB and more, live, peak and mapped), oneDNN's scratch
/// arenas (reorder copies and scratchpads, mapped and the most one call asked for) and the kernel's resident counts;
/// the resident rest is glibc's heap (small tensors, Swift objects, oneDNN's primitives and JIT code), the libraries'
/// code and data and the runtime's.
public enum MemoryLedger {
    public struct Snapshot: Sendable {
        /// Blocks of 1 MB and more: live, peak since `resetPeaks`, mapped.
        public var largeLive = 0, largePeak = 0, largeMapped = 0
        /// Blocks of 64 KB up to 1 MB.
        public var mediumLive = 0, mediumPeak = 0, mediumMapped = 0
        /// Mapped by Starling's allocators in all (its blocks and the scratch arenas).
        public var mapped: Int { largeMapped + mediumMapped + scratchMapped }
        /// oneDNN's scratch arenas: mapped in all, the largest call since `resetPeaks`.
        public var scratchMapped = 0, scratchPeakCall = 0
        /// Training's scratch blocks too large to keep in an arena since `resetPeaks`: how many were lent by free
        /// extents of the large blocks and how many were taken beyond those (at their top), with their bytes.
        public var scratchLent = 0, scratchLentBytes = 0, scratchTaken = 0, scratchTakenBytes = 0
        /// /proc/self/status: VmRSS and VmHWM (resident now, its peak).
        public var resident = 0, residentPeak = 0
        /// The large blocks' resident pages by their own count, how many times and bytes free pages were given back, and
        /// the bytes of blocks placed on pages not resident (given back, or new), in all (`LargeBlocks.releaseUsage`).
        public var largeResident = 0, largeReleases = 0, largeReleasedBytes = 0, largeFaultedBytes = 0
        /// Minor page faults of the process so far (getrusage): pages faulted in, by any allocator or library.
        public var minorFaults = 0
    }

    /// Training's scratch blocks from this size on are not kept in oneDNN's arenas (`DNNL.Arena.allocate`).
    public static var scratchUnkeptBytes: Int { DNNL.Arena.unkeptBytes }

    /// Whether the large blocks give free pages back past the most bytes ever live (`LargeBlocks`), and the slack.
    public static var largeGivesBackFreePages: Bool { LargeBlocks.givesBackFreePages }
    /// The error a bad STARLING_GIVE_BACK_FREE_PAGES gives (anything but 0, 1 or empty), or nil.
    public static var givesBackSettingError: SettingValueError? {
        if case .failure(let error) = LargeBlocks.givesBackSetting { return error }
        return nil
    }
    public static var largeResidentSlack: Int { LargeBlocks.shared.residentSlack }

    public static func snapshot() -> Snapshot {
        var s = Snapshot()
        (s.largeLive, s.largePeak, s.largeMapped) = LargeBlocks.shared.usage
        (s.mediumLive, s.mediumPeak, s.mediumMapped) = LargeBlocks.medium.usage
        (s.scratchMapped, s.scratchPeakCall) = DNNL.Arena.usage
        (s.scratchLent, s.scratchLentBytes, s.scratchTaken, s.scratchTakenBytes) = DNNL.Arena.unkeptUsage
        (s.resident, s.residentPeak) = residentBytes()
        (s.largeResident, s.largeReleases, s.largeReleasedBytes, s.largeFaultedBytes) = LargeBlocks.shared.releaseUsage
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        s.minorFaults = Int(usage.ru_minflt)
        return s
    }

    /// Starts a new peak for the live blocks and the scratch calls.
    public static func resetPeaks() {
        LargeBlocks.shared.resetPeak()
        LargeBlocks.medium.resetPeak()
        DNNL.Arena.resetPeak()
    }

    /// Starts a new peak for the live blocks only (the scratch calls' peak kept): for a peak per phase or per node.
    public static func resetBlockPeaks() {
        LargeBlocks.shared.resetPeak()
        LargeBlocks.medium.resetPeak()
    }

    /// VmRSS and VmHWM of this process in bytes (0 where /proc is not there).
    public static func residentBytes() -> (now: Int, peak: Int) {
        guard let file = fopen("/proc/self/status", "r") else { return (0, 0) }
        defer { fclose(file) }
        var now = 0, peak = 0
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(cString: line)
            let value = { Int(text.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.map(String.init) ?? "") ?? 0 }
            if text.hasPrefix("VmRSS:") { now = value() * 1024 }
            if text.hasPrefix("VmHWM:") { peak = value() * 1024 }
        }
        return (now, peak)
    }
}
