import CZlib

/// An array read from an IDX file (the format MNIST is distributed in): big-endian header, then the elements.
public struct IDXArray: Sendable {
    /// E.g. [60000, 28, 28] for MNIST training images, [60000] for its labels.
    public let dimensions: [Int]
    /// The elements in row-major order; `dimensions.reduce(1, *)` of them.
    public let bytes: [UInt8]

    public init(dimensions: [Int], bytes: [UInt8]) {
        self.dimensions = dimensions
        self.bytes = bytes
    }
}

/// Reader for unsigned-byte IDX files (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"):
/// magic 0x00 0x00 0x08 <rank>, then `rank` big-endian UInt32 dimensions, then the bytes.
public enum IDX {
    /// Reads a raw or gzip-compressed IDX file (zlib's gzread passes raw files through unchanged).
    /// The data must be exactly as long as the header says: a short file is reported as truncated, extra bytes
    /// as trailing data, since either means the download or the decompression went wrong.
    public static func read(_ path: String) throws -> IDXArray {
        guard fileExists(path) else { throw StarlingIOError(file: path, message: "no such file") }
        guard let file = gzopen(path, "rb") else {
            throw StarlingIOError(file: path, message: "cannot open: \(errnoString())")
        }
        defer { gzclose(file) }
        gzbuffer(file, 1 << 17)

        let header = try readUpTo(4, from: file, path: path)
        guard header.count == 4 else {
            throw StarlingIOError(file: path, message: "too short for an IDX header (\(header.count) bytes)")
        }
        guard header[0] == 0, header[1] == 0 else {
            let magic = header.map { String($0, radix: 16) }.joined(separator: " ")
            throw StarlingIOError(file: path, message: "bad magic number (bytes \(magic)): not an IDX file")
        }
        guard header[2] == 0x08 else {
            throw StarlingIOError(file: path, message: "element type 0x\(String(header[2], radix: 16)) is not unsigned byte (0x08)")
        }
        let rank = Int(header[3])
        guard (1...3).contains(rank) else {
            throw StarlingIOError(file: path, message: "\(rank) dimensions; expected 1 to 3")
        }

        let dimensionBytes = try readUpTo(4 * rank, from: file, path: path)
        guard dimensionBytes.count == 4 * rank else {
            throw StarlingIOError(file: path, message: "truncated header: \(rank) dimensions need \(4 * rank) bytes, file has \(dimensionBytes.count)")
        }
        let dimensions = (0..<rank).map { i in
            dimensionBytes[4 * i ..< 4 * i + 4].reduce(0) { $0 << 8 | Int($1) }
        }
        // At most 3 factors below 2^32 each: can overflow Int64, so check.
        var expected = 1
        for dimension in dimensions {
            let (product, overflow) = expected.multipliedReportingOverflow(by: dimension)
            guard !overflow else { throw StarlingIOError(file: path, message: "dimensions \(dimensions) are too large") }
            expected = product
        }

        let bytes = try readUpTo(expected, from: file, path: path)
        guard bytes.count == expected else {
            throw StarlingIOError(file: path, message:
                "truncated: header \(dimensions) declares \(expected) data bytes, file has \(bytes.count)")
        }
        guard try readUpTo(1, from: file, path: path).isEmpty else {
            throw StarlingIOError(file: path, message: "trailing data after the \(expected) bytes the header \(dimensions) declares")
        }
        return IDXArray(dimensions: dimensions, bytes: bytes)
    }

    /// Reads up to `count` bytes; fewer only at the end of the file. Grows the array chunk by chunk instead of
    /// allocating `count` up front, so a corrupt header cannot make us allocate gigabytes for a small file.
    private static func readUpTo(_ count: Int, from file: gzFile, path: String) throws -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(min(count, 64 << 20))
        let chunkSize = 1 << 20
        var chunk = [UInt8](repeating: 0, count: min(count, chunkSize))
        while bytes.count < count {
            let wanted = min(chunkSize, count - bytes.count)
            let got = chunk.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32(wanted)) }
            guard got >= 0 else {
                var code: Int32 = 0
                let message = gzerror(file, &code).map { String(cString: $0) } ?? "unknown error"
                throw StarlingIOError(file: path, message: "read failed: \(message)")
            }
            if got == 0 { break }
            bytes.append(contentsOf: chunk[..<Int(got)])
        }
        return bytes
    }
}
