import Foundation
import Testing
@testable import StarlingIO

@Suite struct MNISTTests {
    /// A tiny fake MNIST: `train` and `test` images of 4x3 pixels, pixel value = image index * 12 + offset.
    private func writeFakeMNIST(_ dir: String, train: Int = 5, test: Int = 3, dotted: Bool = false, gzip: Bool = true,
                                trainLabels: [UInt8]? = nil, testLabelCount: Int? = nil) throws {
        func name(_ prefix: String, _ kind: String, _ rank: Int) -> String {
            let base = dotted ? "\(prefix)-\(kind).idx\(rank)-ubyte" : "\(prefix)-\(kind)-idx\(rank)-ubyte"
            return dir + "/" + base + (gzip ? ".gz" : "")
        }
        func pixels(_ count: Int) -> [UInt8] { (0..<count * 12).map { UInt8(truncatingIfNeeded: $0 * 3) } }
        try writeIDX(name("train", "images", 3), dimensions: [train, 4, 3], data: pixels(train), gzip: gzip)
        try writeIDX(name("train", "labels", 1), dimensions: [train],
                     data: trainLabels ?? (0..<train).map { UInt8($0 % 10) }, gzip: gzip)
        try writeIDX(name("t10k", "images", 3), dimensions: [test, 4, 3], data: pixels(test), gzip: gzip)
        let testLabels = testLabelCount ?? test
        try writeIDX(name("t10k", "labels", 1), dimensions: [testLabels],
                     data: (0..<testLabels).map { UInt8(9 - $0 % 10) }, gzip: gzip)
    }

    @Test func convertsFakeMNIST() throws {
        try withTemporaryDirectory { dir in
            let source = dir + "/source"
            try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
            try writeFakeMNIST(source)
            let output = dir + "/mnist.h5"
            let summary = try MNIST.convert(sourceDirectory: source, outputPath: output)
            #expect(summary.trainCount == 5 && summary.testCount == 3)
            #expect(summary.trainAvailable == 5 && summary.testAvailable == 3)
            #expect(summary.height == 4 && summary.width == 3)
            #expect(summary.trainLabelCounts == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
            #expect(directoryContents(dir) == ["mnist.h5", "source"])

            let file = try HDF5File.open(output)
            #expect(try file.root.stringAttribute("format") == "starling-mnist")
            #expect(try file.root.intAttribute("format_version") == 1)
            #expect(try file.root.stringAttribute("source") == source)
            #expect(try file.root.childNames() == ["test", "train"])
            let train = try file.root.group("train")
            #expect(try train.intAttribute("count") == 5)
            let images = try train.dataset("images")
            #expect(images.shape == [5, 4, 3])
            #expect(images.elementType == .uint8)
            #expect(try images.chunk == [5, 4, 3])
            #expect(try images.read(as: UInt8.self) == (0..<60).map { UInt8($0 * 3) })
            #expect(try train.dataset("labels").read(as: UInt8.self) == [0, 1, 2, 3, 4])
            #expect(try file.root.dataset("test/labels").read(as: UInt8.self) == [9, 8, 7])
            #expect(try file.root.group("test").intAttribute("count") == 3)
        }
    }

    @Test func acceptsDottedRawNamesAndLimits() throws {
        try withTemporaryDirectory { dir in
            try writeFakeMNIST(dir, train: 7, test: 4, dotted: true, gzip: false)
            let output = dir + "/limited.h5"
            let summary = try MNIST.convert(sourceDirectory: dir, outputPath: output, limitTrain: 2, limitTest: 0, deflate: 4)
            #expect(summary.trainCount == 2 && summary.trainAvailable == 7)
            #expect(summary.testCount == 0 && summary.testAvailable == 4)
            let file = try HDF5File.open(output)
            #expect(try file.root.dataset("train/images").readRows(1..<2, as: UInt8.self) == (12..<24).map { UInt8($0 * 3) })
            #expect(try file.root.dataset("test/images").shape == [0, 4, 3])
            #expect(try file.root.group("test").intAttribute("count") == 0)
        }
    }

    @Test func invalidSourcesWriteNothing() throws {
        try withTemporaryDirectory { dir in
            let output = dir + "/out.h5"
            expectError(StarlingIOError.self, containing: [dir, "no such file", "train-images-idx3-ubyte"]) {
                try MNIST.convert(sourceDirectory: dir, outputPath: output)
            }

            try writeFakeMNIST(dir, testLabelCount: 2)
            expectError(StarlingIOError.self, containing: ["t10k-images-idx3-ubyte.gz", "3 images", "2 labels"]) {
                try MNIST.convert(sourceDirectory: dir, outputPath: output)
            }

            try writeFakeMNIST(dir, trainLabels: [1, 2, 10, 3, 4])
            expectError(StarlingIOError.self, containing: ["train-labels-idx1-ubyte.gz", "label 10 at index 2"]) {
                try MNIST.convert(sourceDirectory: dir, outputPath: output)
            }

            try writeFakeMNIST(dir)
            try writeIDX(dir + "/t10k-images-idx3-ubyte.gz", dimensions: [3, 4, 3], data: [UInt8](repeating: 0, count: 30), gzip: true)
            expectError(StarlingIOError.self, containing: ["t10k-images-idx3-ubyte.gz", "truncated"]) {
                try MNIST.convert(sourceDirectory: dir, outputPath: output)
            }
            expectError(StarlingIOError.self, containing: ["limit -1"]) {
                try MNIST.convert(sourceDirectory: dir, outputPath: output, limitTrain: -1)
            }
            #expect(!directoryContents(dir).contains { $0.hasPrefix("out.h5") })
        }
    }

    /// The real MNIST download: full headers and labels are read and validated, only a few images written.
    @Test func convertsTheRealMNIST() throws {
        let source = sharedData + "/mnist"
        try withTemporaryDirectory { dir in
            let output = dir + "/mnist.h5"
            let summary = try MNIST.convert(sourceDirectory: source, outputPath: output, limitTrain: 300, limitTest: 20)
            #expect(summary.trainAvailable == 60000)
            #expect(summary.testAvailable == 10000)
            #expect(summary.height == 28 && summary.width == 28)
            #expect(summary.trainCount == 300 && summary.testCount == 20)

            let file = try HDF5File.open(output)
            let trainLabels = try file.root.dataset("train/labels").read(as: UInt8.self)
            #expect(trainLabels.prefix(5) == [5, 0, 4, 1, 9])
            #expect(try file.root.dataset("test/labels").readRows(0..<1, as: UInt8.self) == [7])
            let images = try file.root.dataset("train/images")
            #expect(images.shape == [300, 28, 28])
            #expect(try images.chunk == [16, 28, 28])
            // The first image (a 5) has ink in the middle and blank borders.
            let first = try images.readRows(0..<1, as: UInt8.self)
            #expect(first.prefix(28).allSatisfy { $0 == 0 })
            #expect(first.filter { $0 > 128 }.count > 50)
        }
    }
}
