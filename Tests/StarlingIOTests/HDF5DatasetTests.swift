import Foundation
import Testing
@testable import StarlingIO

@Suite struct HDF5DatasetTests {
    /// Writes `values` as a [2, 3] dataset of `type`, reopens the file read-only and reads them back as `T`.
    private func roundTrip<T: HDF5Scalar & Equatable>(_ values: [T], type: HDF5ElementType) throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/values.h5"
            let file = try HDF5File.create(path)
            try file.root.createDataset("values", type: type, shape: [2, 3]).write(values)
            file.close()

            let reopened = try HDF5File.open(path)
            let dataset = try reopened.root.dataset("values")
            #expect(dataset.elementType == type)
            #expect(dataset.shape == [2, 3])
            #expect(dataset.name == "/values")
            #expect(try dataset.read(as: T.self) == values)
        }
    }

    @Test func everyElementTypeRoundTrips() throws {
        try roundTrip([0, 1, 2, 127, 128, 255] as [UInt8], type: .uint8)
        try roundTrip([-128, -1, 0, 1, 64, 127] as [Int8], type: .int8)
        try roundTrip([-32768, -300, 0, 1, 300, 32767] as [Int16], type: .int16)
        try roundTrip([0, 1, 300, 40000, 65534, 65535] as [UInt16], type: .uint16)
        try roundTrip([Int32.min, -70000, 0, 1, 70000, Int32.max], type: .int32)
        try roundTrip([Int64.min, -(1 << 40), 0, 1, 1 << 40, Int64.max], type: .int64)
        try roundTrip([-1.5, 0, 0.25, 3.140625, 1e30, -1e-30] as [Float], type: .float32)
        try roundTrip([-1.5, 0, 0.1, Double.pi, 1e300, -1e-300] as [Double], type: .float64)
        // float16 stores Floats that half precision represents exactly.
        try roundTrip([-2.25, 0, 0.5, 1024, 65504, 0.0009765625] as [Float], type: .float16)
        #if !(os(macOS) && arch(x86_64))
        try roundTrip([-2.25, 0, 0.5, 1024, 65504, 0.0009765625] as [Float16], type: .float16)
        #endif
    }

    @Test func readsConvertBetweenTypes() throws {
        try withTemporaryDirectory { dir in
            let file = try HDF5File.create(dir + "/convert.h5")
            let half = try file.root.createDataset("half", type: .float16, shape: [3])
            try half.write([0.1, 1.0 / 3.0, 1000.7] as [Float])
            let stored = try half.read(as: Float.self)
            // Half precision keeps 11 significant bits: relative error below 2^-11.
            for (value, expected) in zip(stored, [0.1, 1.0 / 3.0, 1000.7] as [Float]) {
                #expect(abs(value - expected) <= expected * 0.0005)
            }
            let bytes = try file.root.createDataset("bytes", type: .uint8, shape: [4])
            try bytes.write([0, 7, 200, 255] as [UInt8])
            #expect(try bytes.read(as: Double.self) == [0, 7, 200, 255])
            #expect(try bytes.read(as: Int64.self) == [0, 7, 200, 255])
            let wide = try file.root.createDataset("wide", type: .float64, shape: [2])
            try wide.write([1.5, -2.0] as [Double])
            #expect(try wide.read(as: Float.self) == [1.5, -2.0])
        }
    }

    @Test func scalarAndEmptyDatasets() throws {
        try withTemporaryDirectory { dir in
            let file = try HDF5File.create(dir + "/shapes.h5")
            let scalar = try file.root.createDataset("scalar", type: .float64, shape: [])
            try scalar.write([42.5] as [Double])
            #expect(scalar.shape == [])
            #expect(try scalar.read(as: Double.self) == [42.5])
            let empty = try file.root.createDataset("empty", type: .float32, shape: [0, 5], deflate: 3)
            try empty.write([Float]())
            #expect(try empty.read(as: Float.self) == [])
            #expect(try empty.chunk == nil)
        }
    }

    @Test func rowRangesMatchTheWholeArray() throws {
        try withTemporaryDirectory { dir in
            let file = try HDF5File.create(dir + "/rows.h5")
            let shape = [10, 3, 2]
            var whole = (0..<60).map { Float($0) * 0.5 - 7 }
            let dataset = try file.root.createDataset("x", type: .float32, shape: shape)
            try dataset.write(whole)
            #expect(dataset.elementsPerRow == 6)

            #expect(try dataset.readRows(2..<7, as: Float.self) == Array(whole[12..<42]))
            #expect(try dataset.readRows(9..<10, as: Float.self) == Array(whole[54..<60]))
            #expect(try dataset.readRows(4..<4, as: Float.self) == [])
            var buffer = [Double](repeating: 0, count: 12)
            try buffer.withUnsafeMutableBufferPointer { try dataset.readRows(0..<2, into: $0) }
            #expect(buffer == whole[0..<12].map { Double($0) })

            let replacement = (0..<18).map { Float(100 + $0) }
            try dataset.writeRows(startingAt: 4, replacement)
            whole.replaceSubrange(24..<42, with: replacement)
            #expect(try dataset.read(as: Float.self) == whole)
            try replacement.withUnsafeBufferPointer { try dataset.writeRows(startingAt: 7, UnsafeBufferPointer(rebasing: $0[0..<12])) }
            whole.replaceSubrange(42..<54, with: replacement[0..<12])
            var readBack = [Float](repeating: 0, count: 60)
            try readBack.withUnsafeMutableBufferPointer { try dataset.read(into: $0) }
            #expect(readBack == whole)

            expectError(HDF5Error.self, containing: ["rows.h5", "/x", "out of range"]) {
                _ = try dataset.readRows(8..<11, as: Float.self)
            }
            expectError(HDF5Error.self, containing: ["/x", "not whole rows"]) {
                try dataset.writeRows(startingAt: 0, [Float](repeating: 0, count: 7))
            }
            expectError(HDF5Error.self, containing: ["/x", "out of range"]) {
                try dataset.writeRows(startingAt: 9, [Float](repeating: 0, count: 12))
            }
            expectError(HDF5Error.self, containing: ["/x", "cannot write 59 values"]) {
                try dataset.write([Float](repeating: 0, count: 59))
            }
        }
    }

    @Test func chunkedDeflatedDatasets() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/deflate.h5"
            let rows = 1000, columns = 50
            // Smooth, compressible values: a sine per column.
            let values = (0..<rows * columns).map { Float(sin(Double($0 % columns) * 0.1)) + Float($0 / columns) }
            let file = try HDF5File.create(path)
            let dataset = try file.root.createDataset("x", type: .float32, shape: [rows, columns], chunk: [64, columns], deflate: 6)
            try dataset.write(values)
            let repeated = try file.root.createDataset("zeros", type: .uint8, shape: [4096, 64], deflate: 9)
            try repeated.write([UInt8](repeating: 3, count: 4096 * 64))
            #expect(try repeated.chunk == HDF5Dataset.defaultChunk(shape: [4096, 64], elementSize: 1))
            #expect(try dataset.chunk == [64, columns])
            file.close()
            // 200 KB of float32 plus 256 KB of constant bytes must shrink.
            #expect(fileSize(path) < rows * columns * 4)

            let reopened = try HDF5File.open(path)
            let x = try reopened.root.dataset("x")
            #expect(try x.read(as: Float.self) == values)
            // A range straddling chunk boundaries (64, 128, 192).
            #expect(try x.readRows(60..<200, as: Float.self) == Array(values[60 * columns ..< 200 * columns]))
            #expect(try reopened.root.dataset("zeros").readRows(4000..<4096, as: UInt8.self) == [UInt8](repeating: 3, count: 96 * 64))
        }
    }

    @Test func defaultChunkSpansWholeRowsOfAbout256KiB() {
        #expect(HDF5Dataset.defaultChunk(shape: [60000, 28, 28], elementSize: 1) == [256, 28, 28])
        #expect(HDF5Dataset.defaultChunk(shape: [100, 28, 28], elementSize: 1) == [100, 28, 28])
        #expect(HDF5Dataset.defaultChunk(shape: [5000, 3, 300, 300], elementSize: 4) == [1, 3, 300, 300])
        #expect(HDF5Dataset.defaultChunk(shape: [1_000_000], elementSize: 4) == [65536])
    }

    @Test func concurrentReadersSeeTheSameData() async throws {
        try await withTemporaryDirectoryAsync { dir in
            let path = dir + "/shared.h5"
            let values = (0..<4096).map { Int32($0 * 3) }
            let file = try HDF5File.create(path)
            try file.root.createDataset("v", type: .int32, shape: [512, 8], chunk: [32, 8], deflate: 1).write(values)
            file.close()
            let dataset = try HDF5File.open(path).root.dataset("v")
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for task in 0..<8 {
                    group.addTask {
                        var ok = true
                        for start in stride(from: task * 8, to: 512 - 16, by: 37) {
                            let rows = try dataset.readRows(start..<start + 16, as: Int32.self)
                            ok = ok && rows == Array(values[start * 8 ..< (start + 16) * 8])
                        }
                        return ok
                    }
                }
                for try await ok in group { #expect(ok) }
            }
        }
    }
}
