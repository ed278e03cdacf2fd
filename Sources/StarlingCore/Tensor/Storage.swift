#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// A fixed-size block of Float32 memory, owned or borrowed from a parent block.
///
/// Parameters and gradients live in one allocation each (see `ParameterStore`); a parameter tensor is
/// a view into that allocation, so an allreduce or a checkpoint touches a single contiguous buffer.
public final class FloatStorage: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    /// The storage this one is a view of; held so the parent outlives every view.
    private let parent: FloatStorage?

    /// A new zero-filled block of `count` floats, 64-byte aligned for vector loads.
    public init(count: Int) {
        precondition(count >= 0, "negative storage size")
        let raw = LargeBlocks.take(floats: max(count, 1))
        raw.initializeMemory(as: Float.self, repeating: 0, count: max(count, 1))
        pointer = raw.assumingMemoryBound(to: Float.self)
        self.count = count
        parent = nil
    }

    /// A block of `count` floats left as its last user wrote it (or uninitialised), for an op output the op
    /// overwrites in full before anything reads it: zero-filling a 300x480 activation costs as much as a ReLU on it.
    public init(uninitializedCount count: Int) {
        precondition(count >= 0, "negative storage size")
        let raw = LargeBlocks.take(floats: max(count, 1))
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        self.count = count
        parent = nil
    }

    /// A view of `count` floats of `parent` starting at `offset`.
    public init(viewOf parent: FloatStorage, offset: Int, count: Int) {
        precondition(offset >= 0 && offset + count <= parent.count, "view out of bounds")
        pointer = parent.pointer + offset
        self.count = count
        self.parent = parent
    }

    deinit {
        if parent == nil { LargeBlocks.give(UnsafeMutableRawPointer(pointer), floats: max(count, 1)) }
    }

    /// The storage that owns the memory (itself unless a view).
    var root: FloatStorage { parent?.root ?? self }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    public func zero() { pointer.update(repeating: 0, count: count) }
    public func copy(from other: FloatStorage) {
        precondition(other.count == count, "copy between storages of different size")
        pointer.update(from: other.pointer, count: count)
    }
    public func toArray() -> [Float] { Array(buffer) }
}

