import StarlingNN

/// The recall of ground-truth boxes by ranked proposals, at IoU thresholds and proposal budgets (the measure of
/// selective search's section 5 and of R-CNN's proposals): a box is recalled within a budget B at threshold t when one
/// of the image's first B proposals overlaps it by IoU >= t. Accumulated image by image.
public struct ProposalRecall: Sendable {
    public let budgets: [Int]
    public let thresholds: [Float]
    /// Boxes recalled, [budget][threshold]; the last budget row is "all proposals".
    public private(set) var recalled: [[Int]]
    public private(set) var truths = 0
    public private(set) var proposals = 0
    public private(set) var images = 0

    public init(budgets: [Int] = [100, 500, 1000, 2000], thresholds: [Float] = [0.5, 0.7]) {
        self.budgets = budgets
        self.thresholds = thresholds
        recalled = Array(repeating: Array(repeating: 0, count: thresholds.count), count: budgets.count + 1)
    }

    /// Adds one image: its proposals best first, its ground-truth boxes (difficult ones left out by the caller).
    public mutating func add(proposals ranked: [BoxCorners], truths boxes: [BoxCorners]) {
        images += 1
        proposals += ranked.count
        truths += boxes.count
        for truth in boxes {
            // The first rank reaching each threshold.
            var first = [Int?](repeating: nil, count: thresholds.count)
            for (rank, proposal) in ranked.enumerated() {
                let overlap = iou(proposal, truth)
                for (t, threshold) in thresholds.enumerated() where first[t] == nil && overlap >= threshold { first[t] = rank }
                if first.allSatisfy({ $0 != nil }) { break }
            }
            for t in thresholds.indices {
                guard let rank = first[t] else { continue }
                for (b, budget) in budgets.enumerated() where rank < budget { recalled[b][t] += 1 }
                recalled[budgets.count][t] += 1
            }
        }
    }

    /// Recall within budget `b` (an index into `budgets`, or `budgets.count` for all proposals) at threshold `t`.
    public func recall(budget b: Int, threshold t: Int) -> Double {
        truths > 0 ? Double(recalled[b][t]) / Double(truths) : 0
    }

    /// Mean proposals per image.
    public var proposalsPerImage: Double { images > 0 ? Double(proposals) / Double(images) : 0 }
}
