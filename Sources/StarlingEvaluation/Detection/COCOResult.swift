



// The arrays and summary numbers of a COCO evaluation (COCOEvaluator).

/// COCO precision and recall arrays, laid out as pycocotools' `eval['precision']` [T, R, K, A, M] and
/// `eval['recall']` [T, K, A, M]; -1 where a class has no counted ground truth in an area range.
public struct COCOResult: Sendable {
    public let classIDs: [Int]
    public private(set) var precision: [Double]
    public private(set) var recall: [Double]
    /// Non-crowd ground truth per class (same order as `classIDs`).
    public internal(set) var groundTruthCounts: [Int]
    public internal(set) var detectionCounts: [Int]

    private var K: Int { classIDs.count }
    private static let T = COCOEvaluator.iouThresholds.count, R = COCOEvaluator.recallThresholds.count
    private static let A = COCOEvaluator.areaRanges.count, M = COCOEvaluator.maxDetections.count

    init(classIDs: [Int]) {
        self.classIDs = classIDs
        let k = classIDs.count
        precision = [Double](repeating: -1, count: Self.T * Self.R * k * Self.A * Self.M)
        recall = [Double](repeating: -1, count: Self.T * k * Self.A * Self.M)
        groundTruthCounts = [Int](repeating: 0, count: k)
        detectionCounts = [Int](repeating: 0, count: k)
    }

    /// Precision at threshold index t, recall point r, class index k, area range a, maxDets index m.
    public func precision(t: Int, r: Int, k: Int, a: Int, m: Int) -> Double { precision[(((t * Self.R + r) * K + k) * Self.A + a) * Self.M + m] }
    public func recall(t: Int, k: Int, a: Int, m: Int) -> Double { recall[((t * K + k) * Self.A + a) * Self.M + m] }
    mutating func setPrecision(_ v: Double, t: Int, r: Int, k: Int, a: Int, m: Int) { precision[(((t * Self.R + r) * K + k) * Self.A + a) * Self.M + m] = v }
    mutating func setRecall(_ v: Double, t: Int, k: Int, a: Int, m: Int) { recall[((t * K + k) * Self.A + a) * Self.M + m] = v }

    /// pycocotools' `summarize`: the mean of the selected entries that are not -1, or -1 if there are none.
    /// `t` nil averages all thresholds; `k` nil all classes; `a` area range index; `m` maxDets index.
    public func meanPrecision(t: Int? = nil, k: Int? = nil, a: Int = 0, m: Int = 2) -> Double {
        var sum = 0.0, count = 0
        for ti in t.map({ [$0] }) ?? Array(0..<Self.T) {
            for r in 0..<Self.R {
                for ki in k.map({ [$0] }) ?? Array(0..<K) {
                    let v = precision(t: ti, r: r, k: ki, a: a, m: m)
                    if v > -1 { sum += v; count += 1 }
                }
            }
        }
        return count == 0 ? -1 : sum / Double(count)
    }

    public func meanRecall(t: Int? = nil, k: Int? = nil, a: Int = 0, m: Int = 2) -> Double {
        var sum = 0.0, count = 0
        for ti in t.map({ [$0] }) ?? Array(0..<Self.T) {
            for ki in k.map({ [$0] }) ?? Array(0..<K) {
                let v = recall(t: ti, k: ki, a: a, m: m)
                if v > -1 { sum += v; count += 1 }
            }
        }
        return count == 0 ? -1 : sum / Double(count)
    }

    /// The twelve numbers pycocotools prints, in its order: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
    /// ARs, ARm, ARl (-1 where nothing was counted).
    public var stats: [Double] {
        [meanPrecision(), meanPrecision(t: 0), meanPrecision(t: 5),
         meanPrecision(a: 1), meanPrecision(a: 2), meanPrecision(a: 3),
         meanRecall(m: 0), meanRecall(m: 1), meanRecall(m: 2),
         meanRecall(a: 1), meanRecall(a: 2), meanRecall(a: 3)]
    }

    /// AP@[.5:.95] (area all, 100 detections) of class index `k`; nil without ground truth. `t` picks one threshold.
    public func classAP(_ k: Int, t: Int? = nil) -> Double? {
        let v = meanPrecision(t: t, k: k)
        return v < 0 ? nil : v
    }

    /// Class index `k`'s interpolated precision at the 101 recall points, at IoU threshold index `t` (area all,
    /// 100 detections); nil without ground truth.
    public func curve(_ k: Int, t: Int = 0) -> (recall: [Double], precision: [Double])? {
        let p = (0..<Self.R).map { precision(t: t, r: $0, k: k, a: 0, m: 2) }
        return p.first.map { $0 < 0 } == true ? nil : (COCOEvaluator.recallThresholds, p)
    }
}
