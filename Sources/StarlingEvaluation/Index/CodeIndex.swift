import Foundation
import StarlingCore
import StarlingIO
import StarlingNN
import StarlingData
import StarlingTraining

/// An inverse image search index: the encoder's code of every image of a dataset split, searched by nearest
/// neighbours (the "image search" use of autoencoders). One HDF5 file, written atomically:
///
/// ```
/// /            attributes format="starling-code-index", format_version=1, model_config (JSON), weights_fingerprint,
///              checkpoint (absolute path of the encoder's checkpoint), data (absolute path), split, sample_shape
/// /codes       float32 [N, D]   the codes (a VAE's posterior means)
/// /ids         int64 [N]        each code's row in the split
/// /labels      int32 [N]        the images' labels, when the dataset has them
/// ```
///
/// Queries by id need only this file; queries by image re-encode the image with the checkpoint named here,
/// after checking that its weights still have the fingerprint the index was built with.
public struct CodeIndex: Sendable {
    public static let format = "starling-code-index"
    public static let formatVersion = 1

    public var codes: [Float]
    public var dimension: Int
    public var ids: [Int64]
    public var labels: [Int32]?
    public var modelConfig: ModelConfig
    public var weightsFingerprint: String
    public var checkpoint: String
    public var data: String
    public var split: String
    /// Shape of one stored image of the dataset ([H, W] or [H, W, C]): what a query image must match.
    public var sampleShape: [Int]
    /// The file this index was read from (empty for one built in memory): names it in errors.
    public var path = ""
    public var count: Int { ids.count }

    /// Encodes the first `limit` images (default all) of `data` with `encoder`, loaded from `checkpoint`.
    public static func build(encoder: any Encoding, checkpoint: String, data: ImageDataset, limit: Int? = nil, batchSize: Int = 256) throws -> CodeIndex {
        let (codes, dimension, labels) = try DatasetEncoder.codes(encoder, data: data, limit: limit, batchSize: batchSize)
        guard dimension > 0, !codes.isEmpty else { throw DataError(file: data.path, message: "/\(data.split) holds no images to index") }
        if let bad = codes.firstIndex(where: { !$0.isFinite }) {
            throw DataError(file: data.path, message: "image \(bad / dimension) of /\(data.split) encodes to a non-finite code")
        }
        return CodeIndex(codes: codes, dimension: dimension, ids: (0..<Int64(codes.count / dimension)).map { $0 }, labels: labels,
                         modelConfig: encoder.config, weightsFingerprint: WeightsFingerprint.of(encoder),
                         checkpoint: absolutePath(checkpoint), data: absolutePath(data.path), split: data.split, sampleShape: data.sampleShape)
    }

    public func write(to path: String) throws {
        try writeHDF5Atomically(to: path) { file in
            let root = file.root
            try root.setAttribute("format", Self.format)
            try root.setAttribute("format_version", Self.formatVersion)
            try root.setJSONAttribute("model_config", modelConfig)
            try root.setAttribute("weights_fingerprint", weightsFingerprint)
            try root.setAttribute("checkpoint", checkpoint)
            try root.setAttribute("data", data)
            try root.setAttribute("split", split)
            try root.setAttribute("sample_shape", sampleShape)
            try root.createDataset("codes", type: .float32, shape: [count, dimension]).write(codes)
            try root.createDataset("ids", type: .int64, shape: [count]).write(ids)
            if let labels { try root.createDataset("labels", type: .int32, shape: [count]).write(labels) }
        }
    }

