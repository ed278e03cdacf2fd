import Foundation
import StarlingIO

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
            case .f32:
                data.reserveCapacity(data.count + 4 * t.values.count)
                for x in t.values { appendLittleEndian(x.bitPattern, to: &data) }
            case .f16:
                for bits in try HalfPrecision.bits(t.values, name: t.name, file: file) { appendLittleEndian(bits, to: &data) }
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
        appendLittleEndian(UInt64(header.count), to: &bytes)
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
        let length = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[$1]) << (8 * UInt64($1)) }
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
            let count = entry.shape.reduce(1, *)
            guard 0 <= begin, begin <= end, end <= bufferSize else {
                throw fail("tensor '\(name)' spans bytes \(begin)..<\(end) of a \(bufferSize)-byte buffer")
            }
            guard end - begin == count * dtype.byteSize else {
                throw fail("tensor '\(name)' of shape \(entry.shape) and dtype \(entry.dtype) needs \(count * dtype.byteSize) bytes, its offsets give \(end - begin)")
            }
            let base = headerEnd + begin
            var values = [Float](repeating: 0, count: count)
            for i in 0..<count {
                let at = base + i * dtype.byteSize
                switch dtype {
                case .f32: values[i] = Float(bitPattern: UInt32(littleEndianAt: at, in: bytes))
                case .f16: values[i] = try HalfPrecision.float(bits: UInt16(littleEndianAt: at, in: bytes))
                case .bf16: values[i] = Float(bitPattern: UInt32(UInt16(littleEndianAt: at, in: bytes)) << 16)
                case .f64: values[i] = Float(Double(bitPattern: UInt64(littleEndianAt: at, in: bytes)))
                }
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

private func appendLittleEndian<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    var v = value.littleEndian
    withUnsafeBytes(of: &v) { bytes.append(contentsOf: $0) }
}

private extension FixedWidthInteger {
    /// The value stored little-endian at `offset` of `bytes`.
    init(littleEndianAt offset: Int, in bytes: [UInt8]) {
        var value: Self = 0
        for k in 0..<(Self.bitWidth / 8) { value |= Self(bytes[offset + k]) << (8 * k) }
        self = value
    }
}