/// Where large blocks come from. Every training step allocates the same activations again. glibc serves blocks above
/// its mmap threshold (32 MB at most by default) with fresh mappings that it unmaps on free: every step then
/// page-faulted and the kernel zeroed its activations again, which cost more than the step's BLAS work on SSD-sized
/// images. With the threshold raised they come from glibc's heap, but there the small blocks that live as long as the
/// process (oneDNN's primitives and JIT code, made during the first step) landed inside freed activations and split
/// them, so the heap grew instead of reusing them (SSD7: 2.7 GB peak instead of 2.1).
///
/// So blocks of 1 MB or more come from address space of their own, never returned to the system (as the heap never
/// trimmed), carved best-fit with neighbours coalesced on free: only large blocks share it, so a freed activation
/// is whole again for the next layer or step. Blocks are 64-byte aligned, at 4 KB granularity.
///
/// That address space is one reservation (`reservationBytes` of PROT_NONE address space, made readable and writable
/// `mappingBytes` at a time as the blocks reach further), not a mapping per growth: with separate mappings a free
/// extent at the end of one could not join the next, so a block that fitted no hole took a new mapping while the
/// pages of that free end, already resident, stayed unused (yolov3-tiny's mappings grew 469 -> 533 MB over the timed
/// steps for a step peak of 470 MB of live blocks). In one range a block that fits no hole starts in the free extent
/// at the top, if there is one, and only the pages beyond it are new. What the process keeps resident is the range's
/// high-water mark (`usage.mapped`). Where the reservation cannot be made (an address-space limit) or is full, blocks
/// come from mappings of their own as before.
///
/// Blocks of 64 KB up to 1 MB (the small autoencoders' activations: fc-ae's 256 x 784 floats are 784 KB) come from
/// a second set of mappings, kept apart so that they never split a large block's extent. From glibc they came off
/// the top of its heap, which glibc trimmed when they were freed (its trim threshold follows its mmap threshold, 2 x
/// the largest block freed): each ~1 ms step faulted its activations in, zeroed, again.
///
/// An allocator made `releasingFreePages` holds its resident pages near the most bytes ever live at once. A block goes
/// on resident pages first: the best fit among the runs of free pages still resident. Only where no such run holds it
/// does it go where the fewest pages must be faulted in again: the free extent whose low end covers the fewest pages
/// given back (the smaller extent on a tie), or the top of the range if that faults fewer. When a block placed so takes
/// the resident pages more than `residentSlack` past the most bytes ever live, pages of free extents are given back
/// (`madvise(MADV_DONTNEED)`) until they are not: those of the extents free the longest first (they stayed free
/// through the most blocks handed out and given back since, so are the likeliest to stay free), from their high ends.
/// A free extent's pages hold no value (a block is written before it is read), so no value changes; the cost is the
/// pages faulted in and zeroed again when a block next covers them (`releaseUsage.faulted`). With plain best fit the
/// pages given back were the next block's place as often as any other (SSD300: 1.1 M more faults a run, CPU a step
/// +2-13 % on SSD300, yolov3-tiny and U-Net); resident first cuts SSD300's extra faults to 0.3 M a run and leaves
/// yolov3-tiny and U-Net level, but SSD300's step placement still needs ~100 MB of resident pages beyond its live
/// peak (what main retains), so ~280 MB a step are faulted in again: peak 1,155 ->
/// 1,058 MB for CPU a step +3-4 %. So `shared` gives nothing back unless STARLING_GIVE_BACK_FREE_PAGES=1
/// (BENCHMARKS.md, "Large blocks placed on resident pages first").
final class LargeBlocks: @unchecked Sendable {
    static let shared = LargeBlocks(mappingBytes: 64 << 20, releasingFreePages: givesBackFreePages)
    static let medium = LargeBlocks(mappingBytes: 8 << 20)
    /// Blocks below this go to malloc directly.
    static let minimumBytes = 64 << 10
    /// Blocks from this size on go to `shared`, smaller ones to `medium`.
    static let largeBytes = 1 << 20
    /// Whether `shared` gives free pages back (above): STARLING_GIVE_BACK_FREE_PAGES=1 or 0, else `givesBackByDefault`
    /// (off: the refaults cost SSD300 more CPU than the ~1 % the memory is worth, see above).
    static let givesBackFreePages: Bool = ((try? givesBackSetting.get()) ?? nil) ?? givesBackByDefault
    /// STARLING_GIVE_BACK_FREE_PAGES checked: 0 or 1, unset or empty for the default (the CLI refuses any other value
    /// before it starts, `MemoryLedger.givesBackSettingError`).
    static let givesBackSetting = EnvironmentSetting.read("STARLING_GIVE_BACK_FREE_PAGES", accepting: [("0", false), ("1", true)])
    static let givesBackByDefault = false

    static func take(floats: Int) -> UnsafeMutableRawPointer {
        let requested = floats * 4
        if requested < minimumBytes { return UnsafeMutableRawPointer.allocate(byteCount: requested, alignment: 64) }
        return (requested < largeBytes ? medium : shared).take(bytes: requested)
    }

    static func give(_ block: UnsafeMutableRawPointer, floats: Int) {
        let requested = floats * 4
        if requested < minimumBytes { return block.deallocate() }
        (requested < largeBytes ? medium : shared).give(block, bytes: requested)
    }

