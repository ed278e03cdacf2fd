/// What `MNIST.convert` read and wrote.
public struct MNISTSummary: Sendable, CustomStringConvertible {
    public let sourceDirectory: String
    public let outputPath: String
    public let height: Int
    public let width: Int
    /// Images in the source files (from their IDX headers): 60000 and 10000 for MNIST.
    public let trainAvailable: Int
    public let testAvailable: Int
    /// Images written (after `limitTrain` / `limitTest`).
    public let trainCount: Int
    public let testCount: Int
    /// Training images left out by `excludeTrainLabel`.
    public var trainExcluded = 0
    /// Written images per label 0...9.
    public let trainLabelCounts: [Int]
    public let testLabelCounts: [Int]

    public var description: String {
        "\(outputPath): \(trainCount) of \(trainAvailable) training and \(testCount) of \(testAvailable) test images, "
            + "\(height)x\(width), from \(sourceDirectory)"
    }
}

/// Converts the MNIST distribution (four IDX files) into one HDF5 file that Starling's data loader reads.
///
/// Output layout:
/// ```
/// /                attributes format="starling-mnist", format_version=1, source=<directory>, height, width
/// /train           attribute count
/// /train/images    uint8 [N, H, W], chunked [16, H, W] for 28x28 (about 16 KB a chunk, see `imageChunkBytes`)
/// /train/labels    uint8 [N], values 0...9
/// /test            the same for the t10k files
/// ```
public enum MNIST {
    public static let format = "starling-mnist"
    public static let formatVersion = 1
    /// Training reads rows in shuffled order, so every row read pulls its whole chunk from the file: small chunks
    /// keep that cheap. Measured on the full set, random 256-image batches read in ~8 ms with 256-row chunks
    /// (200 KB) and well under 1 ms with 16-row chunks (12 KB), while whole-range reads stay fast.
    public static let imageChunkBytes = 16 * 1024

    /// Reads train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte
    /// (each optionally .gz, and also the dotted names such as train-images.idx3-ubyte) from `sourceDirectory`,
    /// validates them all, then writes `outputPath` atomically. Nothing is written if any check fails.
    ///
    /// - limitTrain, limitTest: write only the first so many images of each split (for tests and quick runs);
    ///   the whole files are still read and validated.
    /// - excludeTrainLabel: leave the training images of this digit out (before `limitTrain`), to train an
    ///   autoencoder that has never seen it and detect it as an outlier; /train then records it as `excluded_label`.
    /// - deflate: optional gzip level for images and labels. Off by default: measured on the full set, the
    ///   uncompressed file is 55 MB against 12-13 MB deflated, but reads whole in 0.02 s instead of 0.18 s and
    ///   serves 2000 random 64-image batches in 0.06 s instead of 1.6 s (each batch inflates one or two chunks).
    @discardableResult
    public static func convert(sourceDirectory: String, outputPath: String, limitTrain: Int? = nil,
                               limitTest: Int? = nil, deflate: Int? = nil, excludeTrainLabel: Int? = nil,
                               imageSize: (height: Int, width: Int)? = nil) throws -> MNISTSummary {
        for limit in [limitTrain, limitTest] {
            if let limit, limit < 0 {
                throw StarlingIOError(file: sourceDirectory, message: "image limit \(limit) is negative")
            }
        }
        if let label = excludeTrainLabel, !(0...9).contains(label) {
            throw StarlingIOError(file: sourceDirectory, message: "cannot exclude label \(label): MNIST labels are digits 0...9")
        }
        let allTrain = try Split.load(directory: sourceDirectory, prefix: "train")
        let train = excludeTrainLabel.map { allTrain.excluding(label: UInt8($0)) } ?? allTrain
        let test = try Split.load(directory: sourceDirectory, prefix: "t10k")
        guard train.height == test.height, train.width == test.width else {
            throw StarlingIOError(file: sourceDirectory, message:
                "training images are \(train.height)x\(train.width) but test images are \(test.height)x\(test.width)")
        }
        // `data mnist` passes 28x28: an IDX set of another size (27x28 in both files) is a cut copy or another set.
        if let size = imageSize {
            for split in [train, test] where split.height != size.height || split.width != size.width {
                throw StarlingIOError(file: split.imagesPath, message:
                    "holds \(split.height)x\(split.width) images; MNIST's are \(size.height)x\(size.width) (--any-size converts other sizes)")
            }
        }
        let trainCount = min(train.count, limitTrain ?? train.count)
        let testCount = min(test.count, limitTest ?? test.count)

        try writeHDF5Atomically(to: outputPath) { file in
            let root = file.root
            try root.setAttribute("format", format)
            try root.setAttribute("format_version", formatVersion)
            try root.setAttribute("source", sourceDirectory)
            try root.setAttribute("height", train.height)
            try root.setAttribute("width", train.width)
            try train.write(into: root, group: "train", count: trainCount, deflate: deflate)
            if let label = excludeTrainLabel { try root.group("train").setAttribute("excluded_label", label) }
            try test.write(into: root, group: "test", count: testCount, deflate: deflate)
        }
        var summary = MNISTSummary(sourceDirectory: sourceDirectory, outputPath: outputPath,
                            height: train.height, width: train.width,
                            trainAvailable: allTrain.count, testAvailable: test.count,
                            trainCount: trainCount, testCount: testCount,
                            trainLabelCounts: train.labelCounts(first: trainCount),
                            testLabelCounts: test.labelCounts(first: testCount))
        summary.trainExcluded = allTrain.count - train.count
        return summary
    }

