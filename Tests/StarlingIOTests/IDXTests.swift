import CZlib
import Foundation
import Testing
@testable import StarlingIO

/// Writes an IDX file byte by byte, independently of the reader: raw with Foundation, gzipped with zlib's gzwrite.
func writeIDX(_ path: String, dimensions: [Int], data: [UInt8], gzip: Bool = false,
              magic: [UInt8]? = nil, trailing: [UInt8] = []) throws {
    var bytes = magic ?? [0, 0, 0x08, UInt8(dimensions.count)]
    for dimension in dimensions {
        bytes += [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: dimension >> $0) }
    }
    bytes += data + trailing
    if gzip {
        guard let file = gzopen(path, "wb") else { throw StarlingIOError(file: path, message: "gzopen failed") }
        let written = bytes.withUnsafeBytes { gzwrite(file, $0.baseAddress, UInt32($0.count)) }
        guard gzclose(file) == Z_OK, written == bytes.count else { throw StarlingIOError(file: path, message: "gzwrite failed") }
    } else {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }
}

@Suite struct IDXTests {
    @Test func readsRawAndGzippedFiles() throws {
        try withTemporaryDirectory { dir in
            let data = (0..<24).map { UInt8($0 * 10) }
            try writeIDX(dir + "/raw-idx3-ubyte", dimensions: [2, 3, 4], data: data)
            try writeIDX(dir + "/packed-idx3-ubyte.gz", dimensions: [2, 3, 4], data: data, gzip: true)
            try writeIDX(dir + "/labels-idx1-ubyte.gz", dimensions: [5], data: [5, 0, 4, 1, 9], gzip: true)
            for name in ["raw-idx3-ubyte", "packed-idx3-ubyte.gz"] {
                let array = try IDX.read(dir + "/" + name)
                #expect(array.dimensions == [2, 3, 4])
                #expect(array.bytes == data)
            }
            let labels = try IDX.read(dir + "/labels-idx1-ubyte.gz")
            #expect(labels.dimensions == [5])
            #expect(labels.bytes == [5, 0, 4, 1, 9])
            // Sizes needing all four header bytes of a dimension.
            let big = [UInt8](repeating: 7, count: 70_000)
            try writeIDX(dir + "/big.gz", dimensions: [70_000], data: big, gzip: true)
            #expect(try IDX.read(dir + "/big.gz").bytes == big)
        }
    }

    @Test func malformedFilesAreErrors() throws {
        try withTemporaryDirectory { dir in
            let missing = dir + "/missing-idx1-ubyte"
            expectError(StarlingIOError.self, containing: [missing, "no such file"]) { _ = try IDX.read(missing) }

            let badMagic = dir + "/bad-magic"
            try writeIDX(badMagic, dimensions: [3], data: [1, 2, 3], magic: [0x1f, 0x00, 0x08, 0x01])
            expectError(StarlingIOError.self, containing: [badMagic, "bad magic"]) { _ = try IDX.read(badMagic) }

            let floats = dir + "/floats.gz"
            try writeIDX(floats, dimensions: [3], data: [1, 2, 3], gzip: true, magic: [0, 0, 0x0D, 0x01])
            expectError(StarlingIOError.self, containing: [floats, "0xd", "not unsigned byte"]) { _ = try IDX.read(floats) }

            let rank = dir + "/rank4"
            try writeIDX(rank, dimensions: [1, 1, 1, 1], data: [0])
            expectError(StarlingIOError.self, containing: [rank, "4 dimensions"]) { _ = try IDX.read(rank) }

            for gzip in [false, true] {
                let truncated = dir + "/truncated-\(gzip)"
                try writeIDX(truncated, dimensions: [2, 5], data: [1, 2, 3, 4, 5, 6, 7], gzip: gzip)
                expectError(StarlingIOError.self, containing: [truncated, "truncated", "10 data bytes", "has 7"]) {
                    _ = try IDX.read(truncated)
                }
                let trailing = dir + "/trailing-\(gzip)"
                try writeIDX(trailing, dimensions: [2], data: [1, 2], gzip: gzip, trailing: [0])
                expectError(StarlingIOError.self, containing: [trailing, "trailing data"]) { _ = try IDX.read(trailing) }
            }

            let short = dir + "/short"
            try Data([0, 0, 8]).write(to: URL(fileURLWithPath: short))
            expectError(StarlingIOError.self, containing: [short, "too short"]) { _ = try IDX.read(short) }

            // A gzip stream cut in the middle: zlib reports it rather than returning short data silently.
            let cut = dir + "/cut.gz"
            try writeIDX(cut, dimensions: [50_000], data: (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 7919) }, gzip: true)
            let packed = try Data(contentsOf: URL(fileURLWithPath: cut))
            try packed.prefix(packed.count / 2).write(to: URL(fileURLWithPath: cut))
            expectError(StarlingIOError.self, containing: [cut]) { _ = try IDX.read(cut) }
        }
    }
}
