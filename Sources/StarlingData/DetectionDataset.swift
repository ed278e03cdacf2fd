import StarlingCore
import StarlingIO
import StarlingNN

/// A split of a detection dataset in HDF5, the layout `starling data detection` writes:
///
/// ```
/// /                     format = "starling-detection", format_version = 1,
///                       class_names (string array; index 0 is "background", never a stored class),
///                       image_height, image_width (every stored image has this size), source,
///                       box_convention = "corners-absolute-pixels"
/// /<split>/images       uint8   [N, H, W, 3]  RGB, chunked one image per chunk
/// /<split>/box_offsets  int64   [N + 1]       the boxes of image i are rows box_offsets[i] ..< box_offsets[i + 1]
/// /<split>/boxes        float32 [M, 4]        xmin, ymin, xmax, ymax in pixels of the stored (resized) image
/// /<split>/classes      int32   [M]           1 ... C, indices into class_names
/// /<split>/difficult    uint8   [M]           1: neither positive nor negative (VOC difficult, COCO crowd); 2: the same,
///                                             and an ignore region (KITTI DontCare) that COCO scoring treats as iscrowd
/// /<split>/image_ids    int64   [N]           stable ids (COCO's image ids; otherwise the index in source order)
/// /<split>/original_sizes int32 [N, 2]        height and width before resizing
/// /<split>              attribute file_names (string array): each image's source file
/// ```
/// Splits are `train` and `val`.
///
/// Box convention, used everywhere in Starling: corners (xmin, ymin, xmax, ymax) in continuous pixel coordinates,
/// x to the right and y down from the image's top-left corner; a box covering pixel columns 0...9 has xmin 0 and
/// xmax 10 (width = xmax - xmin, no +1). COCO's [x, y, w, h] and VOC's 1-based inclusive integers are converted at
/// import and export.
public final class DetectionDataset: @unchecked Sendable {
    public static let format = "starling-detection"
    public static let formatVersion = 1

    public let path: String
    public let split: String
    public let count: Int
    public let imageHeight: Int, imageWidth: Int
    /// Index 0 is "background".
    public let classNames: [String]
    public let imageIDs: [Int64]
    /// Each image's source file (the split's `file_names` attribute); nil if the file has none.
    public let fileNames: [String]?
    /// Each image's height and width before resizing (`original_sizes`); nil if the file has none.
    public let originalSizes: [(height: Int, width: Int)]?
    private let file: HDF5File
    private let images: HDF5Dataset
    // Annotations are small (20 bytes a box): read once.
    private let offsets: [Int64]
    private let boxes: [Float]
    private let classes: [Int32]
    private let difficult: [UInt8]
    /// The `difficult` value of an ignore region (KITTI DontCare): difficult, and COCO's `iscrowd` when scored.
    public static let ignoreRegion: UInt8 = 2
    private var scratch: [UInt8] = []

