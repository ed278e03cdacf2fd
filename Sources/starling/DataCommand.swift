import ArgumentParser
import Foundation
import StarlingIO
import StarlingModels

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data", abstract: "Convert datasets into Starling's HDF5 layout.", subcommands: [MNISTCommand.self, DetectionDataCommand.self, SegmentationDataCommand.self])
}

struct MNISTCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mnist",
        abstract: "Convert the four MNIST IDX files (raw or .gz) into one HDF5 file with /train and /test.")

    @Option(help: "Folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz].")
    var source: String

    @Option(help: "The HDF5 file to write (written atomically).")
    var out: String

    @Option(help: "Keep only the first N training images.")
    var limitTrain: Int?

    @Option(help: "Keep only the first N test images.")
    var limitTest: Int?

    @Option(help: "Leave the training images of this digit out of /train (to detect it as an outlier later).")
    var excludeTrainLabel: Int?

    @Flag(help: "Convert IDX images of any size (train and test must still agree); without it images must be 28x28.")
    var anySize = false

    func validate() throws {
        if let n = limitTrain, n <= 0 { throw ValidationError("--limit-train must be positive") }
        if let n = limitTest, n <= 0 { throw ValidationError("--limit-test must be positive") }
        if let l = excludeTrainLabel, !(0...9).contains(l) { throw ValidationError("--exclude-train-label must be a digit 0...9") }
    }

    func run() throws {
        let summary = try reportingErrors {
            try MNIST.convert(sourceDirectory: source, outputPath: out, limitTrain: limitTrain, limitTest: limitTest, excludeTrainLabel: excludeTrainLabel,
                              imageSize: anySize ? nil : (28, 28))
        }
        print("wrote \(summary)")
        if let l = excludeTrainLabel { print("left \(summary.trainExcluded) training images of digit \(l) out of /train") }
    }
}

struct DetectionDataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detection",
        abstract: "Convert a labelled detection set into one HDF5 file with /train and /val (images resized to one size).",
        discussion: """
            Formats: udacity (the course CSV frame,xmin,xmax,ymin,ymax,class_id), autti (Udacity's labels.csv, or a \
            folder of its VOC-style XML), crowdai (Udacity's CSV), kitti (label_2 folder), voc (Annotations folder; \
            also Penn-Fudan's Annotation folder), coco (instances JSON), yolo (labels folder; classes from --classes \
            or --names), ssd-keras (the HDF5 file ssd_keras's create_hdf5_dataset writes; --images not used).
            Bad input (a broken or missing image, a box outside the image, an empty box, an unknown class) is \
            reported with its file and line; --strict (the default) then writes nothing, --skip-bad leaves the \
            image out and counts it.
            """)

    enum BadInput: String, EnumerableFlag {
        case strict, skipBad
        static func help(for value: BadInput) -> ArgumentHelp? {
            value == .strict ? "Refuse the whole set if anything is wrong (default)." : "Leave out bad images and count them."
        }
    }

    @Option(help: "Label format: \(DetectionImportFormat.allCases.map(\.rawValue).joined(separator: ", ")).")
    var format: String
    @Option(help: "The images folder.") var images: String?
    @Option(help: "The label file or folder (the HDF5 file for ssd-keras).") var labels: String
    @Option(help: "The HDF5 file to write (written atomically).") var out: String
    @Option(help: "Stored image height.") var height: Int = 300
    @Option(help: "Stored image width.") var width: Int = 480
    @Option(help: "Fraction of the images for /val, chosen at random with --seed (default 0.1).") var valFraction: Double?
    @Option(help: "Seed of the --val-fraction choice.") var seed: UInt64 = 0
    @Option(help: "A file naming the /val images, one a line (file name or stem).") var valList: String?
    @Option(help: "Class names in id order, comma-separated.") var classes: String?
    @Option(help: "A file of class names, one a line (a darknet .names file).") var names: String?
    @Option(help: "ssd-keras: the meaning of each label value (default class_id,xmin,ymin,xmax,ymax).") var labelFormat: String?
    @Option(help: "gzip level 0-9 for the images (default: off).") var deflate: Int?
    @Flag var badInput: BadInput = .strict

    func validate() throws {
        guard DetectionImportFormat(rawValue: format) != nil else {
            throw ValidationError("unknown --format '\(format)'; use one of \(DetectionImportFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard height > 0, width > 0 else { throw ValidationError("--height and --width must be positive") }
        if valFraction != nil && valList != nil { throw ValidationError("give --val-fraction or --val-list, not both") }
        if let f = valFraction, !(0...1).contains(f) { throw ValidationError("--val-fraction must be in 0...1") }
        if classes != nil && names != nil { throw ValidationError("give --classes or --names, not both") }
        if let d = deflate, !(0...9).contains(d) { throw ValidationError("--deflate must be in 0...9") }
    }

    func run() throws {
        var options = DetectionImportOptions(format: DetectionImportFormat(rawValue: format)!, images: images, labels: labels, output: out)
        options.height = height
        options.width = width
        options.split = valList.map { .list($0) } ?? .fraction(valFraction ?? 0.1, seed: seed)
        options.skipBad = badInput == .skipBad
        options.deflate = deflate
        options.progress = { line in print(line); fflush(nil) }
        if let labelFormat { options.labelColumns = labelFormat.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        let summary = try reportingErrors { () throws -> DetectionImportSummary in
            if let classes { options.classes = classes.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) } }
            if let names {
                guard let text = try? String(contentsOfFile: names, encoding: .utf8) else {
                    throw DataError(file: names, message: "cannot read the class names file")
                }
                options.classes = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            }
            do {
                return try DetectionImport.run(options)
            } catch let error as DetectionImportError {
                printIssues(error.issues)
                throw error
            }
        }
        printIssues(summary.issues)
        print(summary)
    }

    /// The problems, one a line on stderr, at most 50 of them.
    private func printIssues(_ issues: [ImportIssue]) {
        let shown = 50
        var text = issues.prefix(shown).map { "\($0)\n" }.joined()
        if issues.count > shown { text += "... and \(issues.count - shown) more\n" }
        FileHandle.standardError.write(Data(text.utf8))
    }
}

