import StarlingNN

// PASCAL VOC detection average precision.
//
// Everingham, Van Gool, Williams, Winn, Zisserman, "The PASCAL Visual Object Classes (VOC) Challenge",
// IJCV 2010, section 4.2, and the VOC devkit's evaluation (VOCevaldet.m; voc_eval.py of the Faster R-CNN
// code is the Python port most detectors report with). This follows their semantics, re-implemented:
//
// - per class, detections ranked by score; ties keep their input order (a stable sort; numpy's default
//   argsort is not stable, MATLAB's sort is);
// - each detection is assigned the ground-truth box of highest IoU in its image (the first of equal IoUs),
//   whether or not that box is already taken: IoU >= threshold and the box not yet taken is a true positive,
//   a box already taken makes a false positive (a duplicate), a difficult box makes the detection count as
//   neither; below the threshold it is a false positive. `>=` is the MATLAB devkit's test (voc_eval.py uses
//   `>`; they differ only for an IoU exactly at the threshold);
// - recall = TP / (non-difficult ground truth), precision = TP / (TP + FP), cumulated down the ranking;
// - AP "voc07": 11-point interpolation, the mean over t = 0, 0.1, ..., 1 of the highest precision at recall >= t;
//   AP "voc" (VOC2010 onwards): the area under the precision envelope (precision made non-increasing from
//   the right), summed over the recall steps.

/// PASCAL VOC detection AP per class and their mean.
public struct VOCEvaluator: Sendable {
    public enum Interpolation: String, Sendable, Codable {
        /// VOC2007's 11-point interpolated AP.
        case elevenPoint = "voc07"
        /// VOC2010+'s all-point AP (area under the precision envelope).
        case allPoint = "voc"
    }

    public var interpolation: Interpolation
    /// A detection matches a box when IoU >= this; in (0, 1].
    public var iouThreshold: Double
    /// Measure boxes as `max - min + 1` pixels (the devkit's convention for integer pixel boxes); default off.
    public var pixelInclusive: Bool

    public init(interpolation: Interpolation = .allPoint, iouThreshold: Double = 0.5, pixelInclusive: Bool = false) {
        precondition(iouThreshold > 0 && iouThreshold <= 1, "IoU threshold \(iouThreshold) outside (0, 1]")
        self.interpolation = interpolation
        self.iouThreshold = iouThreshold
        self.pixelInclusive = pixelInclusive
    }

    /// Scores `detections` against `groundTruth`. `classIDs` lists the classes to evaluate (default: every class
    /// in either list); a class without non-difficult ground truth gets no AP and is left out of the mean.
    /// Ground truth marked `isCrowd` is treated as difficult. Throws on a non-finite score or box.
    public func evaluate(groundTruth: [GroundTruthBox], detections: [Detection], classIDs: [Int]? = nil) throws -> VOCResult {
        try validate(groundTruth: groundTruth, detections: detections)
        let groups = DetectionGrouping(groundTruth: groundTruth, detections: detections, classIDs: classIDs)
        let scores = detections.map(\.score)
        // Which dense image each detection is in; -1 for classes left out (never looked up).
        var imageOf = [Int](repeating: -1, count: detections.count)
        for c in groups.classIDs.indices {
            for i in 0..<groups.imageCount { for d in groups.detections(class: c, image: i) { imageOf[d] = i } }
        }
        var perClass: [VOCClassResult] = []
        for c in groups.classIDs.indices {
            perClass.append(evaluateClass(c, groups: groups, groundTruth: groundTruth, detections: detections,
                                          scores: scores, imageOf: imageOf))
        }
        return VOCResult(interpolation: interpolation, iouThreshold: iouThreshold, pixelInclusive: pixelInclusive, perClass: perClass)
    }

