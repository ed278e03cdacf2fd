



// COCO detection average precision and recall (bounding boxes).
//
// Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014, and the detection evaluation of the
// COCO API (pycocotools' COCOeval: evaluateImg, accumulate, summarize), whose semantics this follows,
// re-implemented:
//
// - IoU thresholds 0.50:0.05:0.95 and recall points 0:0.01:1, built with numpy linspace's arithmetic
//   (k x step + start), so thresholds such as 0.8999999999999999 are the reference's to the last bit;
// - per image and class, the detections ranked by score (stable) and cut to the 100 best; at each threshold
//   each detection in turn takes the still-unmatched box of highest IoU >= threshold (of equal IoUs the later
//   box in ground-truth order), preferring boxes that count: ground truth is ordered counted-first and the
//   search stops at the first ignored box once a counted one matched. A crowd box can be taken any number of
//   times and its overlap is |d ∩ g| / |d|;
// - for each area range (all, small, medium, large by the ground truth's `area`, bounds inclusive on both
//   sides as pycocotools: an area of exactly 32^2 is both small and medium) boxes outside the range and crowd
//   boxes are ignored; a detection matched to an ignored box is ignored, and so is an unmatched detection
//   whose own area (w x h) is outside the range;
// - per class, area range and maxDets (1, 10, 100 per image *and class*): all images' detections ranked by
//   score (stable over images in ascending id order), precision made non-increasing from the right, then
//   read at the first rank whose recall reaches each of the 101 recall points (0 beyond the last recall);
//   recall is the final recall;
// - AP is the mean over thresholds, recall points and classes; a class without counted ground truth is -1
//   there and left out of every mean.
//
// Deliberate differences from pycocotools, none of which changes a result on valid input:
// - precision is tp / (tp + fp), where pycocotools adds np.spacing(1) to the denominator (2 ulp at most);
// - matches are recorded as flags, not annotation ids: pycocotools treats a match to an annotation of id 0
//   as no match (its `dtm` holds ids and 0 means none), here id 0 is an ordinary id.

/// The COCO detection protocol over a set of ground truth and detections.
public struct COCOEvaluator: Sendable {
    /// 0.50, 0.55, ..., 0.95 as numpy builds them.
    public static let iouThresholds: [Double] = linspace(0.5, 0.95, count: 10)
    /// 0.00, 0.01, ..., 1.00 as numpy builds them.
    public static let recallThresholds: [Double] = linspace(0, 1, count: 101)

    /// numpy's `linspace(start, stop, count)`: k x step + start, with the last value exactly `stop`.
    static func linspace(_ start: Double, _ stop: Double, count: Int) -> [Double] {
        let step: Double = (stop - start) / Double(count - 1)
        return (0..<count).map { (k: Int) -> Double in k == count - 1 ? stop : Double(k) * step + start }
    }
    /// Detections per image and class kept for AR1, AR10 and AR100 (and AP, at 100).
    public static let maxDetections = [1, 10, 100]
    /// COCO's area ranges in square pixels, inclusive at both ends.
    public static let areaRanges: [AreaRange] = [
        AreaRange(name: "all", lower: 0, upper: 1e10),
        AreaRange(name: "small", lower: 0, upper: 32 * 32),
        AreaRange(name: "medium", lower: 32 * 32, upper: 96 * 96),
        AreaRange(name: "large", lower: 96 * 96, upper: 1e10),
    ]

    public struct AreaRange: Sendable, Equatable {
        public var name: String
        public var lower: Double
        public var upper: Double
        func contains(_ area: Double) -> Bool { !(area < lower || area > upper) }
    }

    /// What a detection's overlap with a ground-truth object is measured on: boxes (pycocotools' `bbox`) or masks
    /// (`segm`: `RunLengthMask.iou`, and a detection's own area for the area ranges is its mask's, as the COCO API's
    /// `loadRes` sets it). With `segm` every entry must carry a mask of its image's size.
    public enum IoUType: String, Sendable {
        case bbox, segm
    }

