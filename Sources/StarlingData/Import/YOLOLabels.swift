import Foundation

/// YOLO (darknet, Ultralytics) labels: `labels/<stem>.txt` beside `images/<stem>.jpg`, one object per line,
/// `class cx cy w h` with the centre and size as fractions of the image width and height, class ids from 0.
///
/// Every image is imported; an image without a label file has no objects (YOLO's convention for background
/// images, counted in the summary). A label file without an image is bad input.
package enum YOLOLabels {
    package static func parse(labels directory: String, images: ImageDirectory) throws -> ParsedLabels {
        var parsed = ParsedLabels()
        let labelFiles = Set(try listFiles(directory, extensions: ["txt"]).map { ($0 as NSString).deletingPathExtension })
        let imageStems = images.allNames.map { ($0 as NSString).deletingPathExtension }
        var background = 0
        for stem in Set(imageStems).union(labelFiles).sorted() {
            let path = directory + "/" + stem + ".txt"
            var image = SourceImage(reference: .stem(stem), location: LabelLocation(file: path))
            image.normalized = true
            guard labelFiles.contains(stem) else {
                background += 1
                parsed.images.append(image)
                continue
            }
            for (n, line) in try readLines(path).enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
                let location = LabelLocation(file: path, line: n + 1)
                let fields = splitWords(line)
                guard fields.count == 5 else {
                    image.report(.malformed, "\(fields.count) fields; expected class cx cy w h", at: location)
                    continue
                }
                guard let cx = parseNumber(fields[1]), let cy = parseNumber(fields[2]),
                      let w = parseNumber(fields[3]), let h = parseNumber(fields[4]) else {
                    image.report(.malformed, "a coordinate is not a number in '\(line)'", at: location)
                    continue
                }
                guard w > 0 && h > 0 else {
                    image.report(.emptyBox, "width \(coordinate(w)), height \(coordinate(h)): both must be positive", at: location)
                    continue
                }
                let box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                image.objects.append(SourceObject(box: box, label: fields[0], location: location))
            }
            parsed.images.append(image)
        }
        if background > 0 { parsed.notes.append("\(background) images without a label file, imported with no objects (background images)") }
        return parsed
    }
}
