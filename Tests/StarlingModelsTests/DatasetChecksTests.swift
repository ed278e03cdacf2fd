import Foundation
import Testing
import StarlingIO
@testable import StarlingModels
@testable import StarlingData

/// Issue 16: every dataset kind checks each stored array's element type and shape when it opens. HDF5 converts any
/// numeric type to the one a reader asks for without a word (float pixels in [0, 1] read as bytes are 0 and 1, int16
/// pixels clip at 255, a class id of 1.7 becomes 1), so an array of another type is refused naming the file, the array
/// and what was expected, except where any type reads exactly (coordinates as any number, ids and counts as any
/// integer).
@Suite struct DatasetChecksTests {
    /// Copies `path` to `copy` with `/NAME` replaced by `values` stored as `type` in `shape`.
    static func replacing(_ path: String, _ name: String, type: HDF5ElementType, shape: [Int], values: [Double], copy: String) throws {
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: path, toPath: copy)
        try updateHDF5Atomically(copy) { file in
            try file.root.remove(name)
            try file.root.createDataset(name, type: type, shape: shape).write(values)
        }
    }

    /// The array `/NAME` of `path` as doubles, with its shape.
    static func array(_ path: String, _ name: String) throws -> (values: [Double], shape: [Int]) {
        let dataset = try HDF5File.open(path).root.dataset(name)
        return (try dataset.read(as: Double.self), dataset.shape)
    }

    static func expectRefused(_ copy: String, _ parts: [String], sourceLocation: SourceLocation = #_sourceLocation, _ open: (String) throws -> Void) {
        do {
            try open(copy)
            Issue.record("\(parts) was accepted", sourceLocation: sourceLocation)
        } catch {
            let text = "\(error)"
            #expect(text.hasPrefix(copy + ": ") && !text.contains("\n"), "\(text)", sourceLocation: sourceLocation)
            for part in parts { #expect(text.contains(part), "\"\(text)\" lacks \"\(part)\"", sourceLocation: sourceLocation) }
        }
    }

    /// A three-image detection set imported from generated pictures, its train split with three boxes.
    static func detectionSet(_ dir: String) throws -> String {
        for (k, name) in ["a.jpg", "b.jpg", "c.jpg"].enumerated() {
            try DetectionImportTests.writeImage(dir + "/" + name, width: 48, height: 30, seed: k)
        }
        try DetectionImportTests.write("frame,xmin,xmax,ymin,ymax,class_id\na.jpg,2,20,3,25,1\nb.jpg,10,40,5,20,2\nc.jpg,1,5,1,5,1\n",
                                       to: dir + "/labels.csv")
        let out = dir + "/set.h5"
        _ = try DetectionImport.run(DetectionImportTests.options(.udacity, images: dir, labels: dir + "/labels.csv", out: out))
        return out
    }

    @Test func detectionArraysOfAnotherTypeOrShapeAreRefused() throws {
        let dir = Fixture.temporaryDirectory("dataset-checks-detection")
        let good = try Self.detectionSet(dir)
        let original = try DetectionDataset(path: good, split: "train")
        #expect(original.count == 3)
        let images = try Self.array(good, "/train/images"), boxes = try Self.array(good, "/train/boxes")
        let classes = try Self.array(good, "/train/classes"), difficult = try Self.array(good, "/train/difficult")
        let offsets = try Self.array(good, "/train/box_offsets"), ids = try Self.array(good, "/train/image_ids")
        let copy = dir + "/changed.h5"
        func refused(_ name: String, _ type: HDF5ElementType, _ shape: [Int], _ values: [Double], _ parts: [String],
                     sourceLocation: SourceLocation = #_sourceLocation) throws {
            try Self.replacing(good, name, type: type, shape: shape, values: values, copy: copy)
            Self.expectRefused(copy, [name] + parts, sourceLocation: sourceLocation) { _ = try DetectionDataset(path: $0, split: "train") }
        }
        // Pixels: uint8 only. Float pixels scaled to [0, 1] (a common export) would have read as a black image.
        try refused("/train/images", .float64, images.shape, images.values.map { $0 / 255 }, ["holds float64", "expected uint8 [_, 30, 48, 3]"])
        try refused("/train/images", .float32, images.shape, images.values, ["holds float32"])
        try refused("/train/images", .int16, images.shape, images.values, ["holds int16"])
        try refused("/train/images", .uint8, [3, 30, 48, 1], Array(images.values.prefix(3 * 30 * 48)), ["[3, 30, 48, 1]", "expected uint8 [_, 30, 48, 3]"])
        // Class ids, flags, offsets and ids: integers; a float class id would have been truncated.
        try refused("/train/classes", .float32, classes.shape, classes.values.map { $0 + 0.7 }, ["holds float32", "expected integers [_]"])
        try refused("/train/classes", .int64, classes.shape, [1, 300, 1], ["classes[1] = 300 is outside 1...5"])
        try refused("/train/difficult", .int32, difficult.shape, [0, 7, 0], ["difficult[1] = 7; expected 0, 1 or 2"])
        try refused("/train/difficult", .float64, difficult.shape, difficult.values, ["holds float64", "expected integers [3]"])
        try refused("/train/box_offsets", .float64, offsets.shape, offsets.values, ["holds float64", "expected integers [4]"])
        try refused("/train/box_offsets", .int64, offsets.shape, [0, 2, 1, 3], ["does not run from 0 up to the 3 boxes"])
        try refused("/train/image_ids", .int64, [4], ids.values + [9], ["[4]", "expected integers [3]"])
        // Boxes: any number type, shaped [M, 4].
        try refused("/train/boxes", .float32, [12], boxes.values, ["[12]", "expected numbers [3, 4]"])
        try refused("/train/boxes", .float32, [3, 4], boxes.values.enumerated().map { $0.offset == 2 ? -1 : $0.element }, ["boxes[0]", "inverted"])

        // What reads exactly is taken: boxes in float64, class ids and flags in any integer width.
        try Self.replacing(good, "/train/boxes", type: .float64, shape: boxes.shape, values: boxes.values, copy: copy)
        try updateHDF5Atomically(copy) { file in
            for (name, type, values) in [("/train/classes", HDF5ElementType.int64, classes.values), ("/train/difficult", .int16, difficult.values)] {
                try file.root.remove(name)
                try file.root.createDataset(name, type: type, shape: [3]).write(values)
            }
        }
        let wide = try DetectionDataset(path: copy, split: "train")
        for i in 0..<3 { #expect(wide.objects(of: i) == original.objects(of: i)) }
    }

    @Test func proposalArraysOfAnotherTypeOrShapeAreRefused() throws {
        let dir = Fixture.temporaryDirectory("dataset-checks-proposals")
        let good = try Self.detectionSet(dir)
        let boxes = [[BoxCorners(xmin: 1, ymin: 1, xmax: 10, ymax: 10)], [], [BoxCorners(xmin: 2, ymin: 3, xmax: 40, ymax: 20), BoxCorners(xmin: 0, ymin: 0, xmax: 48, ymax: 30)]]
        try ProposalStore.write(boxes, method: "test", split: "train", to: good)
        let copy = dir + "/changed.h5"
        let opens: [(String) throws -> Void] = [
            { _ = try ProposalStore.read(path: $0, split: "train") },
            { _ = try ProposalReader(dataset: DetectionDataset(path: $0, split: "train")) },
        ]
        for open in opens {
            try Self.replacing(good, "/train/proposal_offsets", type: .float32, shape: [4], values: [0, 1, 1, 3], copy: copy)
            Self.expectRefused(copy, ["/train/proposal_offsets holds float32", "expected integers [4]"], open)
            try Self.replacing(good, "/train/proposals", type: .float32, shape: [12], values: [1, 1, 10, 10, 2, 3, 40, 20, 0, 0, 48, 30], copy: copy)
            Self.expectRefused(copy, ["/train/proposals holds float32 [12]", "expected numbers [_, 4]"], open)
        }
        // Proposals in float64 read as they are.
        try Self.replacing(good, "/train/proposals", type: .float64, shape: [3, 4], values: [1, 1, 10, 10, 2, 3, 40, 20, 0, 0, 48, 30], copy: copy)
        #expect(try ProposalStore.read(path: copy, split: "train").proposals == boxes)
        #expect(try ProposalReader(dataset: DetectionDataset(path: copy, split: "train")).proposals(of: 2) == boxes[2])
    }

    @Test func segmentationArraysOfAnotherTypeOrShapeAreRefused() throws {
        let dir = Fixture.temporaryDirectory("dataset-checks-segmentation")
        let good = dir + "/set.h5"
        let (h, w) = (6, 8)
        func sample(_ k: Int) -> SegmentationWriter.Sample {
            let map: [UInt8] = (0..<(h * w)).map { UInt8(($0 + k) % 3) }
            let mask: [UInt8] = (0..<(h * w)).map { $0 % w < 4 ? 1 : 0 }
            let pixels: [UInt8] = (0..<(h * w * 3)).map { UInt8(($0 * 7 + k) % 256) }
            let objects: [(classID: Int32, mask: [UInt8])] = [(classID: 2, mask: mask)]
            return SegmentationWriter.Sample(pixels: pixels, classMap: map, imageID: Int64(10 + k), instances: objects)
        }
        try SegmentationWriter.write(to: good, classNames: ["background", "cell", "person"], height: h, width: w, instances: true,
                                     source: "test", splits: [(name: "train", count: 2, sample: sample)])
        let original = try SegmentationDataset(path: good, split: "train")
        #expect(original.count == 2 && original.hasInstances)
        let copy = dir + "/changed.h5"
        func refused(_ name: String, _ type: HDF5ElementType, _ shape: [Int], _ values: [Double], _ parts: [String],
                     sourceLocation: SourceLocation = #_sourceLocation) throws {
            try Self.replacing(good, name, type: type, shape: shape, values: values, copy: copy)
            Self.expectRefused(copy, [name] + parts, sourceLocation: sourceLocation) { _ = try SegmentationDataset(path: $0, split: "train") }
        }
        let pixels = try Self.array(good, "/train/images").values, maps = try Self.array(good, "/train/class_maps").values
        try refused("/train/images", .float32, [2, h, w, 3], pixels.map { $0 / 255 }, ["holds float32", "expected uint8 [_, 6, 8, 3]"])
        try refused("/train/class_maps", .int16, [2, h, w], maps, ["holds int16", "expected uint8 [2, 6, 8]"])
        try refused("/train/image_ids", .float64, [2], [10, 11], ["holds float64", "expected integers [2]"])
        try refused("/train/instance_classes", .float32, [2], [2, 2], ["holds float32", "expected integers [_]"])
        try refused("/train/instance_classes", .int32, [2], [2, 9], ["instance_classes[1] = 9 is outside 1...2"])
        try refused("/train/instance_offsets", .float64, [3], [0, 1, 2], ["holds float64", "expected integers [3]"])
        try refused("/train/instance_masks", .float32, [2, h, w], [Double](repeating: 1, count: 2 * h * w), ["holds float32", "expected uint8 [2, 6, 8]"])
    }

    @Test func imageSetLabelsMustBeBytesOfAnIntegerType() throws {
        let dir = Fixture.temporaryDirectory("dataset-checks-mnist")
        let good = try Fixture.sampleHDF5()
        let labels = try Self.array(good, "/test/labels").values
        let copy = dir + "/changed.h5"
        try Self.replacing(good, "/test/labels", type: .float32, shape: [labels.count], values: labels.map { $0 + 0.5 }, copy: copy)
        Self.expectRefused(copy, ["/test/labels holds float32", "expected integers [1000]"]) { _ = try ImageDataset(path: $0, split: "test") }
        try Self.replacing(good, "/test/labels", type: .int16, shape: [labels.count], values: [-1] + labels.dropFirst(), copy: copy)
        Self.expectRefused(copy, ["/test/labels[0] = -1 is not a label 0...255"]) { _ = try ImageDataset(path: $0, split: "test") }
        try Self.replacing(good, "/test/labels", type: .int64, shape: [labels.count], values: labels, copy: copy)
        #expect(try ImageDataset(path: copy, split: "test").allLabels() == ImageDataset(path: good, split: "test").allLabels())
    }
}
