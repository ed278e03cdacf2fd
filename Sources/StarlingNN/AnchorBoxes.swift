#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// SSD's default boxes (W. Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016), laid out as ssd_keras's
/// AnchorBoxes layer lays them out, so that weights and encoded targets interchange with it.
///
/// For predictor layer k on an fh x fw feature map: cell centres at ((j + offset) * stepX, (i + offset) * stepY) with
/// step = image size / feature size unless given; per cell one box per aspect ratio ar, of width s_k * size * sqrt(ar)
/// and height s_k * size / sqrt(ar) with size = min(image height, image width), plus for ar = 1 a second box of side
/// sqrt(s_k * s_k+1) * size. Order: row i, column j, then the boxes in aspect-ratio order (the extra ar-1 box right
/// after the first) - the order of a [H, W, boxes * depth] prediction reshaped to rows.
/// Coordinates are centroids (cx, cy, w, h), normalised by the image width and height when `normalize` is set.
public struct AnchorConfig: Codable, Equatable, Sendable {
    public var imageHeight: Int
    public var imageWidth: Int
    /// (height, width) of each predictor layer's feature map.
    public var featureMapSizes: [[Int]]
    /// One more scale than predictor layers: layer k uses scales[k] and, for its second ar-1 box, scales[k + 1].
    public var scales: [Double]
    public var aspectRatios: [[Double]]
    public var twoBoxesForAspectRatioOne = true
    /// Optional (stepY, stepX) per layer; nil: image size / feature map size.
    public var steps: [[Double]]?
    public var offset = 0.5
    public var variances: [Double] = [1, 1, 1, 1]
    public var clip = false
    public var normalize = true

    public init(imageHeight: Int, imageWidth: Int, featureMapSizes: [[Int]], scales: [Double], aspectRatios: [[Double]]) {
        self.imageHeight = imageHeight
        self.imageWidth = imageWidth
        self.featureMapSizes = featureMapSizes
        self.scales = scales
        self.aspectRatios = aspectRatios
    }

    public func boxesPerCell(layer k: Int) -> Int {
        aspectRatios[k].count + (twoBoxesForAspectRatioOne && aspectRatios[k].contains(1) ? 1 : 0)
    }

    public var anchorCount: Int {
        featureMapSizes.indices.reduce(0) { $0 + featureMapSizes[$1][0] * featureMapSizes[$1][1] * boxesPerCell(layer: $1) }
    }

    /// All anchors, [A x 4] centroids in layer, row, column, box order.
    public func anchors() -> [Float] {
        var out: [Float] = []
        out.reserveCapacity(anchorCount * 4)
        let size = Double(min(imageHeight, imageWidth))
        for (k, fm) in featureMapSizes.enumerated() {
            var shapes: [(w: Double, h: Double)] = []
            for ar in aspectRatios[k] {
                if ar == 1 {
                    shapes.append((scales[k] * size, scales[k] * size))
                    if twoBoxesForAspectRatioOne {
                        let side = (scales[k] * scales[k + 1]).squareRoot() * size
                        shapes.append((side, side))
                    }
                } else {
                    shapes.append((scales[k] * size * ar.squareRoot(), scales[k] * size / ar.squareRoot()))
                }
            }
            let stepY = steps?[k][0] ?? Double(imageHeight) / Double(fm[0])
            let stepX = steps?[k][1] ?? Double(imageWidth) / Double(fm[1])
            for i in 0..<fm[0] {
                for j in 0..<fm[1] {
                    let cy = (Double(i) + offset) * stepY, cx = (Double(j) + offset) * stepX
                    for s in shapes {
                        var box = (cx: cx, cy: cy, w: s.w, h: s.h)
                        if clip {
                            let x0 = max(0, cx - s.w / 2), x1 = min(Double(imageWidth), cx + s.w / 2)
                            let y0 = max(0, cy - s.h / 2), y1 = min(Double(imageHeight), cy + s.h / 2)
                            box = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
                        }
                        let (sx, sy) = normalize ? (Double(imageWidth), Double(imageHeight)) : (1, 1)
                        out += [Float(box.cx / sx), Float(box.cy / sy), Float(box.w / sx), Float(box.h / sy)]
                    }
                }
            }
        }
        return out
    }
}
