import Foundation
import StarlingIO

/// The images folder of an import: finds the file a label names.
///
/// Besides the exact name it accepts two spellings real sets use:
/// - the labels give a path ("PennFudanPed/PNGImages/FudanPed00001.png") and the folder holds its last component;
/// - Roboflow exports rename `1478020202688242798.jpg` to `1478020202688242798_jpg.rf.<hash>.jpg`; labels made
///   for the original (the Autti XML) then find the renamed file. Each such match is counted in the summary.
package struct ImageDirectory {
    let root: String
    private let names: Set<String>
    private let byStem: [String: [String]]
    private let byOriginalName: [String: [String]]

    package init(root: String) throws {
        self.root = root
        let files = try listFiles(root, extensions: imageExtensions)
        names = Set(files)
        var stems: [String: [String]] = [:], originals: [String: [String]] = [:]
        for file in files {
            stems[(file as NSString).deletingPathExtension, default: []].append(file)
            if let original = Self.roboflowOriginal(file) { originals[original, default: []].append(file) }
        }
        byStem = stems
        byOriginalName = originals
    }

    /// The name the file had before a Roboflow export: `<stem>_<ext>.rf.<hash>.<ext>` -> `<stem>.<ext>`.
    static func roboflowOriginal(_ name: String) -> String? {
        guard let marker = name.range(of: ".rf.") else { return nil }
        let head = name[..<marker.lowerBound]
        guard let underscore = head.lastIndex(of: "_") else { return nil }
        let stem = head[..<underscore], ext = head[head.index(after: underscore)...]
        guard !stem.isEmpty, imageExtensions.contains(ext.lowercased()) else { return nil }
        return "\(stem).\(ext)"
    }

    struct Found {
        /// Relative to `root`.
        let name: String
        let viaRoboflowName: Bool
        var path: String
    }

    /// The file for `reference`, or a message saying why there is none.
    func locate(_ reference: ImageReference) -> Result<Found, ImportIssueMessage> {
        switch reference {
        case .embedded:
            preconditionFailure("embedded images have no file")
        case .file(let name):
            if name.contains("/"), FileManager.default.fileExists(atPath: root + "/" + name) {
                return .success(Found(name: name, viaRoboflowName: false, path: root + "/" + name))
            }
            let base = (name as NSString).lastPathComponent
            if names.contains(base) { return .success(Found(name: base, viaRoboflowName: false, path: root + "/" + base)) }
            if let renamed = byOriginalName[base] {
                guard renamed.count == 1 else { return .failure(.init("\(renamed.count) Roboflow-renamed files for \(base) in \(root)")) }
                return .success(Found(name: renamed[0], viaRoboflowName: true, path: root + "/" + renamed[0]))
            }
            return .failure(.init("no image \(name) in \(root)"))
        case .stem(let stem):
            guard let files = byStem[stem] else { return .failure(.init("no image \(stem).jpg/.jpeg/.png in \(root)")) }
            guard files.count == 1 else { return .failure(.init("several images for \(stem) in \(root): \(files.joined(separator: ", "))")) }
            return .success(Found(name: files[0], viaRoboflowName: false, path: root + "/" + files[0]))
        }
    }

    /// Every image file, sorted (YOLO lists images, not labels).
    var allNames: [String] { names.sorted() }
}

/// A reason as text, wrapped so it can be a `Result` failure.
struct ImportIssueMessage: Error {
    let text: String
    init(_ text: String) { self.text = text }
}
