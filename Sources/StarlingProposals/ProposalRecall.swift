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
    /// Per class: the sum of each box's best IoU with the image's proposals, and the boxes.
    public private(set) var bestOverlaps: [Int: (sum: Double, boxes: Int)] = [:]

    public init(budgets: [Int] = [100, 500, 1000, 2000], thresholds: [Float] = [0.5, 0.7]) {
        self.budgets = budgets
        self.thresholds = thresholds
        recalled = Array(repeating: Array(repeating: 0, count: thresholds.count), count: budgets.count + 1)
    }

    /// Adds one image: its proposals best first, its ground-truth boxes (difficult ones left out by the caller) and
    /// their classes (nil: one class).
    public mutating func add(proposals ranked: [BoxCorners], truths boxes: [BoxCorners], classes: [Int]? = nil) {
        precondition(classes == nil || classes!.count == boxes.count, "\(classes!.count) classes for \(boxes.count) boxes")
        images += 1
        proposals += ranked.count
        truths += boxes.count
        for (b, truth) in boxes.enumerated() {
            let best = ranked.map { iou($0, truth) }.max() ?? 0
            let overlap = bestOverlaps[classes?[b] ?? 0, default: (0, 0)]
            bestOverlaps[classes?[b] ?? 0] = (overlap.sum + Double(best), overlap.boxes + 1)
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

    /// The paper's MABO (section 5.1): each box's best IoU with its image's proposals, averaged over the boxes of a
    /// class (ABO), then over the classes.
    public var meanAverageBestOverlap: Double {
        let classes = bestOverlaps.values.filter { $0.boxes > 0 }
        return classes.isEmpty ? 0 : classes.map { $0.sum / Double($0.boxes) }.reduce(0, +) / Double(classes.count)
    }

    /// Mean proposals per image.
    public var proposalsPerImage: Double { images > 0 ? Double(proposals) / Double(images) : 0 }
}