    /// The images and labels of one split, checked against each other.
    private struct Split {
        let imagesPath: String
        let images: IDXArray
        let labels: IDXArray
        var count: Int { labels.dimensions[0] }
        var height: Int { images.dimensions[1] }
        var width: Int { images.dimensions[2] }

        static func load(directory: String, prefix: String) throws -> Split {
            let imagesPath = try locate(directory: directory, prefix: prefix, kind: "images", rank: 3)
            let labelsPath = try locate(directory: directory, prefix: prefix, kind: "labels", rank: 1)
            let images = try IDX.read(imagesPath)
            let labels = try IDX.read(labelsPath)
            guard images.dimensions.count == 3 else {
                throw StarlingIOError(file: imagesPath, message: "has dimensions \(images.dimensions); images need [count, height, width]")
            }
            guard labels.dimensions.count == 1 else {
                throw StarlingIOError(file: labelsPath, message: "has dimensions \(labels.dimensions); labels need [count]")
            }
            guard images.dimensions[0] == labels.dimensions[0] else {
                throw StarlingIOError(file: imagesPath, message:
                    "holds \(images.dimensions[0]) images but \(labelsPath) holds \(labels.dimensions[0]) labels")
            }
            guard images.dimensions[1] > 0, images.dimensions[2] > 0 else {
                throw StarlingIOError(file: imagesPath, message: "empty image size \(images.dimensions[1])x\(images.dimensions[2])")
            }
            if let index = labels.bytes.firstIndex(where: { $0 > 9 }) {
                throw StarlingIOError(file: labelsPath, message: "label \(labels.bytes[index]) at index \(index) is not a digit 0...9")
            }
            return Split(imagesPath: imagesPath, images: images, labels: labels)
        }

        /// The first existing name of `<prefix>-<kind>-idx<rank>-ubyte`, its dotted variant
        /// `<prefix>-<kind>.idx<rank>-ubyte`, each optionally gzipped.
        private static func locate(directory: String, prefix: String, kind: String, rank: Int) throws -> String {
            let base = "\(prefix)-\(kind)-idx\(rank)-ubyte"
            let dotted = "\(prefix)-\(kind).idx\(rank)-ubyte"
            let candidates = [base, base + ".gz", dotted, dotted + ".gz"].map { directory + "/" + $0 }
            guard let found = candidates.first(where: fileExists) else {
                throw StarlingIOError(file: directory, message: "no such file \(base)(.gz) or \(dotted)(.gz)")
            }
            return found
        }

        func write(into root: HDF5Group, group name: String, count: Int, deflate: Int?) throws {
            let group = try root.createGroup(name)
            try group.setAttribute("count", count)
            let imageShape = [count, height, width]
            let imageDataset = try group.createDataset(
                "images", type: .uint8, shape: imageShape,
                chunk: HDF5Dataset.defaultChunk(shape: imageShape, elementSize: 1, targetBytes: imageChunkBytes), deflate: deflate)
            try images.bytes.withUnsafeBufferPointer {
                try imageDataset.write(UnsafeBufferPointer(rebasing: $0[0 ..< count * height * width]))
            }
            let labelDataset = try group.createDataset("labels", type: .uint8, shape: [count], deflate: deflate)
            try labels.bytes.withUnsafeBufferPointer {
                try labelDataset.write(UnsafeBufferPointer(rebasing: $0[0 ..< count]))
            }
        }

        /// The split without the images of `label`.
        func excluding(label: UInt8) -> Split {
            let size = height * width
            var keptImages: [UInt8] = [], keptLabels: [UInt8] = []
            for i in 0..<count where labels.bytes[i] != label {
                keptLabels.append(labels.bytes[i])
                keptImages.append(contentsOf: images.bytes[(i * size)..<((i + 1) * size)])
            }
            return Split(imagesPath: imagesPath, images: IDXArray(dimensions: [keptLabels.count, height, width], bytes: keptImages),
                         labels: IDXArray(dimensions: [keptLabels.count], bytes: keptLabels))
        }

        func labelCounts(first count: Int) -> [Int] {
            var counts = [Int](repeating: 0, count: 10)
            for label in labels.bytes.prefix(count) { counts[Int(label)] += 1 }
            return counts
        }
    }
}
