import Foundation
import StarlingIO
import StarlingNN

/// A ground-truth set as a COCO annotations file holds it: images, categories and boxes.
public struct DetectionGroundTruth: Sendable, Equatable {
    public struct Image: Sendable, Equatable {
        public var id: Int
        public var width: Int?
        public var height: Int?
        public var fileName: String?
        public init(id: Int, width: Int? = nil, height: Int? = nil, fileName: String? = nil) {
            self.id = id; self.width = width; self.height = height; self.fileName = fileName
        }
    }

    public struct Category: Sendable, Equatable {
        public var id: Int
        public var name: String
        public init(id: Int, name: String) { self.id = id; self.name = name }
    }

    public var images: [Image]
    public var categories: [Category]
    public var boxes: [GroundTruthBox]

    /// Images and categories default to those the boxes mention (categories named by their id).
    public init(boxes: [GroundTruthBox], images: [Image]? = nil, categories: [Category]? = nil) {
        self.boxes = boxes
        self.images = images ?? Set(boxes.map(\.imageID)).sorted().map { Image(id: $0) }
        self.categories = categories ?? Set(boxes.map(\.classID)).sorted().map { Category(id: $0, name: "\($0)") }
    }
}

/// COCO JSON files: the annotations file (`images`, `annotations`, `categories`) and the results file (an array
/// of `{image_id, category_id, bbox, score}`), with boxes as `[x, y, w, h]` converted to corners here.
///
/// Reading checks everything the evaluators rely on and stops at the first offending entry with one line naming
/// the file, the entry's index and its ids: unknown images or categories, boxes that are not 4 finite numbers
/// with positive width and height, NaN or infinite scores (`NaN` and `Infinity` literals, which Python's json
/// module writes, are accepted by the parser so that they can be reported), duplicate ids.
/// Non-standard fields read: `difficult` or `ignore` (0/1) on an annotation marks a VOC difficult box.
public enum COCOJSON {
    // MARK: Reading

    public static func readAnnotations(path: String) throws -> DetectionGroundTruth {
        try decodeAnnotations(try contents(of: path), source: path)
    }

    /// Reads a results file; with `groundTruth`, every detection's image and category must be in it.
    public static func readResults(path: String, groundTruth: DetectionGroundTruth? = nil) throws -> [Detection] {
        try decodeResults(try contents(of: path), source: path, groundTruth: groundTruth)
    }

    public static func decodeAnnotations(_ data: Data, source: String) throws -> DetectionGroundTruth {
        let file: AnnotationFile = try decode(data, source: source)
        var imageIDs = Set<Int>(), categoryIDs = Set<Int>(), annotationIDs = Set<Int>()
        for (i, image) in file.images.enumerated() where !imageIDs.insert(image.id).inserted {
            throw DataError(file: source, message: "images[\(i)]: duplicate image id \(image.id)")
        }
        for (i, category) in file.categories.enumerated() where !categoryIDs.insert(category.id).inserted {
            throw DataError(file: source, message: "categories[\(i)]: duplicate category id \(category.id)")
        }
        var boxes: [GroundTruthBox] = []
        boxes.reserveCapacity(file.annotations.count)
        for (i, a) in file.annotations.enumerated() {
            let name = "annotations[\(i)] (id \(a.id.map(String.init) ?? "none"), image_id \(a.imageID), category_id \(a.categoryID))"
            func fail(_ problem: String) -> DataError { DataError(file: source, message: "\(name): \(problem)") }
            if let id = a.id, !annotationIDs.insert(id).inserted { throw fail("duplicate annotation id") }
            guard imageIDs.contains(a.imageID) else { throw fail("image_id is not among the file's images") }
            guard categoryIDs.contains(a.categoryID) else { throw fail("category_id is not among the file's categories") }
            let box = try parseBox(a.bbox, fail: fail)
            if let area = a.area, !(area.isFinite && area >= 0) { throw fail("area \(area) is not a finite non-negative number") }
            boxes.append(GroundTruthBox(imageID: a.imageID, classID: a.categoryID, box: box,
                                        difficult: (a.difficult ?? 0) != 0 || (a.ignore ?? 0) != 0,
                                        isCrowd: (a.iscrowd ?? 0) != 0, area: a.area, id: a.id))
        }
        return DetectionGroundTruth(
            boxes: boxes,
            images: file.images.map { .init(id: $0.id, width: $0.width, height: $0.height, fileName: $0.fileName) },
            categories: file.categories.map { .init(id: $0.id, name: $0.name ?? "\($0.id)") })
    }

    public static func decodeResults(_ data: Data, source: String, groundTruth: DetectionGroundTruth? = nil) throws -> [Detection] {
        let results: [Result] = try decode(data, source: source)
        let images = groundTruth.map { Set($0.images.map(\.id)) }
        let categories = groundTruth.map { Set($0.categories.map(\.id)) }
        var detections: [Detection] = []
        detections.reserveCapacity(results.count)
        for (i, r) in results.enumerated() {
            func fail(_ problem: String) -> DataError {
                DataError(file: source, message: "detection \(i) (image_id \(r.imageID), category_id \(r.categoryID)): \(problem)")
            }
            if let images, !images.contains(r.imageID) { throw fail("image_id is not among the annotations' images") }
            if let categories, !categories.contains(r.categoryID) { throw fail("category_id is not among the annotations' categories") }
            guard r.score.isFinite else { throw fail("score is \(r.score)") }
            detections.append(Detection(imageID: r.imageID, classID: r.categoryID, box: try parseBox(r.bbox, fail: fail), score: r.score))
        }
        return detections
    }

