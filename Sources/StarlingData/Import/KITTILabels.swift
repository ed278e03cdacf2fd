import Foundation

/// KITTI object detection labels (`training/label_2/<frame>.txt`), one object per line:
/// `type truncated occluded alpha x1 y1 x2 y2 height width length x y z rotation_y`. The 2D box (fields 5-8) is
/// in 0-based pixel coordinates given as floats and is used as continuous corners as it stands. The image is
/// `image_2/<frame>.png` (or .jpg/.jpeg).
///
/// Types become the driving classes (see `ClassMapping.kitti`): Car and Van are cars, Truck trucks, Pedestrian and
/// Person_sitting pedestrians, Cyclist bicyclists; DontCare regions become difficult boxes; Misc and Tram are dropped
/// and counted.
package enum KITTILabels {
    package static func parse(directory: String) throws -> ParsedLabels {
        var parsed = ParsedLabels()
        for name in try listFiles(directory, extensions: ["txt"]) {
            let path = directory + "/" + name
            var image = SourceImage(reference: .stem((name as NSString).deletingPathExtension), location: LabelLocation(file: path))
            let lines = try readLines(path)
            // KITTI writes a line for every object and DontCare region; an empty file is a truncated copy, not a
            // frame without objects (which would teach the detector that everything in it is background).
            if !lines.contains(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) {
                image.report(.malformed, "empty label file", at: LabelLocation(file: path))
            }
            for (n, line) in lines.enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
                let location = LabelLocation(file: path, line: n + 1)
                let fields = splitWords(line)
                // 15 fields, 16 in result files (a score at the end).
                guard fields.count == 15 || fields.count == 16 else {
                    image.report(.malformed, "\(fields.count) fields; expected 15: type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y", at: location)
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
