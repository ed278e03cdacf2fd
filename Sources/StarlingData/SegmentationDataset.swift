import StarlingCore
import StarlingIO
import StarlingNN

/// A split of a segmentation dataset in HDF5, semantic (a class per pixel) and optionally instance (a mask per
/// object), the layout `SegmentationWriter` writes:
///
/// ```
/// /                        format = "starling-segmentation", format_version = 1,
///                          class_names (string array; index 0 is "background"), void_label (pixels that count for
///                          nothing, 255 by default), image_height, image_width, source
/// /<split>/images          uint8 [N, H, W, 3]  RGB, one image per chunk
/// /<split>/class_maps      uint8 [N, H, W]     class of each pixel (0 ... C, or void_label), one map per chunk
/// /<split>/image_ids       int64 [N]
/// instance data only:
/// /<split>/instance_offsets int64 [N + 1]      the objects of image i are rows offsets[i] ..< offsets[i + 1]
/// /<split>/instance_masks  uint8 [M, H, W]     1 inside the object, 0 outside, one mask per chunk
/// /<split>/instance_classes int32 [M]          1 ... C
/// ```
///
/// Images and maps are read a batch at a time (sets larger than memory train); each object's box is the tight box of
/// its mask, in the Starling box convention (`Box`). Not safe for concurrent use: one reader at a time.
public final class SegmentationDataset: @unchecked Sendable {
    public static let format = "starling-segmentation"
    public static let formatVersion = 1

    public let path: String
    public let split: String
    public let count: Int
    public let imageHeight: Int, imageWidth: Int
    /// Index 0 is "background".
    public let classNames: [String]
    public let voidLabel: UInt8
    public let imageIDs: [Int64]
    /// Whether the split holds instance masks (`DataKind.instances`).
    public var hasInstances: Bool { instanceOffsets != nil }
    private let file: HDF5File
    private let images: HDF5Dataset
    private let classMaps: HDF5Dataset
    private let instanceOffsets: [Int64]?
    private let instanceClasses: [Int32]?
    private let instanceMasks: HDF5Dataset?

    public init(path: String, split: String) throws {
        file = try HDF5File.open(path)
        self.path = path
        self.split = split
        let root = file.root
        guard root.hasAttribute("format"), try root.stringAttribute("format") == Self.format else {
            throw DataError(file: path, message: "not a Starling segmentation dataset (no format attribute '\(Self.format)')")
        }
        let version = try root.intAttribute("format_version")
        guard version == Self.formatVersion else {
            throw DataError(file: path, message: "segmentation dataset format version \(version); this build reads version \(Self.formatVersion)")
        }
        classNames = try root.stringArrayAttribute("class_names")
        guard classNames.count >= 2 else { throw DataError(file: path, message: "class_names lists \(classNames.count) classes; expected background and at least one more") }
        imageHeight = try root.intAttribute("image_height")
        imageWidth = try root.intAttribute("image_width")
        let void = root.hasAttribute("void_label") ? try root.intAttribute("void_label") : 255
        guard (0...255).contains(void), void >= classNames.count else {
            throw DataError(file: path, message: "void_label \(void) must be a byte outside the classes 0...\(classNames.count - 1)")
        }
        voidLabel = UInt8(void)
        guard root.contains(split) else { throw DataError(file: path, message: "no split '/\(split)'") }
        let group = try root.group(split)
        for name in ["images", "class_maps", "image_ids"] where !group.contains(name) {
            throw DataError(file: path, message: "no dataset '/\(split)/\(name)'")
        }
        images = try group.dataset("images")
        try images.require(.bytes, shape: [nil, imageHeight, imageWidth, 3], in: path, what: "RGB pixels of \(imageHeight)x\(imageWidth) images")
        count = images.shape[0]
        classMaps = try group.dataset("class_maps")
        try classMaps.require(.bytes, shape: [count, imageHeight, imageWidth], in: path, what: "a class a pixel of \(count) images")
        let idsArray = try group.dataset("image_ids")
        try idsArray.require(.integers, shape: [count], in: path, what: "an id for each of \(count) images")
        imageIDs = try idsArray.read(as: Int64.self)
        if group.contains("instance_offsets") {
            for name in ["instance_masks", "instance_classes"] where !group.contains(name) {
                throw DataError(file: path, message: "/\(split) has instance_offsets but no dataset '\(name)'")
            }
            // Types and shapes before values (see StoredElements).
            let classesArray = try group.dataset("instance_classes")
            try classesArray.require(.integers, shape: [nil], in: path, what: "a class id an object")
            let m = classesArray.shape[0]
            let offsetsArray = try group.dataset("instance_offsets")
            try offsetsArray.require(.integers, shape: [count + 1], in: path, what: "the first object of each of \(count) images, then \(m)")
            let masks = try group.dataset("instance_masks")
            try masks.require(.bytes, shape: [m, imageHeight, imageWidth], in: path, what: "a \(imageHeight)x\(imageWidth) mask for each of \(m) objects")
            let offsets = try offsetsArray.read(as: Int64.self)
            let classValues = try classesArray.read(as: Int64.self)
            guard offsets.first == 0, offsets.last == Int64(m), zip(offsets, offsets.dropFirst()).allSatisfy({ $0 <= $1 }) else {
                throw DataError(file: path, message: "/\(split)/instance_offsets does not run from 0 up to the \(m) objects")
            }
            let classCount = classNames.count
            if let bad = classValues.firstIndex(where: { $0 < 1 || $0 >= Int64(classCount) }) {
                throw DataError(file: path, message: "/\(split)/instance_classes[\(bad)] = \(classValues[bad]) is outside 1...\(classCount - 1)")
            }
            (instanceOffsets, instanceClasses, instanceMasks) = (offsets, classValues.map { Int32($0) }, masks)
        } else {
            (instanceOffsets, instanceClasses, instanceMasks) = (nil, nil, nil)
        }
    }

