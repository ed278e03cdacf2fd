import Foundation
import StarlingIO
import StarlingNN

/// Pascal VOC annotations (`Annotations/*.xml`, one file per image) and the older "PASCAL Annotation Version 1.00"
/// text files that Penn-Fudan ships (`Annotation/*.txt`).
///
/// VOC pixel coordinates are 1-based and inclusive (a box over the first ten columns is xmin 1, xmax 10); they
/// become Starling corners as (xmin - 1, ymin - 1, xmax, ymax). The Autti XML files (Udacity's 1920x1200 frames,
/// converted to VOC XML by BeSlower/Udacity_object_dataset) copy the original 0-based labels unchanged, so for
/// them `oneBased` is false. `<difficult>1</difficult>` marks a difficult object; `<size>` is the size the boxes
/// were drawn on.
package enum VOCLabels {
    static func parse(directory: String, oneBased: Bool) throws -> ParsedLabels {
        var parsed = ParsedLabels()
        let xml = try listFiles(directory, extensions: ["xml"])
        if !xml.isEmpty {
            for name in xml { parsed.images.append(parseXML(directory + "/" + name, oneBased: oneBased)) }
            return parsed
        }
        let text = try listFiles(directory, extensions: ["txt"])
        guard !text.isEmpty else { throw DataError(file: directory, message: "no .xml (VOC) or .txt (PASCAL 1.00) annotation files") }
        for name in text { parsed.images.append(try parsePASCALText(directory + "/" + name)) }
        return parsed
    }

    // MARK: - VOC XML

    package static func parseXML(_ path: String, oneBased: Bool) -> SourceImage {
        let stem = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        guard let data = FileManager.default.contents(atPath: path) else {
            var image = SourceImage(reference: .stem(stem), location: LabelLocation(file: path))
            image.report(.malformed, "cannot read the file", at: LabelLocation(file: path))
            return image
        }
        guard !data.isEmpty else {
            var image = SourceImage(reference: .stem(stem), location: LabelLocation(file: path))
            image.report(.malformed, "empty file", at: LabelLocation(file: path))
            return image
        }
        // libxml2 would refuse these too, as "Input is not proper UTF-8, indicate encoding !"; this says it plainly.
        let prolog = String(decoding: data.prefix(100), as: UTF8.self).lowercased()
        let declaresOther = prolog.hasPrefix("<?xml") && prolog.contains("encoding") && !prolog.contains("utf-8")
        if !declaresOther, String(data: data, encoding: .utf8) == nil {
            var image = SourceImage(reference: .stem(stem), location: LabelLocation(file: path))
            image.report(.malformed, "not UTF-8 text (and no other encoding declared)", at: LabelLocation(file: path))
            return image
        }
        var reader = VOCReader()
        do {
            try XMLEvents.read(data) { reader.take($0) }
        } catch {
            var image = SourceImage(reference: .stem(stem), location: LabelLocation(file: path))
            image.report(.malformed, "invalid XML: \(error.message)", at: LabelLocation(file: path, line: error.line))
            return image
        }
        var image = SourceImage(reference: reader.fileName.map { .file($0) } ?? .stem(stem), location: LabelLocation(file: path))
        if let width = reader.width, let height = reader.height, width > 0, height > 0 {
            image.declaredSize = (width, height)
        }
        let shift = oneBased ? 1.0 : 0.0
        for object in reader.objects {
            let location = LabelLocation(file: path, line: object.line)
            guard let name = object.name, !name.isEmpty else {
                image.report(.malformed, "<object> without <name>", at: location)
                continue
            }
            guard let xmin = object.xmin.flatMap(parseNumber), let ymin = object.ymin.flatMap(parseNumber),
                  let xmax = object.xmax.flatMap(parseNumber), let ymax = object.ymax.flatMap(parseNumber) else {
                image.report(.malformed, "<object> '\(name)' without a numeric <bndbox> xmin, ymin, xmax, ymax", at: location)
                continue
            }
            let box = (xmin - shift, ymin - shift, xmax, ymax)
            guard checkBox(box, on: &image, at: location) else { continue }
            let difficult = object.difficult.map { $0.trimmingCharacters(in: .whitespaces) == "1" } ?? false
            image.objects.append(SourceObject(box: box, label: name, difficult: difficult, location: location))
        }
        return image
    }

    /// Collects what a VOC annotation holds, by element path (`annotation/object/bndbox/xmin`); the boxes of
    /// an object's parts (`object/part/bndbox`) are not the object's box and are ignored.
    private struct VOCReader {
        struct Object {
            var line: Int
            var name: String?, difficult: String?
            var xmin: String?, ymin: String?, xmax: String?, ymax: String?
        }
        var stack: [String] = []
        var text = ""
        var fileName: String?
        var width: Int?, height: Int?
        var objects: [Object] = []

        mutating func take(_ event: XMLEvent) {
            switch event {
            case .start(let element, let line):
                stack.append(element)
                text = ""
                if stack == ["annotation", "object"] { objects.append(Object(line: line)) }
            case .text(let string):
                text += string
            case .end:
                let value = text.trimmingCharacters(in: .whitespacesAndNewlines)
                switch stack {
                case ["annotation", "filename"]: fileName = value
                case ["annotation", "size", "width"]: width = Int(value)
                case ["annotation", "size", "height"]: height = Int(value)
                case ["annotation", "object", "name"]: objects[objects.count - 1].name = value
                case ["annotation", "object", "difficult"]: objects[objects.count - 1].difficult = value
                case ["annotation", "object", "bndbox", "xmin"]: objects[objects.count - 1].xmin = value
                case ["annotation", "object", "bndbox", "ymin"]: objects[objects.count - 1].ymin = value
                case ["annotation", "object", "bndbox", "xmax"]: objects[objects.count - 1].xmax = value
                case ["annotation", "object", "bndbox", "ymax"]: objects[objects.count - 1].ymax = value
                default: break
                }
                // libxml2 reports a mismatched closing tag before it gets here, so the stack is never empty.
                stack.removeLast()
                text = ""
            }
        }
    }

    // MARK: - PASCAL Annotation Version 1.00 (Penn-Fudan)

    /// Reads `Image filename : "..."`, `Image size (X x Y x C) : W x H x C` and the
    /// `Bounding box for object N "label" (Xmin, Ymin) - (Xmax, Ymax) : (x0, y0) - (x1, y1)` lines. Every object of
    /// Penn-Fudan is a pedestrian ("PASpersonWalking"), so the class is "pedestrian".
    static func parsePASCALText(_ path: String) throws -> SourceImage {
        let stem = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        var image = SourceImage(reference: .stem(stem), location: LabelLocation(file: path))
        for (n, line) in try readLines(path).enumerated() {
            let location = LabelLocation(file: path, line: n + 1)
            guard !line.hasPrefix("#"), let colon = line.range(of: " : ", options: .backwards) else { continue }
            let key = line[..<colon.lowerBound], value = line[colon.upperBound...]
            if key.hasPrefix("Image filename") {
                let name = value.trimmingCharacters(in: CharacterSet(charactersIn: "\" "))
                image.reference = .file(name)
                image.location = location
            } else if key.hasPrefix("Image size") {
                let numbers = integers(in: value)
                if numbers.count >= 2 && numbers[0] > 0 && numbers[1] > 0 { image.declaredSize = (numbers[0], numbers[1]) }
            } else if key.hasPrefix("Bounding box for object") {
                let numbers = integers(in: value)
                guard numbers.count == 4 else {
                    image.report(.malformed, "expected (Xmin, Ymin) - (Xmax, Ymax) in '\(line)'", at: location)
                    continue
                }
                let box = (Double(numbers[0] - 1), Double(numbers[1] - 1), Double(numbers[2]), Double(numbers[3]))
                guard checkBox(box, on: &image, at: location) else { continue }
                image.objects.append(SourceObject(box: box, label: "pedestrian", location: location))
            }
        }
        return image
    }

    /// The non-negative integers in a piece of text, in order.
    private static func integers<S: StringProtocol>(in text: S) -> [Int] {
        text.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
    }
}
