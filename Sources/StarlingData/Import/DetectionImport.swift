import Foundation
import StarlingCore
import StarlingIO
import StarlingNN

/// Label formats `starling data detection` reads.
public enum DetectionImportFormat: String, CaseIterable, Sendable {
    case udacity, autti, crowdai, kitti, voc, coco, yolo
    case ssdKeras = "ssd-keras"
}

/// How images are divided between `/train` and `/val`.
public enum ValidationSplit: Sendable {
    /// A seeded random `fraction` of the labelled images (the same images for the same seed and labels).
    case fraction(Double, seed: UInt64)
    /// The images named in a file, one a line (file name, path or stem, as VOC's ImageSets/Main/val.txt lists them).
    case list(String)
}

public struct DetectionImportOptions: Sendable {
    public var format: DetectionImportFormat
    /// The images folder (not used by ssd-keras, whose images are in the HDF5 file).
    public var images: String?
    /// The label file or folder (the HDF5 file for ssd-keras).
    public var labels: String
    public var output: String
    public var height = 300
    public var width = 480
    public var split = ValidationSplit.fraction(0.1, seed: 0)
    /// The class names, in id order: required for yolo and ssd-keras (whose files hold only ids), optional for
    /// udacity (default car, truck, pedestrian, bicyclist, light), voc (default: the names found, sorted) and coco
    /// (default: the categories); labels outside the list are unknown classes.
    public var classes: [String]?
    /// Skip and count bad images instead of refusing the whole set.
    public var skipBad = false
    /// The meaning of each value of an ssd_keras label row.
    public var labelColumns = SSDKerasSource.defaultColumns
    /// Optional gzip level for the images (off: reading is faster, the file about twice as large).
    public var deflate: Int?
    /// Receives progress lines while images are written.
    public var progress: (@Sendable (String) -> Void)?

    public init(format: DetectionImportFormat, images: String?, labels: String, output: String) {
        self.format = format
        self.images = images
        self.labels = labels
        self.output = output
    }
}

/// The set was refused (`--strict`): every problem found, nothing written.
public struct DetectionImportError: Error, CustomStringConvertible {
    public let issues: [ImportIssue]
    public var description: String {
        guard let first = issues.first else { return "no problems" }
        let more = issues.count > 1 ? " (and \(issues.count - 1) more problem\(issues.count > 2 ? "s" : ""))" : ""
        return "\(first)\(more); nothing written (--skip-bad skips bad images and counts them)"
    }
}

/// What an import wrote and what it left out.
public struct DetectionImportSummary: Sendable, CustomStringConvertible {
    public let output: String
    public let height: Int, width: Int
    /// Foreground classes, in id order.
    public let classNames: [String]
    /// Images written to `/train` and `/val`.
    public var trainImages = 0, valImages = 0
    /// Positive (non-difficult) boxes per class, per split: index 0 is class 1.
    public var trainBoxes: [Int], valBoxes: [Int]
    /// Difficult boxes (all classes), per split.
    public var trainDifficult = 0, valDifficult = 0
    /// Images left out (--skip-bad), each counted once under its first problem.
    public var skippedImages: [ImportProblem: Int] = [:]
    /// Label rows left out that belong to no image (too broken to name one), and unmatched --val-list names.
    public var skippedRows: [ImportProblem: Int] = [:]
    /// Every problem found (printed by the command).
    public var issues: [ImportIssue] = []
    /// Boxes that reached past the image border and were clipped to it.
    public var clippedBoxes = 0
    /// Images whose annotations were made for another size (VOC `<size>`, COCO width/height) and were rescaled.
    public var rescaledAnnotations = 0
    /// Images found under their Roboflow export name.
    public var roboflowNames = 0
    /// KITTI DontCare regions (stored as one difficult box per class).
    public var dontCareRegions = 0
    /// Objects dropped on purpose, by source label (KITTI Misc, Tram).
    public var droppedObjects: [String: Int] = [:]
    public var notes: [String] = []

    init(output: String, height: Int, width: Int, classNames: [String]) {
        self.output = output
        self.height = height
        self.width = width
        self.classNames = classNames
        trainBoxes = Array(repeating: 0, count: classNames.count)
        valBoxes = trainBoxes
    }