    public static func read(from path: String) throws -> CodeIndex {
        let file = try HDF5File.open(path)
        defer { file.close() }
        let root = file.root
        guard root.hasAttribute("format"), try root.stringAttribute("format") == format else {
            throw IndexError(file: path, message: "not a Starling image index (no format attribute '\(format)')")
        }
        let version = try root.intAttribute("format_version")
        guard version == formatVersion else {
            throw IndexError(file: path, message: "index format version \(version); this build reads version \(formatVersion)")
        }
        for name in ["codes", "ids"] where !root.contains(name) { throw IndexError(file: path, message: "no /\(name) dataset") }
        let codes = try root.dataset("codes"), ids = try root.dataset("ids")
        guard codes.shape.count == 2, codes.shape[1] > 0, ids.shape == [codes.shape[0]] else {
            throw IndexError(file: path, message: "/codes has shape \(codes.shape) and /ids \(ids.shape); expected [N, D] and [N]")
        }
        var labels: [Int32]?
        if root.contains("labels") {
            let l = try root.dataset("labels")
            guard l.shape == ids.shape else { throw IndexError(file: path, message: "/labels has shape \(l.shape) for \(ids.shape[0]) codes") }
            labels = try l.read(as: Int32.self)
        }
        let values = try codes.read(as: Float.self)
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw IndexError(file: path, message: "/codes holds a non-finite value in row \(bad / codes.shape[1])")
        }
        return CodeIndex(codes: values, dimension: codes.shape[1], ids: try ids.read(as: Int64.self), labels: labels,
                         modelConfig: try root.jsonAttribute("model_config", as: ModelConfig.self),
                         weightsFingerprint: try root.stringAttribute("weights_fingerprint"),
                         checkpoint: try root.stringAttribute("checkpoint"), data: try root.stringAttribute("data"),
                         split: try root.stringAttribute("split"), sampleShape: try root.intArrayAttribute("sample_shape"), path: path)
    }

    /// The row holding `id`, or an error naming the ids there are.
    public func row(ofID id: Int) throws -> Int {
        // Ids are the rows of the split in order (build writes them so), but a file may come from elsewhere: look them up.
        if id >= 0, id < count, ids[id] == Int64(id) { return id }
        guard let row = ids.firstIndex(of: Int64(id)) else {
            throw IndexError(file: path, message: "id \(id) is not in the index (ids \(ids.min() ?? 0)...\(ids.max() ?? 0), \(count) images)")
        }
        return row
    }

    /// The code of one row.
    public func code(row: Int) -> [Float] { Array(codes[(row * dimension)..<((row + 1) * dimension)]) }

    /// The encoder of the checkpoint the index was built with, refused when the file is gone or its weights changed.
    public func loadEncoder() throws -> any Encoding {
        guard FileManager.default.fileExists(atPath: checkpoint) else {
            throw IndexError(file: checkpoint, message: "the checkpoint this index was built with is missing")
        }
        let model = try Checkpoint.load(from: checkpoint).model
        guard let encoder = model as? any Encoding, model.config == modelConfig, WeightsFingerprint.of(model) == weightsFingerprint else {
            throw IndexError(file: checkpoint, message: "index built with another encoder (the checkpoint's model or weights changed since)")
        }
        return encoder
    }

    private static func absolutePath(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
}

/// A 64-bit FNV-1a hash (Fowler, Noll, Vo) of a model's parameter and buffer names, shapes and the bit patterns
/// of their values, as 16 hex digits: equal exactly when the weights are bit-for-bit the same (up to collisions).
public enum WeightsFingerprint {
    public static func of(_ model: any Model) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ byte: UInt8) { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        for p in model.parameters.parameters + (model.buffers?.parameters ?? []) {
            for byte in p.name.utf8 { mix(byte) }
            for d in p.shape { for s in stride(from: 0, to: 64, by: 8) { mix(UInt8(truncatingIfNeeded: d >> s)) } }
            let values = UnsafeBufferPointer(start: p.value.data, count: p.count)
            for v in values {
                let bits = v.bitPattern
                mix(UInt8(truncatingIfNeeded: bits)); mix(UInt8(truncatingIfNeeded: bits >> 8))
                mix(UInt8(truncatingIfNeeded: bits >> 16)); mix(UInt8(truncatingIfNeeded: bits >> 24))
            }
        }
        return String(hash, radix: 16).leftPadded(to: 16)
    }
}

private extension String {
    func leftPadded(to length: Int) -> String { String(repeating: "0", count: max(0, length - count)) + self }
}

/// A problem with an index file or a query against it: one line naming the file.
public struct IndexError: Error, CustomStringConvertible {
    public let file: String
    public let message: String
    public init(file: String, message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}