    /// Images `indices` as HWC bytes and their class maps, one after another; class values checked.
    public func read(_ indices: [Int]) throws -> (pixels: [UInt8], classMaps: [UInt8]) {
        let plane = imageHeight * imageWidth
        var pixels = [UInt8](repeating: 0, count: indices.count * plane * 3)
        var maps = [UInt8](repeating: 0, count: indices.count * plane)
        for (k, i) in indices.enumerated() {
            guard i >= 0 && i < count else { throw DataError(file: path, message: "image index \(i) out of range 0..<\(count) in /\(split)") }
            try pixels.withUnsafeMutableBufferPointer {
                try images.readRows(i..<(i + 1), into: UnsafeMutableBufferPointer(rebasing: $0[(k * plane * 3)..<((k + 1) * plane * 3)]))
            }
            try maps.withUnsafeMutableBufferPointer {
                try classMaps.readRows(i..<(i + 1), into: UnsafeMutableBufferPointer(rebasing: $0[(k * plane)..<((k + 1) * plane)]))
            }
            let classCount = classNames.count, void = voidLabel
            if let bad = maps[(k * plane)..<((k + 1) * plane)].first(where: { Int($0) >= classCount && $0 != void }) {
                throw DataError(file: path, message: "/\(split)/class_maps[\(i)] holds class \(bad), outside 0...\(classCount - 1) and not the void label \(void)")
            }
        }
        return (pixels, maps)
    }

    /// Image `i`'s objects (boxes tight around their masks) and masks, H x W bytes each; empty without instance data.
    public func instances(of i: Int) throws -> (objects: [Object], masks: [[UInt8]]) {
        guard let offsets = instanceOffsets, let classes = instanceClasses, let dataset = instanceMasks else { return ([], []) }
        var objects: [Object] = [], masks: [[UInt8]] = []
        for row in Int(offsets[i])..<Int(offsets[i + 1]) {
            var mask = [UInt8](repeating: 0, count: imageHeight * imageWidth)
            try mask.withUnsafeMutableBufferPointer { try dataset.readRows(row..<(row + 1), into: $0) }
            guard let box = Self.tightBox(mask, height: imageHeight, width: imageWidth) else {
                throw DataError(file: path, message: "/\(split)/instance_masks[\(row)] (image \(i)) is empty")
            }
            objects.append(Object(box: box, classID: Int(classes[row])))
            masks.append(mask)
        }
        return (objects, masks)
    }