    public var description: String {
        var lines = ["wrote \(output): \(trainImages + valImages) images (train \(trainImages), val \(valImages)), \(width)x\(height), \(classNames.count) classes"]
        let nameWidth = max(10, classNames.map(\.count).max() ?? 0)
        func row(_ name: String, _ a: Int, _ b: Int) -> String {
            name.padding(toLength: nameWidth, withPad: " ", startingAt: 0) + String(format: " %8d %8d", a, b)
        }
        lines.append("boxes".padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "    train      val")
        for (k, name) in classNames.enumerated() { lines.append(row(name, trainBoxes[k], valBoxes[k])) }
        lines.append(row("difficult", trainDifficult, valDifficult))
        func counts(_ title: String, _ table: [ImportProblem: Int]) {
            let total = table.values.reduce(0, +)
            guard total > 0 else { return }
            lines.append("\(title): \(total) (" + table.keys.sorted().map { "\($0.rawValue) \(table[$0]!)" }.joined(separator: ", ") + ")")
        }
        counts("skipped images", skippedImages)
        counts("skipped label rows", skippedRows)
        if clippedBoxes > 0 { lines.append("boxes clipped to the image: \(clippedBoxes)") }
        if rescaledAnnotations > 0 { lines.append("images whose annotations were made for another size (rescaled): \(rescaledAnnotations)") }
        if roboflowNames > 0 { lines.append("images found under their Roboflow export name: \(roboflowNames)") }
        if dontCareRegions > 0 { lines.append("DontCare regions: \(dontCareRegions) (each stored as \(classNames.count) ignore regions, one per class: difficult for training and VOC, iscrowd for COCO)") }
        for label in droppedObjects.keys.sorted() { lines.append("dropped \(label) objects: \(droppedObjects[label]!)") }
        lines += notes
        return lines.joined(separator: "\n")
    }
}

/// Converts a labelled detection set into Starling's HDF5 layout (see `DetectionDataset`).
///
/// Three passes, so that nothing is written unless the whole set is good (or `skipBad` says to leave out what
/// is not): the labels are parsed (every row checked), every image is located and its size read from its header
/// (every box checked against it: clipped if it reaches past the border, refused if it lies fully outside), and
/// only then are the images decoded, resized and written one at a time into a temporary file that is renamed
/// into place at the end. Memory holds the labels and one image, not the set.
public enum DetectionImport {
    public static func run(_ options: DetectionImportOptions) throws -> DetectionImportSummary {
        guard options.height > 0, options.width > 0 else {
            throw DataError(file: options.output, message: "image size \(options.width)x\(options.height) is empty")
        }
        // 1. Labels.
        var ssd: SSDKerasSource?
        var directory: ImageDirectory?
        if options.format != .ssdKeras {
            guard let images = options.images else { throw DataError(file: options.labels, message: "--images is needed for \(options.format.rawValue)") }
            directory = try ImageDirectory(root: images)
        }
        var parsed: ParsedLabels
        switch options.format {
        case .udacity: parsed = try CSVLabels.parseUdacity(options.labels)
        case .crowdai: parsed = try CSVLabels.parseCrowdAI(options.labels)
        case .autti: parsed = try isDirectory(options.labels)
            ? VOCLabels.parse(directory: options.labels, oneBased: false) : CSVLabels.parseAutti(options.labels)
        case .kitti: parsed = try KITTILabels.parse(directory: options.labels)
        case .voc: parsed = try VOCLabels.parse(directory: options.labels, oneBased: true)
        case .coco: parsed = try COCOLabels.parse(options.labels)
        case .yolo: parsed = try YOLOLabels.parse(labels: options.labels, images: directory!)
        case .ssdKeras:
            let source = try SSDKerasSource(path: options.labels)
            parsed = try source.parse(columns: options.labelColumns)
            ssd = source
        }
        guard !parsed.images.isEmpty else {
            throw DataError(file: options.labels, message: "no labelled images: an empty dataset (a label file with only its header, or an empty folder)")
        }
        let mapping = try classMapping(options, parsed)

        // 2. Images located, sizes read, boxes checked and scaled.
        var summary = DetectionImportSummary(output: options.output, height: options.height, width: options.width,
                                             classNames: mapping.names)
        summary.notes = parsed.notes
        var prepared = parsed.images.enumerated().map { i, image in
            prepare(image, index: i, mapping: mapping, directory: directory, ssd: ssd, options: options)
        }
        var looseIssues = parsed.looseIssues

        // 3. The split, decided on the labelled images before any is left out, so leaving one out moves no other.
        let isVal = try assignSplit(options.split, prepared: &prepared, looseIssues: &looseIssues)

        let issues = looseIssues + prepared.flatMap(\.problems)
        if !issues.isEmpty && !options.skipBad { throw DetectionImportError(issues: issues) }
        summary.issues = issues
        guard prepared.contains(where: { $0.problems.isEmpty }) else {
            throw DataError(file: options.labels, message: "--skip-bad skipped every image (\(issues.count) problem(s), the first: \(issues.first.map { "\($0)" } ?? "none")): an empty dataset")
        }
        for issue in looseIssues { summary.skippedRows[issue.problem, default: 0] += 1 }
        for image in prepared { if let first = image.problems.first { summary.skippedImages[first.problem, default: 0] += 1 } }

        // 4. Pixels.
        try DetectionWriter.write(prepared, isVal: isVal, mapping: mapping, options: options, ssd: ssd, summary: &summary)
        return summary
    }