    public init(path: String, split: String) throws {
        file = try HDF5File.open(path)
        self.path = path
        self.split = split
        let root = file.root
        guard root.hasAttribute("format"), try root.stringAttribute("format") == Self.format else {
            throw DataError(file: path, message: "not a Starling detection dataset (no format attribute '\(Self.format)'); make one with `starling data detection`")
        }
        let version = try root.intAttribute("format_version")
        guard version == Self.formatVersion else {
            throw DataError(file: path, message: "detection dataset format version \(version); this build reads version \(Self.formatVersion)")
        }
        classNames = try root.stringArrayAttribute("class_names")
        imageHeight = try root.intAttribute("image_height")
        imageWidth = try root.intAttribute("image_width")
        guard imageHeight > 0, imageWidth > 0 else {
            throw DataError(file: path, message: "image_height \(imageHeight) and image_width \(imageWidth) must be positive")
        }
        guard root.contains(split) else { throw DataError(file: path, message: "no split '/\(split)'") }
        let group = try root.group(split)
        for name in ["images", "box_offsets", "boxes", "classes", "difficult", "image_ids"] where !group.contains(name) {
            throw DataError(file: path, message: "no dataset '/\(split)/\(name)'")
        }
        images = try group.dataset("images")
        try images.require(.bytes, shape: [nil, imageHeight, imageWidth, 3], in: path, what: "RGB pixels of \(imageHeight)x\(imageWidth) images")
        count = images.shape[0]
        // Every array's type and shape before its values: HDF5 would convert floats to integers and clip wide
        // integers without a word (see StoredElements).
        let classesArray = try group.dataset("classes")
        try classesArray.require(.integers, shape: [nil], in: path, what: "a class id a box")
        let m = classesArray.shape[0]
        let offsetsArray = try group.dataset("box_offsets"), boxesArray = try group.dataset("boxes")
        let difficultArray = try group.dataset("difficult"), idsArray = try group.dataset("image_ids")
        try offsetsArray.require(.integers, shape: [count + 1], in: path, what: "the first box of each of \(count) images, then \(m)")
        try boxesArray.require(.numbers, shape: [m, 4], in: path, what: "xmin, ymin, xmax, ymax of \(m) boxes")
        try difficultArray.require(.integers, shape: [m], in: path, what: "a flag for each of \(m) boxes")
        try idsArray.require(.integers, shape: [count], in: path, what: "an id for each of \(count) images")
        offsets = try offsetsArray.read(as: Int64.self)
        boxes = try boxesArray.read(as: Float.self)
        let classValues = try classesArray.read(as: Int64.self)
        let difficultValues = try difficultArray.read(as: Int64.self)
        imageIDs = try idsArray.read(as: Int64.self)
        guard offsets.first == 0, offsets.last == Int64(m), zip(offsets, offsets.dropFirst()).allSatisfy({ $0 <= $1 }) else {
            throw DataError(file: path, message: "/\(split)/box_offsets does not run from 0 up to the \(m) boxes")
        }
        let classCount = Int64(classNames.count), ignoreRegion = Int64(Self.ignoreRegion)
        if let bad = classValues.firstIndex(where: { $0 < 1 || $0 >= classCount }) {
            throw DataError(file: path, message: "/\(split)/classes[\(bad)] = \(classValues[bad]) is outside 1...\(classCount - 1)")
        }
        if let bad = difficultValues.firstIndex(where: { !(0...ignoreRegion).contains($0) }) {
            throw DataError(file: path, message: "/\(split)/difficult[\(bad)] = \(difficultValues[bad]); expected 0, 1 or \(Self.ignoreRegion)")
        }
        classes = classValues.map { Int32($0) }
        difficult = difficultValues.map { UInt8($0) }
        fileNames = group.hasAttribute("file_names") ? try group.stringArrayAttribute("file_names") : nil
        if let fileNames, fileNames.count != count {
            throw DataError(file: path, message: "/\(split) attribute file_names has \(fileNames.count) names for \(count) images")
        }
        if group.contains("original_sizes") {
            let array = try group.dataset("original_sizes")
            try array.require(.integers, shape: [count, 2], in: path, what: "height and width of \(count) images")
            let sizes = try array.read(as: Int32.self)
            originalSizes = (0..<count).map { (Int(sizes[2 * $0]), Int(sizes[2 * $0 + 1])) }
        } else {
            originalSizes = nil
        }
        func valid(_ b: Int) -> Bool {
            let (x0, y0, x1, y1) = (boxes[4 * b], boxes[4 * b + 1], boxes[4 * b + 2], boxes[4 * b + 3])
            return x0.isFinite && y0.isFinite && x1.isFinite && y1.isFinite && x0 < x1 && y0 < y1
        }
        if let bad = (0..<m).first(where: { !valid($0) }) {
            throw DataError(file: path, message: "/\(split)/boxes[\(bad)] = \(Array(boxes[(4 * bad)..<(4 * bad + 4)])) is empty, inverted or not finite")
        }
    }

    /// Number of foreground classes (without background).
    public var classCount: Int { classNames.count - 1 }

    /// The annotated objects of image `i`.
    public func objects(of i: Int) -> [Object] {
        (Int(offsets[i])..<Int(offsets[i + 1])).map { b in
            Object(box: BoxCorners(xmin: boxes[4 * b], ymin: boxes[4 * b + 1], xmax: boxes[4 * b + 2], ymax: boxes[4 * b + 3]),
                   classID: Int(classes[b]), difficult: difficult[b] != 0, ignoreRegion: difficult[b] == Self.ignoreRegion)
        }
    }

    /// Reads images `indices` (in the order given) as uint8 HWC pixels into one buffer of indices.count x H x W x 3.
    public func readImages(_ indices: [Int], into out: UnsafeMutableBufferPointer<UInt8>) throws {
        let size = imageHeight * imageWidth * 3
        guard out.count == indices.count * size else {
            throw DataError(file: path, message: "buffer of \(out.count) bytes for \(indices.count) images")
        }
        for (k, i) in indices.enumerated() {
            guard i >= 0 && i < count else { throw DataError(file: path, message: "image index \(i) out of range 0..<\(count) in /\(split)") }
            try images.readRows(i..<(i + 1), into: UnsafeMutableBufferPointer(rebasing: out[(k * size)..<((k + 1) * size)]))
        }
    }
}
