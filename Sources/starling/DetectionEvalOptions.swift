import ArgumentParser
import Foundation
import StarlingCore
import StarlingModels

/// `starling eval` for detectors: mAP under a stated protocol, per-class AP, precision-recall curves, FPS, and the
/// detections and ground truth as COCO JSON so other tools (pycocotools) can score the same files.
struct DetectionEvalOptions: ParsableArguments {
    @Option(help: "Detectors: AP definition, coco (IoU 0.50:0.95, 101 points), voc (all-point) or voc07 (11-point).")
    var apMode: APMode = .voc
    @Option(help: "Detectors: IoU threshold for the VOC modes.") var iou: Double = 0.5
    @Option(help: "Detectors: confidence threshold before NMS (0.01 for evaluation).") var confidence: Float = 0.01
    @Option(help: "Detectors: per-class NMS IoU.") var nmsIou: Float = 0.45
    @Option(help: "Detectors: detections kept per image.") var topK: Int = 200
    @Flag(help: "Detectors: one NMS across classes instead of per class.") var globalNms = false
    @Option(help: "Detectors: write the model's detections as a COCO results JSON.") var saveDetections: String?
    @Option(help: "Detectors: write the ground truth as COCO annotations JSON.") var saveGt: String?
    @Option(help: "Detectors: folder for per-class precision-recall curves (CSV and PNG).") var curves: String?
    @Flag(help: "Detectors: also time inference at batch 1 and 8.") var fps = false
    @Option(help: "Score this COCO results JSON against --data's ground truth, without a model.") var detections: String?

    var decoding: DetectionDecoding {
        DetectionDecoding(confidenceThreshold: confidence, iouThreshold: nmsIou, topK: topK, globalNMS: globalNms)
    }

    /// The split, or an error when its images or classes are not the model's.
    private func dataset(for config: ModelConfig, checkpoint: String, data: String, split: String) throws -> DetectionDataset {
        let dataset = try DetectionDataset(path: data, split: split)
        guard dataset.classNames == config.classNames ?? [] else {
            throw EvalError("\(checkpoint) was trained on classes \(config.classNames?.dropFirst().joined(separator: ", ") ?? "?"); \(data) has \(dataset.classNames.dropFirst().joined(separator: ", "))")
        }
        guard config.inputShape == [3, dataset.imageHeight, dataset.imageWidth] else {
            throw ModelError.inputShape(family: config.family, expected: config.inputShape, got: [dataset.imageHeight, dataset.imageWidth, 3], source: data)
        }
        return dataset
    }

    /// A two-stage detector (fast-rcnn: the split's stored proposals): the same report, with the proposals scored
    /// and the seconds of detection per image.
    func evaluate(_ model: any RegionDetector, checkpoint: String, data: String, split: String, batchSize: Int, limit: Int?, json: String?) throws {
        let dataset = try dataset(for: model.config, checkpoint: checkpoint, data: data, split: split)
        let truth = DetectorEvaluation.groundTruth(dataset, limit: limit)
        let (found, proposals, seconds) = try DetectorEvaluation.detect(model, dataset: dataset, decoding: decoding, batchSize: batchSize, limit: limit)
        print("\(model.config.family) on \(data) [\(split)], \(truth.images.count) images")
        print(String(format: "proposals per image: %.1f scored; seconds per image: %.3f (batch %d, %d OpenBLAS threads, 1 rank%@)", proposals, seconds,
                     batchSize, BLAS.threadCount, model.readsProposals ? "; stored proposals, their search not included" : ""))
        try report(truth: truth, found: found, json: json)
        if let saveDetections { try COCOJSON.writeResults(found, to: saveDetections); print("detections (COCO results): \(saveDetections)") }
        if let saveGt { try COCOJSON.writeAnnotations(truth, to: saveGt); print("ground truth (COCO annotations): \(saveGt)") }
    }

    func evaluate(_ model: any Detector, checkpoint: String, data: String, split: String, batchSize: Int, limit: Int?, json: String?) throws {
        let dataset = try dataset(for: model.config, checkpoint: checkpoint, data: data, split: split)
        let truth = DetectorEvaluation.groundTruth(dataset, limit: limit)
        let found = try DetectorEvaluation.detect(model, dataset: dataset, decoding: decoding, batchSize: batchSize, limit: limit)
        print("\(model.config.family) on \(data) [\(split)], \(truth.images.count) images")
        try report(truth: truth, found: found, json: json)
        if let saveDetections { try COCOJSON.writeResults(found, to: saveDetections); print("detections (COCO results): \(saveDetections)") }
        if let saveGt { try COCOJSON.writeAnnotations(truth, to: saveGt); print("ground truth (COCO annotations): \(saveGt)") }
        if fps {
            for n in [1, 8] {
                let rate = try DetectorEvaluation.framesPerSecond(model, dataset: dataset, decoding: .display, batchSize: n)
                print(String(format: "inference at batch %d: %.1f FPS (%d cores, %d OpenBLAS threads, 1 rank)", n, rate,
                             ProcessInfo.processInfo.activeProcessorCount, BLAS.threadCount))
            }
        }
    }

    /// `--detections FILE` without a model: another tool's output against our ground truth.
    func scoreFile(data: String, split: String, json: String?) throws {
        guard let detections else { return }
        let dataset = try DetectionDataset(path: data, split: split)
        let truth = DetectorEvaluation.groundTruth(dataset)
        let found = try COCOJSON.readResults(path: detections, groundTruth: truth)
        print("\(detections) on \(data) [\(split)], \(truth.images.count) images")
        try report(truth: truth, found: found, json: json)
        if let saveDetections { try COCOJSON.writeResults(found, to: saveDetections); print("detections (COCO results): \(saveDetections)") }
        if let saveGt { try COCOJSON.writeAnnotations(truth, to: saveGt); print("ground truth (COCO annotations): \(saveGt)") }
    }

    private func report(truth: DetectionGroundTruth, found: [Detection], json: String?) throws {
        // Through their decimal text, so the protocol line says 0.01, not 0.009999999776.
        let settings = DetectorSettings(confidenceThreshold: Double("\(confidence)"), nmsIoU: Double("\(nmsIou)"), topK: topK)
        let result = try DetectionEvaluationReport.evaluate(groundTruth: truth, detections: found, mode: apMode, iouThreshold: iou, detector: settings)
        print(result.table())
        if let json { try result.writeJSON(path: json); print("summary (JSON): \(json)") }
        if let curves { for file in try result.writeCurves(directory: curves) { print("curve: \(file)") } }
    }
}