struct SegmentationDataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "segmentation",
        abstract: "Convert a segmentation set into one HDF5 file with /train and /val (and CamVid's /test when present).",
        discussion: """
            Formats: membrane (ISBI-2012 EM, zhixuhao/unet's layout: train/image, train/label; labels 255 cell, 0 \
            membrane; --val-count images held out, default 5), camvid (SegNet's layout: train, trainannot and, when \
            present, val, valannot, test, testannot; labels gray class indices 0-11 or RGB colours, Unlabelled void; \
            without a val folder the sequence --val-sequence is held out, default 0001TP), pennfudan (PNGImages and \
            PedMasks; per-instance masks kept; --val-count default 50). Images are streamed one at a time; any bad \
            input (unreadable file, a label of another size, an unknown CamVid colour or index, an empty instance) \
            stops the import with one line naming the file, and nothing is written.
            """)

    @Option(help: "Set layout: \(SegmentationImportFormat.allCases.map(\.rawValue).joined(separator: ", ")).") var format: String
    @Option(help: "The set's folder.") var source: String
    @Option(help: "The HDF5 file to write (written atomically).") var out: String
    @Option(help: "Stored height (default: the images' own; needed for sets of mixed sizes such as Penn-Fudan).") var height: Int?
    @Option(help: "Stored width (default: the images' own).") var width: Int?
    @Option(help: "membrane, pennfudan: images held out for /val, spread evenly over the set.") var valCount: Int?
    @Option(help: "camvid without a val folder: the sequence held out for /val (default 0001TP).") var valSequence: String?

    func validate() throws {
        guard SegmentationImportFormat(rawValue: format) != nil else {
            throw ValidationError("unknown --format '\(format)'; use one of \(SegmentationImportFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let h = height, h <= 0 { throw ValidationError("--height must be positive") }
        if let w = width, w <= 0 { throw ValidationError("--width must be positive") }
        if (height == nil) != (width == nil) { throw ValidationError("give --height and --width together") }
        if let n = valCount, n < 0 { throw ValidationError("--val-count must not be negative") }
    }

    func run() throws {
        guard let format = SegmentationImportFormat(rawValue: format) else { throw ValidationError("unknown --format '\(self.format)'") }
        var options = SegmentationImportOptions(format: format, source: source, output: out)
        options.height = height
        options.width = width
        options.valCount = valCount
        options.valSequence = valSequence
        options.progress = { line in print(line); fflush(nil) }
        let summary = try reportingErrors { try SegmentationImport.run(options) }
        print(summary)
    }
}