    public var iouType: IoUType

    public init(iouType: IoUType = .bbox) { self.iouType = iouType }

    /// Scores `detections` against `groundTruth`. `classIDs` lists the classes to evaluate (default: every class
    /// in either list); entries of other classes are left out. Throws on a non-finite score or box.
    public func evaluate(groundTruth: [GroundTruthBox], detections: [Detection], classIDs: [Int]? = nil) throws -> COCOResult {
        try validate(groundTruth: groundTruth, detections: detections)
        if iouType == .segm {
            if let g = groundTruth.firstIndex(where: { $0.mask == nil }) { throw DetectionEvaluationError("ground-truth object \(g) (image \(groundTruth[g].imageID)) has no mask for mask AP") }
            if let d = detections.firstIndex(where: { $0.mask == nil }) { throw DetectionEvaluationError("detection \(d) (image \(detections[d].imageID)) has no mask for mask AP") }
        }
        var matcher = ImageMatcher()
        matcher.iouType = iouType
        let groups = DetectionGrouping(groundTruth: groundTruth, detections: detections, classIDs: classIDs)
        var result = COCOResult(classIDs: groups.classIDs)
        let scores = detections.map(\.score)
        var ranked = RankedDetections()
        var curve = CurveBuilder()
        for c in groups.classIDs.indices {
            // Match image by image, collecting the class's kept detections in (image, rank) order.
            ranked.removeAll()
            var positives = [Int](repeating: 0, count: Self.areaRanges.count)
            for i in 0..<groups.imageCount {
                let gts = groups.groundTruth(class: c, image: i)
                let all = groups.detections(class: c, image: i)
                if gts.isEmpty && all.isEmpty { continue }
                let kept = sortedByScore(all, scores: scores).prefix(Self.maxDetections.last!)
                matcher.match(groundTruth: gts.map { groundTruth[$0] }, detections: kept.map { detections[$0] },
                              into: &ranked, positives: &positives)
            }
            result.groundTruthCounts[c] = groups.groundTruth(class: c).lazy.filter { !groundTruth[$0].isCrowd }.count
            result.detectionCounts[c] = groups.detections(class: c).count
            accumulate(class: c, ranked: ranked, positives: positives, curve: &curve, into: &result)
        }
        return result
    }

    /// Precision at the recall points and final recall of class `c`, for every area range, maxDets and threshold.
    private func accumulate(class c: Int, ranked: RankedDetections, positives: [Int], curve: inout CurveBuilder,
                            into result: inout COCOResult) {
        let T = Self.iouThresholds.count, A = Self.areaRanges.count, cells = A * T
        // One ranking over all images (stable: ties keep image order, then rank within the image). Each maxDets
        // ranking is this one with the detections of rank >= maxDets left out, so one sort serves all three.
        let order = sortedByScore(0..<ranked.scores.count, scores: ranked.scores)
        let n = order.count
        // Outcomes in ranking order, one contiguous run per (area range, threshold) cell.
        var outcomes = [UInt8](repeating: 0, count: n * cells)
        var ranks = [Int](repeating: 0, count: n)
        outcomes.withUnsafeMutableBufferPointer { out in
            ranked.outcomes.withUnsafeBufferPointer { from in
                for (p, d) in order.enumerated() {
                    ranks[p] = ranked.ranks[d]
                    for cell in 0..<cells { out[cell &* n &+ p] = from[d &* cells &+ cell] }
                }
            }
        }
        // For each maxDets, the positions in the ranking that it keeps.
        let keptPositions = Self.maxDetections.map { maxDet in ranks.indices.filter { ranks[$0] < maxDet } }
        for a in 0..<A where positives[a] > 0 {
            for m in Self.maxDetections.indices {
                for t in 0..<T {
                    let base = (a * T + t) * n
                    let (recall, precision) = outcomes[base ..< base + n].withUnsafeBufferPointer { cell in
                        keptPositions[m].withUnsafeBufferPointer { kept in
                            curve.sample(outcomes: cell, kept: kept, positives: positives[a])
                        }
                    }
                    result.setRecall(recall, t: t, k: c, a: a, m: m)
                    for (r, p) in precision.enumerated() { result.setPrecision(p, t: t, r: r, k: c, a: a, m: m) }
                }
            }
        }
    }
}

