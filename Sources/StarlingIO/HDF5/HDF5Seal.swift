import CZlib
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// A checksum sealed into an HDF5 file's user block, checked before HDF5 reads a byte of the file.
///
/// HDF5 trusts its own structures: a damaged file can make the library read a global heap in a loop that never ends
/// (seen with Debian's HDF5 1.10.8 on a mutated checkpoint: `H5Aread` -> `H5HG_read` on a variable-length string)
/// rather than fail. A file Starling seals carries, in the 512-byte user block HDF5 keeps in front of the superblock
/// (and skips when it opens the file, as h5py does), the length and CRC-32 of everything after the block. `HDF5File.open`
/// checks them first, so a sealed file that was cut short or changed after it was written is refused with one line
/// before HDF5 parses it. Files without the block (datasets, files from other tools, checkpoints written before
/// sealing) open as before.
///
/// Block layout (little-endian): the 16-byte magic, format version (UInt32), payload length in bytes (UInt64),
/// CRC-32 of the payload (UInt32), zeros to 512.
public enum HDF5Seal {
    /// The user block's size: HDF5's smallest.
    public static let blockSize = 512
    static let magic = Array("STARLING-SEALED\n".utf8)
    static let version: UInt32 = 1

    /// Whether `path` begins with a seal (it may still fail `verify`).
    public static func isSealed(_ path: String) -> Bool {
        guard let header = try? readHeader(path) else { return false }
        return Array(header[0..<magic.count]) == magic
    }

    /// Writes the seal into the user block of a closed HDF5 file created with a `blockSize` user block.
    public static func seal(_ path: String, reportAs name: String) throws {
        let fd = Glibc.open(path, O_RDWR)
        guard fd >= 0 else { throw StarlingIOError(file: name, message: "cannot open to seal: \(errnoString())") }
        defer { Glibc.close(fd) }
        let (length, crc) = try checksum(fd: fd, name: name)
        var block = [UInt8](repeating: 0, count: blockSize)
        block.replaceSubrange(0..<magic.count, with: magic)
        put(version, at: 16, in: &block)
        put(length, at: 20, in: &block)
        put(crc, at: 28, in: &block)
        let written = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, blockSize, 0) }
        guard written == blockSize else { throw StarlingIOError(file: name, message: "cannot write the seal: \(errnoString())") }
    }

    /// Throws, naming `path`, if the file is sealed and its length or checksum do not match; returns whether it is sealed.
    @discardableResult
    public static func verify(_ path: String) throws -> Bool {
        guard let header = try readHeader(path), Array(header[0..<magic.count]) == magic else { return false }
        let version: UInt32 = get(16, from: header)
        guard version == Self.version else {
            throw StarlingIOError(file: path, message: "sealed with format version \(version); this build reads version \(Self.version)")
        }
        let fd = Glibc.open(path, O_RDONLY)
        guard fd >= 0 else { throw StarlingIOError(file: path, message: "cannot open: \(errnoString())") }
        defer { Glibc.close(fd) }
        let expectedLength: UInt64 = get(20, from: header), expectedCRC: UInt32 = get(28, from: header)
        let (length, crc) = try checksum(fd: fd, name: path)
        guard length == expectedLength else {
            throw StarlingIOError(file: path, message: "damaged: \(length) bytes after the seal where \(expectedLength) were written (cut short or appended to)")
        }
        guard crc == expectedCRC else {
            throw StarlingIOError(file: path, message: "damaged: its checksum does not match the one written with it (bytes changed after writing)")
        }
        return true
    }

    /// The first `blockSize` bytes, or nil for a shorter file.
    private static func readHeader(_ path: String) throws -> [UInt8]? {
        let fd = Glibc.open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var header = [UInt8](repeating: 0, count: blockSize)
        let n = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, blockSize, 0) }
        return n == blockSize ? header : nil
    }

    /// Length and CRC-32 of the bytes after the user block.
    private static func checksum(fd: Int32, name: String) throws -> (UInt64, UInt32) {
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buffer.deallocate() }
        var crc = crc32(0, nil, 0)
        var offset = off_t(blockSize), length: UInt64 = 0
        while true {
            let n = pread(fd, buffer, chunk, offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw StarlingIOError(file: name, message: "cannot read: \(errnoString())")
            }
            if n == 0 { break }
            crc = crc32(crc, buffer.assumingMemoryBound(to: Bytef.self), uInt(n))
            offset += off_t(n)
            length += UInt64(n)
        }
        return (length, UInt32(truncatingIfNeeded: crc))
    }

    private static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in block: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { block.replaceSubrange(offset..<(offset + MemoryLayout<T>.size), with: $0) }
    }

    private static func get<T: FixedWidthInteger>(_ offset: Int, from block: [UInt8]) -> T {
        var value = T.zero
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: block[offset..<(offset + MemoryLayout<T>.size)]) }
        return T(littleEndian: value)
    }
}
