import ArgumentParser
import Foundation
import StarlingModels

/// `starling eval-detections`: scores a COCO results file against a COCO annotations file.
struct EvalDetectionsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval-detections",
        abstract: "Score detections (COCO results JSON) against ground truth (COCO annotations JSON): mAP under the COCO, VOC or VOC07 protocol.")

    @Option(help: "Ground truth: a COCO annotations JSON (images, annotations, categories).") var gt: String
    @Option(help: "Detections: a COCO results JSON (an array of {image_id, category_id, bbox [x,y,w,h], score}).") var detections: String
    @Option(help: "AP definition: coco (IoU 0.50:0.95, 101 points), voc (all-point, VOC2010+) or voc07 (11-point).")
    var apMode: APMode
    @Option(help: "IoU threshold for the VOC modes (default 0.5); COCO uses its own ten.") var iou: Double?
    @Flag(help: "VOC modes: measure boxes as max - min + 1 pixels, the VOC devkit's convention for integer pixel boxes.")
    var pixelInclusive = false
    @Option(help: "Write the summary (mAP, AP50, AP75, per-class AP, protocol) as JSON to this file.") var json: String?
    @Option(help: "Write precision-recall curves (CSV and PNG) into this folder.") var curves: String?
    @Option(help: "Recorded in the protocol line only: the detector's confidence threshold.") var confidenceThreshold: Double?
    @Option(help: "Recorded in the protocol line only: the detector's NMS IoU threshold.") var nmsIou: Double?
    @Option(help: "Recorded in the protocol line only: detections kept per image.") var topK: Int?

    func validate() throws {
        if let iou {
            guard apMode != .coco else { throw ValidationError("--iou applies to the VOC modes; COCO averages over IoU 0.50:0.05:0.95") }
            guard iou > 0 && iou <= 1 else { throw ValidationError("--iou must be in (0, 1]") }
        }
        if pixelInclusive && apMode == .coco { throw ValidationError("--pixel-inclusive applies to the VOC modes; COCO boxes are continuous") }
    }

    func run() throws {
        try reportingErrors {
            let groundTruth = try COCOJSON.readAnnotations(path: gt)
            let found = try COCOJSON.readResults(path: detections, groundTruth: groundTruth)
            let settings = DetectorSettings(confidenceThreshold: confidenceThreshold, nmsIoU: nmsIou, topK: topK)
            let report = try DetectionEvaluationReport.evaluate(groundTruth: groundTruth, detections: found, mode: apMode,
                                                                iouThreshold: iou ?? 0.5, pixelInclusive: pixelInclusive,
                                                                detector: settings)
            print(report.table())
            if let json {
                try report.writeJSON(path: json)
                print("summary as JSON: \(json)")
            }
            if let curves {
                try report.writeCurves(directory: curves)
                print("precision-recall curves: \(curves)/pr-curves.csv, \(curves)/pr-curves.png, \(curves)/pr-class-<id>.png")
            }
        }
    }
}

extension APMode: ExpressibleByArgument {}
