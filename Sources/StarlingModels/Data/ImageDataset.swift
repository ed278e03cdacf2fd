import StarlingCore
import StarlingIO

/// A split (`/train`, `/test`) of an image dataset in HDF5: `images` uint8 [N, H, W] or [N, H, W, C] and
/// optional `labels` uint8 [N], the layout `starling data mnist` writes (see README "Data formats").
///
/// Nothing is loaded up front: each batch reads just its rows from the file, so sets larger than memory train.
/// Not safe for concurrent use: one reader (the prefetch thread, or the caller) at a time.
public final class ImageDataset: @unchecked Sendable {
    public let path: String
    public let split: String
    public let count: Int
    /// Shape of one stored sample: [H, W] or [H, W, C].
    public let sampleShape: [Int]
    private let file: HDF5File
    private let images: HDF5Dataset
    private let labels: HDF5Dataset?
    private var scratch: [UInt8] = []
    private var labelScratch: [UInt8] = []

    public init(path: String, split: String) throws {
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
            let l = try group.dataset("labels")
            guard l.shape == [count] else {
                throw DataError(file: path, message: "/\(split)/labels has shape \(l.shape) for \(count) images")
            }
            labels = l
        } else {
            labels = nil
        }
    }

    public var hasLabels: Bool { labels != nil }
    public var sampleSize: Int { sampleShape.reduce(1, *) }

    /// Reads the samples at `indices` (in that order) as floats in [0, 1] into `out` (indices.count x sampleSize)
    /// and returns their labels if the set has them. Consecutive indices are read as one row range.
    public func read(indices: [Int], into out: UnsafeMutablePointer<Float>) throws -> [Int32]? {
        let size = sampleSize
        for i in indices where i < 0 || i >= count {
            throw DataError(file: path, message: "sample index \(i) out of range 0..<\(count) in /\(split)")
        }
        if scratch.count < size { scratch = [UInt8](repeating: 0, count: size) }
        var result: [Int32]? = labels == nil ? nil : []
        var k = 0
        while k < indices.count {
            // Extend a run of consecutive rows.
            var end = k + 1
            while end < indices.count && indices[end] == indices[end - 1] + 1 { end += 1 }
            let rows = indices[k]..<(indices[k] + end - k)
            let need = rows.count * size
            if scratch.count < need { scratch = [UInt8](repeating: 0, count: need) }
            try scratch.withUnsafeMutableBufferPointer { buf in
                try images.readRows(rows, into: UnsafeMutableBufferPointer(rebasing: buf[0..<need]))
                let src = buf.baseAddress!
                let dst = out + k * size
                for j in 0..<need { dst[j] = Float(src[j]) * (1 / 255) }
            }
            if let labels {
                if labelScratch.count < rows.count { labelScratch = [UInt8](repeating: 0, count: rows.count) }
                try labelScratch.withUnsafeMutableBufferPointer { buf in
                    try labels.readRows(rows, into: UnsafeMutableBufferPointer(rebasing: buf[0..<rows.count]))
                }
                result?.append(contentsOf: labelScratch[0..<rows.count].map { Int32($0) })
            }
            k = end
        }
        return result
    }

    /// A batch of the samples at `indices`, shaped [B] + `modelInputShape` (which must hold sampleSize values).
    public func batch(indices: [Int], modelInputShape: [Int]) throws -> Batch {
        let t = Tensor(zeros: [indices.count] + modelInputShape)
        let labels = try read(indices: indices, into: t.data)
        return Batch(images: t, labels: labels)
    }

    /// All labels of the split (one byte each; small even for large sets).
    public func allLabels() throws -> [Int32] {
        guard let labels else { throw DataError(file: path, message: "/\(split) has no labels") }
        return try labels.read(as: UInt8.self).map { Int32($0) }
    }
}

/// A problem with a data file: one line naming the file.
public struct DataError: Error, CustomStringConvertible {
    public let file: String
    public let message: String
    public init(file: String, message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}
