import Foundation
import StarlingNN

/// COCO instances JSON (`instances_train2017.json` and the like): `images` (id, file_name, width, height),
/// `annotations` (image_id, category_id, bbox [x, y, w, h] in continuous pixel coordinates, iscrowd) and
/// `categories` (id, name). Boxes become (x, y, x + w, y + h); crowd regions become difficult boxes; the image
/// ids are kept; the class names are the category names in id order. Images without annotations are kept with no
/// objects, as COCO intends. JSON has no useful line numbers: problems name `annotations[i]` instead.
///
/// The whole file is decoded in memory (about 1.5 GB of memory for the 450 MB train2017 file).
package enum COCOLabels {
    private struct File: Decodable {
        struct Image: Decodable { let id: Int64; let file_name: String; let width: Int?; let height: Int? }
        struct Annotation: Decodable {
            let id: Int64?
            let image_id: Int64
            let category_id: Int64
            let bbox: [Double]
            let iscrowd: Int?
        }
        struct Category: Decodable { let id: Int64; let name: String }
        let images: [Image]
        let annotations: [Annotation]?
        let categories: [Category]
    }

    package static func parse(_ path: String) throws -> ParsedLabels {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError(file: path, message: FileManager.default.fileExists(atPath: path) ? "cannot read" : "no such file")
        }
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch {
            throw DataError(file: path, message: "not a COCO instances file: \(oneLineDescription(error))")
        }
        var parsed = ParsedLabels()
        let categories = file.categories.sorted { $0.id < $1.id }
        guard Set(categories.map(\.name)).count == categories.count else {
            throw DataError(file: path, message: "two categories share a name")
        }
        parsed.sourceClassNames = categories.map(\.name)
        let categoryNames = Dictionary(categories.map { ($0.id, $0.name) }, uniquingKeysWith: { a, _ in a })
        var index: [Int64: Int] = [:]
        for (i, entry) in file.images.enumerated() {
            guard index[entry.id] == nil else {
                throw DataError(file: path, message: "images[\(i)]: image id \(entry.id) appears twice")
            }
            var image = SourceImage(reference: .file(entry.file_name),
                                    location: LabelLocation(file: path, detail: "images[\(i)] (id \(entry.id))"))
            image.imageID = entry.id
            if let w = entry.width, let h = entry.height, w > 0, h > 0 { image.declaredSize = (w, h) }
            index[entry.id] = parsed.images.count
            parsed.images.append(image)
        }
        for (a, annotation) in (file.annotations ?? []).enumerated() {
            let location = LabelLocation(file: path, detail: "annotations[\(a)]" + (annotation.id.map { " (id \($0))" } ?? ""))
            guard let i = index[annotation.image_id] else {
                parsed.looseIssues.append(ImportIssue(location: location, problem: .malformed, message: "image_id \(annotation.image_id) is not in images"))
                continue
            }
            guard annotation.bbox.count == 4, annotation.bbox.allSatisfy(\.isFinite) else {
                parsed.images[i].report(.malformed, "bbox \(annotation.bbox) is not [x, y, width, height]", at: location)
                continue
            }
            let (x, y, w, h) = (annotation.bbox[0], annotation.bbox[1], annotation.bbox[2], annotation.bbox[3])
            guard w > 0 && h > 0 else {
                parsed.images[i].report(.emptyBox, "bbox width \(coordinate(w)), height \(coordinate(h)): both must be positive", at: location)
                continue
            }
            guard let name = categoryNames[annotation.category_id] else {
                parsed.images[i].report(.unknownClass, "category_id \(annotation.category_id) is not in categories", at: location)
                continue
            }
            parsed.images[i].objects.append(SourceObject(box: (x, y, x + w, y + h), label: name,
                                                         difficult: (annotation.iscrowd ?? 0) != 0, location: location))
        }
        return parsed
    }
}