    /// The reservation is made readable and writable this much at a time; outside it (no reservation, or a full
    /// one) new mappings are at least this large, so that small blocks do not each take a mapping.
    let mappingBytes: Int
    /// The reserved address range (`base` 0: none), how far blocks have reached into it (its high-water mark) and
    /// how much of it is readable and writable.
    private let base: Int, reservedBytes: Int
    private var topBytes = 0, accessibleBytes = 0
    /// Free extents (address, bytes, the `clock` when last given back or mapped), sorted by address.
    private var free: [(address: Int, bytes: Int, stamp: Int)] = []
    /// Counts blocks handed out and given back: how long a free extent has stayed free.
    private var clock = 0
    private let lock = PThreadMutex()
    /// Bytes handed out and not yet given back, their highest value since `resetPeak`, and the bytes of mappings
    /// outside the reservation: the memory ledger's figures (`MemoryLedger`).
    private var liveBytes = 0, peakBytes = 0, mappedBytes = 0

    /// Whether resident pages beyond the most bytes ever live (and `residentSlack`) are given back (see above).
    private let releasingFreePages: Bool
    /// How far the resident pages may pass the most bytes ever live before free pages are given back: the pages given
    /// back are faulted in again when reused, so small excesses (a step's fragments) are left alone.
    let residentSlack: Int
    /// 8 MB: half the smallest scratch block lent from the large blocks (`DNNL.Arena.unkeptBytes`).
    static let defaultResidentSlack = 8 << 20
    /// Free ranges whose pages were given back and that no block has covered since, sorted by address (each inside a
    /// free extent), their bytes, the most bytes ever live (not reset by `resetPeak`), how many times and bytes pages
    /// were given back, and the bytes of blocks placed on pages not resident (given back, or never reached before).
    private var released: [(address: Int, bytes: Int)] = []
    private var releasedBytes = 0, liveHighWater = 0, releaseCount = 0, releasedTotal = 0, faultedBytes = 0

    /// Address space reserved for each allocator: far beyond any machine's memory (no page of it is resident or
    /// committed until a block reaches it), a small part of x86-64's and arm64's 128 TB of user address space.
    static let defaultReservationBytes = 1 << 40

    /// (live, peak since the last reset, mapped) bytes; mapped counts the reservation up to its high-water mark (the
    /// pages blocks have reached, resident once written) and any mapping outside it.
    var usage: (live: Int, peak: Int, mapped: Int) {
        lock.lock()
        defer { lock.unlock() }
        return (liveBytes, peakBytes, topBytes + mappedBytes)
    }

    /// Resident pages by the allocator's count (mapped less the pages given back and not covered since), how many
    /// times free pages were given back and their bytes in all, and the bytes of blocks placed on pages not resident
    /// (given back earlier, or new at the top of the range or in a new mapping), in all.
    var releaseUsage: (resident: Int, releases: Int, releasedBytes: Int, faulted: Int) {
        lock.lock()
        defer { lock.unlock() }
        return (topBytes + mappedBytes - releasedBytes, releaseCount, releasedTotal, faultedBytes)
    }

    func resetPeak() {
        lock.lock()
        peakBytes = liveBytes
        lock.unlock()
    }

    /// `reservationBytes` 0 (or a reservation the system refuses): a mapping per growth, no reservation.
    init(mappingBytes: Int, reservationBytes: Int = LargeBlocks.defaultReservationBytes, releasingFreePages: Bool = false,
         residentSlack: Int = LargeBlocks.defaultResidentSlack) {
        self.mappingBytes = mappingBytes
        self.releasingFreePages = releasingFreePages
        self.residentSlack = residentSlack
        let reservation = reservationBytes > 0
            ? mmap(nil, reservationBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) : nil
        if let reservation, reservation != UnsafeMutableRawPointer(bitPattern: -1) {
            (base, reservedBytes) = (Int(bitPattern: reservation), reservationBytes)
        } else {
            (base, reservedBytes) = (0, 0)
        }
    }

    func take(bytes requested: Int) -> UnsafeMutableRawPointer {
        let bytes = (requested + 4095) & ~4095
        lock.lock()
        defer { lock.unlock() }
        noteLive(bytes)
        let block = fit(bytes) ?? mapped(bytes)
        placed(block, bytes)
        return block
    }

