import Foundation
import StarlingIO
import StarlingNN
import StarlingDetection

/// Which average precision to report.
public enum APMode: String, CaseIterable, Codable, Sendable {
    /// COCO: AP averaged over IoU 0.50:0.05:0.95, 101 recall points, area ranges, maxDets.
    case coco
    /// PASCAL VOC2010+: all-point AP at one IoU threshold.
    case voc
    /// PASCAL VOC2007: 11-point interpolated AP at one IoU threshold.
    case voc07
}

/// How the detections were produced, when known: recorded beside the numbers because AP depends on them.
public struct DetectorSettings: Codable, Sendable, Equatable {
    /// Detections scoring below this were dropped before evaluation.
    public var confidenceThreshold: Double?
    /// IoU above which non-maximum suppression removed the lower-scoring box.
    public var nmsIoU: Double?
    /// Detections kept per image after NMS.
    public var topK: Int?
    public init(confidenceThreshold: Double? = nil, nmsIoU: Double? = nil, topK: Int? = nil) {
        self.confidenceThreshold = confidenceThreshold; self.nmsIoU = nmsIoU; self.topK = topK
    }

    enum CodingKeys: String, CodingKey { case confidenceThreshold, nmsIoU, topK }

    /// null, not absent, for what is not known.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(confidenceThreshold, forKey: .confidenceThreshold)
        try c.encode(nmsIoU, forKey: .nmsIoU)
        try c.encode(topK, forKey: .topK)
    }
}

/// Everything needed to compare a number with another: the AP definition, thresholds, box convention, detector.
public struct DetectionProtocol: Codable, Sendable, Equatable {
    public let apMode: APMode
    public let iouThresholds: [Double]
    public let interpolation: String
    public let boxConvention: String
    public let pixelInclusive: Bool
    /// COCO only: detections per image and class kept for AR1/AR10/AR100 (and AP at the last).
    public let maxDetections: [Int]?
    public let areaRanges: String?
    public let detector: DetectorSettings
    /// All of the above as one line for people.
    public let description: String

    public init(apMode: APMode, iouThresholds: [Double], interpolation: String, boxConvention: String, pixelInclusive: Bool,
                maxDetections: [Int]?, areaRanges: String?, detector: DetectorSettings) {
        self.apMode = apMode
        self.iouThresholds = iouThresholds
        self.interpolation = interpolation
        self.boxConvention = boxConvention
        self.pixelInclusive = pixelInclusive
        self.maxDetections = maxDetections
        self.areaRanges = areaRanges
        self.detector = detector
        let iou: String
        switch apMode {
        case .coco: iou = "IoU 0.50:0.05:0.95 (\(iouThresholds.count) thresholds)"
        case .voc, .voc07: iou = String(format: "IoU >= %.2f", iouThresholds.first ?? 0)
        }
        var parts = ["\(interpolation), \(iou)"]
        if let maxDetections { parts.append("maxDets \(maxDetections.map(String.init).joined(separator: "/")) per image and class") }
        if let areaRanges { parts.append(areaRanges) }
        parts.append("boxes: \(boxConvention)")
        func known<T>(_ v: T?) -> String { v.map { "\($0)" } ?? "not recorded" }
        parts.append("detector: confidence threshold \(known(detector.confidenceThreshold)), NMS IoU \(known(detector.nmsIoU)), top k \(known(detector.topK))")
        description = parts.joined(separator: "; ")
    }
}

/// One class's figures. AP is nil for a class without ground truth (left out of the means).
public struct ClassAP: Codable, Sendable, Equatable {
    public var classID: Int
    public var name: String
    /// Ground truth that counts (VOC: not difficult; COCO: not crowd).
    public var groundTruth: Int
    public var detections: Int
    public var ap: Double?
    public var ap50: Double?
    public var ap75: Double?

    enum CodingKeys: String, CodingKey { case classID, name, groundTruth, detections, ap = "AP", ap50 = "AP50", ap75 = "AP75" }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(classID, forKey: .classID)
        try c.encode(name, forKey: .name)
        try c.encode(groundTruth, forKey: .groundTruth)
        try c.encode(detections, forKey: .detections)
        try c.encode(ap, forKey: .ap)        // null, not absent, when the class has no ground truth
        try c.encode(ap50, forKey: .ap50)
        try c.encode(ap75, forKey: .ap75)
    }
}

