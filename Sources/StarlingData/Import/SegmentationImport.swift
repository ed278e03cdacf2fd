import Foundation
import StarlingIO
import StarlingNN

/// The segmentation sets `starling data segmentation` converts into `SegmentationDataset`'s HDF5 layout.
public enum SegmentationImportFormat: String, CaseIterable, Sendable {
    /// ISBI-2012 EM membranes as zhixuhao/unet ships them: `train/image/<k>.png` and `train/label/<k>.png`,
    /// gray labels 255 inside cells and 0 on membranes; stored as class 0 "membrane" (the background between the
    /// cells, as in the U-Net paper) and class 1 "cell".
    case membrane
    /// CamVid (SegNet's 480x360 version): `<split>/` frames and `<split>annot/` labels for the splits present
    /// (train, val, test), labels either gray class indices 0-11 (11 Unlabelled) or RGB colour-coded.
    case camvid
    /// Penn-Fudan pedestrians: `PNGImages/<name>.png` and `PedMasks/<name>_mask.png`, gray 0 background and 1 ... N
    /// the instances.
    case pennfudan
}

public struct SegmentationImportOptions: Sendable {
    public var format: SegmentationImportFormat
    /// The set's folder (for CamVid and Penn-Fudan, the one holding the split folders or PNGImages; their parent
    /// `CamVid/` or `PennFudanPed/` is found too).
    public var source: String
    public var output: String
    /// Stored size; nil keeps the images' own size (every image must then have the first one's size).
    public var height: Int?, width: Int?
    /// Membranes and Penn-Fudan: images held out for /val, spread evenly over the set in name order (default 5 of
    /// the 30 membranes, 50 of the 170 Penn-Fudan images). CamVid without its own val folder holds out a sequence.
    public var valCount: Int?
    /// CamVid without a val folder: the sequence (file-name prefix) held out for /val (default 0001TP), since
    /// consecutive frames of one sequence are near-duplicates.
    public var valSequence: String?
    public var progress: (@Sendable (String) -> Void)?

    public init(format: SegmentationImportFormat, source: String, output: String) {
        self.format = format
        self.source = source
        self.output = output
    }
}

public struct SegmentationImportSummary: CustomStringConvertible, Sendable {
    public let output: String
    public let classNames: [String]
    public let height: Int, width: Int
    public let splits: [(name: String, count: Int)]
    public let instances: Int
    public var description: String {
        let counts = splits.map { "\($0.name) \($0.count)" }.joined(separator: ", ")
        return "wrote \(output): \(counts) images of \(height)x\(width), classes \(classNames.joined(separator: ", "))"
            + (instances > 0 ? ", \(instances) instances" : "")
    }
}

/// Converts a segmentation set image by image: each image and its label are decoded, checked, resized (bilinear for
/// the image, nearest for labels so that no new class appears) and handed to `SegmentationWriter`, which writes the
/// file atomically. Any bad input (an unreadable file, a label of another size than its image, a CamVid colour or
/// index outside the class table, a membrane label value other than 0 or 255, an instance with no pixel) stops the
/// import with one line naming the file, and no output is left behind.
public enum SegmentationImport {
    /// The byte stored for pixels that count for nothing (CamVid's Unlabelled).
    public static let voidLabel: UInt8 = 255