    private static func isDirectory(_ path: String) -> Bool {
        var directory: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &directory) && directory.boolValue
    }

    /// The class list and how labels map onto it, per format.
    static func classMapping(_ options: DetectionImportOptions, _ parsed: ParsedLabels) throws -> ClassMapping {
        let given = options.classes
        if let given {
            guard !given.isEmpty, !given.contains(where: \.isEmpty), Set(given).count == given.count else {
                throw DataError(file: options.labels, message: "--classes must list distinct, non-empty names")
            }
        }
        switch options.format {
        case .udacity:
            return .oneBasedIDs(given ?? ClassMapping.drivingClasses)
        case .autti, .crowdai, .kitti:
            if given != nil {
                throw DataError(file: options.labels, message: "--classes does not apply to \(options.format.rawValue): its labels map onto fixed classes")
            }
            return options.format == .kitti ? .kitti : .udacityNames
        case .voc:
            let found = Set(parsed.images.flatMap { $0.objects.map(\.label) }).sorted()
            guard let names = given ?? (found.isEmpty ? nil : found) else {
                throw DataError(file: options.labels, message: "no objects found, so no classes; give --classes")
            }
            return .byName(names)
        case .coco:
            guard let names = given ?? parsed.sourceClassNames, !names.isEmpty else {
                throw DataError(file: options.labels, message: "no categories; give --classes")
            }
            return .byName(names)
        case .yolo, .ssdKeras:
            guard let given else {
                throw DataError(file: options.labels, message: "\(options.format.rawValue) labels hold class ids only: name the classes with --classes (or --names FILE)")
            }
            return options.format == .yolo ? .zeroBasedIDs(given) : .oneBasedIDs(given)
        }
    }

    /// An image ready to write: where its pixels are, its size, and its boxes in output pixels.
    struct PreparedImage {
        let sourceIndex: Int
        /// Where the labels name the image.
        let location: LabelLocation
        /// The file name relative to the images folder (or the ssd_keras image id).
        var name: String
        var path: String?
        var embedded: Int?
        var width = 0, height = 0
        var boxes: [Float] = []
        var classes: [Int32] = []
        var difficult: [UInt8] = []
        var imageID: Int64
        var problems: [ImportIssue]
        var clipped = 0, rescaled = false, roboflow = false, dontCare = 0
        var dropped: [String: Int]
        /// Names a --val-list line may use for this image.
        var keys: [String] = []
    }

    private static func prepare(_ image: SourceImage, index: Int, mapping: ClassMapping, directory: ImageDirectory?,
                                ssd: SSDKerasSource?, options: DetectionImportOptions) -> PreparedImage {
        var out = PreparedImage(sourceIndex: index, location: image.location, name: "", imageID: image.imageID ?? Int64(index),
                                problems: image.problems, dropped: image.dropped)
        func report(_ problem: ImportProblem, _ message: String, _ location: LabelLocation) {
            out.problems.append(ImportIssue(location: location, problem: problem, message: message))
        }
        switch image.reference {
        case .embedded(let i):
            out.embedded = i
            out.name = image.location.detail ?? "images[\(i)]"
            out.keys = [String(i)]
            do { (out.width, out.height) = try ssd!.dimensions(i) } catch { report(.unreadableImage, "\(error)", image.location) }
        case .file(let name), .stem(let name):
            out.name = name
            out.keys = [name, (name as NSString).lastPathComponent, ((name as NSString).lastPathComponent as NSString).deletingPathExtension]
            switch directory!.locate(image.reference) {
            case .failure(let reason):
                report(.missingImage, reason.text, image.location)
            case .success(let found):
                out.name = found.name
                out.path = found.path
                out.roboflow = found.viaRoboflowName
                out.keys += [found.name, (found.name as NSString).deletingPathExtension]
                do {
                    (out.width, out.height) = try ImageFile.dimensions(path: found.path)
                } catch {
                    report(.unreadableImage, "\(error)", image.location)
                }
            }
        }
        guard out.width > 0 && out.height > 0 else { return out }

        let (w, h) = (Double(out.width), Double(out.height))
        // Annotations drawn on another size (or normalised) are brought to this image's pixels first.
        var (sx, sy) = (1.0, 1.0)
        if image.normalized {
            (sx, sy) = (w, h)
        } else if let declared = image.declaredSize, declared.width != out.width || declared.height != out.height {
            (sx, sy) = (w / Double(declared.width), h / Double(declared.height))
            out.rescaled = true
        }
        let (ox, oy) = (Double(options.width) / w, Double(options.height) / h)
        for object in image.objects {
            let (x0, y0, x1, y1) = (object.box.0 * sx, object.box.1 * sy, object.box.2 * sx, object.box.3 * sy)
            guard let decision = mapping.decide(object.label) else {
                report(.unknownClass, "'\(object.label)' is not \(mapping.expected)", object.location)
                continue
            }
            if decision == .drop { out.dropped[object.label, default: 0] += 1; continue }
            let (cx0, cy0, cx1, cy1) = (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))
            guard cx0 < cx1 && cy0 < cy1 else {
                report(.outsideImage, "box (\(coordinate(x0)), \(coordinate(y0)), \(coordinate(x1)), \(coordinate(y1))) lies outside the \(out.width)x\(out.height) image", object.location)
                continue
            }
            if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1) { out.clipped += 1 }
            let box = [Float(cx0 * ox), Float(cy0 * oy), Float(cx1 * ox), Float(cy1 * oy)]
            guard box[0] < box[2] && box[1] < box[3] else {
                report(.emptyBox, "box (\(coordinate(x0)), \(coordinate(y0)), \(coordinate(x1)), \(coordinate(y1))) is empty at the output size", object.location)
                continue
            }
            switch decision {
            case .keep(let id):
                out.boxes += box; out.classes.append(Int32(id)); out.difficult.append(object.difficult ? 1 : 0)
            case .dontCare:
                out.dontCare += 1
                for id in 1...mapping.names.count { out.boxes += box; out.classes.append(Int32(id)); out.difficult.append(DetectionDataset.ignoreRegion) }
            case .drop:
                break
            }
        }
        return out
    }

    /// Marks each image train or val. Val-list names that match no image are problems (a typo would otherwise
    /// silently move the image to train).
    private static func assignSplit(_ split: ValidationSplit, prepared: inout [PreparedImage],
                                    looseIssues: inout [ImportIssue]) throws -> [Bool] {
        var isVal = [Bool](repeating: false, count: prepared.count)
        switch split {
        case .fraction(let fraction, let seed):
            guard (0...1).contains(fraction) else { throw DataError(file: "--val-fraction", message: "\(fraction) is not in 0...1") }
            var rng = RandomGenerator(seed: seed)
            let count = Int((fraction * Double(prepared.count)).rounded())
            for i in rng.permutation(prepared.count).prefix(count) { isVal[i] = true }
        case .list(let path):
            var byKey: [String: [Int]] = [:]
            for (i, image) in prepared.enumerated() { for key in Set(image.keys) { byKey[key, default: []].append(i) } }
            for (n, line) in try readLines(path).enumerated() {
                let name = line.trimmingCharacters(in: .whitespaces)
                if name.isEmpty || name.hasPrefix("#") { continue }
                guard let matches = byKey[name] else {
                    looseIssues.append(ImportIssue(location: LabelLocation(file: path, line: n + 1), problem: .unmatchedValName,
                                                   message: "'\(name)' names no labelled image"))
                    continue
                }
                for i in matches { isVal[i] = true }
            }
        }
        return isVal
    }
}
