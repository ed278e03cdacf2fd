import StarlingModels

// Plain, slow re-implementations of the VOC and COCO box protocols, written from their definitions for the
// tests: no grouping, no shared scratch, every (class, area, maxDets, threshold) cell recomputed from scratch,
// the envelope as "best precision at this rank or later", the recall point found by a linear search.

enum ReferenceEvaluation {
    static let iouThresholds = COCOEvaluator.iouThresholds
    static let recallThresholds = COCOEvaluator.recallThresholds
    static let areas: [(lower: Double, upper: Double)] = [(0, 1e10), (0, 1024), (1024, 9216), (9216, 1e10)]
    static let maxDets = [1, 10, 100]

    /// |d ∩ g| / |d ∪ g|, or / |d| for a crowd region (the same arithmetic order as the evaluator, so that
    /// IoUs exactly at a threshold are decided the same way).
    static func overlap(_ d: BoundingBox, _ g: BoundingBox, crowd: Bool) -> Double {
        let iw = min(d.xmax, g.xmax) - max(d.xmin, g.xmin)
        let ih = min(d.ymax, g.ymax) - max(d.ymin, g.ymin)
        if iw <= 0 || ih <= 0 { return 0 }
        let inter = iw * ih
        let dArea = (d.xmax - d.xmin) * (d.ymax - d.ymin)
        let gArea = (g.xmax - g.xmin) * (g.ymax - g.ymin)
        return inter / (crowd ? dArea : dArea + gArea - inter)
    }

    struct COCOCell { var precision: [Double]; var recall: Double }   // precision at the 101 points; -1 if no GT

    /// One (class, area range, maxDets, threshold) cell of the COCO arrays.
    static func cocoCell(classID: Int, area: (lower: Double, upper: Double), maxDet: Int, threshold: Double,
                         groundTruth: [GroundTruthBox], detections: [Detection]) -> COCOCell {
        func inRange(_ a: Double) -> Bool { a >= area.lower && a <= area.upper }
        var rows: [(score: Double, image: Int, rank: Int, truePositive: Bool)] = []
        var counted = 0
        let classGT = groundTruth.filter { $0.classID == classID }
        let classDetections = detections.enumerated().filter { $0.element.classID == classID }
        let gtByImage = Dictionary(grouping: classGT, by: \.imageID)
        let detectionsByImage = Dictionary(grouping: classDetections, by: \.element.imageID)
        for image in Set(gtByImage.keys).union(detectionsByImage.keys) {
            let gts = gtByImage[image] ?? []
            let ignored = gts.map { $0.isCrowd || !inRange($0.area) }
            counted += ignored.filter { !$0 }.count
            // This image's detections by descending score, input order among equals, the best maxDet of them.
            let mine = detectionsByImage[image] ?? []
            let ranked = mine.sorted { a, b in a.element.score > b.element.score || (a.element.score == b.element.score && a.offset < b.offset) }
                .prefix(maxDet).map(\.element)
            var taken = Set<Int>()
            for (rank, d) in ranked.enumerated() {
                // The best available box of the given kind: highest overlap >= threshold, the later box on ties.
                func best(ignoredKind: Bool) -> Int? {
                    var choice: Int?, bestOverlap = min(threshold, 1 - 1e-10)
                    for j in gts.indices where ignored[j] == ignoredKind && (gts[j].isCrowd || !taken.contains(j)) {
                        let o = overlap(d.box, gts[j].box, crowd: gts[j].isCrowd)
                        if o >= bestOverlap { bestOverlap = o; choice = j }
                    }
                    return choice
                }
                if let j = best(ignoredKind: false) ?? best(ignoredKind: true) {
                    taken.insert(j)
                    if !ignored[j] { rows.append((d.score, image, rank, true)) }
                } else if inRange(d.box.width * d.box.height) {
                    rows.append((d.score, image, rank, false))
                }
            }
        }
        if counted == 0 { return COCOCell(precision: [Double](repeating: -1, count: recallThresholds.count), recall: -1) }
        rows.sort { a, b in
            if a.score != b.score { return a.score > b.score }
            if a.image != b.image { return a.image < b.image }
            return a.rank < b.rank
        }
        var recall: [Double] = [], precision: [Double] = []
        var tp = 0, fp = 0
        for r in rows {
            if r.truePositive { tp += 1 } else { fp += 1 }
            recall.append(Double(tp) / Double(counted))
            precision.append(Double(tp) / Double(tp + fp))
        }
        let sampled = recallThresholds.map { level -> Double in
            guard let i = recall.firstIndex(where: { $0 >= level }) else { return 0 }
            return precision[i...].max()!
        }
        return COCOCell(precision: sampled, recall: recall.last ?? 0)
    }