    /// CamVid's eleven classes and their colours in SegNet's order (`label_colours` in SegNet-Tutorial's
    /// Scripts/test_segmentation_camvid.py; ../shared/data/PROVENANCE.md section 8); index 11, Unlabelled (0, 0, 0),
    /// is void. CamVid has no background class: class 0 is Sky.
    public static let camvidClasses: [(name: String, colour: (UInt8, UInt8, UInt8))] = [
        ("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)), ("Road", (128, 64, 128)),
        ("Pavement", (60, 40, 222)), ("Tree", (128, 128, 0)), ("SignSymbol", (192, 128, 128)), ("Fence", (64, 64, 128)),
        ("Car", (64, 0, 128)), ("Pedestrian", (64, 64, 0)), ("Bicyclist", (0, 128, 192)),
    ]
    static let camvidVoidIndex: UInt8 = 11
    /// The membrane set's classes: the ISBI pixel error is reported for models trained on them.
    public static let membraneClassNames = ["membrane", "cell"]
    static let camvidVoidColour: (UInt8, UInt8, UInt8) = (0, 0, 0)

    /// One image of the set: its file, its label's file and the split it goes to.
    struct Entry {
        let image: String
        let label: String
        let split: String
        let id: Int64
    }

    public static func run(_ options: SegmentationImportOptions) throws -> SegmentationImportSummary {
        let entries: [Entry], classNames: [String]
        switch options.format {
        case .membrane:
            entries = try membraneEntries(options)
            classNames = membraneClassNames
        case .camvid:
            entries = try camvidEntries(options)
            classNames = camvidClasses.map(\.name)
        case .pennfudan:
            entries = try pennFudanEntries(options)
            classNames = ["background", "person"]
        }
        guard let first = entries.first else { throw DataError(file: options.source, message: "no images found") }
        let (height, width): (Int, Int)
        if let h = options.height, let w = options.width {
            (height, width) = (h, w)
        } else {
            let size = try ImageFile.dimensions(path: first.image)
            (height, width) = (options.height ?? size.height, options.width ?? size.width)
        }
        let resizes = options.height != nil || options.width != nil
        let splitNames = ["train", "val", "test"].filter { name in entries.contains { $0.split == name } }
        var instanceTotal = 0
        var splits: [(name: String, count: Int, sample: (Int) throws -> SegmentationWriter.Sample)] = []
        for name in splitNames {
            let members = entries.filter { $0.split == name }
            splits.append((name, members.count, { k in
                let entry = members[k]
                let sample = try convert(entry, format: options.format, height: height, width: width, resizes: resizes)
                instanceTotal += sample.instances?.count ?? 0
                if (k + 1) % 50 == 0 || k + 1 == members.count { options.progress?("\(name): \(k + 1)/\(members.count) images") }
                return sample
            }))
        }
        try SegmentationWriter.write(to: options.output, classNames: classNames, height: height, width: width, voidLabel: voidLabel,
                                     instances: options.format == .pennfudan, source: "\(options.format.rawValue) \(options.source)",
                                     splits: splits)
        return SegmentationImportSummary(output: options.output, classNames: classNames, height: height, width: width,
                                         splits: splits.map { ($0.name, $0.count) }, instances: instanceTotal)
    }

    // MARK: - Finding the files

    /// Indices of `valCount` images spread evenly over `count` (the first at valCount's half step).
    static func heldOut(count: Int, valCount: Int) -> Set<Int> {
        guard valCount > 0 else { return [] }
        return Set((0..<valCount).map { (2 * $0 + 1) * count / (2 * valCount) })
    }

    static func checkValCount(_ valCount: Int, of count: Int, source: String) throws {
        guard valCount >= 0, valCount < count else {
            throw DataError(file: source, message: "--val-count \(valCount) leaves no training image of \(count)")
        }
    }

    /// Numbered files sort as numbers (2.png before 10.png).
    static func numericOrder(_ a: String, _ b: String) -> Bool {
        let (sa, sb) = ((a as NSString).deletingPathExtension, (b as NSString).deletingPathExtension)
        if let ia = Int(sa), let ib = Int(sb) { return ia < ib }
        return a < b
    }

    static func membraneEntries(_ options: SegmentationImportOptions) throws -> [Entry] {
        let root = FileManager.default.fileExists(atPath: options.source + "/train/image") ? options.source + "/train" : options.source
        let names = try listFiles(root + "/image", extensions: imageExtensions).sorted(by: numericOrder)
        let valCount = options.valCount ?? 5
        try checkValCount(valCount, of: names.count, source: root + "/image")
        let held = heldOut(count: names.count, valCount: valCount)
        return names.enumerated().map { k, name in
            Entry(image: root + "/image/" + name, label: root + "/label/" + name, split: held.contains(k) ? "val" : "train",
                  id: Int64((name as NSString).deletingPathExtension) ?? Int64(k))
        }
    }

    static func camvidEntries(_ options: SegmentationImportOptions) throws -> [Entry] {
        let root = FileManager.default.fileExists(atPath: options.source + "/CamVid/train") ? options.source + "/CamVid" : options.source
        var entries: [Entry] = []
        var id: Int64 = 0
        let hasVal = FileManager.default.fileExists(atPath: root + "/val")
        let heldSequence = options.valSequence ?? "0001TP"
        for split in ["train", "val", "test"] where FileManager.default.fileExists(atPath: root + "/" + split) {
            let names = try listFiles(root + "/" + split, extensions: imageExtensions)
            for name in names {
                let target = split == "train" && !hasVal && name.hasPrefix(heldSequence + "_") ? "val" : split
                entries.append(Entry(image: "\(root)/\(split)/\(name)", label: "\(root)/\(split)annot/\(name)", split: target, id: id))
                id += 1
            }
        }
        guard entries.contains(where: { $0.split == "train" }) else {
            throw DataError(file: root, message: "no training frames (a train/ folder whose sequence is not the held-out \(heldSequence))")
        }
        if !hasVal && !entries.contains(where: { $0.split == "val" }) {
            throw DataError(file: root + "/train", message: "no frame of the held-out sequence \(heldSequence) (--val-sequence)")
        }
        return entries
    }

    static func pennFudanEntries(_ options: SegmentationImportOptions) throws -> [Entry] {
        let root = FileManager.default.fileExists(atPath: options.source + "/PennFudanPed/PNGImages") ? options.source + "/PennFudanPed" : options.source
        let names = try listFiles(root + "/PNGImages", extensions: imageExtensions)
        let valCount = options.valCount ?? 50
        try checkValCount(valCount, of: names.count, source: root + "/PNGImages")
        let held = heldOut(count: names.count, valCount: valCount)
        return names.enumerated().map { k, name in
            let stem = (name as NSString).deletingPathExtension
            return Entry(image: root + "/PNGImages/" + name, label: root + "/PedMasks/" + stem + "_mask.png",
                         split: held.contains(k) ? "val" : "train", id: Int64(k))
        }
    }

    // MARK: - Converting one image

    static func convert(_ entry: Entry, format: SegmentationImportFormat, height: Int, width: Int, resizes: Bool) throws -> SegmentationWriter.Sample {
        let image = try ImageFile.readRGB(path: entry.image)
        if !resizes, image.height != height || image.width != width {
            throw DataError(file: entry.image, message: "\(image.width)x\(image.height) while the set's first image is \(width)x\(height); give --height and --width to resize")
        }
        let label = try PNGImage.read(path: entry.label)
        guard label.width == image.width, label.height == image.height else {
            throw DataError(file: entry.label, message: "label is \(label.width)x\(label.height) but its image \((entry.image as NSString).lastPathComponent) is \(image.width)x\(image.height)")
        }
        let pixels = ImageResize.bilinear(image.pixels, width: image.width, height: image.height, channels: 3, toWidth: width, toHeight: height)
        switch format {
        case .membrane:
            let classes = try membraneClasses(label.pixels, channels: label.channels, file: entry.label)
            return .init(pixels: pixels, classMap: resizeNearest(classes, width: label.width, height: label.height, toWidth: width, toHeight: height),
                         imageID: entry.id)
        case .camvid:
            let classes = try camvidClasses(label.pixels, channels: label.channels, width: label.width, file: entry.label)
            return .init(pixels: pixels, classMap: resizeNearest(classes, width: label.width, height: label.height, toWidth: width, toHeight: height),
                         imageID: entry.id)
        case .pennfudan:
            guard label.channels == 1 else { throw DataError(file: entry.label, message: "instance mask has \(label.channels) channels; expected gray") }
            let resized = resizeNearest(label.pixels, width: label.width, height: label.height, toWidth: width, toHeight: height)
            let instanceCount = Int(label.pixels.max() ?? 0)
            var instances: [(classID: Int32, mask: [UInt8])] = []
            var classMap = [UInt8](repeating: 0, count: width * height)
            for k in stride(from: 1, through: instanceCount, by: 1) {
                let value = UInt8(k)
                guard label.pixels.contains(value) else { throw DataError(file: entry.label, message: "instance \(k) of \(instanceCount) is empty") }
                let mask = resized.map { $0 == value ? UInt8(1) : 0 }
                guard mask.contains(1) else {
                    throw DataError(file: entry.label, message: "instance \(k) vanishes when the mask is resized to \(width)x\(height)")
                }
                instances.append((1, mask))
            }
            for i in classMap.indices where resized[i] != 0 { classMap[i] = 1 }
            return .init(pixels: pixels, classMap: classMap, imageID: entry.id, instances: instances)
        }
    }

    /// 0 (membrane) -> class 0 "membrane", the background that separates the cells; 255 (cell interior) -> class 1 "cell".
    static func membraneClasses(_ pixels: [UInt8], channels: Int, file: String) throws -> [UInt8] {
        guard channels == 1 else { throw DataError(file: file, message: "membrane label has \(channels) channels; expected gray") }
        if let k = pixels.firstIndex(where: { $0 != 0 && $0 != 255 }) {
            throw DataError(file: file, message: "value \(pixels[k]) at pixel index \(k); membrane labels hold 0 (membrane) and 255 (cell)")
        }
        return pixels.map { $0 == 0 ? 0 : 1 }
    }

    /// Gray labels are class indices (11 void); RGB labels are looked up in the colour table.
    static func camvidClasses(_ pixels: [UInt8], channels: Int, width: Int, file: String) throws -> [UInt8] {
        let plane = pixels.count / channels
        var classes = [UInt8](repeating: 0, count: plane)
        switch channels {
        case 1:
            for i in 0..<plane {
                let v = pixels[i]
                if v == camvidVoidIndex { classes[i] = voidLabel; continue }
                guard Int(v) < camvidClasses.count else {
                    throw DataError(file: file, message: "class index \(v) at pixel (\(i % width), \(i / width)); CamVid labels hold 0...\(camvidClasses.count - 1) and \(camvidVoidIndex) (Unlabelled)")
                }
                classes[i] = v
            }
        case 3:
            var lookup: [UInt32: UInt8] = [:]
            func key(_ c: (UInt8, UInt8, UInt8)) -> UInt32 { UInt32(c.0) << 16 | UInt32(c.1) << 8 | UInt32(c.2) }
            for (k, entry) in camvidClasses.enumerated() { lookup[key(entry.colour)] = UInt8(k) }
            lookup[key(camvidVoidColour)] = voidLabel
            for i in 0..<plane {
                let colour = (pixels[3 * i], pixels[3 * i + 1], pixels[3 * i + 2])
                guard let c = lookup[key(colour)] else {
                    throw DataError(file: file, message: "unknown colour (\(colour.0), \(colour.1), \(colour.2)) at pixel (\(i % width), \(i / width)) is in no CamVid class")
                }
                classes[i] = c
            }
        default:
            throw DataError(file: file, message: "CamVid label has \(channels) channels; expected gray indices or RGB colours")
        }
        return classes
    }

    /// Nearest-neighbour resampling of a label map: output pixel x takes source pixel floor((x + 0.5) * width / outWidth),
    /// the pixel whose area holds the output pixel's centre (the mapping of `ImageResize.bilinear`).
    public static func resizeNearest(_ map: [UInt8], width: Int, height: Int, toWidth: Int, toHeight: Int) -> [UInt8] {
        if width == toWidth && height == toHeight { return map }
        let xs = (0..<toWidth).map { min(Int((Double($0) + 0.5) * Double(width) / Double(toWidth)), width - 1) }
        var out = [UInt8](repeating: 0, count: toWidth * toHeight)
        for y in 0..<toHeight {
            let sy = min(Int((Double(y) + 0.5) * Double(height) / Double(toHeight)), height - 1)
            for x in 0..<toWidth { out[y * toWidth + x] = map[sy * width + xs[x]] }
        }
        return out
    }
}
