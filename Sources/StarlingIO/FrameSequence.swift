import Foundation

/// The frames of a clip: a folder of JPEG and PNG files in the natural order of their names (frame2 before frame10),
/// or a numbered sequence given as a printf pattern (`clip/frame%05d.jpg`, as ffmpeg writes and reads them) counted
/// up from the first number, 0 or 1, that exists, until a number is missing.
public enum FrameSequence {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    static let extensions: Set<String> = ["jpg", "jpeg", "png"]

    public static func frames(_ spec: String) throws -> [String] {
        if let pattern = NumberPattern(spec) { return try pattern.frames() }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: spec, isDirectory: &isDirectory) else {
            throw Failure(description: "\(spec): no such folder (give a folder of frames or a numbered pattern such as frame%05d.jpg)")
        }
        guard isDirectory.boolValue else { throw Failure(description: "\(spec): not a folder (give a folder of frames or a numbered pattern such as frame%05d.jpg)") }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: spec) } catch {
            throw Failure(description: "\(spec): cannot list the folder: \(error.localizedDescription)")
        }
        let frames = names.filter { !$0.hasPrefix(".") && extensions.contains(($0 as NSString).pathExtension.lowercased()) }
            .sorted { $0.compare($1, options: [.numeric]) == .orderedAscending }
        guard !frames.isEmpty else { throw Failure(description: "\(spec): no JPEG or PNG frames in the folder") }
        return frames.map { (spec as NSString).appendingPathComponent($0) }
    }

    /// `prefix%0Nd suffix`: one integer conversion, optionally zero-padded to N digits.
    struct NumberPattern {
        let prefix: String
        let suffix: String
        let width: Int

        init?(_ spec: String) {
            guard let percent = spec.range(of: #"%0?[0-9]*d"#, options: .regularExpression) else { return nil }
            prefix = String(spec[..<percent.lowerBound])
            suffix = String(spec[percent.upperBound...])
            width = Int(spec[percent].dropFirst().dropLast()) ?? 0
        }

        func path(_ number: Int) -> String {
            let digits = String(number)
            return prefix + String(repeating: "0", count: max(0, width - digits.count)) + digits + suffix
        }

        func frames() throws -> [String] {
            let pattern = prefix + "%" + (width > 0 ? "0\(width)" : "") + "d" + suffix
            guard let first = [0, 1].first(where: { FileManager.default.fileExists(atPath: path($0)) }) else {
                throw Failure(description: "\(pattern): neither \(path(0)) nor \(path(1)) exists")
            }
            var frames: [String] = []
            var number = first
            while FileManager.default.fileExists(atPath: path(number)) {
                frames.append(path(number))
                number += 1
            }
            return frames
        }
    }
}
