import StarlingNN

/// A detected object in pixels of the model's input image.
public struct DetectedBox: Equatable, Sendable {
    public var box: BoxCorners
    public var classID: Int
    public var score: Float
    public init(box: BoxCorners, classID: Int, score: Float) { self.box = box; self.classID = classID; self.score = score }
}

/// Greedy non-maximum suppression: in descending score order (stable for ties), keep a box unless it overlaps an
/// already kept box by IoU > `iouThreshold` (strictly, as ssd_keras and torchvision). Returns kept indices.
///
/// The kept boxes' corners and areas are kept column by column, so the inner loop (every candidate against every kept
/// box, the decoder's hot spot at evaluation's 0.01 threshold) compares a candidate with 8 kept boxes at a time. The
/// IoU arithmetic is `iou`'s, operation for operation in each lane, so the result is the same bit
/// for bit; unused lanes hold empty boxes (xmin = +inf, xmax = -inf) that overlap nothing.
public func nonMaximumSuppression(_ boxes: [BoxCorners], scores: [Float], iouThreshold: Float) -> [Int] {
    if boxes.isEmpty { return [] }
    let order = scores.indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
    var kept: [Int] = []
    let lanes = 8, capacity = (boxes.count + lanes - 1) / lanes * lanes
    // Columns xmin, ymin, xmax, ymax, area of the kept boxes, each `capacity` long.
    var columns = [Float](repeating: 0, count: 5 * capacity)
    for c in 0..<capacity {
        columns[c] = .infinity; columns[capacity + c] = .infinity
        columns[2 * capacity + c] = -.infinity; columns[3 * capacity + c] = -.infinity
    }
    columns.withUnsafeMutableBufferPointer { flat in
        let x0 = flat.baseAddress!, y0 = x0 + capacity, x1 = y0 + capacity, y1 = x1 + capacity, areas = y1 + capacity
        func load(_ p: UnsafeMutablePointer<Float>, _ j: Int) -> SIMD8<Float> {
            UnsafeRawPointer(p + j).loadUnaligned(as: SIMD8<Float>.self)
        }
        let threshold = SIMD8<Float>(repeating: iouThreshold), zero = SIMD8<Float>(repeating: 0)
        for i in order {
            let b = boxes[i], area = SIMD8<Float>(repeating: b.area)
            let bx0 = SIMD8<Float>(repeating: b.xmin), by0 = SIMD8<Float>(repeating: b.ymin)
            let bx1 = SIMD8<Float>(repeating: b.xmax), by1 = SIMD8<Float>(repeating: b.ymax)
            var suppressed = false
            var j = 0
            while j < kept.count {
                let w = load(x1, j).replacing(with: bx1, where: bx1 .< load(x1, j)) - load(x0, j).replacing(with: bx0, where: bx0 .> load(x0, j))
                let h = load(y1, j).replacing(with: by1, where: by1 .< load(y1, j)) - load(y0, j).replacing(with: by0, where: by0 .> load(y0, j))
                let inter = w * h
                let union = load(areas, j) + area - inter
                let overlaps = (w .> zero) .& (h .> zero) .& (union .> zero) .& (inter / union .> threshold)
                if any(overlaps) { suppressed = true; break }
                j &+= lanes
            }
            if suppressed { continue }
            let k = kept.count
            (x0[k], y0[k], x1[k], y1[k], areas[k]) = (b.xmin, b.ymin, b.xmax, b.ymax, b.area)
            kept.append(i)
        }
    }
    return kept
}

/// How raw SSD predictions become detections (ssd_keras's decode_detections): per class, anchors with confidence
/// above `confidenceThreshold` are decoded (and clipped to the image), suppressed by greedy NMS at `iouThreshold`, and
/// the best `topK` over all classes are kept. `globalNMS` suppresses across classes instead (one NMS over every class's candidates, faster
/// and what a user wants when classes should not overlap).
public struct DetectionDecoding: Codable, Equatable, Sendable {
    public var confidenceThreshold: Float = 0.5
    public var iouThreshold: Float = 0.45
    public var topK = 200
    public var globalNMS = false
    public init(confidenceThreshold: Float = 0.5, iouThreshold: Float = 0.45, topK: Int = 200, globalNMS: Bool = false) {
        self.confidenceThreshold = confidenceThreshold
        self.iouThreshold = iouThreshold
        self.topK = topK
        self.globalNMS = globalNMS
    }
    /// The settings for evaluation (mAP needs the low-confidence tail).
    public static let evaluation = DetectionDecoding(confidenceThreshold: 0.01)
    /// The settings for pictures.
    public static let display = DetectionDecoding(confidenceThreshold: 0.5)

    /// Detections of one image from its class probabilities [A x C] (column 0 background) and offsets [A x 4].
    public func decode(probabilities: UnsafePointer<Float>, offsets: UnsafePointer<Float>, classCount c: Int,
                       encoder: SSDBoxEncoder) -> [DetectedBox] {
        var perClass: [[DetectedBox]] = Array(repeating: [], count: c)
        let (width, height) = (Float(encoder.config.imageWidth), Float(encoder.config.imageHeight))
        for j in 0..<encoder.anchorCount {
            let row = probabilities + j * c
            var decoded: BoxCorners?
            for k in 1..<c where row[k] > confidenceThreshold {
                if decoded == nil {
                    // Clipped to the image; a box with nothing left inside it (or a degenerate decoding) is no detection.
                    var b = encoder.decode(offsets + 4 * j, anchor: j)
                    b = BoxCorners(xmin: max(0, b.xmin), ymin: max(0, b.ymin), xmax: min(width, b.xmax), ymax: min(height, b.ymax))
                    guard b.xmax - b.xmin > 1e-3, b.ymax - b.ymin > 1e-3, b.xmin.isFinite, b.ymin.isFinite, b.xmax.isFinite, b.ymax.isFinite else { break }
                    decoded = b
                }
                perClass[k].append(DetectedBox(box: decoded!, classID: k, score: row[k]))
            }
        }
        return suppress(perClass)
    }

    /// One image's candidates, grouped by class, after NMS (per class, or over all of them with `globalNMS`): the best
    /// `topK` by score, ties in candidate order. Every head's decoding ends here.
    public func suppress(_ perClass: [[DetectedBox]]) -> [DetectedBox] {
        var candidates: [DetectedBox] = []
        if globalNMS {
            let all = perClass.flatMap { $0 }
            candidates = nonMaximumSuppression(all.map(\.box), scores: all.map(\.score), iouThreshold: iouThreshold).map { all[$0] }
        } else {
            for list in perClass where !list.isEmpty {
                candidates += nonMaximumSuppression(list.map(\.box), scores: list.map(\.score), iouThreshold: iouThreshold).map { list[$0] }
            }
        }
        let ranked = candidates.enumerated().sorted { $0.element.score > $1.element.score || ($0.element.score == $1.element.score && $0.offset < $1.offset) }
        return ranked.prefix(topK).map(\.element)
    }
}
