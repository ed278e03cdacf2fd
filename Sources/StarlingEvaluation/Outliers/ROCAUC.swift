



/// The area under the ROC curve, computed exactly as the Mann-Whitney statistic: the fraction of (positive,
/// negative) pairs in which the positive scores higher, a tie counting half. Equal to the trapezoidal area
/// under the ROC curve drawn through every distinct threshold (Hanley and McNeil, "The meaning and use of the
/// area under a receiver operating characteristic (ROC) curve", Radiology 143, 1982).
public enum ROCAUC {
    /// AUC of `scores` (higher means "more likely positive") against `positives`; nil when either class is
    /// empty, as the area is then undefined. Scores must be finite (callers check what they read).
    ///
    /// Sorting once and walking groups of equal score counts, for each group, the negatives strictly below it
    /// (pairs won) and the negatives inside it (ties): O(n log n), and exact, as the pair counts are integers
    /// (twice the statistic, so that half a tie stays an integer) divided once at the end.
    public static func auc(scores: [Double], positives: [Bool]) -> Double? {
        precondition(scores.count == positives.count, "\(scores.count) scores for \(positives.count) labels")
        precondition(scores.allSatisfy(\.isFinite), "ROC AUC of non-finite scores")
        let order = scores.indices.sorted { scores[$0] < scores[$1] }
        var negativesBelow = 0, positiveCount = 0
        var twiceWins = 0   // 2 x (pairs won) + 1 x (pairs tied)
        var start = 0
        while start < order.count {
            var end = start
            var groupPositives = 0, groupNegatives = 0
            while end < order.count && scores[order[end]] == scores[order[start]] {
                if positives[order[end]] { groupPositives += 1 } else { groupNegatives += 1 }
                end += 1
            }
            twiceWins += groupPositives * (2 * negativesBelow + groupNegatives)
            negativesBelow += groupNegatives
            positiveCount += groupPositives
            start = end
        }
        let negativeCount = negativesBelow
        guard positiveCount > 0, negativeCount > 0 else { return nil }
        return Double(twiceWins) / (2 * Double(positiveCount) * Double(negativeCount))
    }
}
