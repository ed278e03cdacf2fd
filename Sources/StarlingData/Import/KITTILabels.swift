import Foundation

/// KITTI object detection labels (`training/label_2/<frame>.txt`), one object per line:
/// `type truncated occluded alpha x1 y1 x2 y2 height width length x y z rotation_y`. The 2D box (fields 5-8) is
/// in 0-based pixel coordinates given as floats and is used as continuous corners as it stands. The image is
/// `image_2/<frame>.png` (or .jpg/.jpeg).
///
/// Types become the driving classes (see `ClassMapping.kitti`): Car and Van are cars, Truck trucks, Pedestrian and
/// Person_sitting pedestrians, Cyclist bicyclists; DontCare regions become difficult boxes; Misc and Tram are dropped
/// and counted.
enum KITTILabels {
    static func parse(directory: String) throws -> ParsedLabels {
        var parsed = ParsedLabels()
        for name in try listFiles(directory, extensions: ["txt"]) {
            let path = directory + "/" + name
            var image = SourceImage(reference: .stem((name as NSString).deletingPathExtension), location: LabelLocation(file: path))
            for (n, line) in try readLines(path).enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
                let location = LabelLocation(file: path, line: n + 1)
                let fields = splitWords(line)
                guard fields.count >= 8 else {
                    image.report(.malformed, "\(fields.count) fields; expected type truncated occluded alpha x1 y1 x2 y2 ...", at: location)
                    continue
                }
                guard let x1 = parseNumber(fields[4]), let y1 = parseNumber(fields[5]),
                      let x2 = parseNumber(fields[6]), let y2 = parseNumber(fields[7]) else {
                    image.report(.malformed, "a box coordinate is not a number in '\(line)'", at: location)
                    continue
                }
                let box = (x1, y1, x2, y2)
                guard checkBox(box, on: &image, at: location) else { continue }
                image.objects.append(SourceObject(box: box, label: fields[0], location: location))
            }
            parsed.images.append(image)
        }
        return parsed
    }
}
