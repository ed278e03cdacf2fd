#if canImport(Glibc)
import CMalloc
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
        let raw = BlockCache.shared.take(floats: max(count, 1))
        raw.initializeMemory(as: Float.self, repeating: 0, count: max(count, 1))
        pointer = raw.assumingMemoryBound(to: Float.self)
        self.count = count
        parent = nil
    }

    /// A block of `count` floats left as its last user wrote it (or uninitialised), for an op output the op
    /// overwrites in full before anything reads it: zero-filling a 300x480 activation costs as much as a ReLU on it.
    public init(uninitializedCount count: Int) {
        precondition(count >= 0, "negative storage size")
        let raw = BlockCache.shared.take(floats: max(count, 1))
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
        if parent == nil { BlockCache.shared.give(UnsafeMutableRawPointer(pointer), floats: max(count, 1)) }
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    public func zero() { pointer.update(repeating: 0, count: count) }
    public func copy(from other: FloatStorage) {
        precondition(other.count == count, "copy between storages of different size")
        pointer.update(from: other.pointer, count: count)
    }
    public func toArray() -> [Float] { Array(buffer) }
}

/// Where large blocks come from. Every training step allocates the same activations again, and glibc serves blocks
/// above its mmap threshold (32 MB at most by default) with fresh mappings that it unmaps on free: every step then
/// page-faulted and the kernel zeroed its activations again, which cost more than the step's BLAS work on SSD-sized
/// images. On glibc the threshold is raised to 1 GB and the heap is never trimmed, so freed activations go back to
/// malloc's best-fit heap and serve the next layer or step (measured on SSD7 at batch 16, 1 thread: the speed of
/// keeping every block, 5.9-6.2 images/s, at 1.9 GB peak instead of 3.2 GB). Elsewhere, and on request with
/// STARLING_BLOCK_CACHE_MB, freed blocks of 1 MB or more are kept by exact size up to that many megabytes.
final class BlockCache: @unchecked Sendable {
    static let shared = BlockCache()
    /// Blocks below this go to malloc directly.
    let minimumBytes = 1 << 20
    /// Total bytes kept idle at most.
    let limitBytes: Int
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var idleBytes = 0
    private let lock = PThreadMutex()

    init() {
        #if canImport(Glibc)
        // M_TOP_PAD 0: measured 12 % less peak memory than the default 128 KB pad, and no slower.
        let heapServesLargeBlocks = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 && mallopt(M_TRIM_THRESHOLD, Int32.max) == 1
            && mallopt(M_TOP_PAD, 0) == 1
        #else
        let heapServesLargeBlocks = false
        #endif
        let mb = getenv("STARLING_BLOCK_CACHE_MB").flatMap { Int(String(cString: $0)) } ?? (heapServesLargeBlocks ? 0 : 4096)
        limitBytes = max(0, mb) << 20
    }

    func take(floats: Int) -> UnsafeMutableRawPointer {
        let bytes = floats * 4
        if bytes >= minimumBytes {
            lock.lock()
            let block = free[bytes]?.popLast()
            if block != nil { idleBytes -= bytes }
            lock.unlock()
            if let block { return block }
        }
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    }

    func give(_ block: UnsafeMutableRawPointer, floats: Int) {
        let bytes = floats * 4
        if bytes >= minimumBytes {
            lock.lock()
            if idleBytes + bytes <= limitBytes {
                free[bytes, default: []].append(block)
                idleBytes += bytes
                lock.unlock()
                return
            }
            lock.unlock()
        }
        block.deallocate()
    }
}

/// A pthread mutex (the core module does not import Foundation).
final class PThreadMutex: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() { pthread_mutex_init(mutex, nil) }
    deinit { pthread_mutex_destroy(mutex); mutex.deallocate() }
    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
}