    /// A block on resident free pages if a run of them holds it; else in the free extent or at the top of the range,
    /// whichever faults fewer pages in (the extent on a tie: the range does not grow); nil if neither can take it.
    private func fit(_ bytes: Int) -> UnsafeMutableRawPointer? {
        let spot = place(bytes)
        if let spot, spot.faults == 0 { return carve(at: spot, bytes) }
        if let spot, let top = topFaults(bytes), top < spot.faults, let block = extendTop(bytes) { return block }
        if let spot { return carve(at: spot, bytes) }
        return extendTop(bytes)
    }

    /// A block from a mapping of its own (no reservation, or a full one).
    private func mapped(_ bytes: Int) -> UnsafeMutableRawPointer {
        let size = Swift.max(bytes, mappingBytes)
        guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              mapping != UnsafeMutableRawPointer(bitPattern: -1) else {
            preconditionFailure("out of memory: a block of \(bytes) bytes")
        }
        mappedBytes += size
        faultedBytes += bytes
        insert(address: Int(bitPattern: mapping), bytes: size)
        guard let spot = place(bytes) else { preconditionFailure("a fresh mapping of \(size) bytes holds no block of \(bytes)") }
        return carve(at: spot, bytes)
    }

    private func noteLive(_ bytes: Int) {
        clock += 1
        liveBytes += bytes
        peakBytes = Swift.max(peakBytes, liveBytes)
        liveHighWater = Swift.max(liveHighWater, liveBytes)
    }

    /// After `block` is handed out: its pages count as resident again (its user writes them), and if the resident
    /// pages now pass the most bytes ever live by more than `residentSlack`, free extents' pages are given back until
    /// they do not. Resident pages less live bytes are the free extents' resident pages, so enough of them exist.
    private func placed(_ block: UnsafeMutableRawPointer, _ bytes: Int) {
        guard releasingFreePages else { return }
        if releasedBytes > 0 {
            let before = releasedBytes
            cover(Int(bitPattern: block), bytes)
            faultedBytes += before - releasedBytes
        }
        let excess = topBytes + mappedBytes - releasedBytes - liveHighWater
        if excess > residentSlack { releaseFree(excess) }
    }

    /// Takes [address, address + bytes) out of the ranges given back.
    private func cover(_ address: Int, _ bytes: Int) {
        let end = address + bytes
        var kept: [(address: Int, bytes: Int)] = []
        kept.reserveCapacity(released.count + 1)
        for range in released {
            let rangeEnd = range.address + range.bytes
            if rangeEnd <= address || range.address >= end { kept.append(range); continue }
            if range.address < address { kept.append((range.address, address - range.address)) }
            if rangeEnd > end { kept.append((end, rangeEnd - end)) }
            releasedBytes -= Swift.min(rangeEnd, end) - Swift.max(range.address, address)
        }
        released = kept
    }

    /// The first of the ranges given back that starts at or after `address`.
    private func releasedIndex(from address: Int) -> Int {
        var lo = 0, hi = released.count
        while lo < hi { let mid = (lo + hi) / 2; if released[mid].address < address { lo = mid + 1 } else { hi = mid } }
        return lo
    }

    /// The runs of resident pages of free extent `i`, by address: the gaps between the ranges given back inside it.
    private func residentRuns(_ i: Int) -> [(address: Int, bytes: Int)] {
        let extent = free[i], end = extent.address + extent.bytes
        var runs: [(address: Int, bytes: Int)] = []
        var cursor = extent.address, k = releasedIndex(from: extent.address)
        while k < released.count && released[k].address < end {
            if released[k].address > cursor { runs.append((cursor, released[k].address - cursor)) }
            cursor = released[k].address + released[k].bytes
            k += 1
        }
        if end > cursor { runs.append((cursor, end - cursor)) }
        return runs
    }

