import Foundation
import StarlingIO
import StarlingNN

/// The HDF5 file ssd_keras's `DataGenerator.create_hdf5_dataset` writes (h5py):
/// ```
/// images        vlen uint8 [N]   each image flattened (HWC)
/// image_shapes  int32 [N, 3]     height, width, channels
/// labels        vlen int32 [N]   each image's boxes flattened, one row per box in `labels_format` order
/// label_shapes  int32 [N, 2]     boxes, values per box
/// image_ids     vlen str [N]     optional
/// eval_neutral  vlen bool [N]    optional; true: a box neither rewarded nor punished in evaluation (VOC difficult)
/// ```
/// Box values are used as Starling corners as they stand (ssd_keras keeps whatever its parser read). Images stay in
/// the file and are read one at a time while writing.
final class SSDKerasSource {
    /// ssd_keras's default `labels_format`.
    static let defaultColumns = ["class_id", "xmin", "ymin", "xmax", "ymax"]

    let path: String
    private let file: HDF5File
    private let images: HDF5VariableLengthDataset
    private let shapes: [Int32]
    let count: Int

    init(path: String) throws {
        self.path = path
        file = try HDF5File.open(path)
        let root = file.root
        for name in ["images", "image_shapes"] where !root.contains(name) {
            throw DataError(file: path, message: "no dataset '/\(name)': not an ssd_keras HDF5 dataset")
        }
        images = try root.variableLengthDataset("images")
        guard case .numbers = images.content else { throw DataError(file: path, message: "/images does not hold numbers") }
        let shapeSet = try root.dataset("image_shapes")
        count = images.count
        guard shapeSet.shape == [count, 3] else {
            throw DataError(file: path, message: "/image_shapes has shape \(shapeSet.shape); expected [\(count), 3]")
        }
        shapes = try shapeSet.read(as: Int32.self)
    }

    /// Width and height of image `i` from `image_shapes`.
    func dimensions(_ i: Int) throws -> (width: Int, height: Int) {
        let (h, w, c) = (Int(shapes[3 * i]), Int(shapes[3 * i + 1]), Int(shapes[3 * i + 2]))
        guard h > 0, w > 0, [1, 3, 4].contains(c) else {
            throw DataError(file: path, message: "image_shapes[\(i)] = [\(h), \(w), \(c)] is not an image size")
        }
        return (w, h)
    }

    /// Image `i` as RGB (gray repeated, a fourth channel dropped, as ssd_keras does).
    func readRGB(_ i: Int) throws -> (width: Int, height: Int, pixels: [UInt8]) {
        let (w, h) = try dimensions(i)
        let c = Int(shapes[3 * i + 2])
        let flat = try images.row(i, as: UInt8.self)
        guard flat.count == w * h * c else {
            throw DataError(file: path, message: "images[\(i)] holds \(flat.count) values; image_shapes says \(h)x\(w)x\(c)")
        }
        if c == 3 { return (w, h, flat) }
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for p in 0..<(w * h) {
            for k in 0..<3 { rgb[3 * p + k] = flat[p * c + (c == 1 ? 0 : k)] }
        }
        return (w, h, rgb)
    }

    /// The labels of every image; `columns` names the meaning of each value of a box row.
    func parse(columns: [String]) throws -> ParsedLabels {
        let needed = Self.defaultColumns
        guard Set(needed).isSubset(of: columns), Set(columns).count == columns.count else {
            throw DataError(file: path, message: "--label-format \(columns.joined(separator: ",")) must name each of \(needed.joined(separator: ", ")) once")
        }
        let position = Dictionary(uniqueKeysWithValues: columns.enumerated().map { ($1, $0) })
        let root = file.root
        let labels = root.contains("labels") ? try root.variableLengthDataset("labels") : nil
        let labelShapes = root.contains("label_shapes") ? try root.dataset("label_shapes").read(as: Int32.self) : nil
        if labels != nil && labelShapes?.count != 2 * count {
            throw DataError(file: path, message: "/label_shapes does not hold one (boxes, values) pair per image")
        }
        let ids = root.contains("image_ids") ? try root.variableLengthDataset("image_ids").strings() : nil
        let neutral = root.contains("eval_neutral") ? try root.variableLengthDataset("eval_neutral") : nil
        var parsed = ParsedLabels()
        if labels == nil { parsed.notes.append("\(path) has no /labels: images imported with no objects") }
        for i in 0..<count {
            let name = ids.map { $0.indices.contains(i) ? $0[i] : "images[\(i)]" } ?? "images[\(i)]"
            var image = SourceImage(reference: .embedded(i), location: LabelLocation(file: path, detail: "images[\(i)] (\(name))"))
            defer { parsed.images.append(image) }
            guard let labels, let labelShapes else { continue }
            let location = LabelLocation(file: path, detail: "labels[\(i)]")
            let values = try labels.row(i, as: Double.self)
            let (rows, width) = (Int(labelShapes[2 * i]), Int(labelShapes[2 * i + 1]))
            if values.isEmpty { continue }
            guard width == columns.count, rows * width == values.count else {
                image.report(.malformed, "\(values.count) values with label_shapes [\(rows), \(width)]; expected rows of \(columns.count) (\(columns.joined(separator: ",")))", at: location)
                continue
            }
            let flags = try neutral.map { try $0.flags(i) }
            if let flags, flags.count != rows {
                image.report(.malformed, "eval_neutral[\(i)] has \(flags.count) flags for \(rows) boxes", at: location)
                continue
            }
            for r in 0..<rows {
                let at = LabelLocation(file: path, detail: "labels[\(i)] box \(r)")
                func value(_ column: String) -> Double { values[r * width + position[column]!] }
                let box = (value("xmin"), value("ymin"), value("xmax"), value("ymax"))
                guard checkBox(box, on: &image, at: at) else { continue }
                let classID = value("class_id")
                image.objects.append(SourceObject(box: box, label: coordinate(classID), difficult: flags?[r] ?? false, location: at))
            }
        }
        return parsed
    }
}