    /// The smallest box holding every nonzero pixel of a mask (pixel (x, y) covers [x, x + 1) x [y, y + 1)); nil when
    /// the mask is empty.
    public static func tightBox(_ mask: [UInt8], height: Int, width: Int) -> BoxCorners? {
        var (x0, y0, x1, y1) = (width, height, -1, -1)
        for y in 0..<height {
            for x in 0..<width where mask[y * width + x] != 0 {
                x0 = min(x0, x); x1 = max(x1, x); y0 = min(y0, y); y1 = max(y1, y)
            }
        }
        guard x1 >= 0 else { return nil }
        return BoxCorners(xmin: Float(x0), ymin: Float(y0), xmax: Float(x1 + 1), ymax: Float(y1 + 1))
    }
}

/// Batches for a segmentation model from a `SegmentationDataset`: images as float NCHW in 0...255, the class maps
/// (`Batch.segmentation`) and, for instance data, each image's objects and masks.
///
/// `augment` (training only) receives one sample (pixels HWC, class map, instance masks, epoch, sample index) and
/// returns it transformed (`SegmentationAugmentation`); it must draw its randomness from (seed, epoch, sample index) so
/// every rank augments a sample the same way. Objects are then the tight boxes of the moved masks (a mask moved out of
/// the image is dropped).
public final class SegmentationSource: TrainingSource, @unchecked Sendable {
    public typealias Augmentation = (_ pixels: [UInt8], _ classMap: [UInt8], _ instances: [[UInt8]]?, _ epoch: Int, _ index: Int)
        -> (pixels: [UInt8], classMap: [UInt8], instances: [[UInt8]]?)
    public let dataset: SegmentationDataset
    public let augment: Augmentation?

    public init(dataset: SegmentationDataset, augment: Augmentation? = nil) {
        self.dataset = dataset
        self.augment = augment
    }

    public var path: String { dataset.path }
    public var split: String { dataset.split }
    public var count: Int { dataset.count }

    public var datasetDescription: DatasetDescription {
        DatasetDescription(path: path, sampleShape: [3, dataset.imageHeight, dataset.imageWidth], classNames: dataset.classNames)
    }

    public func checkCompatible(with config: ModelConfig) throws { try datasetDescription.checkImagesAndClasses(fit: config) }

    public func batch(indices: [Int], epoch: Int, training: Bool, config: ModelConfig) throws -> Batch {
        let (h, w) = (dataset.imageHeight, dataset.imageWidth)
        let plane = h * w
        var (pixels, maps) = try dataset.read(indices)
        var objects: [[Object]] = [], perImage: [[[UInt8]]] = []
        if dataset.hasInstances {
            for i in indices {
                let (o, m) = try dataset.instances(of: i)
                objects.append(o)
                perImage.append(m)
            }
        }
        if training, let augment {
            for (k, i) in indices.enumerated() {
                let (image, map) = ((k * plane * 3)..<((k + 1) * plane * 3), (k * plane)..<((k + 1) * plane))
                let moved = augment(Array(pixels[image]), Array(maps[map]), dataset.hasInstances ? perImage[k] : nil, epoch, i)
                pixels.replaceSubrange(image, with: moved.pixels)
                maps.replaceSubrange(map, with: moved.classMap)
                guard let masks = moved.instances else { continue }
                let kept = zip(objects[k], masks).compactMap { object, mask in
                    SegmentationDataset.tightBox(mask, height: h, width: w).map { (Object(box: $0, classID: object.classID), mask) }
                }
                (objects[k], perImage[k]) = (kept.map(\.0), kept.map(\.1))
            }
        }
        let images = Tensor(zeros: [indices.count, 3, h, w])
        pixels.withUnsafeBufferPointer { src in
            guard let base = src.baseAddress else { return }
            for k in 0..<indices.count {
                let image = base + k * plane * 3, out = images.data + k * 3 * plane
                for c in 0..<3 { for p in 0..<plane { out[c * plane + p] = Float(image[p &* 3 &+ c]) } }
            }
        }
        var batch = Batch(images: images, indices: indices)
        var masks: [[[UInt8]]]?
        if dataset.hasInstances {
            batch.objects = objects
            masks = perImage
        }
        batch.segmentation = SegmentationMaps(classes: maps, height: h, width: w, voidLabel: dataset.voidLabel, instanceMasks: masks)
        return batch
    }
}