    private func evaluateClass(_ c: Int, groups: DetectionGrouping, groundTruth: [GroundTruthBox], detections: [Detection],
                               scores: [Double], imageOf: [Int]) -> VOCClassResult {
        // This class's ground truth, image by image, with where each image's run starts.
        let gtIndices = Array(groups.groundTruth(class: c))
        let boxes = gtIndices.map { groundTruth[$0].box }
        let difficult = gtIndices.map { groundTruth[$0].difficult || groundTruth[$0].isCrowd }
        var runStart = [Int](repeating: 0, count: groups.imageCount + 1)
        for i in 0..<groups.imageCount { runStart[i + 1] = runStart[i] + groups.groundTruth(class: c, image: i).count }
        let positives = difficult.lazy.filter { !$0 }.count

        // Ranked over the input order (the groups list detections image by image; VOC breaks ties by input order).
        let order = sortedByScore(groups.detections(class: c).sorted(), scores: scores)
        var taken = [Bool](repeating: false, count: boxes.count)
        var tp = 0, fp = 0, ignored = 0
        var recall: [Double] = [], precision: [Double] = []
        recall.reserveCapacity(order.count)
        precision.reserveCapacity(order.count)
        for d in order {
            let box = detections[d].box
            let image = imageOf[d]
            var best = -Double.infinity, match = -1
            for j in runStart[image] ..< runStart[image + 1] {
                let overlap = iou(box, boxes[j], pixelInclusive: pixelInclusive)
                if overlap > best { best = overlap; match = j }
            }
            if match >= 0 && best >= iouThreshold {
                if difficult[match] { ignored += 1 }
                else if !taken[match] { taken[match] = true; tp += 1 }
                else { fp += 1 }
            } else {
                fp += 1
            }
            // One point per ranked detection, ignored ones included (they repeat the previous point), as the devkit.
            recall.append(positives > 0 ? Double(tp) / Double(positives) : 0)
            precision.append(tp + fp > 0 ? Double(tp) / Double(tp + fp) : 0)
        }
        let ap: Double? = positives == 0 ? nil : Self.averagePrecision(recall: recall, precision: precision, interpolation: interpolation)
        return VOCClassResult(classID: groups.classIDs[c], groundTruth: positives, difficult: boxes.count - positives,
                              detections: order.count, truePositives: tp, falsePositives: fp, ignored: ignored,
                              ap: ap, recall: recall, precision: precision)
    }

    /// AP of a ranked list's (recall, precision) points (recall non-decreasing). No points: 0.
    public static func averagePrecision(recall: [Double], precision: [Double], interpolation: Interpolation) -> Double {
        precondition(recall.count == precision.count)
        switch interpolation {
        case .elevenPoint:
            // t = k x 0.1 in binary floating point, as numpy's arange/linspace make it (and the numbers the
            // Python devkit reports): 6 x 0.1 = 0.6000000000000001 > 3/5, so a recall of exactly 0.6 does not
            // reach that point. (MATLAB's 0:0.1:1 builds the upper half down from 1 and gives 0.6 there.)
            // The sum is divided once at the end, so that eleven 1s give exactly 1 (the devkit adds p / 11 eleven
            // times, which can be 1 ulp off).
            var sum = 0.0
            for k in 0...10 {
                let t = Double(k) * 0.1
                var p = 0.0
                for i in recall.indices where recall[i] >= t { p = max(p, precision[i]) }
                sum += p
            }
            return sum / 11
        case .allPoint:
            // Sentinels (0, 0) and (1, 0), the envelope from the right, then rectangles where recall steps.
            let r = [0.0] + recall + [1.0]
            var p = [0.0] + precision + [0.0]
            for i in stride(from: p.count - 2, through: 0, by: -1) { p[i] = max(p[i], p[i + 1]) }
            var ap = 0.0
            for i in 0 ..< r.count - 1 where r[i + 1] != r[i] { ap += (r[i + 1] - r[i]) * p[i + 1] }
            return ap
        }
    }
}

/// One class's VOC figures.
public struct VOCClassResult: Sendable {
    public var classID: Int
    /// Non-difficult ground-truth boxes (the denominator of recall).
    public var groundTruth: Int
    /// Difficult (or crowd) boxes, neither needed nor penalised.
    public var difficult: Int
    public var detections: Int
    public var truePositives: Int
    public var falsePositives: Int
    /// Detections whose best match was a difficult box: neither true nor false positives.
    public var ignored: Int
    /// nil when the class has no non-difficult ground truth (left out of the mean). 0 with no detections.
    public var ap: Double?
    /// Recall and precision after each detection in rank order (one point per detection, as the devkit).
    public var recall: [Double]
    public var precision: [Double]
}

public struct VOCResult: Sendable {
    public var interpolation: VOCEvaluator.Interpolation
    public var iouThreshold: Double
    public var pixelInclusive: Bool
    /// One entry per evaluated class, in ascending class id.
    public var perClass: [VOCClassResult]

    /// Mean AP over the classes with ground truth; nil if there are none.
    public var mAP: Double? {
        let aps = perClass.compactMap(\.ap)
        return aps.isEmpty ? nil : aps.reduce(0, +) / Double(aps.count)
    }
}