/// The twelve COCO numbers, named (-1 where nothing was counted, as pycocotools).
public struct COCOStats: Codable, Sendable, Equatable {
    public var AP, AP50, AP75, APsmall, APmedium, APlarge, AR1, AR10, AR100, ARsmall, ARmedium, ARlarge: Double
    init(_ s: [Double]) {
        (AP, AP50, AP75, APsmall, APmedium, APlarge) = (s[0], s[1], s[2], s[3], s[4], s[5])
        (AR1, AR10, AR100, ARsmall, ARmedium, ARlarge) = (s[6], s[7], s[8], s[9], s[10], s[11])
    }
    var array: [Double] { [AP, AP50, AP75, APsmall, APmedium, APlarge, AR1, AR10, AR100, ARsmall, ARmedium, ARlarge] }
}

/// The result of an evaluation as written to `--json`.
public struct DetectionSummary: Codable, Sendable, Equatable {
    public var evaluationProtocol: DetectionProtocol
    public var images: Int
    public var groundTruth: Int
    public var detections: Int
    /// VOC modes: mean AP at the protocol's threshold; COCO: AP@[.5:.95]. nil when no class has ground truth.
    public var mAP: Double?
    public var ap50: Double?
    public var ap75: Double?
    public var perClass: [ClassAP]
    public var coco: COCOStats?

    enum CodingKeys: String, CodingKey {
        case evaluationProtocol = "protocol", images, groundTruth, detections, mAP, ap50 = "AP50", ap75 = "AP75", perClass, coco
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(evaluationProtocol, forKey: .evaluationProtocol)
        try c.encode(images, forKey: .images)
        try c.encode(groundTruth, forKey: .groundTruth)
        try c.encode(detections, forKey: .detections)
        try c.encode(mAP, forKey: .mAP)
        try c.encode(ap50, forKey: .ap50)
        try c.encode(ap75, forKey: .ap75)
        try c.encode(perClass, forKey: .perClass)
        try c.encodeIfPresent(coco, forKey: .coco)
    }
}

/// One class's precision-recall curve: VOC modes, a point per ranked detection; COCO, the interpolated
/// precision at the 101 recall points at IoU 0.50.
public struct PRCurve: Sendable {
    public var classID: Int
    public var name: String
    /// The AP this curve gives (COCO: AP50).
    public var ap: Double?
    public var recall: [Double]
    public var precision: [Double]
}

/// An evaluation's summary, curves and their presentations.
public struct DetectionEvaluationReport: Sendable {
    public var summary: DetectionSummary
    public var curves: [PRCurve]