    /// The twelve pycocotools numbers, per definition: means over every counted cell entry.
    static func cocoStats(groundTruth: [GroundTruthBox], detections: [Detection], classIDs: [Int]) -> (stats: [Double], classAP: [Double]) {
        var cells: [String: COCOCell] = [:]
        func cell(_ k: Int, _ a: Int, _ m: Int, _ t: Int) -> COCOCell {
            let key = "\(k) \(a) \(m) \(t)"
            if let c = cells[key] { return c }
            let c = cocoCell(classID: classIDs[k], area: areas[a], maxDet: maxDets[m], threshold: iouThresholds[t],
                             groundTruth: groundTruth, detections: detections)
            cells[key] = c
            return c
        }
        func meanAP(_ ts: [Int], a: Int, ks: [Int]) -> Double {
            let values = ts.flatMap { t in ks.flatMap { k in cell(k, a, 2, t).precision } }.filter { $0 > -1 }
            return values.isEmpty ? -1 : values.reduce(0, +) / Double(values.count)
        }
        func meanAR(a: Int, m: Int) -> Double {
            let values = iouThresholds.indices.flatMap { t in classIDs.indices.map { k in cell(k, a, m, t).recall } }.filter { $0 > -1 }
            return values.isEmpty ? -1 : values.reduce(0, +) / Double(values.count)
        }
        let all = Array(iouThresholds.indices), ks = Array(classIDs.indices)
        let stats = [meanAP(all, a: 0, ks: ks), meanAP([0], a: 0, ks: ks), meanAP([5], a: 0, ks: ks),
                     meanAP(all, a: 1, ks: ks), meanAP(all, a: 2, ks: ks), meanAP(all, a: 3, ks: ks),
                     meanAR(a: 0, m: 0), meanAR(a: 0, m: 1), meanAR(a: 0, m: 2),
                     meanAR(a: 1, m: 2), meanAR(a: 2, m: 2), meanAR(a: 3, m: 2)]
        return (stats, ks.map { meanAP(all, a: 0, ks: [$0]) })
    }

    /// VOC AP per class (nil without non-difficult ground truth), from the definition.
    static func vocAP(groundTruth: [GroundTruthBox], detections: [Detection], classID: Int, threshold: Double, elevenPoint: Bool) -> Double? {
        let gts = groundTruth.filter { $0.classID == classID }
        let positives = gts.filter { !$0.difficult && !$0.isCrowd }.count
        if positives == 0 { return nil }
        let ranked = detections.enumerated().filter { $0.element.classID == classID }
            .sorted { a, b in a.element.score > b.element.score || (a.element.score == b.element.score && a.offset < b.offset) }
            .map(\.element)
        var taken = Set<Int>()
        var recall: [Double] = [], precision: [Double] = []
        var tp = 0, fp = 0
        for d in ranked {
            var best = -1.0, match: Int?
            for j in gts.indices where gts[j].imageID == d.imageID {
                let o = iou(d.box, gts[j].box)
                if o > best { best = o; match = j }
            }
            if let j = match, best >= threshold {
                if gts[j].difficult || gts[j].isCrowd { /* neither */ } else if taken.insert(j).inserted { tp += 1 } else { fp += 1 }
            } else {
                fp += 1
            }
            recall.append(Double(tp) / Double(positives))
            precision.append(tp + fp == 0 ? 0 : Double(tp) / Double(tp + fp))
        }
        func bestPrecision(atRecall level: Double) -> Double {
            zip(recall, precision).filter { $0.0 >= level }.map(\.1).max() ?? 0
        }
        if elevenPoint {
            return (0...10).map { bestPrecision(atRecall: Double($0) * 0.1) / 11 }.reduce(0, +)
        }
        // Area under the envelope: each recall step times the best precision at or beyond it.
        var area = 0.0, previous = 0.0
        for r in recall where r > previous {
            area += (r - previous) * bestPrecision(atRecall: r)
            previous = r
        }
        return area
    }
}
