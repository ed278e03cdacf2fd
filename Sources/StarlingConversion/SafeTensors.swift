import Foundation
import StarlingIO
import StarlingTraining
import StarlingNN

/// The safetensors format (Hugging Face, https://github.com/huggingface/safetensors), written and read by hand:
///
///     [8 bytes: N, little-endian u64] [N bytes: JSON header] [the tensors' bytes]
///
/// The header maps each tensor's name to `{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}`, offsets
/// into the byte buffer after the header, plus an optional `"__metadata__"` object of string values. Tensors are
/// row-major and little-endian, laid end to end without gaps; the header is padded with spaces so that the data
/// starts at a multiple of 8 bytes. Here tensors are written in name order (the order of the header's sorted keys).
public struct SafeTensorsFile {
    public enum DType: String, Sendable {
        case f32 = "F32", f16 = "F16", bf16 = "BF16", f64 = "F64"
        var byteSize: Int {
            switch self {
            case .f16, .bf16: return 2
            case .f32: return 4
            case .f64: return 8
            }
        }
    }

    public struct Tensor {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        /// The values as float32 (exact for every dtype but F64).
        public var values: [Float]
        public init(name: String, dtype: DType = .f32, shape: [Int], values: [Float]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.values = values
        }
    }

    public var tensors: [Tensor]
    public var metadata: [String: String]

    public init(tensors: [Tensor], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    public subscript(name: String) -> Tensor? { tensors.first { $0.name == name } }

    /// A header this large is not a weights file (the reference implementation's limit is 100 MB too).
    static let headerLimit = 100_000_000

    private struct Entry: Codable {
        var dtype: String
        var shape: [Int]
        var data_offsets: [Int]
    }

    /// The header: entries by name and `__metadata__`, decoded by hand because the two have different types.
    private struct Header: Codable {
        var entries: [String: Entry] = [:]
        var metadata: [String: String]?

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
        static let metadataKey = "__metadata__"

        init(entries: [String: Entry], metadata: [String: String]?) {
            self.entries = entries
            self.metadata = metadata
        }

        init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: Key.self)
            for key in container.allKeys {
                if key.stringValue == Self.metadataKey {
                    metadata = try container.decode([String: String].self, forKey: key)
                } else {
                    entries[key.stringValue] = try container.decode(Entry.self, forKey: key)
                }
            }
        }

