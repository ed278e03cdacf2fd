import StarlingNN
import StarlingData

// Ground truth and detections: the inputs of the detection evaluators (VOCEvaluator, COCOEvaluator), in Doubles
// (`BoundingBox`), so that IoUs equal to a threshold (0.5, 0.75) are decided as the reference tools decide them in float64.

/// The overlap COCO uses between a detection and a ground-truth box: IoU for ordinary boxes, and for a crowd
/// region |d ∩ g| / |d| (how much of the detection lies inside the crowd), as pycocotools' `iou` with `iscrowd`.
func cocoOverlap(detection d: BoundingBox, groundTruth g: BoundingBox, crowd: Bool) -> Double {
    let iw = min(d.xmax, g.xmax) - max(d.xmin, g.xmin)
    let ih = min(d.ymax, g.ymax) - max(d.ymin, g.ymin)
    if iw <= 0 || ih <= 0 { return 0 }
    let intersection = iw * ih
    let detectionArea = d.width * d.height
    let union = crowd ? detectionArea : detectionArea + g.width * g.height - intersection
    return union > 0 ? intersection / union : 0
}

/// One annotated object.
public struct GroundTruthBox: Equatable, Sendable {
    public var imageID: Int
    public var classID: Int
    public var box: BoundingBox
    /// VOC's `difficult` flag: such a box is neither counted as a miss nor does a detection of it count as a
    /// true or false positive, in the VOC modes. The COCO protocol has no such notion and does not read it
    /// (as pycocotools, whose `ignore` field is overwritten by `iscrowd`).
    public var difficult: Bool
    /// COCO's `iscrowd`: a region of many objects. COCO ignores it and lets any number of detections match it
    /// (overlap measured against the detection's area); the VOC modes treat it as difficult.
    public var isCrowd: Bool
    /// COCO's `area` (of the segmentation mask in COCO's own files, so it may differ from the box's area); the
    /// COCO area ranges (small, medium, large) are decided by it. Defaults to the box's area.
    public var area: Double
    /// The annotation's id in a COCO file (any integer, 0 included; nothing depends on it being non-zero).
    public var id: Int?
    /// The instance's mask, for mask AP (`COCOEvaluator(iouType: .segm)`); its area is then `area`'s default.
    public var mask: RunLengthMask?

    public init(imageID: Int, classID: Int, box: BoundingBox, difficult: Bool = false, isCrowd: Bool = false,
                area: Double? = nil, id: Int? = nil, mask: RunLengthMask? = nil) {
        self.imageID = imageID
        self.classID = classID
        self.box = box
        self.difficult = difficult
        self.isCrowd = isCrowd
        self.area = area ?? mask.map { Double($0.area) } ?? box.area
        self.id = id
        self.mask = mask
    }
}

/// One detector output: a box of a class in an image with a confidence score (higher is more confident).
public struct Detection: Equatable, Sendable {
    public var imageID: Int
    public var classID: Int
    public var box: BoundingBox
    public var score: Double
    /// The instance's mask, for mask AP (`COCOEvaluator(iouType: .segm)`).
    public var mask: RunLengthMask?

    public init(imageID: Int, classID: Int, box: BoundingBox, score: Double, mask: RunLengthMask? = nil) {
        self.imageID = imageID
        self.classID = classID
        self.box = box
        self.score = score
        self.mask = mask
    }
}

/// Bad evaluator input (a non-finite score or box): one line naming the first offending entry.
public struct DetectionEvaluationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Checks what the evaluators cannot rank or measure: non-finite scores and non-finite or empty boxes.
func validate(groundTruth: [GroundTruthBox], detections: [Detection]) throws {
    for (i, g) in groundTruth.enumerated() where !g.box.isValid || !g.area.isFinite || g.area < 0 {
        throw DetectionEvaluationError("ground-truth box \(i) (image \(g.imageID), class \(g.classID)): \(describeProblem(g.box, area: g.area))")
    }
    for (i, d) in detections.enumerated() {
        if !d.score.isFinite {
            throw DetectionEvaluationError("detection \(i) (image \(d.imageID), class \(d.classID)): score is \(d.score)")
        }
        if !d.box.isValid {
            throw DetectionEvaluationError("detection \(i) (image \(d.imageID), class \(d.classID)): \(describeProblem(d.box, area: 0))")
        }
    }
}

/// Why a box is invalid, in words.
func describeProblem(_ b: BoundingBox, area: Double) -> String {
    if ![b.xmin, b.ymin, b.xmax, b.ymax].allSatisfy(\.isFinite) { return "box has a non-finite coordinate \(b.cocoXYWH)" }
    if b.width < 0 || b.height < 0 { return "box has a negative width or height \(b.cocoXYWH)" }
    if b.width == 0 || b.height == 0 { return "box is empty (zero width or height) \(b.cocoXYWH)" }
    return "area is \(area)"
}
