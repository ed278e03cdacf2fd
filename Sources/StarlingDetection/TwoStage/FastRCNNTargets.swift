import StarlingCore
import StarlingNN

/// Fast R-CNN's RoI minibatch of one image (R. Girshick, "Fast R-CNN", ICCV 2015, section 2.3, "Mini-batch sampling"):
/// from the image's proposals, plus its ground-truth boxes as the released code adds them, `roisPerImage` RoIs
/// (64: 128 a minibatch of 2 images) of which at most `foregroundFraction` (25 %) are foreground, IoU >= 0.5 with a
/// ground-truth box, labelled with its class and regressing to it; the rest background, IoU in [0.1, 0.5), label 0.
/// RoIs under 0.1 are left out (the paper's hard-example heuristic), and so are RoIs overlapping a difficult box by IoU
/// >= 0.5 (neither foreground nor background). An image without boxes therefore gives no RoIs.
///
/// The draw is `BalancedSampler`'s from the stream given (in training the sample's (seed, epoch, index) stream), so
/// ranks draw alike; foreground RoIs come first, then background, each in proposal order.
public struct FastRCNNTargets: Sendable {
    public var roisPerImage: Int
    public var foregroundFraction: Float
    public var matcher: Matcher
    public var coder: BoxCoder
    public var includeTruths: Bool

    public init(roisPerImage: Int = 64, foregroundFraction: Float = 0.25, foregroundIoU: Float = 0.5, backgroundIoU: Float = 0.1,
                coder: BoxCoder = BoxCoder(), includeTruths: Bool = true) {
        self.roisPerImage = roisPerImage
        self.foregroundFraction = foregroundFraction
        matcher = Matcher(high: foregroundIoU, low: backgroundIoU)
        self.coder = coder
        self.includeTruths = includeTruths
    }

    /// One image's RoIs, their labels (0 background, else the class) and regression targets (zero for background).
    public struct Sample: Equatable, Sendable {
        public var rois: [BoxCorners]
        public var labels: [Int32]
        public var targets: [SIMD4<Float>]
        public var foregroundCount: Int { labels.filter { $0 > 0 }.count }
    }

    public func sample(proposals: [BoxCorners], objects: [Object], using rng: inout RandomGenerator) -> Sample {
        let truths = objects.filter { !$0.difficult }
        let difficult = objects.filter(\.difficult).map(\.box)
        let candidates = proposals + (includeTruths ? truths.map(\.box) : [])
        let matches = matcher(truths: truths.map(\.box), predictions: candidates)
        let labels: [BalancedSampler.Label] = candidates.indices.map { i in
            if difficult.contains(where: { iou($0, candidates[i]) >= matcher.high }) { return .ignored }
            switch matches[i] {
            case .matched: return .positive
            case .between: return .negative
            case .below: return .ignored
            }
        }
        let (positives, negatives) = BalancedSampler(size: roisPerImage, positiveFraction: foregroundFraction).sample(labels, using: &rng)
        var out = Sample(rois: [], labels: [], targets: [])
        for i in positives {
            guard case .matched(let g) = matches[i] else { continue }
            out.rois.append(candidates[i])
            out.labels.append(Int32(truths[g].classID))
            out.targets.append(coder.encode(truths[g].box, reference: candidates[i]))
        }
        for i in negatives {
            out.rois.append(candidates[i])
            out.labels.append(0)
            out.targets.append(.zero)
        }
        return out
    }
}

extension Tensor {
    /// Fast R-CNN's multi-task loss (equation 1) over R RoIs: L = L_cls + lambda [u >= 1] L_loc, the class term the mean
    /// softmax cross-entropy of the logits [R, K + 1] against the labels u, the box term the smooth L1 (equation 3) of
    /// the class-specific deltas [R, 4 (K + 1)] (columns 4u ..< 4u + 4) against the targets, summed over the foreground
    /// RoIs' four coordinates and divided by R (the released code's normalisation, and torchvision's).
    public static func fastRCNNLoss(classLogits: Tensor, boxDeltas: Tensor, labels: [Int32], targets: [SIMD4<Float>],
                                    lambda: Float = 1) -> Tensor {
        let r = labels.count
        let classes = classLogits.shape.count == 2 ? classLogits.shape[1] : 0
        precondition(classLogits.shape == [r, classes] && boxDeltas.shape == [r, 4 * classes] && targets.count == r,
                     "Fast R-CNN loss: logits \(classLogits.shape), deltas \(boxDeltas.shape), \(r) labels, \(targets.count) targets")
        let classification = classLogits.softmaxCrossEntropy(labels: labels)
        let goal = Tensor(zeros: boxDeltas.shape), mask = Tensor(zeros: boxDeltas.shape)
        for (i, u) in labels.enumerated() where u > 0 {
            for k in 0..<4 {
                goal.data[i * 4 * classes + 4 * Int(u) + k] = targets[i][k]
                mask.data[i * 4 * classes + 4 * Int(u) + k] = 1
            }
        }
        let localisation = (boxDeltas.smoothL1(goal, reduction: .unreduced) * mask).sum() * (lambda / Float(max(r, 1)))
        return classification + localisation
    }
}
