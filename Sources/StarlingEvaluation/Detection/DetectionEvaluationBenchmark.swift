import StarlingCore
import StarlingNN

/// How long scoring a test set takes: synthetic ground truth and detections of realistic shape, timed through
/// the evaluator alone (generation is not timed). One thread.
public enum DetectionEvaluationBenchmark {
    public struct Workload: Sendable {
        public var images = 5_000
        public var detectionsPerImage = 100
        /// 20 as PASCAL VOC; 80 as COCO.
        public var classes = 20
        /// About 3 per image on VOC07 test (14,976 objects in 4,952 images), 7.3 on COCO val2017.
        public var groundTruthPerImage = 3
        public var seed: UInt64 = 1
        public init() {}

        /// The COCO-sized workload: 80 classes, 7 ground-truth boxes per image.
        public static var cocoLike: Workload { var w = Workload(); w.classes = 80; w.groundTruthPerImage = 7; return w }
    }

    /// Seconds to score `workload` under `mode` (VOC modes at IoU 0.5).
    public static func run(mode: APMode = .voc, workload: Workload = Workload()) throws -> Double {
        let (groundTruth, detections) = makeData(workload)
        let start = monotonicSeconds()
        switch mode {
        case .coco:
            _ = try COCOEvaluator().evaluate(groundTruth: groundTruth, detections: detections)
        case .voc, .voc07:
            _ = try VOCEvaluator(interpolation: mode == .voc ? .allPoint : .elevenPoint)
                .evaluate(groundTruth: groundTruth, detections: detections)
        }
        return monotonicSeconds() - start
    }

    /// Images of 640 x 480 with boxes 16 to 320 pixels on a side (some crowd and difficult ones). Each image's
    /// detections: about three near each object (most of its class, jittered), the rest anywhere, lower scores.
    public static func makeData(_ w: Workload) -> (groundTruth: [GroundTruthBox], detections: [Detection]) {
        var rng = RandomGenerator(seed: w.seed)
        func uniform(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * Double(rng.uniform()) }
        func randomBox() -> BoundingBox {
            let bw = uniform(16, 320), bh = uniform(16, 320)
            let x = uniform(0, 640 - bw), y = uniform(0, 480 - bh)
            return BoundingBox(xmin: x, ymin: y, xmax: x + bw, ymax: y + bh)
        }
        var groundTruth: [GroundTruthBox] = [], detections: [Detection] = []
        groundTruth.reserveCapacity(w.images * w.groundTruthPerImage)
        detections.reserveCapacity(w.images * w.detectionsPerImage)
        for image in 0..<w.images {
            let objects = (0..<w.groundTruthPerImage).map { _ -> GroundTruthBox in
                let box = randomBox()
                return GroundTruthBox(imageID: image, classID: Int(rng.next() % UInt64(w.classes)), box: box,
                                      difficult: rng.uniform() < 0.05, isCrowd: rng.uniform() < 0.01,
                                      area: box.area * uniform(0.5, 0.9))
            }
            groundTruth.append(contentsOf: objects)
            for k in 0..<w.detectionsPerImage {
                if k < 3 * objects.count {
                    let g = objects[k / 3]
                    let jitter = 0.15 * min(g.box.width, g.box.height)
                    let box = BoundingBox(xmin: g.box.xmin + uniform(-jitter, jitter), ymin: g.box.ymin + uniform(-jitter, jitter),
                                          xmax: g.box.xmax + uniform(-jitter, jitter), ymax: g.box.ymax + uniform(-jitter, jitter))
                    let classID = rng.uniform() < 0.8 ? g.classID : Int(rng.next() % UInt64(w.classes))
                    detections.append(Detection(imageID: image, classID: classID, box: box, score: uniform(0.3, 1)))
                } else {
                    detections.append(Detection(imageID: image, classID: Int(rng.next() % UInt64(w.classes)), box: randomBox(),
                                                score: uniform(0, 0.6)))
                }
            }
        }
        return (groundTruth, detections)
    }
}