/// Precision at the 101 recall points of one ranking (pycocotools' accumulate for one cell).
///
/// Recall rises only at true positives, and between two true positives precision only falls, so the envelope
/// (the best precision at this rank or later) at the first rank reaching a recall level is the best precision
/// over the true positives from there on. Only true positives are therefore recorded: the k-th at recall
/// k / positives and precision k / (k + false positives so far). Ignored detections add nothing (pycocotools
/// repeats the previous point, which changes neither the envelope nor where a level is first reached).
struct CurveBuilder {
    private var hits: [Double] = []   // envelope precision at the k-th true positive (k from 1), at index k - 1
    private var sampled = [Double](repeating: 0, count: COCOEvaluator.recallThresholds.count)

    /// Final recall and the sampled precisions, reading the outcomes at the `kept` positions of the ranking.
    mutating func sample(outcomes: UnsafeBufferPointer<UInt8>, kept: UnsafeBufferPointer<Int>,
                         positives: Int) -> (recall: Double, precision: [Double]) {
        if hits.count < outcomes.count { hits = [Double](repeating: 0, count: outcomes.count) }
        let counted = Double(positives)
        let levels = COCOEvaluator.recallThresholds
        let tp = hits.withUnsafeMutableBufferPointer { hits in
            sampled.withUnsafeMutableBufferPointer { sampled in
                var tp = 0, fp = 0
                for p in kept {
                    let outcome = outcomes[p]
                    fp &+= outcome == Outcome.falsePositive ? 1 : 0
                    if outcome == Outcome.truePositive {
                        tp &+= 1
                        hits[tp &- 1] = Double(tp) / Double(tp &+ fp)
                    }
                }
                // Envelope from the right, then each recall point reads it at the first hit whose recall reaches it.
                for i in stride(from: tp - 1, to: 0, by: -1) where hits[i] > hits[i - 1] { hits[i - 1] = hits[i] }
                var hit = 0   // hit k (from 0) has recall (k + 1) / positives
                for r in 0..<levels.count {
                    // Level 0 is reached at the first rank, whose envelope is the best precision anywhere (0 with no hit).
                    let level = levels[r]
                    while hit < tp && Double(hit &+ 1) / counted < level && level > 0 { hit &+= 1 }
                    sampled[r] = hit < tp ? hits[hit] : 0
                }
                return tp
            }
        }
        return (Double(tp) / counted, sampled)
    }
}

/// What a detection counts as at one (area range, IoU threshold).
enum Outcome {
    static let falsePositive: UInt8 = 0
    static let truePositive: UInt8 = 1
    static let ignored: UInt8 = 2
}

/// One class's kept detections in (image, rank) order: score, rank within its image, and an outcome per
/// (area range, threshold) cell, `outcomes[detection * cells + a * T + t]`.
struct RankedDetections {
    var scores: [Double] = []
    var ranks: [Int] = []
    var outcomes: [UInt8] = []

    mutating func removeAll() {
        scores.removeAll(keepingCapacity: true)
        ranks.removeAll(keepingCapacity: true)
        outcomes.removeAll(keepingCapacity: true)
    }
}

/// Greedy matching in one image for one class (pycocotools' evaluateImg), with scratch space reused across images.
struct ImageMatcher {
    var iouType = COCOEvaluator.IoUType.bbox
    private var overlaps: [Double] = []   // [detection][ground truth]
    private var crowd: [Bool] = []        // [ground truth]
    private var ignore: [Bool] = []       // [area range][ground truth]
    private var order: [Int] = []         // [area range][counted ground truth first]
    private var inRange: [Bool] = []      // [area range][detection]: the detection's own area is in the range
    private var taken: [Bool] = []        // [ground truth]
    private var outcomes: [UInt8] = []    // [detection][area range][threshold]