    /// Scores `detections` against `groundTruth` under `mode` (`iouThreshold` and `pixelInclusive` apply to the
    /// VOC modes). VOC modes also report AP50 and AP75 with the same interpolation.
    public static func evaluate(groundTruth: DetectionGroundTruth, detections: [Detection], mode: APMode,
                                iouThreshold: Double = 0.5, pixelInclusive: Bool = false,
                                detector: DetectorSettings = DetectorSettings()) throws -> DetectionEvaluationReport {
        let names = Dictionary(groundTruth.categories.map { ($0.id, $0.name) }, uniquingKeysWith: { a, _ in a })
        let classIDs = groundTruth.categories.map(\.id)
        let convention = "corners (xmin, ymin, xmax, ymax) in absolute pixels, COCO [x, y, w, h] at the file boundary, "
            + (pixelInclusive ? "pixel-inclusive widths (max - min + 1)" : "continuous widths (max - min)")
        var perClass: [ClassAP] = []
        var curves: [PRCurve] = []
        let summary: DetectionSummary
        switch mode {
        case .coco:
            let result = try COCOEvaluator().evaluate(groundTruth: groundTruth.boxes, detections: detections, classIDs: classIDs)
            for (k, id) in result.classIDs.enumerated() {
                let name = names[id] ?? "\(id)"
                let ap = result.classAP(k)
                perClass.append(ClassAP(classID: id, name: name, groundTruth: result.groundTruthCounts[k], detections: result.detectionCounts[k],
                                        ap: ap, ap50: result.classAP(k, t: 0), ap75: result.classAP(k, t: 5)))
                if let curve = result.curve(k) {
                    curves.append(PRCurve(classID: id, name: name, ap: result.classAP(k, t: 0), recall: curve.recall, precision: curve.precision))
                }
            }
            let stats = COCOStats(result.stats)
            let proto = DetectionProtocol(
                apMode: .coco, iouThresholds: COCOEvaluator.iouThresholds, interpolation: "COCO 101-point interpolated AP",
                boxConvention: "corners (xmin, ymin, xmax, ymax) in absolute pixels, COCO [x, y, w, h] at the file boundary, continuous widths (max - min)",
                pixelInclusive: false, maxDetections: COCOEvaluator.maxDetections,
                areaRanges: "areas by annotation area: small <= 32^2 <= medium <= 96^2 <= large", detector: detector)
            func optional(_ v: Double) -> Double? { v < 0 ? nil : v }
            summary = DetectionSummary(evaluationProtocol: proto, images: groundTruth.images.count, groundTruth: groundTruth.boxes.count,
                                       detections: detections.count, mAP: optional(stats.AP), ap50: optional(stats.AP50),
                                       ap75: optional(stats.AP75), perClass: perClass, coco: stats)
        case .voc, .voc07:
            let interpolation: VOCEvaluator.Interpolation = mode == .voc ? .allPoint : .elevenPoint
            func run(_ threshold: Double) throws -> VOCResult {
                try VOCEvaluator(interpolation: interpolation, iouThreshold: threshold, pixelInclusive: pixelInclusive)
                    .evaluate(groundTruth: groundTruth.boxes, detections: detections, classIDs: classIDs)
            }
            let main = try run(iouThreshold)
            let at50 = iouThreshold == 0.5 ? main : try run(0.5)
            let at75 = iouThreshold == 0.75 ? main : try run(0.75)
            for (k, c) in main.perClass.enumerated() {
                let name = names[c.classID] ?? "\(c.classID)"
                perClass.append(ClassAP(classID: c.classID, name: name, groundTruth: c.groundTruth, detections: c.detections,
                                        ap: c.ap, ap50: at50.perClass[k].ap, ap75: at75.perClass[k].ap))
                if c.ap != nil { curves.append(PRCurve(classID: c.classID, name: name, ap: c.ap, recall: c.recall, precision: c.precision)) }
            }
            let proto = DetectionProtocol(
                apMode: mode, iouThresholds: [iouThreshold],
                interpolation: mode == .voc ? "VOC2010+ all-point AP" : "VOC2007 11-point interpolated AP",
                boxConvention: convention, pixelInclusive: pixelInclusive, maxDetections: nil, areaRanges: nil, detector: detector)
            summary = DetectionSummary(evaluationProtocol: proto, images: groundTruth.images.count, groundTruth: groundTruth.boxes.count,
                                       detections: detections.count, mAP: main.mAP, ap50: at50.mAP, ap75: at75.mAP,
                                       perClass: perClass, coco: nil)
        }
        return DetectionEvaluationReport(summary: summary, curves: curves)
    }

    // MARK: Presentations

