import Foundation

/// TensorBoard event files, written without TensorFlow: `events.out.tfevents.<time>.<host>` in a folder, a TFRecord
/// stream of serialized `tensorflow.Event` messages. Each record is the data's length (uint64, little endian), the
/// masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data. The few message fields used are
/// encoded here by hand in the protobuf wire format (field numbers from tensorflow/core/util/event.proto and
/// framework/summary.proto): Event { double wall_time = 1; int64 step = 2; string file_version = 3;
/// Summary summary = 5 }, Summary { repeated Value value = 1 }, Value { string tag = 1; float simple_value = 2;
/// Image image = 4 }, Image { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4 }.
public final class TensorBoardWriter {
    public let path: String
    private let handle: FileHandle

    /// Creates the folder if needed and a new event file in it, starting with the file-version event.
    public init(directory: String) throws {
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw StarlingIOError(file: directory, message: "cannot create the TensorBoard folder: \(error.localizedDescription)")
        }
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        path = "\(directory)/events.out.tfevents.\(Int(Date().timeIntervalSince1970)).\(host).\(getpid())"
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw StarlingIOError(file: path, message: "cannot create the event file")
        }
        self.handle = handle
        var event = Protobuf()
        event.double(1, Date().timeIntervalSince1970)
        event.bytes(3, Array("brain.Event:2".utf8))
        try write(event.bytes)
    }

    deinit { try? handle.close() }

    public func scalar(_ tag: String, _ value: Double, step: Int) throws {
        var entry = Protobuf()
        entry.bytes(1, Array(tag.utf8))
        entry.float(2, Float(value))
        try summary(entry, step: step)
    }

    /// An image summary from PNG bytes.
    public func image(_ tag: String, png: [UInt8], width: Int, height: Int, channels: Int, step: Int) throws {
        var image = Protobuf()
        image.varint(1, UInt64(height))
        image.varint(2, UInt64(width))
        image.varint(3, UInt64(channels))
        image.bytes(4, png)
        var entry = Protobuf()
        entry.bytes(1, Array(tag.utf8))
        entry.bytes(4, image.bytes)
        try summary(entry, step: step)
    }

    private func summary(_ value: Protobuf, step: Int) throws {
        var summary = Protobuf()
        summary.bytes(1, value.bytes)
        var event = Protobuf()
        event.double(1, Date().timeIntervalSince1970)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.bytes(5, summary.bytes)
        try write(event.bytes)
    }

    /// One TFRecord, flushed, so a crashed run's events up to the crash stay readable.
    private func write(_ data: [UInt8]) throws {
        var record: [UInt8] = []
        record.reserveCapacity(data.count + 16)
        let length = withUnsafeBytes(of: UInt64(data.count).littleEndian, Array.init)
        record += length
        record += withUnsafeBytes(of: CRC32C.masked(length).littleEndian, Array.init)
        record += data
        record += withUnsafeBytes(of: CRC32C.masked(data).littleEndian, Array.init)
        do {
            try handle.write(contentsOf: record)
            try handle.synchronize()
        } catch {
            throw StarlingIOError(file: path, message: "cannot write the event file: \(error.localizedDescription)")
        }
    }
}

/// The protobuf wire format, as far as event files need it.
struct Protobuf {
    private(set) var bytes: [UInt8] = []

    private mutating func rawVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func varint(_ field: Int, _ value: UInt64) {
        rawVarint(UInt64(field << 3 | 0))
        rawVarint(value)
    }

    mutating func double(_ field: Int, _ value: Double) {
        rawVarint(UInt64(field << 3 | 1))
        bytes += withUnsafeBytes(of: value.bitPattern.littleEndian, Array.init)
    }

    mutating func bytes(_ field: Int, _ value: [UInt8]) {
        rawVarint(UInt64(field << 3 | 2))
        rawVarint(UInt64(value.count))
        bytes += value
    }

    mutating func float(_ field: Int, _ value: Float) {
        rawVarint(UInt64(field << 3 | 5))
        bytes += withUnsafeBytes(of: value.bitPattern.littleEndian, Array.init)
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), and TFRecord's masking of it.
enum CRC32C {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    static func checksum(_ data: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        data.withUnsafeBufferPointer { bytes in
            table.withUnsafeBufferPointer { table in
                for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
            }
        }
        return crc ^ 0xFFFF_FFFF
    }

    /// TFRecord stores ((crc >> 15) | (crc << 17)) + 0xa282ead8, so that a CRC of data holding CRCs stays informative.
    static func masked(_ data: [UInt8]) -> UInt32 {
        let crc = checksum(data)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}