    // MARK: Writing

    /// Writes a COCO annotations file atomically. Boxes without an id get ids above the largest one given.
    public static func writeAnnotations(_ groundTruth: DetectionGroundTruth, to path: String) throws {
        var next = (groundTruth.boxes.compactMap(\.id).max() ?? 0) + 1
        let annotations = groundTruth.boxes.map { g -> Annotation in
            var id = g.id
            if id == nil { id = next; next += 1 }
            return Annotation(id: id, imageID: g.imageID, categoryID: g.classID, bbox: XYWH(g.box), area: g.area,
                              iscrowd: g.isCrowd ? 1 : 0, difficult: g.difficult ? 1 : nil, ignore: nil,
                              segmentation: g.mask.map(CompressedRLE.init))
        }
        let file = AnnotationFile(
            info: .init(description: "written by Starling"),
            images: groundTruth.images.map { .init(id: $0.id, width: $0.width, height: $0.height, fileName: $0.fileName) },
            annotations: annotations,
            categories: groundTruth.categories.map { .init(id: $0.id, name: $0.name) })
        try write(file, to: path)
    }

    /// Writes a COCO results file (the format pycocotools' `loadRes` reads) atomically. Detections with a mask carry
    /// it as `segmentation`, compressed RLE, beside their box. pycocotools' `loadRes` then sets each detection's area
    /// from its box, not its mask; for `segm` drop `bbox` first, as detectron2 does, so that the small, medium and large
    /// figures use the mask's area as `COCOEvaluator(iouType: .segm)` does (AP over all areas is the same either way).
    public static func writeResults(_ detections: [Detection], to path: String) throws {
        try write(detections.map {
            Result(imageID: $0.imageID, categoryID: $0.classID, bbox: XYWH($0.box), score: $0.score, segmentation: $0.mask.map(CompressedRLE.init))
        }, to: path)
    }

    // MARK: File layout

    struct AnnotationFile: Codable {
        struct Info: Codable { var description: String? }
        struct Image: Codable {
            var id: Int
            var width: Int?
            var height: Int?
            var fileName: String?
            enum CodingKeys: String, CodingKey { case id, width, height, fileName = "file_name" }
        }
        struct Category: Codable { var id: Int; var name: String? }
        var info: Info?
        var images: [Image]
        var annotations: [Annotation]
        var categories: [Category]
    }

    struct Annotation: Codable {
        var id: Int?
        var imageID: Int
        var categoryID: Int
        var bbox: XYWH
        var area: Double?
        var iscrowd: Int?
        var difficult: Int?
        var ignore: Int?
        /// Written for instances with a mask; read only when it is compressed RLE (polygons and uncompressed RLE of
        /// COCO's own files are skipped: box AP does not need them).
        var segmentation: CompressedRLE?
        enum CodingKeys: String, CodingKey {
            case id, imageID = "image_id", categoryID = "category_id", bbox, area, iscrowd, difficult, ignore, segmentation
        }

        init(id: Int?, imageID: Int, categoryID: Int, bbox: XYWH, area: Double?, iscrowd: Int?, difficult: Int?, ignore: Int?,
             segmentation: CompressedRLE?) {
            self.id = id; self.imageID = imageID; self.categoryID = categoryID; self.bbox = bbox; self.area = area
            self.iscrowd = iscrowd; self.difficult = difficult; self.ignore = ignore; self.segmentation = segmentation
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            id = try c.decodeIfPresent(Int.self, forKey: .id)
            imageID = try c.decode(Int.self, forKey: .imageID)
            categoryID = try c.decode(Int.self, forKey: .categoryID)
            bbox = try c.decode(XYWH.self, forKey: .bbox)
            area = try c.decodeIfPresent(Double.self, forKey: .area)
            iscrowd = try c.decodeIfPresent(Int.self, forKey: .iscrowd)
            difficult = try c.decodeIfPresent(Int.self, forKey: .difficult)
            ignore = try c.decodeIfPresent(Int.self, forKey: .ignore)
            segmentation = try? c.decodeIfPresent(CompressedRLE.self, forKey: .segmentation)
        }
    }

    /// COCO's `{"size": [h, w], "counts": "..."}`, the counts compressed as maskApi's `rleToString`.
    struct CompressedRLE: Codable {
        var size: [Int]
        var counts: String
        init(_ mask: RunLengthMask) { size = [mask.height, mask.width]; counts = mask.compressed }
    }

    /// One detection of a results file. Decoded by hand: a results file holds hundreds of thousands, and the
    /// synthesized decoder is half again as slow.
    struct Result: Codable {
        var imageID: Int
        var categoryID: Int
        var bbox: XYWH
        var score: Double
        var segmentation: CompressedRLE?
        enum CodingKeys: String, CodingKey { case imageID = "image_id", categoryID = "category_id", bbox, score, segmentation }