        func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: Key.self)
            if let metadata { try container.encode(metadata, forKey: Key(stringValue: Self.metadataKey)) }
            for (name, entry) in entries { try container.encode(entry, forKey: Key(stringValue: name)) }
        }
    }

    // MARK: - Writing

    /// The file's bytes. Values of F16 tensors are rounded to half precision here; F32 and F16 only.
    public func encoded(file: String = "") throws -> [UInt8] {
        let ordered = tensors.sorted { $0.name < $1.name }
        var entries: [String: Entry] = [:]
        var data: [UInt8] = []
        for t in ordered {
            guard t.values.count == t.shape.reduce(1, *), t.shape.allSatisfy({ $0 >= 0 }) else {
                throw ConversionError(file: file, message: "tensor '\(t.name)' has \(t.values.count) values for shape \(t.shape)")
            }
            guard entries[t.name] == nil, t.name != Header.metadataKey else {
                throw ConversionError(file: file, message: "tensor name '\(t.name)' is used twice or reserved")
            }
            let begin = data.count
            switch t.dtype {
            case .f32: appendLittleEndian(t.values.map(\.bitPattern), to: &data)
            case .f16: appendLittleEndian(try HalfPrecision.bits(t.values, name: t.name, file: file), to: &data)
            case .bf16, .f64:
                throw ConversionError(file: file, message: "tensor '\(t.name)': writing \(t.dtype.rawValue) is not supported (F32, F16)")
            }
            entries[t.name] = Entry(dtype: t.dtype.rawValue, shape: t.shape, data_offsets: [begin, data.count])
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var header = Array(try encoder.encode(Header(entries: entries, metadata: metadata.isEmpty ? nil : metadata)))
        while header.count % 8 != 0 { header.append(0x20) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + header.count + data.count)
        appendLittleEndian([UInt64(header.count)], to: &bytes)
        return bytes + header + data
    }

    /// Writes the file atomically.
    public func write(to path: String) throws {
        try AtomicFile.write(try encoded(file: path), to: path)
    }

    // MARK: - Reading

    public static func read(from path: String) throws -> SafeTensorsFile {
        let bytes: [UInt8]
        do {
            bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw ConversionError(file: path, message: "cannot read: \((error as NSError).localizedDescription)")
        }
        return try decode(bytes, file: path)
    }

    /// Parses a file's bytes, checking the header against the data: known dtypes, offsets inside the buffer that
    /// match each shape and cover it without gaps or overlaps.
    public static func decode(_ bytes: [UInt8], file: String = "") throws -> SafeTensorsFile {
        func fail(_ message: String) -> ConversionError { ConversionError(file: file, message: "not a valid safetensors file: \(message)") }
        guard bytes.count >= 8 else { throw fail("\(bytes.count) bytes, shorter than the 8-byte header length") }
        let length = words(bytes, at: 0, count: 1, as: UInt64.self)[0]
        guard length <= UInt64(min(headerLimit, bytes.count - 8)) else {
            throw fail("header length \(length) exceeds the file's \(bytes.count - 8) remaining bytes")
        }
        let headerEnd = 8 + Int(length)
        let header: Header
        do {
            header = try JSONDecoder().decode(Header.self, from: Data(bytes[8..<headerEnd]))
        } catch {
            throw fail("header is not the expected JSON (\(oneLineDescription(error)))")
        }
        let bufferSize = bytes.count - headerEnd
        var tensors: [(begin: Int, end: Int, tensor: Tensor)] = []
        for (name, entry) in header.entries {
            guard let dtype = DType(rawValue: entry.dtype) else { throw fail("tensor '\(name)' has dtype \(entry.dtype); readable: F32, F16, BF16, F64") }
            guard entry.shape.allSatisfy({ $0 >= 0 }), entry.data_offsets.count == 2 else { throw fail("tensor '\(name)' has a malformed shape or data_offsets") }
            let (begin, end) = (entry.data_offsets[0], entry.data_offsets[1])
            guard 0 <= begin, begin <= end, end <= bufferSize else {
                throw fail("tensor '\(name)' spans bytes \(begin)..<\(end) of a \(bufferSize)-byte buffer")
            }
            // The shape's byte count, refusing shapes whose product overflows (a corrupt header must not trap).
            let size = entry.shape.reduce(Optional(dtype.byteSize)) { total, n in
                total.flatMap { let (p, overflow) = $0.multipliedReportingOverflow(by: n); return overflow ? nil : p }
            }
            guard let size, size == end - begin else {
                throw fail("tensor '\(name)' of shape \(entry.shape) and dtype \(entry.dtype) does not fill its \(end - begin) bytes")
            }
            let count = size / dtype.byteSize, base = headerEnd + begin
            let values: [Float]
            switch dtype {
            case .f32: values = words(bytes, at: base, count: count, as: UInt32.self).map { Float(bitPattern: $0) }
            case .f16: values = try words(bytes, at: base, count: count, as: UInt16.self).map { try HalfPrecision.float(bits: $0) }
            case .bf16: values = words(bytes, at: base, count: count, as: UInt16.self).map { Float(bitPattern: UInt32($0) << 16) }
            case .f64: values = words(bytes, at: base, count: count, as: UInt64.self).map { Float(Double(bitPattern: $0)) }
            }
            tensors.append((begin, end, Tensor(name: name, dtype: dtype, shape: entry.shape, values: values)))
        }
        tensors.sort { ($0.begin, $0.end, $0.tensor.name) < ($1.begin, $1.end, $1.tensor.name) }
        var covered = 0
        for t in tensors {
            guard t.begin == covered else {
                throw fail(t.begin < covered ? "tensor '\(t.tensor.name)' overlaps the one before it" : "bytes \(covered)..<\(t.begin) belong to no tensor")
            }
            covered = t.end
        }
        guard covered == bufferSize else { throw fail("bytes \(covered)..<\(bufferSize) belong to no tensor") }
        return SafeTensorsFile(tensors: tensors.map(\.tensor), metadata: header.metadata ?? [:])
    }
}

/// Appends `words` to `bytes`, each little-endian.
private func appendLittleEndian<T: FixedWidthInteger>(_ words: [T], to bytes: inout [UInt8]) {
    words.map(\.littleEndian).withUnsafeBytes { bytes.append(contentsOf: $0) }
}

/// `count` little-endian words of type T stored from byte `offset` of `bytes` (the caller has checked the range).
private func words<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int, count: Int, as: T.Type) -> [T] {
    var out = [T](repeating: 0, count: count)
    out.withUnsafeMutableBytes { target in
        bytes.withUnsafeBytes { source in
            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[offset..<(offset + target.count)]))
        }
    }
    return out.map { T(littleEndian: $0) }
}