    /// Gives back `needed` bytes of resident free pages: from the extents free the longest first (the oldest stamp;
    /// the lower address on a tie), each from its high end down, so its low end (where a block is placed) stays.
    private func releaseFree(_ needed: Int) {
        var remaining = needed
        for i in free.indices.sorted(by: { (free[$0].stamp, free[$0].address) < (free[$1].stamp, free[$1].address) }) {
            guard remaining > 0 else { break }
            var given = 0
            for run in residentRuns(i).reversed() where remaining > 0 {
                let bytes = Swift.min(run.bytes, remaining)
                let address = run.address + run.bytes - bytes
                guard let start = UnsafeMutableRawPointer(bitPattern: address),
                      madvise(start, bytes, Int32(MADV_DONTNEED)) == 0 else { continue }
                insertReleased(address, bytes)
                remaining -= bytes
                given += bytes
            }
            if given > 0 { releaseCount += 1; releasedTotal += given }
        }
    }

    /// Adds a range of resident pages just given back to `released`, merged with the ranges that touch it.
    private func insertReleased(_ address: Int, _ bytes: Int) {
        releasedBytes += bytes
        let lo = releasedIndex(from: address)
        var range = (address: address, bytes: bytes)
        if lo < released.count && address + bytes == released[lo].address {
            range.bytes += released[lo].bytes
            released.remove(at: lo)
        }
        if lo > 0 && released[lo - 1].address + released[lo - 1].bytes == address {
            released[lo - 1].bytes += range.bytes
        } else {
            released.insert(range, at: lo)
        }
    }

    /// A block from a free extent only (nil when none holds it: nothing is mapped or extended for it), for a borrower
    /// with a place of its own otherwise (oneDNN's scratch arenas in inference). Given back with `give`.
    func borrow(bytes requested: Int) -> UnsafeMutableRawPointer? {
        let bytes = (requested + 4095) & ~4095
        lock.lock()
        defer { lock.unlock() }
        guard let spot = place(bytes) else { return nil }
        noteLive(bytes)
        let block = carve(at: spot, bytes)
        placed(block, bytes)
        return block
    }

    func give(_ block: UnsafeMutableRawPointer, bytes requested: Int) {
        lock.lock()
        let bytes = (requested + 4095) & ~4095
        liveBytes -= bytes
        clock += 1
        insert(address: Int(bitPattern: block), bytes: bytes)
        lock.unlock()
    }

    /// The pages a block at the top of the range would fault in: those beyond the free extent that ends at the
    /// high-water mark, and the pages given back inside it. Nil without a reservation, or when that extent alone holds
    /// the block (it is then one of the free extents `place` weighs).
    private func topFaults(_ bytes: Int) -> Int? {
        guard base != 0 else { return nil }
        guard let tail = free.lastIndex(where: { $0.address + $0.bytes == base + topBytes }) else { return bytes }
        guard free[tail].bytes < bytes else { return nil }
        return bytes - residentRuns(tail).reduce(0) { $0 + $1.bytes }
    }

    /// A block at the top of the reservation: from the free extent that ends at the high-water mark, if any, on into
    /// pages no block has reached yet (made accessible `mappingBytes` at a time). Nil without a reservation, when it
    /// is full, or when the system refuses to commit the pages (then a mapping of its own is tried).
    private func extendTop(_ bytes: Int) -> UnsafeMutableRawPointer? {
        guard base != 0 else { return nil }
        var start = base + topBytes
        // Mappings outside the reservation may lie above it: the tail is not always the last extent.
        let tail = free.lastIndex { $0.address + $0.bytes == base + topBytes }
        if let tail { start = free[tail].address }
        let newTop = start + bytes - base
        guard newTop <= reservedBytes else { return nil }
        if newTop > accessibleBytes {
            let grown = Swift.min(reservedBytes, (newTop + mappingBytes - 1) / mappingBytes * mappingBytes)
            guard let region = UnsafeMutableRawPointer(bitPattern: base + accessibleBytes),
                  mprotect(region, grown - accessibleBytes, PROT_READ | PROT_WRITE) == 0 else { return nil }
            accessibleBytes = grown
        }
        if let tail { free.remove(at: tail) }
        faultedBytes += newTop - topBytes
        topBytes = newTop
        return UnsafeMutableRawPointer(bitPattern: start)
    }

