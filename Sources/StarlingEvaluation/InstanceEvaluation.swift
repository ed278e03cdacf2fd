import Foundation
import StarlingCore
import StarlingData
import StarlingDetection
import StarlingNN

/// `starling eval` for Mask R-CNN: box AP and mask AP under the COCO protocol (`COCOEvaluator`, `bbox` and `segm`
/// over run-length masks, as pycocotools scores them) on an instance split, the detected instances per image beside
/// the annotated ones, and the seconds per image of detection (backbone, RPN, box head, NMS, mask head, paste).
public enum InstanceEvaluation {
    public struct Report: Codable, Sendable {
        public let model: String
        public let data: String
        public let split: String
        public let images: Int
        public let instances: Int
        public let detections: Int
        /// COCO's twelve summary figures (AP, AP50, AP75, AP small, medium, large, AR1, AR10, AR100, AR small, medium,
        /// large), boxes and masks.
        public let boxStats: [Double]
        public let maskStats: [Double]
        public let secondsPerImage: Double
    }

    /// The split's instances as COCO ground truth (boxes and masks), and the model's detections with their masks.
    public static func evaluate(_ model: MaskRCNN, data dataset: SegmentationDataset, batchSize: Int, limit: Int?,
                                decoding: DetectionDecoding = .evaluation) throws -> (report: Report, truth: [GroundTruthBox], found: [Detection]) {
        guard dataset.hasInstances else {
            throw DataError(file: dataset.path, message: "/\(dataset.split) has no instance masks; make the set with `starling data segmentation --format pennfudan`")
        }
        let source = SegmentationSource(dataset: dataset)
        try source.checkCompatible(with: model.config)
        let (h, w) = (dataset.imageHeight, dataset.imageWidth)
        let count = min(limit ?? dataset.count, dataset.count)
        var truth: [GroundTruthBox] = [], found: [Detection] = []
        var seconds = 0.0
        for start in stride(from: 0, to: count, by: batchSize) {
            let indices = Array(start..<min(start + batchSize, count))
            let batch = try source.batch(indices: indices, epoch: 0, training: false, config: model.config)
            let t0 = monotonicSeconds()
            let instances = model.detectInstances(batch, decoding: decoding)
            seconds += monotonicSeconds() - t0
            for (k, i) in indices.enumerated() {
                let id = Int(dataset.imageIDs[i])
                let masks = batch.segmentation?.instanceMasks?[k] ?? []
                for (o, object) in (batch.objects?[k] ?? []).enumerated() where o < masks.count {
                    truth.append(GroundTruthBox(imageID: id, classID: object.classID, box: object.box.inDouble, isCrowd: object.ignoreRegion,
                                                mask: RunLengthMask(mask: masks[o], height: h, width: w)))
                }
                for instance in instances[k] {
                    found.append(Detection(imageID: id, classID: instance.detection.classID, box: instance.detection.box.inDouble,
                                           score: Double(instance.detection.score), mask: RunLengthMask(mask: instance.mask, height: h, width: w)))
                }
            }
        }
        let classes = Array(1..<model.classCount)
        let boxes = try COCOEvaluator(iouType: .bbox).evaluate(groundTruth: truth, detections: found, classIDs: classes)
        let masks = try COCOEvaluator(iouType: .segm).evaluate(groundTruth: truth, detections: found, classIDs: classes)
        let report = Report(model: model.config.family, data: dataset.path, split: dataset.split, images: count,
                            instances: truth.filter { !$0.isCrowd }.count, detections: found.count, boxStats: boxes.stats, maskStats: masks.stats,
                            secondsPerImage: seconds / Double(max(count, 1)))
        return (report, truth, found)
    }

    /// The report as `eval` prints it.
    public static func table(_ r: Report) -> String {
        let names = ["AP", "AP50", "AP75", "AP small", "AP medium", "AP large", "AR1", "AR10", "AR100", "AR small", "AR medium", "AR large"]
        var lines = ["\(r.model) on \(r.data) [\(r.split)], \(r.images) images: \(r.instances) instances annotated, \(r.detections) detected "
                     + String(format: "(%.1f an image against %.1f)", Double(r.detections) / Double(max(r.images, 1)), Double(r.instances) / Double(max(r.images, 1)))]
        lines.append("figure        boxes     masks")
        for (k, name) in names.enumerated() {
            lines.append(name.padding(toLength: 12, withPad: " ", startingAt: 0) + String(format: "%7.4f   %7.4f", r.boxStats[k], r.maskStats[k]))
        }
        lines.append(String(format: "seconds per image: %.3f (batch of the command, %d OpenBLAS threads, 1 rank)", r.secondsPerImage, BLAS.threadCount))
        lines.append("protocol: COCO (IoU 0.50:0.95, 101 recall points, area ranges by the annotated mask's area); -1: no such objects")
        return lines.joined(separator: "\n")
    }
}
