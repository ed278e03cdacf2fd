import StarlingNN

/// Assigns each prediction (an anchor or a proposal) to a ground-truth box by match quality (IoU), with two
/// thresholds: quality >= `high` matches the best box; [low, high) is "between"; < low is "below". What the two bands
/// mean is the caller's: Fast R-CNN takes between (IoU [0.1, 0.5)) as background and ignores below; a region proposal
/// network takes below (< 0.3) as background and ignores between. torchvision's `Matcher` semantics
/// (torchvision/models/detection/_utils.py).
///
/// `allowLowQualityMatches` (Faster R-CNN's RPN rule) gives each ground truth the predictions it overlaps most
/// (all of them on ties), even under `high`: such a prediction is matched to its own best box, which on ties between
/// boxes is the first, as in torchvision.
public struct Matcher: Sendable {
    public enum Match: Equatable, Sendable {
        case matched(Int)
        case between
        case below
    }

    public var high: Float
    public var low: Float
    public var allowLowQualityMatches: Bool

    public init(high: Float, low: Float, allowLowQualityMatches: Bool = false) {
        precondition(low <= high, "matcher thresholds low \(low) above high \(high)")
        self.high = high
        self.low = low
        self.allowLowQualityMatches = allowLowQualityMatches
    }

    /// `quality` [G][P]: ground truth g's quality with prediction p. No ground truth: every prediction is below.
    public func callAsFunction(quality: [[Float]], predictions: Int) -> [Match] {
        guard !quality.isEmpty else { return Array(repeating: .below, count: predictions) }
        precondition(quality.allSatisfy { $0.count == predictions }, "match quality rows of other than \(predictions) predictions")
        var best = [Float](repeating: -.infinity, count: predictions)
        var bestBox = [Int](repeating: 0, count: predictions)
        for (g, row) in quality.enumerated() {
            for p in 0..<predictions where row[p] > best[p] {
                best[p] = row[p]
                bestBox[p] = g
            }
        }
        var matches: [Match] = (0..<predictions).map { p in
            best[p] >= high ? .matched(bestBox[p]) : (best[p] >= low ? .between : .below)
        }
        if allowLowQualityMatches {
            for row in quality {
                guard let top = row.max() else { continue }
                for p in 0..<predictions where row[p] == top { matches[p] = .matched(bestBox[p]) }
            }
        }
        return matches
    }

    /// Matches `predictions` against `truths` by IoU.
    public func callAsFunction(truths: [BoxCorners], predictions: [BoxCorners]) -> [Match] {
        callAsFunction(quality: truths.map { t in predictions.map { iou(t, $0) } }, predictions: predictions.count)
    }
}