    /// Where a block of `bytes` goes among the free extents (the extent's index, the address, the bytes given back it
    /// covers): the smallest run of resident pages that holds it (its low end); else the extent whose low end covers
    /// the fewest pages given back, the smaller extent on a tie; nil when no free extent holds it. With nothing given
    /// back, the smallest free extent that holds it.
    private func place(_ bytes: Int) -> (index: Int, address: Int, faults: Int)? {
        var run: (index: Int, address: Int, bytes: Int)?
        var fallback: (index: Int, faults: Int)?
        // Whether a run of resident pages this long beats the best one so far (the smaller one that holds the block).
        func shorterRun(_ length: Int) -> Bool { run.map { length < $0.bytes } ?? true }
        var r = 0
        for i in free.indices where free[i].bytes >= bytes {
            let extent = free[i], end = extent.address + extent.bytes, blockEnd = extent.address + bytes
            if released.isEmpty {
                if shorterRun(extent.bytes) { run = (i, extent.address, extent.bytes) }
                continue
            }
            while r < released.count && released[r].address < extent.address { r += 1 }
            var cursor = extent.address, faults = 0, k = r
            while k < released.count && released[k].address < end {
                let range = released[k]
                if range.address - cursor >= bytes && shorterRun(range.address - cursor) {
                    run = (i, cursor, range.address - cursor)
                }
                faults += Swift.max(0, Swift.min(range.address + range.bytes, blockEnd) - range.address)
                cursor = range.address + range.bytes
                k += 1
            }
            if end - cursor >= bytes && shorterRun(end - cursor) { run = (i, cursor, end - cursor) }
            let fewerFaults = fallback.map { faults < $0.faults || (faults == $0.faults && extent.bytes < free[$0.index].bytes) } ?? true
            if fewerFaults { fallback = (i, faults) }
        }
        if let run { return (run.index, run.address, 0) }
        return fallback.map { ($0.index, free[$0.index].address, $0.faults) }
    }

    /// Takes [address, address + bytes) out of free extent `spot.index`, whose other parts stay free as they were.
    private func carve(at spot: (index: Int, address: Int, faults: Int), _ bytes: Int) -> UnsafeMutableRawPointer {
        let extent = free[spot.index]
        let end = extent.address + extent.bytes, blockEnd = spot.address + bytes
        var parts: [(address: Int, bytes: Int, stamp: Int)] = []
        if spot.address > extent.address { parts.append((extent.address, spot.address - extent.address, extent.stamp)) }
        if end > blockEnd { parts.append((blockEnd, end - blockEnd, extent.stamp)) }
        free.replaceSubrange(spot.index...spot.index, with: parts)
        return UnsafeMutableRawPointer(bitPattern: spot.address)!
    }

    /// Returns an extent to the free list, merged with the free extents that touch it; it counts as freed now.
    private func insert(address: Int, bytes: Int) {
        var lo = 0, hi = free.count
        while lo < hi { let mid = (lo + hi) / 2; if free[mid].address < address { lo = mid + 1 } else { hi = mid } }
        var extent = (address: address, bytes: bytes, stamp: clock)
        if lo < free.count && extent.address + extent.bytes == free[lo].address {
            extent.bytes += free[lo].bytes
            free.remove(at: lo)
        }
        if lo > 0 && free[lo - 1].address + free[lo - 1].bytes == extent.address {
            free[lo - 1].bytes += extent.bytes
            free[lo - 1].stamp = clock
        } else {
            free.insert(extent, at: lo)
        }
    }
}

final class PThreadMutex: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() { pthread_mutex_init(mutex, nil) }
    deinit { pthread_mutex_destroy(mutex); mutex.deallocate() }
    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
}