        init(imageID: Int, categoryID: Int, bbox: XYWH, score: Double, segmentation: CompressedRLE? = nil) {
            self.imageID = imageID; self.categoryID = categoryID; self.bbox = bbox; self.score = score; self.segmentation = segmentation
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            imageID = try c.decode(Int.self, forKey: .imageID)
            categoryID = try c.decode(Int.self, forKey: .categoryID)
            bbox = try c.decode(XYWH.self, forKey: .bbox)
            score = try c.decode(Double.self, forKey: .score)
        }
    }

    /// A COCO `[x, y, w, h]`, read without building an array; `count` is how many numbers the file gave.
    struct XYWH: Codable {
        var values: (x: Double, y: Double, w: Double, h: Double) = (0, 0, 0, 0)
        var count = 4

        init(_ box: BoundingBox) { values = (box.xmin, box.ymin, box.xmax - box.xmin, box.ymax - box.ymin) }

        init(from decoder: any Decoder) throws {
            var c = try decoder.unkeyedContainer()
            count = 0
            while !c.isAtEnd {
                let v = try c.decode(Double.self)
                switch count {
                case 0: values.x = v
                case 1: values.y = v
                case 2: values.w = v
                case 3: values.h = v
                default: break
                }
                count += 1
            }
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.unkeyedContainer()
            try c.encode(values.x); try c.encode(values.y); try c.encode(values.w); try c.encode(values.h)
        }

        var array: [Double] { [values.x, values.y, values.w, values.h] }
    }

    // MARK: Helpers

    private static func parseBox(_ bbox: XYWH, fail: (String) -> DataError) throws -> BoundingBox {
        guard bbox.count == 4 else { throw fail("bbox has \(bbox.count) numbers; COCO boxes are [x, y, w, h]") }
        let xywh = bbox.array
        let box = BoundingBox(cocoX: xywh[0], y: xywh[1], width: xywh[2], height: xywh[3])
        guard xywh.allSatisfy(\.isFinite) else { throw fail("bbox \(xywh) has a non-finite number") }
        guard xywh[2] >= 0, xywh[3] >= 0 else { throw fail("bbox \(xywh) has a negative width or height") }
        guard box.isValid else { throw fail("bbox \(xywh) is empty (zero width or height)") }
        return box
    }

    private static func contents(of path: String) throws -> Data {
        guard FileManager.default.fileExists(atPath: path) else { throw DataError(file: path, message: "no such file") }
        do { return try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw DataError(file: path, message: "cannot read: \(error.localizedDescription)")
        }
    }

    private static func decode<T: Decodable>(_ data: Data, source: String) throws -> T {
        let decoder = JSONDecoder()
        decoder.allowsJSON5 = true   // accepts NaN / Infinity literals, so that they are reported by entry
        // Foundation's JSON5 scanner traps on bytes that are not UTF-8 where it expects a key (found by FuzzTests);
        // JSON is UTF-8, so such a file is refused before it is scanned.
        guard String(data: data, encoding: .utf8) != nil else { throw DataError(file: source, message: "not UTF-8 text, so not JSON") }
        do {
            return try decoder.decode(T.self, from: data)
        } catch let error as DecodingError {
            throw DataError(file: source, message: describe(error, data: data))
        }
    }

    private static func write<T: Encodable>(_ value: T, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try AtomicFile.write(Array(try encoder.encode(value)), to: path)
    }

    /// A decoding failure on one line: where in the file, and what was wrong.
    static func describe(_ error: DecodingError, data: Data) -> String {
        func path(_ keys: [any CodingKey]) -> String {
            var text = ""
            for key in keys {
                if let index = key.intValue, key.stringValue.hasPrefix("Index") || key.stringValue == "\(index)" {
                    text += "[\(index)]"
                } else {
                    text += (text.isEmpty ? "" : ".") + key.stringValue
                }
            }
            return text.isEmpty ? "top level" : text
        }
        let message: String
        switch error {
        case .typeMismatch(let type, let context):
            message = "\(path(context.codingPath)): expected \(typeName(type)); \(context.debugDescription)"
        case .valueNotFound(let type, let context):
            message = "\(path(context.codingPath)): expected \(typeName(type)), found null"
        case .keyNotFound(let key, let context):
            message = "\(path(context.codingPath)): missing key '\(key.stringValue)'"
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                // The decoder does not say where; JSONSerialization does.
                var detail = "not valid JSON"
                do { _ = try JSONSerialization.jsonObject(with: data) } catch {
                    if let where_ = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String { detail += " (\(where_))" }
                }
                message = detail
            } else {
                message = "\(path(context.codingPath)): \(context.debugDescription)"
            }
        @unknown default:
            message = "\(error)"
        }
        return message.split(whereSeparator: \.isNewline).joined(separator: " ")
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type: return "an integer"
        case is Double.Type: return "a number"
        case is String.Type: return "a string"
        default: return "\(type)"
        }
    }
}
