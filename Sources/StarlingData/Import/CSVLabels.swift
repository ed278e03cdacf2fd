import Foundation
import StarlingNN

// The three label files of the Udacity driving data, one box per row:
// - `udacity`: the CSV ssd_keras's course set ships (`labels_train.csv`, `labels_val.csv`): a header naming
//   frame, xmin, xmax, ymin, ymax, class_id (in that order there; any order is accepted), pixel coordinates of
//   the 480x300 frames, class ids 1...5;
// - `autti`: Udacity's `object-dataset/labels.csv`, space-separated, no header:
//   `frame xmin ymin xmax ymax occluded "label" ["attribute"]`, 1920x1200 pixels;
// - `crowdai`: Udacity's `object-detection-crowdai/labels.csv`: `xmin,ymin,xmax,ymax,Frame,Label,Preview URL`.
//   Its original header says `xmin,xmax,ymin,ymax,...` but the data is xmin, ymin, xmax, ymax (corrected upstream
//   in udacity/self-driving-car pull request #32); the columns are read by position, whatever the header says.
// Coordinates are taken as the Starling continuous corners as they stand (no +-1): none of these sources says
// its integers are inclusive pixel indices, and ssd_keras uses them the same way.

package enum CSVLabels {
    /// The ssd_keras course CSV.
    package static func parseUdacity(_ path: String) throws -> ParsedLabels {
        let lines = try readLines(path)
        guard let header = lines.first.map({ splitCSV($0).map { $0.lowercased() } }) else {
            throw DataError(file: path, message: "empty label file")
        }
        let required = ["frame", "xmin", "xmax", "ymin", "ymax", "class_id"]
        let columns = required.compactMap { header.firstIndex(of: $0) }
        guard columns.count == required.count else {
            throw DataError(file: path, message: "line 1 must be a header naming \(required.joined(separator: ",")); found '\(lines[0])'")
        }
        var parsed = ParsedLabels()
        var index: [String: Int] = [:]
        for (n, line) in lines.enumerated().dropFirst() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let location = LabelLocation(file: path, line: n + 1)
            let fields = splitCSV(line)
            let frame = columns[0] < fields.count ? fields[columns[0]].trimmingCharacters(in: .whitespaces) : ""
            guard !frame.isEmpty else {
                parsed.looseIssues.append(ImportIssue(location: location, problem: .malformed, message: "no frame name in '\(line)'"))
                continue
            }
            let i = parsed.image(named: frame, reference: .file(frame), at: location, index: &index)
            // Extra fields too: a row with one more comma than the header has is shifted or merged, not data to drop.
            guard fields.count == header.count else {
                parsed.images[i].report(.malformed, "\(fields.count) fields, the header has \(header.count)", at: location)
                continue
            }
            guard let xmin = parseNumber(fields[columns[1]]), let xmax = parseNumber(fields[columns[2]]),
                  let ymin = parseNumber(fields[columns[3]]), let ymax = parseNumber(fields[columns[4]]) else {
                parsed.images[i].report(.malformed, "a coordinate is not a number in '\(line)'", at: location)
                continue
            }
            let box = (xmin, ymin, xmax, ymax)
            guard checkBox(box, on: &parsed.images[i], at: location) else { continue }
            let label = fields[columns[5]].trimmingCharacters(in: .whitespaces)
            parsed.images[i].objects.append(SourceObject(box: box, label: label, location: location))
        }
        return parsed
    }

    /// Udacity's Autti `labels.csv` (space-separated, quoted labels, no header).
    static func parseAutti(_ path: String) throws -> ParsedLabels {
        var parsed = ParsedLabels()
        var index: [String: Int] = [:]
        for (n, line) in try readLines(path).enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let location = LabelLocation(file: path, line: n + 1)
            let fields = splitWords(line)
            guard let frame = fields.first, !frame.isEmpty else { continue }
            let i = parsed.image(named: frame, reference: .file(frame), at: location, index: &index)
            guard fields.count >= 7 else {
                parsed.images[i].report(.malformed, "\(fields.count) fields; expected frame xmin ymin xmax ymax occluded \"label\" [attribute]", at: location)
                continue
            }
            guard let xmin = parseNumber(fields[1]), let ymin = parseNumber(fields[2]),
                  let xmax = parseNumber(fields[3]), let ymax = parseNumber(fields[4]) else {
                parsed.images[i].report(.malformed, "a coordinate is not a number in '\(line)'", at: location)
                continue
            }
            let box = (xmin, ymin, xmax, ymax)
            guard checkBox(box, on: &parsed.images[i], at: location) else { continue }
            // The occluded flag (field 5) stays informational: an occluded car is still a car to detect.
            parsed.images[i].objects.append(SourceObject(box: box, label: fields[6], location: location))
        }
        return parsed
    }

    /// Udacity's CrowdAI `labels.csv`.
    static func parseCrowdAI(_ path: String) throws -> ParsedLabels {
        let lines = try readLines(path)
        var parsed = ParsedLabels()
        var frameColumn = 4, labelColumn = 5
        var first = 0
        if let head = lines.first, head.lowercased().hasPrefix("xmin") {
            let header = splitCSV(head).map { $0.lowercased().trimmingCharacters(in: .whitespaces) }
            frameColumn = header.firstIndex(of: "frame") ?? frameColumn
            labelColumn = header.firstIndex(of: "label") ?? labelColumn
            if header.count >= 4 && Array(header[0..<4]) == ["xmin", "xmax", "ymin", "ymax"] {
                parsed.notes.append("\(path): the header names the columns xmin,xmax,ymin,ymax; the data is xmin,ymin,xmax,ymax (a known defect of the CrowdAI file) and is read that way")
            }
            first = 1
        }
        var index: [String: Int] = [:]
        for (n, line) in lines.enumerated().dropFirst(first) where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let location = LabelLocation(file: path, line: n + 1)
            let fields = splitCSV(line)
            guard fields.count > max(frameColumn, labelColumn) else {
                parsed.looseIssues.append(ImportIssue(location: location, problem: .malformed, message: "\(fields.count) fields in '\(line)'"))
                continue
            }
            let frame = fields[frameColumn].trimmingCharacters(in: .whitespaces)
            let i = parsed.image(named: frame, reference: .file(frame), at: location, index: &index)
            guard let xmin = parseNumber(fields[0]), let ymin = parseNumber(fields[1]),
                  let xmax = parseNumber(fields[2]), let ymax = parseNumber(fields[3]) else {
                parsed.images[i].report(.malformed, "a coordinate is not a number in '\(line)'", at: location)
                continue
            }
            let box = (xmin, ymin, xmax, ymax)
            guard checkBox(box, on: &parsed.images[i], at: location) else { continue }
            let label = fields[labelColumn].trimmingCharacters(in: .whitespaces)
            parsed.images[i].objects.append(SourceObject(box: box, label: label, location: location))
        }
        return parsed
    }
}

/// Splits a CSV line on commas, honouring double quotes ("a,b" is one field; "" inside quotes is a quote).
func splitCSV<S: StringProtocol>(_ line: S) -> [String] {
    var fields: [String] = [], field = "", quoted = false
    var characters = Array(line)[...]
    while let c = characters.popFirst() {
        if quoted {
            if c == "\"" {
                if characters.first == "\"" { field.append("\""); characters.removeFirst() } else { quoted = false }
            } else {
                field.append(c)
            }
        } else if c == "\"" {
            quoted = true
        } else if c == "," {
            fields.append(field); field = ""
        } else {
            field.append(c)
        }
    }
    fields.append(field)
    return fields
}

/// Splits on runs of spaces or tabs, honouring double quotes (which are removed).
func splitWords<S: StringProtocol>(_ line: S) -> [String] {
    var words: [String] = [], word = "", quoted = false, inWord = false
    for c in line {
        if c == "\"" { quoted.toggle(); inWord = true; continue }
        if !quoted && (c == " " || c == "\t") {
            if inWord { words.append(word); word = ""; inWord = false }
        } else {
            word.append(c); inWord = true
        }
    }
    if inWord { words.append(word) }
    return words
}
