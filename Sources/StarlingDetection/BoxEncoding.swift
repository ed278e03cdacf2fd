import StarlingNN

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// What each anchor should predict for one image: a class (0 background, `neutral` for anchors that count as
/// neither) and, for positives, the encoded offsets to its matched ground truth.
public struct AnchorTargets: Sendable {
    public static let neutral: Int32 = -1
    public var classes: [Int32]
    /// [A x 4] encoded (cx, cy, w, h) offsets; zero for non-positives.
    public var offsets: [Float]
}

/// The SSD target encoder, with ssd_keras's SSDInputEncoder matching rules:
/// 1. bipartite: each ground-truth box takes the anchor it overlaps most, greedily by the highest remaining IoU;
/// 2. every other anchor whose best IoU with a ground truth is >= `positiveIoU` (0.5) is matched to that box;
/// 3. unmatched anchors whose best IoU is >= `negativeIoULimit` (0.3) are neutral, the rest background.
/// Anchors matched to a `difficult` box (KITTI DontCare, VOC difficult, COCO crowd) are neutral too.
/// Offsets: ((cx - cxa) / wa / v0, (cy - cya) / ha / v1, ln(w / wa) / v2, ln(h / ha) / v3) in normalised coordinates.
public struct SSDBoxEncoder: Sendable {
    public let config: AnchorConfig
    public let anchors: [Float]
    public var positiveIoU: Float = 0.5
    public var negativeIoULimit: Float = 0.3

    public init(config: AnchorConfig) {
        self.config = config
        anchors = config.anchors()
    }

    public var anchorCount: Int { anchors.count / 4 }

    /// Anchor a as a corner box in the units of the anchors (normalised or pixels).
    @inline(__always) func anchorCorners(_ a: Int) -> BoxCorners {
        let cx = anchors[4 * a], cy = anchors[4 * a + 1], w = anchors[4 * a + 2], h = anchors[4 * a + 3]
        return BoxCorners(xmin: cx - w / 2, ymin: cy - h / 2, xmax: cx + w / 2, ymax: cy + h / 2)
    }

    /// A pixel box in the anchors' units.
    func toAnchorUnits(_ b: BoxCorners) -> BoxCorners {
        guard config.normalize else { return b }
        let sx = Float(config.imageWidth), sy = Float(config.imageHeight)
        return BoxCorners(xmin: b.xmin / sx, ymin: b.ymin / sy, xmax: b.xmax / sx, ymax: b.ymax / sy)
    }

    public func encode(_ objects: [Object]) -> AnchorTargets {
        let a = anchorCount, g = objects.count
        var classes = [Int32](repeating: 0, count: a)
        var offsets = [Float](repeating: 0, count: 4 * a)
        guard g > 0 else { return AnchorTargets(classes: classes, offsets: offsets) }
        let gt = objects.map { toAnchorUnits($0.box) }
        // IoU matrix [g x a].
        var iou = [Float](repeating: 0, count: g * a)
        for j in 0..<a {
            let anchor = anchorCorners(j)
            for i in 0..<g { iou[i * a + j] = StarlingNN.iou(gt[i], anchor) }
        }
        var match = [Int](repeating: -1, count: a)
        // 1. Bipartite: repeatedly the largest remaining entry; its row and column leave the matrix. Each row keeps
        // its best free column, recomputed only when that column is taken, so this is O(g a) rather than O(g^2 a).
        var rowDone = [Bool](repeating: false, count: g), columnTaken = [Bool](repeating: false, count: a)
        func bestColumn(_ i: Int) -> Int {
            var best: Float = -1, bj = -1
            for j in 0..<a where !columnTaken[j] && iou[i * a + j] > best { best = iou[i * a + j]; bj = j }
            return bj
        }
        var rowBest = (0..<g).map(bestColumn)
        for _ in 0..<min(g, a) {
            var bi = -1
            for i in 0..<g where !rowDone[i] && rowBest[i] >= 0 {
                if bi < 0 || iou[i * a + rowBest[i]] > iou[bi * a + rowBest[bi]] { bi = i }
            }
            guard bi >= 0 else { break }
            let bj = rowBest[bi]
            match[bj] = bi
            rowDone[bi] = true
            columnTaken[bj] = true
            for i in 0..<g where !rowDone[i] && rowBest[i] == bj { rowBest[i] = bestColumn(i) }
        }
        // 2. and 3. Per anchor: its best ground truth.
        for j in 0..<a where match[j] < 0 {
            var best: Float = 0, bi = -1
            for i in 0..<g where iou[i * a + j] > best { best = iou[i * a + j]; bi = i }
            if best >= positiveIoU { match[j] = bi } else if best >= negativeIoULimit { classes[j] = AnchorTargets.neutral }
        }
        let v = config.variances.map(Float.init)
        for j in 0..<a {
            let i = match[j]
            guard i >= 0 else { continue }
            if objects[i].difficult { classes[j] = AnchorTargets.neutral; continue }
            classes[j] = Int32(objects[i].classID)
            let b = gt[i]
            let (cx, cy, w, h) = ((b.xmin + b.xmax) / 2, (b.ymin + b.ymax) / 2, b.width, b.height)
            let (ax, ay, aw, ah) = (anchors[4 * j], anchors[4 * j + 1], anchors[4 * j + 2], anchors[4 * j + 3])
            offsets[4 * j] = (cx - ax) / aw / v[0]
            offsets[4 * j + 1] = (cy - ay) / ah / v[1]
            offsets[4 * j + 2] = logf(w / aw) / v[2]
            offsets[4 * j + 3] = logf(h / ah) / v[3]
        }
        return AnchorTargets(classes: classes, offsets: offsets)
    }

    /// Inverts the encoding: anchor `j`'s offsets to a box in pixels of the model's input image.
    @inline(__always)
    public func decode(_ o: UnsafePointer<Float>, anchor j: Int) -> BoxCorners {
        let v = config.variances
        let (ax, ay, aw, ah) = (anchors[4 * j], anchors[4 * j + 1], anchors[4 * j + 2], anchors[4 * j + 3])
        let cx = o[0] * Float(v[0]) * aw + ax, cy = o[1] * Float(v[1]) * ah + ay
        let w = expf(o[2] * Float(v[2])) * aw, h = expf(o[3] * Float(v[3])) * ah
        let (sx, sy): (Float, Float) = config.normalize ? (Float(config.imageWidth), Float(config.imageHeight)) : (1, 1)
        return BoxCorners(xmin: (cx - w / 2) * sx, ymin: (cy - h / 2) * sy, xmax: (cx + w / 2) * sx, ymax: (cy + h / 2) * sy)
    }
}