    /// `detections` ranked and cut to maxDets. Appends their outcomes to `ranked` and counts the ground truth
    /// each area range counts (not ignored) into `positives`.
    mutating func match(groundTruth gts: [GroundTruthBox], detections dts: [Detection], into ranked: inout RankedDetections,
                        positives: inout [Int]) {
        let G = gts.count, D = dts.count
        let thresholds = COCOEvaluator.iouThresholds, ranges = COCOEvaluator.areaRanges
        let T = thresholds.count, A = ranges.count, cells = A * T
        overlaps.removeAll(keepingCapacity: true)
        switch iouType {
        case .bbox: for d in dts { for g in gts { overlaps.append(cocoOverlap(detection: d.box, groundTruth: g.box, crowd: g.isCrowd)) } }
        case .segm:
            // evaluate() checked that every entry has a mask; masks of another size overlap by -1, as in the COCO API.
            for d in dts { for g in gts { overlaps.append(RunLengthMask.iou(d.mask!, g.mask!, crowd: g.isCrowd)) } }
        }
        crowd.removeAll(keepingCapacity: true)
        ignore.removeAll(keepingCapacity: true)
        order.removeAll(keepingCapacity: true)
        inRange.removeAll(keepingCapacity: true)
        for g in gts { crowd.append(g.isCrowd) }
        for (a, range) in ranges.enumerated() {
            for g in gts { ignore.append(g.isCrowd || !range.contains(g.area)) }
            // Counted boxes first, each group in input order (a stable partition).
            for j in 0..<G where !ignore[a * G + j] { order.append(j) }
            positives[a] += order.count - a * G
            for j in 0..<G where ignore[a * G + j] { order.append(j) }
            for d in dts { inRange.append(range.contains(iouType == .segm ? Double(d.mask!.area) : d.box.width * d.box.height)) }
        }
        for (rank, d) in dts.enumerated() { ranked.scores.append(d.score); ranked.ranks.append(rank) }
        outcomes.removeAll(keepingCapacity: true)
        outcomes.append(contentsOf: repeatElement(Outcome.falsePositive, count: D * cells))
        if taken.count < G { taken = [Bool](repeating: false, count: G) }

        overlaps.withUnsafeBufferPointer { overlaps in
        crowd.withUnsafeBufferPointer { crowd in
        ignore.withUnsafeBufferPointer { ignoreAll in
        order.withUnsafeBufferPointer { orderAll in
        inRange.withUnsafeBufferPointer { inRange in
        taken.withUnsafeMutableBufferPointer { taken in
        outcomes.withUnsafeMutableBufferPointer { outcomes in
            for a in 0..<A {
                let ignore = UnsafeBufferPointer(rebasing: ignoreAll[(a * G)..<(a * G + G)])
                let order = UnsafeBufferPointer(rebasing: orderAll[(a * G)..<(a * G + G)])
                for t in 0..<T {
                    let floor = min(thresholds[t], 1 - 1e-10)
                    for j in 0..<G { taken[j] = false }
                    for rank in 0..<D {
                        var best = floor, match = -1
                        for j in order {
                            if taken[j] && !crowd[j] { continue }
                            // Once a counted box matched, an ignored one may not replace it.
                            if match >= 0 && !ignore[match] && ignore[j] { break }
                            let overlap = overlaps[rank &* G &+ j]
                            if overlap < best { continue }
                            best = overlap
                            match = j
                        }
                        let outcome: UInt8
                        if match >= 0 {
                            taken[match] = true
                            outcome = ignore[match] ? Outcome.ignored : Outcome.truePositive
                        } else {
                            outcome = inRange[a &* D &+ rank] ? Outcome.falsePositive : Outcome.ignored
                        }
                        outcomes[rank &* cells &+ a &* T &+ t] = outcome
                    }
                }
            }
        }}}}}}}
        ranked.outcomes.append(contentsOf: outcomes)
    }
}