/// Writes a segmentation dataset in `SegmentationDataset`'s layout: images and class maps one at a time as they are
/// produced, instance masks gathered per split and written after its images; atomically: the file appears complete under its name or not at all. The importers
/// (`starling data segmentation`) and the tests write through it.
public enum SegmentationWriter {
    /// One image of a split: RGB bytes H x W x 3, its class map H x W, and for instance data its objects' classes and
    /// masks (H x W bytes each, nonzero inside).
    public struct Sample {
        public var pixels: [UInt8]
        public var classMap: [UInt8]
        public var imageID: Int64
        public var instances: [(classID: Int32, mask: [UInt8])]?
        public init(pixels: [UInt8], classMap: [UInt8], imageID: Int64, instances: [(classID: Int32, mask: [UInt8])]? = nil) {
            self.pixels = pixels
            self.classMap = classMap
            self.imageID = imageID
            self.instances = instances
        }
    }

    /// `splits`: per split name, how many images it has and a function producing image k; `instances` says whether
    /// the splits carry instance masks.
    public static func write(to path: String, classNames: [String], height: Int, width: Int, voidLabel: UInt8 = 255,
                             instances: Bool, source: String,
                             splits: [(name: String, count: Int, sample: (Int) throws -> Sample)]) throws {
        precondition(classNames.count >= 2 && Int(voidLabel) >= classNames.count, "classes and void label")
        let plane = height * width
        try writeHDF5Atomically(to: path) { file in
            let root = file.root
            try root.setAttribute("format", SegmentationDataset.format)
            try root.setAttribute("format_version", SegmentationDataset.formatVersion)
            try root.setAttribute("class_names", classNames)
            try root.setAttribute("void_label", Int(voidLabel))
            try root.setAttribute("image_height", height)
            try root.setAttribute("image_width", width)
            try root.setAttribute("source", source)
            for split in splits {
                let images = try root.createDataset("\(split.name)/images", type: .uint8, shape: [split.count, height, width, 3],
                                                    chunk: [1, height, width, 3], deflate: 1)
                let maps = try root.createDataset("\(split.name)/class_maps", type: .uint8, shape: [split.count, height, width],
                                                  chunk: [1, height, width], deflate: 1)
                var ids: [Int64] = [], offsets: [Int64] = [0], classes: [Int32] = [], masks: [UInt8] = []
                for k in 0..<split.count {
                    let sample = try split.sample(k)
                    precondition(sample.pixels.count == plane * 3 && sample.classMap.count == plane, "sample \(k) of \(split.name) is not \(height)x\(width)")
                    try images.writeRows(startingAt: k, sample.pixels)
                    try maps.writeRows(startingAt: k, sample.classMap)
                    ids.append(sample.imageID)
                    for object in sample.instances ?? [] {
                        classes.append(object.classID)
                        masks += object.mask.map { $0 != 0 ? 1 : 0 }
                    }
                    offsets.append(Int64(classes.count))
                }
                let group = try root.group(split.name)
                try group.createDataset("image_ids", type: .int64, shape: [split.count]).write(ids)
                if instances {
                    try group.createDataset("instance_offsets", type: .int64, shape: [split.count + 1]).write(offsets)
                    try group.createDataset("instance_classes", type: .int32, shape: [classes.count]).write(classes)
                    try group.createDataset("instance_masks", type: .uint8, shape: [classes.count, height, width]).write(masks)
                }
            }
        }
    }
}
