import StarlingNN

/// A region proposal network's anchors (S. Ren et al., "Faster R-CNN", NeurIPS 2015, section 3.1.1), with
/// torchvision's `AnchorGenerator` semantics (torchvision/models/detection/anchor_utils.py), so that its anchors, and
/// weights trained against them, carry over:
///
/// - per level, one base anchor per (aspect ratio, size), ratio-major: for ratio r = h / w and size s, width
///   s / sqrt(r) and height s sqrt(r), centred on the origin, its corners rounded half to even as `torch.round` does
///   (so a base anchor's sides are whole pixels and it may be off centre by half a pixel);
/// - shifted to every cell of the level's feature map by (x stride, y stride), cell (0, 0) at the origin (not at the
///   cell's centre, torchvision's choice: the regression learns the half-stride offset);
/// - ordered location by location (row-major over the map), the base anchors in order at each.
///
/// Several levels (a feature pyramid: Mask R-CNN's FPN) are concatenated level by level; Faster R-CNN uses one.
/// SSD's default boxes (`AnchorBoxes` in StarlingNN) are another scheme (normalised centres, cell centres).
public struct AnchorGenerator: Codable, Equatable, Sendable {
    public struct Level: Codable, Equatable, Sendable {
        /// Anchor sizes in input pixels (the square root of the anchor's area).
        public var sizes: [Float]
        /// Height / width.
        public var aspectRatios: [Float]
        /// Input pixels per feature cell.
        public var stride: Int

        public init(sizes: [Float], aspectRatios: [Float] = [0.5, 1, 2], stride: Int) {
            precondition(!sizes.isEmpty && !aspectRatios.isEmpty && stride > 0
                         && sizes.allSatisfy { $0 > 0 } && aspectRatios.allSatisfy { $0 > 0 }, "anchor level \(sizes) x \(aspectRatios) at stride \(stride)")
            self.sizes = sizes
            self.aspectRatios = aspectRatios
            self.stride = stride
        }

        public var anchorsPerLocation: Int { sizes.count * aspectRatios.count }

        /// The anchors at the origin, ratio-major.
        public var baseAnchors: [BoxCorners] {
            aspectRatios.flatMap { ratio -> [BoxCorners] in
                let heightRatio = ratio.squareRoot(), widthRatio = 1 / heightRatio
                return sizes.map { size in
                    let halfWidth = (widthRatio * size / 2).rounded(.toNearestOrEven)
                    let halfHeight = (heightRatio * size / 2).rounded(.toNearestOrEven)
                    return BoxCorners(xmin: -halfWidth, ymin: -halfHeight, xmax: halfWidth, ymax: halfHeight)
                }
            }
        }
    }

    public var levels: [Level]

    public init(levels: [Level]) {
        precondition(!levels.isEmpty, "an anchor generator without levels")
        self.levels = levels
    }

    /// The paper's one level: three sizes (128, 256, 512 on its ~600-pixel images) x ratios 1:2, 1:1, 2:1.
    public static func singleLevel(sizes: [Float], stride: Int) -> AnchorGenerator {
        AnchorGenerator(levels: [Level(sizes: sizes, stride: stride)])
    }

    /// Level `k`'s anchors over a `height` x `width` feature map.
    public func anchors(level k: Int, height: Int, width: Int) -> [BoxCorners] {
        let level = levels[k], base = level.baseAnchors, stride = Float(level.stride)
        var out: [BoxCorners] = []
        out.reserveCapacity(height * width * base.count)
        for y in 0..<height {
            for x in 0..<width {
                let (sx, sy) = (Float(x) * stride, Float(y) * stride)
                for b in base { out.append(BoxCorners(xmin: b.xmin + sx, ymin: b.ymin + sy, xmax: b.xmax + sx, ymax: b.ymax + sy)) }
            }
        }
        return out
    }

    /// Every level's anchors over its feature map's size, level after level.
    public func anchors(featureSizes: [(height: Int, width: Int)]) -> [BoxCorners] {
        precondition(featureSizes.count == levels.count, "\(featureSizes.count) feature maps for \(levels.count) anchor levels")
        return featureSizes.indices.flatMap { anchors(level: $0, height: featureSizes[$0].height, width: featureSizes[$0].width) }
    }
}
