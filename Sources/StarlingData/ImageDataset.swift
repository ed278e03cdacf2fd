import StarlingCore
import StarlingIO
import StarlingNN
#if canImport(Glibc)
import Glibc
#endif

/// A split (`/train`, `/test`) of an image dataset in HDF5: `images` uint8 [N, H, W] or [N, H, W, C] and
/// optional `labels` uint8 [N], the layout `starling data mnist` writes (see README "Data formats").
///
/// Nothing is loaded up front. A split of at most `residentBytes` is read whole with the first batch and later batches
/// are gathered from memory; a larger one reads each batch's rows from the file, so sets larger than memory train.
/// Not safe for concurrent use: one reader (the prefetch thread, or the caller) at a time, except once the split is
/// resident (`isResident`): `read` and `batch` then only read memory that no longer changes, and several threads may
/// call them at once (replicas each making their own slices, `TrainingSource.readsConcurrently`).
public final class ImageDataset: @unchecked Sendable {
    public let path: String
    public let split: String
    public let count: Int
    /// Shape of one stored sample: [H, W] or [H, W, C].
    public let sampleShape: [Int]
    private let file: HDF5File
    private let images: HDF5Dataset
    /// Labels are one byte a sample (22 KB for the 22,000 Udacity frames): read once, not per batch.
    private let labels: [UInt8]?
    private var scratch: [UInt8] = []
    /// The whole split's pixels, once read (splits of at most `residentBytes` only).
    private var resident: ResidentPixels?

    /// The largest split held in memory. Reading a batch of 256 scattered rows from the file costs HDF5 a chunk lookup
    /// and a chunk's copy a row (MNIST's files store 16 images a chunk): on the prefetch thread that took as much CPU
    /// as fc-ae's whole training step, and on two cores that thread then held the core a second compute thread needed.
    /// MNIST's 60,000 training images are 47 MB; CIFAR-10's 50,000 would be 154 MB and are read per batch.
    public static let residentBytes = 128 << 20

    /// The most bytes of pixels this dataset holds in memory (`residentBytes` unless given; 0 reads every batch from the file).
    public let residentLimit: Int

    public init(path: String, split: String, residentLimit: Int = ImageDataset.residentBytes) throws {
        self.residentLimit = residentLimit
        file = try HDF5File.open(path)
        self.path = path
        self.split = split
        guard file.root.contains(split) else {
            throw DataError(file: path, message: "no group '/\(split)' (expected /\(split)/images as written by `starling data mnist`)")
        }
        let group = try file.root.group(split)
        guard group.contains("images") else { throw DataError(file: path, message: "no dataset '/\(split)/images'") }
        images = try group.dataset("images")
        let shape = images.shape
        guard shape.count == 3 || shape.count == 4, shape.dropFirst().allSatisfy({ $0 > 0 }) else {
            throw DataError(file: path, message: "/\(split)/images has shape \(shape); expected [N, H, W] or [N, H, W, C]")
        }
        guard images.elementType == .uint8 else {
            throw DataError(file: path, message: "/\(split)/images holds \(images.elementType); expected uint8 pixels")
        }
        count = shape[0]
        sampleShape = Array(shape.dropFirst())
        if group.contains("labels") {
            // Any integer type, each value a byte: HDF5 would truncate float labels and clip wide ones silently.
            let l = try group.dataset("labels")
            try l.require(.integers, shape: [count], in: path, what: "a label for each of \(count) images")
            let values = try l.read(as: Int64.self)
            if let bad = values.firstIndex(where: { !(0...255).contains($0) }) {
                throw DataError(file: path, message: "/\(split)/labels[\(bad)] = \(values[bad]) is not a label 0...255")
            }
            labels = values.map { UInt8($0) }
        } else {
            labels = nil
        }
    }

    public var hasLabels: Bool { labels != nil }
    /// Whether the split's pixels are in memory (after the first batch, for a split within `residentLimit`).
    public var isResident: Bool { resident != nil }
    public var sampleSize: Int { sampleShape.reduce(1, *) }

    /// Reads a split within `residentLimit` into memory now, if it is not yet (the first batch does it otherwise): the
    /// trainer calls it before an epoch's clock starts, so that the read is not counted as training time.
    public func loadResident() throws {
        let size = sampleSize
        guard resident == nil && count * size <= residentLimit else { return }
        // In pieces of 4,096 rows: one read of the whole split made HDF5 hold a second copy of it while reading.
        let pixels = ResidentPixels(count: count * size)
        let all = UnsafeMutableBufferPointer(start: pixels.base, count: count * size)
        for start in stride(from: 0, to: count, by: 4096) {
            let rows = start..<Swift.min(count, start + 4096)
            try images.readRows(rows, into: UnsafeMutableBufferPointer(rebasing: all[(rows.lowerBound * size)..<(rows.upperBound * size)]))
        }
        resident = pixels
    }

