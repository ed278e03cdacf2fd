import StarlingCore
import StarlingData
import StarlingDetection

/// Detector evaluation on a `DetectionDataset`: the ground truth in the evaluator's terms, the model's detections
/// on every image, and timed inference.
public enum DetectorEvaluation {
    /// The split's boxes as ground truth: image ids from the file, class ids 1...C named by the dataset's classes,
    /// difficult boxes (VOC difficult, KITTI DontCare, COCO crowd) neither true nor false positives.
    public static func groundTruth(_ dataset: DetectionDataset, limit: Int? = nil) -> DetectionGroundTruth {
        let n = min(dataset.count, limit ?? dataset.count)
        var boxes: [GroundTruthBox] = []
        for i in 0..<n {
            for o in dataset.objects(of: i) {
                boxes.append(GroundTruthBox(imageID: Int(dataset.imageIDs[i]), classID: o.classID,
                                            box: o.box.inDouble,
                                            difficult: o.difficult, isCrowd: o.ignoreRegion))
            }
        }
        let images = (0..<n).map { DetectionGroundTruth.Image(id: Int(dataset.imageIDs[$0]), width: dataset.imageWidth, height: dataset.imageHeight) }
        let categories = dataset.classNames.enumerated().dropFirst().map { DetectionGroundTruth.Category(id: $0.offset, name: $0.element) }
        return DetectionGroundTruth(boxes: boxes, images: images, categories: categories)
    }

    /// The model's detections on the first `limit` images (all by default), in batches.
    public static func detect(_ model: any Detector, dataset: DetectionDataset, decoding: DetectionDecoding, batchSize: Int, limit: Int? = nil) throws -> [Detection] {
        let source = DetectionSource(dataset: dataset)
        let n = min(dataset.count, limit ?? dataset.count)
        var found: [Detection] = []
        var start = 0
        while start < n {
            let indices = Array(start..<min(n, start + batchSize))
            let batch = try source.batch(indices: indices, epoch: 0, training: false, config: model.config)
            for (k, boxes) in model.detect(batch.images, decoding: decoding).enumerated() {
                let id = Int(dataset.imageIDs[indices[k]])
                for d in boxes {
                    found.append(Detection(imageID: id, classID: d.classID,
                                           box: d.box.inDouble,
                                           score: Double(d.score)))
                }
            }
            start += batchSize
        }
        return found
    }

    /// Frames per second of detection (forward, softmax, decoding, NMS) at `batchSize`, after one warm-up batch.
    public static func framesPerSecond(_ model: any Detector, dataset: DetectionDataset, decoding: DetectionDecoding, batchSize: Int, batches: Int = 3) throws -> Double {
        let source = DetectionSource(dataset: dataset)
        let indices = (0..<batchSize).map { $0 % dataset.count }
        let batch = try source.batch(indices: indices, epoch: 0, training: false, config: model.config)
        _ = model.detect(batch.images, decoding: decoding)
        let start = monotonicSeconds()
        for _ in 0..<batches { _ = model.detect(batch.images, decoding: decoding) }
        return Double(batches * batchSize) / (monotonicSeconds() - start)
    }

    /// A two-stage detector's detections on the first `limit` images, in batches, with the proposals it scored per
    /// image and the seconds per image of detection (backbone, RoI head, decoding, NMS; a model that reads stored
    /// proposals does not search them here, see `starling proposals` for the search's time).
    public static func detect(_ model: any RegionDetector, dataset: DetectionDataset, decoding: DetectionDecoding, batchSize: Int,
                              limit: Int? = nil) throws -> (detections: [Detection], proposalsPerImage: Double, secondsPerImage: Double) {
        let source = model.readsProposals ? DetectionSource(dataset: dataset, proposals: try ProposalReader(dataset: dataset)) : DetectionSource(dataset: dataset)
        let n = min(dataset.count, limit ?? dataset.count)
        var found: [Detection] = []
        var (scored, seconds) = (0, 0.0)
        var start = 0
        while start < n {
            let indices = Array(start..<min(n, start + batchSize))
            let batch = try source.batch(indices: indices, epoch: 0, training: false, config: model.config)
            let t0 = monotonicSeconds()
            let (boxes, proposals) = model.detectCountingProposals(batch, decoding: decoding)
            seconds += monotonicSeconds() - t0
            scored += proposals.reduce(0, +)
            for (k, list) in boxes.enumerated() {
                let id = Int(dataset.imageIDs[indices[k]])
                for d in list { found.append(Detection(imageID: id, classID: d.classID, box: d.box.inDouble, score: Double(d.score))) }
            }
            start += batchSize
        }
        return (found, Double(scored) / Double(max(n, 1)), seconds / Double(max(n, 1)))
    }
}