    /// The table for people: one row per class, the means, and the protocol line.
    public func table() -> String {
        func f(_ v: Double?) -> String { v.map { String(format: "%6.4f", $0) } ?? "   n/a" }
        let width = max(12, summary.perClass.map { $0.name.count + "\($0.classID)".count + 3 }.max() ?? 0)
        func pad(_ s: String) -> String { s.count >= width ? s : s + String(repeating: " ", count: width - s.count) }
        var lines = [pad("class") + "      GT    dets       AP     AP50     AP75"]
        for c in summary.perClass {
            lines.append(pad("\(c.name) (\(c.classID))") + String(format: " %7d %7d", c.groundTruth, c.detections)
                         + "   \(f(c.ap))   \(f(c.ap50))   \(f(c.ap75))")
        }
        let counted = summary.perClass.filter { $0.ap != nil }.count
        let name = summary.evaluationProtocol.apMode == .coco ? "AP@[.50:.95]" : "mAP"
        lines.append("\(name) \(f(summary.mAP)) over \(counted) of \(summary.perClass.count) classes (classes without ground truth left out); AP50 \(f(summary.ap50)), AP75 \(f(summary.ap75))")
        // The protocol's own count beside the stored boxes: difficult boxes and ignore regions (KITTI's DontCare, one
        // per class) are stored but not objects to find.
        let toFind = summary.perClass.reduce(0) { $0 + $1.groundTruth }
        lines.append("\(summary.images) images, \(summary.groundTruth) ground-truth boxes (\(toFind) to find; the rest difficult or ignore regions), \(summary.detections) detections")
        if let coco = summary.coco {
            let rows: [(String, String, String, Int)] = [
                ("Precision", "0.50:0.95", "all", 100), ("Precision", "0.50", "all", 100), ("Precision", "0.75", "all", 100),
                ("Precision", "0.50:0.95", "small", 100), ("Precision", "0.50:0.95", "medium", 100), ("Precision", "0.50:0.95", "large", 100),
                ("Recall", "0.50:0.95", "all", 1), ("Recall", "0.50:0.95", "all", 10), ("Recall", "0.50:0.95", "all", 100),
                ("Recall", "0.50:0.95", "small", 100), ("Recall", "0.50:0.95", "medium", 100), ("Recall", "0.50:0.95", "large", 100),
            ]
            for (row, value) in zip(rows, coco.array) {
                let kind = "Average \(row.0)".padding(toLength: 18, withPad: " ", startingAt: 0)
                let iou = row.1.padding(toLength: 9, withPad: " ", startingAt: 0)
                let area = String(repeating: " ", count: max(0, 6 - row.2.count)) + row.2
                lines.append(String(format: " %@ %@ @[ IoU=%@ | area=%@ | maxDets=%3d ] = %0.3f",
                                    kind, row.0 == "Precision" ? "(AP)" : "(AR)", iou, area, row.3, value))
            }
        }
        lines.append("protocol: \(summary.evaluationProtocol.description)")
        return lines.joined(separator: "\n")
    }

    /// The summary as JSON (sorted keys), written atomically.
    public func writeJSON(path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(Array(try encoder.encode(summary)), to: path)
    }

    /// The curves as CSV: `class_id,class_name,recall,precision`, one row per point.
    public func curvesCSV() -> String {
        var text = "class_id,class_name,recall,precision\n"
        for c in curves {
            let name = c.name.contains(where: { $0 == "," || $0 == "\"" || $0.isNewline })
                ? "\"" + c.name.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : c.name
            for (r, p) in zip(c.recall, c.precision) { text += "\(c.classID),\(name),\(r),\(p)\n" }
        }
        return text
    }

    /// Writes `pr-curves.csv`, `pr-curves.png` (every class) and `pr-class-<id>.png` (one per class) into
    /// `directory` (created if needed), each atomically. Returns the paths written.
    @discardableResult
    public func writeCurves(directory: String) throws -> [String] {
        try makeDirectory(directory)
        let title = curveTitle
        var written = ["\(directory)/pr-curves.csv", "\(directory)/pr-curves.png"]
        try AtomicFile.write(Array(curvesCSV().utf8), to: written[0])
        try PRCurvePlot.write(curves, title: title, path: written[1])
        for c in curves {
            let path = "\(directory)/pr-class-\(c.classID).png"
            try PRCurvePlot.write([c], title: "\(c.name): \(title)", path: path)
            written.append(path)
        }
        return written
    }

    private var curveTitle: String {
        let p = summary.evaluationProtocol
        switch p.apMode {
        case .coco: return "COCO precision at 101 recall points, IoU 0.50"
        case .voc: return String(format: "VOC all-point, IoU %.2f", p.iouThresholds.first ?? 0)
        case .voc07: return String(format: "VOC07 11-point, IoU %.2f", p.iouThresholds.first ?? 0)
        }
    }
}