    /// Reads the samples at `indices` as floats in [0, 1] into `out` (indices.count x sampleSize) and returns
    /// their labels if the set has them. Samples come back in ascending index order, each run of consecutive
    /// indices read as one row range: the order inside a batch does not change its gradient, and sorted reads
    /// walk the file forwards. (One HDF5 read over a union of row ranges was tried: HDF5 1.10 builds such a
    /// selection in time quadratic in the ranges, 4x slower than a read per range at 256 rows.)
    public func read(indices: [Int], into out: UnsafeMutablePointer<Float>) throws -> [Int32]? {
        let size = sampleSize
        let sorted = indices.sorted()
        for i in sorted where i < 0 || i >= count {
            throw DataError(file: path, message: "sample index \(i) out of range 0..<\(count) in /\(split)")
        }
        let need = sorted.count * size
        try loadResident()
        if let resident {
            sorted.withUnsafeBufferPointer { rows in
                PixelGather.rows(rows, of: resident.base, rowBytes: size, scale: Self.pixelScale, into: out)
            }
            return labels.map { all in sorted.map { Int32(all[$0]) } }
        }
        if scratch.count < need { scratch = [UInt8](repeating: 0, count: need) }
        var k = 0
        while k < sorted.count {
            var end = k + 1
            while end < sorted.count && sorted[end] == sorted[end - 1] + 1 { end += 1 }
            let rows = sorted[k]..<(sorted[k] + end - k)
            try scratch.withUnsafeMutableBufferPointer { buf in
                try images.readRows(rows, into: UnsafeMutableBufferPointer(rebasing: buf[(k * size)..<(end * size)]))
            }
            k = end
        }
        scratch.withUnsafeBufferPointer { buf in
            guard let src = buf.baseAddress else { return }      // no indices, nothing read
            KernelDispatch.scaledFloats(need, src, out, scale: Self.pixelScale)
        }
        return labels.map { all in sorted.map { Int32(all[$0]) } }
    }

    /// A batch of the samples at `indices`, shaped [B] + `modelInputShape` (which must hold sampleSize values),
    /// in ascending index order (see `read`), with the indices it holds.
    public func batch(indices: [Int], modelInputShape: [Int]) throws -> Batch {
        guard modelInputShape.reduce(1, *) == sampleSize else {
            throw DataError(file: path, message: "/\(split) holds samples of shape \(sampleShape); the model takes \(modelInputShape)")
        }
        // Not zero-filled: `read` writes every value (or throws, and the tensor is dropped). Filling it first was a
        // second pass over the batch: fc-ae's 800 KB a step, `memset` 1.8 -> 0.6 % of a two-replica run's CPU (`perf`).
        let t = Tensor(shape: [indices.count] + modelInputShape, storage: FloatStorage(uninitializedCount: indices.count * sampleSize))
        let labels = try read(indices: indices, into: t.data)
        return Batch(images: t, labels: labels, indices: indices.sorted())
    }

    /// A pixel's byte v is the float v / 255, computed as v * (1 / 255) (one multiply, as it always was).
    static let pixelScale: Float = 1 / 255

    /// All labels of the split (one byte each; small even for large sets).
    public func allLabels() throws -> [Int32] {
        guard let labels else { throw DataError(file: path, message: "/\(split) has no labels") }
        return labels.map { Int32($0) }
    }
}

/// A resident split's bytes. From `hugePagesFrom` on, in a mapping of their own that asks the kernel for 2 MB pages
/// (transparent huge pages on request, `MADV_HUGEPAGE`; the mode many distributions default to gives them to no
/// mapping that does not ask). A batch's rows lie at random places of the split (MNIST's 47 MB): in 4 KB pages each row
/// was also a miss of the TLB (11,500 pages against the ~2,000-3,000 entries of a Zen 3 or 4 core's second-level TLB)
/// and a page walk; in 2 MB pages the split is 24 entries. Where the kernel gives no huge page (another mode, no free 2
/// MB of memory, another system) the mapping works in 4 KB pages as before. The values are the same either way.
package final class ResidentPixels: @unchecked Sendable {
    package let base: UnsafeMutablePointer<UInt8>
    private let mapping: UnsafeMutableRawPointer?
    private let mappingBytes: Int
    /// Below this a split fits a second-level TLB's reach in 4 KB pages (8-12 MB), and a 2 MB page would mostly hold
    /// nothing (the tests' splits of a few KB): plain memory.
    package static let hugePagesFrom = 8 << 20

    package init(count: Int) {
        let huge = 2 << 20
        #if os(Linux)
        // One huge page more than the bytes, so that they can start on a 2 MB boundary; the unused ends are never touched.
        let bytes = (Swift.max(count, 1) + huge - 1) / huge * huge + huge
        if count >= Self.hugePagesFrom, let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != UnsafeMutableRawPointer(bitPattern: -1) {
            let start = (Int(bitPattern: raw) + huge - 1) & ~(huge - 1)
            let aligned = UnsafeMutableRawPointer(bitPattern: start)!
            _ = madvise(aligned, (Swift.max(count, 1) + huge - 1) / huge * huge, MADV_HUGEPAGE)   // a refusal costs only speed
            (mapping, mappingBytes) = (raw, bytes)
            base = aligned.bindMemory(to: UInt8.self, capacity: Swift.max(count, 1))
            return
        }
        #endif
        (mapping, mappingBytes) = (nil, 0)
        base = UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(count, 1))
    }

    deinit {
        if let mapping { munmap(mapping, mappingBytes) } else { base.deallocate() }
    }
}
