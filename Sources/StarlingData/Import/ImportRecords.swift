import Foundation
import StarlingIO
import StarlingNN

// The intermediate form every label parser produces: one `SourceImage` per labelled frame with its objects in
// the source's own coordinates, each remembering the file and line it came from, so that every later problem
// (unknown class, box outside the image, missing or broken image) is reported where the user can fix it.

/// Where a label or image came from: `file:line`, or `file: detail` for formats without lines (JSON, HDF5).
public struct LabelLocation: Sendable, CustomStringConvertible {
    public let file: String
    public let line: Int?
    public let detail: String?
    public init(file: String, line: Int? = nil, detail: String? = nil) {
        self.file = file; self.line = line; self.detail = detail
    }
    public var description: String {
        var text = file
        if let line { text += ":\(line)" }
        if let detail { text += ": \(detail)" }
        return text
    }
}

/// Kinds of bad input, the keys of the summary's "skipped" counts.
public enum ImportProblem: String, Sendable, CaseIterable, Comparable {
    case malformed = "malformed label"
    case unknownClass = "unknown class"
    case emptyBox = "empty or inverted box"
    case outsideImage = "box outside the image"
    case missingImage = "no image file"
    case unreadableImage = "unreadable image"
    case unmatchedValName = "--val-list name without an image"

    public static func < (a: ImportProblem, b: ImportProblem) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// One piece of bad input.
public struct ImportIssue: Sendable, CustomStringConvertible {
    public let location: LabelLocation
    public let problem: ImportProblem
    public let message: String
    public var description: String { "\(location): \(problem.rawValue): \(message)" }
}

/// One object as the labels give it. `box` is (xmin, ymin, xmax, ymax) in the Starling convention (continuous
/// pixel corners of the source image) unless the image's `normalized` flag says fractions of its size.
struct SourceObject {
    var box: (Double, Double, Double, Double)
    /// The class as the source names it ("car", "Pedestrian", "3"); `ClassMapping` turns it into an index.
    var label: String
    var difficult = false
    let location: LabelLocation
}

/// How the labels name an image.
enum ImageReference {
    /// A path relative to the images folder, as the labels spell it.
    case file(String)
    /// A name without extension (KITTI, YOLO label files): any image of that stem.
    case stem(String)
    /// Row `i` of the ssd_keras HDF5 file being imported.
    case embedded(Int)
}

/// One labelled image as the source gives it.
package struct SourceImage {
    var reference: ImageReference
    /// Where the image is (first) named.
    var location: LabelLocation
    var objects: [SourceObject] = []
    /// The size the annotation was made for (VOC `<size>`, COCO width/height). If the image file has another size,
    /// the boxes are rescaled to it (the Autti XML describes 1920x1200 frames that exist as 480x300 copies).
    var declaredSize: (width: Int, height: Int)? = nil
    /// Boxes are fractions of the image size (YOLO).
    var normalized = false
    /// COCO's image id; otherwise the index in source order is used.
    var imageID: Int64? = nil
    /// Problems found while parsing: the image is refused (--strict) or skipped (--skip-bad).
    package var problems: [ImportIssue] = []
    /// Objects dropped on purpose (KITTI Misc and Tram), by label, for the summary.
    var dropped: [String: Int] = [:]

    init(reference: ImageReference, location: LabelLocation) {
        self.reference = reference
        self.location = location
    }

    mutating func report(_ problem: ImportProblem, _ message: String, at location: LabelLocation) {
        problems.append(ImportIssue(location: location, problem: problem, message: message))
    }
}

/// What a label parser returns.
package struct ParsedLabels {
    var images: [SourceImage] = []
    /// Problems not tied to one image (a row too broken to name its frame): the row is skipped.
    var looseIssues: [ImportIssue] = []
    /// Class names the source itself defines, in id order (COCO categories); nil if it has none.
    var sourceClassNames: [String]? = nil
    /// Remarks for the summary ("header names the columns xmin,xmax,ymin,ymax; read as xmin,ymin,xmax,ymax").
    var notes: [String] = []

    /// Groups rows by frame in order of first appearance (CSV formats list one box per row).
    mutating func image(named name: String, reference: ImageReference, at location: LabelLocation,
                        index: inout [String: Int]) -> Int {
        if let i = index[name] { return i }
        images.append(SourceImage(reference: reference, location: location))
        index[name] = images.count - 1
        return images.count - 1
    }
}

/// Parses a number the way label files write them; nil for anything else (including "nan" and "inf").
func parseNumber<S: StringProtocol>(_ text: S) -> Double? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    guard let value = Double(trimmed), value.isFinite else { return nil }
    return value
}

/// Checks the shape of a parsed box (finite, xmin < xmax, ymin < ymax) and reports a problem on `image` if not.
func checkBox(_ box: (Double, Double, Double, Double), on image: inout SourceImage, at location: LabelLocation) -> Bool {
    let (x0, y0, x1, y1) = box
    guard x0 < x1 && y0 < y1 else {
        image.report(.emptyBox, "xmin \(coordinate(x0)), ymin \(coordinate(y0)), xmax \(coordinate(x1)), ymax \(coordinate(y1)): need xmin < xmax and ymin < ymax", at: location)
        return false
    }
    return true
}

/// A coordinate for messages: integers without ".0".
func coordinate(_ value: Double) -> String {
    value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
}

/// The lines of a text file (LF or CRLF), for parsers that report line numbers.
func readLines(_ path: String) throws -> [Substring] {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw DataError(file: path, message: FileManager.default.fileExists(atPath: path) ? "cannot read" : "no such file")
    }
    let text = String(decoding: data, as: UTF8.self)
    // "\r\n" is one Character in Swift, so it is a separator of its own.
    var lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
    if lines.last?.isEmpty == true { lines.removeLast() }
    return lines
}

/// The regular files directly inside `directory` with one of `extensions` (lowercase, no dot), sorted by name.
func listFiles(_ directory: String, extensions: Set<String>) throws -> [String] {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
        throw DataError(file: directory, message: "no such directory")
    }
    let names = try FileManager.default.contentsOfDirectory(atPath: directory)
    return names.filter { extensions.contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
}

let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]
