import StarlingNN

/// How well a region proposal network's anchors cover a dataset's boxes: for each ground-truth box, its best IoU with
/// any anchor. The RPN's matcher (`RPNTargets`: positive at IoU >= 0.7, negative under 0.3) makes each box's best
/// anchors positive even below 0.7 (`Matcher.allowLowQualityMatches`, torchvision's and detectron2's rule), so no box
/// goes without a positive; but a box whose best anchor is under 0.3 is learnt from one anchor that every other rule
/// calls background, with a large regression to make, and a box whose best is under 0.7 only from its low-quality
/// matches. Anchors with the same shape as the box still miss it by up to half the feature stride in each direction,
/// which caps the best IoU of small boxes however the sizes are chosen.
public struct AnchorCoverage: Sendable {
    /// Each box's best IoU with any anchor, in the order the boxes were given.
    public let bestIoU: [Float]

    public init(boxes: [BoxCorners], anchors: [BoxCorners]) {
        bestIoU = boxes.map { box in anchors.reduce(Float(0)) { max($0, iou(box, $1)) } }
    }

    /// Boxes whose best anchor is under `threshold`.
    public func count(below threshold: Float) -> Int { bestIoU.filter { $0 < threshold }.count }

    public var meanBestIoU: Float { bestIoU.isEmpty ? 0 : bestIoU.reduce(0, +) / Float(bestIoU.count) }

    /// The median of the best IoUs (the mean of the middle two for an even count).
    public var medianBestIoU: Float {
        guard !bestIoU.isEmpty else { return 0 }
        let s = bestIoU.sorted(), n = s.count
        return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
    }
}
