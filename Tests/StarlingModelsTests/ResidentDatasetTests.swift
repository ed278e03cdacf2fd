import Testing
import StarlingCore
import StarlingData
@testable import StarlingModels

/// A small split is held in memory after its first batch (`ImageDataset.residentLimit`); its batches must be the
/// ones read from the file, value for value, labels and order included.
@Suite struct ResidentDatasetTests {
    @Test func batchesFromMemoryEqualBatchesFromTheFile() throws {
        let path = try Fixture.sampleHDF5()
        let resident = try ImageDataset(path: path, split: "train")
        let fromFile = try ImageDataset(path: path, split: "train", residentLimit: 0)
        #expect(!resident.isResident)
        var rng = RandomGenerator(seed: 3, stream: 0)
        let size = resident.sampleSize
        // Scattered rows, a run of consecutive ones, a repeated one, the first and the last.
        var batches = (0..<4).map { _ in Array(rng.permutation(resident.count).prefix(37)) }
        batches.append([5, 6, 7, 8, 2, 2, 0, resident.count - 1])
        for indices in batches {
            var a = [Float](repeating: -1, count: indices.count * size), b = a
            let labelsA = try a.withUnsafeMutableBufferPointer { try resident.read(indices: indices, into: $0.baseAddress!) }
            let labelsB = try b.withUnsafeMutableBufferPointer { try fromFile.read(indices: indices, into: $0.baseAddress!) }
            #expect(a.map(\.bitPattern) == b.map(\.bitPattern))
            #expect(labelsA == labelsB && labelsA != nil)
            #expect(a.contains { $0 > 0 } && !a.contains { $0 < 0 || $0 > 1 })
            // Each value is its byte times 1 / 255, one rounded multiply (as the scalar loop before the gather kernels).
            #expect(a.allSatisfy { v in (Float(UInt8((v * 255).rounded())) * (1 / 255 as Float)).bitPattern == v.bitPattern })
        }
        #expect(resident.isResident && !fromFile.isResident)
        // Whole batches (their tensors are not zero-filled first: the gather must write every value).
        for indices in batches {
            let (a, b) = (try resident.batch(indices: indices, modelInputShape: [784]), try fromFile.batch(indices: indices, modelInputShape: [28, 28]))
            var expected = [Float](repeating: -1, count: indices.count * size)
            _ = try expected.withUnsafeMutableBufferPointer { try fromFile.read(indices: indices, into: $0.baseAddress!) }
            #expect(a.images.toArray().map(\.bitPattern) == expected.map(\.bitPattern) && b.images.toArray() == a.images.toArray())
            #expect(a.images.shape == [indices.count, 784] && b.images.shape == [indices.count, 28, 28] && a.indices == indices.sorted())
        }
        // A model whose input does not hold one sample is refused, naming the file.
        #expect(throws: DataError.self) { _ = try resident.batch(indices: [0], modelInputShape: [28, 27]) }
        // A bad index is refused as before, naming the file.
        var out = [Float](repeating: 0, count: size)
        #expect(throws: (any Error).self) { try out.withUnsafeMutableBufferPointer { _ = try resident.read(indices: [resident.count], into: $0.baseAddress!) } }
        // A split larger than the limit is read from the file.
        let small = try ImageDataset(path: path, split: "train", residentLimit: resident.count * size - 1)
        _ = try out.withUnsafeMutableBufferPointer { try small.read(indices: [1], into: $0.baseAddress!) }
        #expect(!small.isResident)
    }

    /// A split from `hugePagesFrom` on lives in a mapping of its own, its bytes starting on a 2 MB boundary (where
    /// the kernel may back them with huge pages); a smaller one in plain memory. Every byte is writable and kept.
    @Test func residentPixelsHoldEveryByte() {
        for count in [1, 4096, ResidentPixels.hugePagesFrom + 12_345] {
            let pixels = ResidentPixels(count: count)
            #if os(Linux)
            if count >= ResidentPixels.hugePagesFrom { #expect(Int(bitPattern: pixels.base) % (2 << 20) == 0) }
            #endif
            for i in stride(from: 0, to: count, by: 4093) { pixels.base[i] = UInt8(truncatingIfNeeded: i) }
            pixels.base[count - 1] = 0xA5
            #expect(stride(from: 0, to: count - 1, by: 4093).allSatisfy { pixels.base[$0] == UInt8(truncatingIfNeeded: $0) })
            #expect(pixels.base[count - 1] == 0xA5)
        }
    }
}
