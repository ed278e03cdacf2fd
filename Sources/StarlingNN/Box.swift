/// An axis-aligned box in **corner form, absolute pixels**: `xmin, ymin, xmax, ymax` in continuous image
/// coordinates, x to the right and y down, origin at the top-left corner of the image. A box covering the
/// whole of a W x H image is (0, 0, W, H); its width is `xmax - xmin` and its area `width * height`. The one box
/// type of Starling: datasets, matching, decoding and NMS use it in Float (`BoxCorners`), the evaluators in Double
/// (`BoundingBox`), so that IoUs equal to a threshold (0.5, 0.75) are decided as the reference tools decide them in
/// float64.
///
/// Other conventions are converted at the boundary, never inside:
/// - COCO JSON stores `[x, y, w, h]` (top-left corner, width, height) in the same continuous pixels:
///   `init(cocoX:y:width:height:)` and `cocoXYWH` convert.
/// - The PASCAL VOC devkit treats its integer coordinates as *inclusive pixel indices* and measures a box as
///   `xmax - xmin + 1` wide. That is the `pixelInclusive` option of `iou(_:_:pixelInclusive:)` and of
///   `VOCEvaluator`, off by default and used only when asked for, to reproduce devkit numbers on VOC's own
///   integer annotations. COCO never adds 1.
public struct Box<Scalar: BinaryFloatingPoint & Sendable>: Equatable, Hashable, Sendable where Scalar: Hashable {
    public var xmin: Scalar
    public var ymin: Scalar
    public var xmax: Scalar
    public var ymax: Scalar

    @inlinable
    public init(xmin: Scalar, ymin: Scalar, xmax: Scalar, ymax: Scalar) {
        self.xmin = xmin
        self.ymin = ymin
        self.xmax = xmax
        self.ymax = ymax
    }

    /// From COCO's `[x, y, w, h]`.
    @inlinable public init(cocoX x: Scalar, y: Scalar, width: Scalar, height: Scalar) {
        self.init(xmin: x, ymin: y, xmax: x + width, ymax: y + height)
    }

    /// COCO's `[x, y, w, h]`.
    @inlinable public var cocoXYWH: [Scalar] { [xmin, ymin, xmax - xmin, ymax - ymin] }

    @inlinable public var width: Scalar { xmax - xmin }
    @inlinable public var height: Scalar { ymax - ymin }
    /// `width * height` (continuous convention); 0 for an empty box.
    @inlinable public var area: Scalar { max(0, width) * max(0, height) }

    /// All four coordinates finite, and `xmax > xmin`, `ymax > ymin` (a box of zero width is empty).
    @inlinable public var isValid: Bool {
        xmin.isFinite && ymin.isFinite && xmax.isFinite && ymax.isFinite && xmax > xmin && ymax > ymin
    }
}

/// Model-side boxes: datasets, anchors, matching, decoding, NMS.
public typealias BoxCorners = Box<Float>
/// Evaluator-side boxes, in float64 as the reference tools compute.
public typealias BoundingBox = Box<Double>

extension Box where Scalar == Float {
    /// The same box in Double, for the evaluators.
    @inlinable public var inDouble: BoundingBox { BoundingBox(xmin: Double(xmin), ymin: Double(ymin), xmax: Double(xmax), ymax: Double(ymax)) }
}

/// Intersection over union of two boxes: |a ∩ b| / |a ∪ b|, 0 for disjoint or touching boxes and for empty ones.
///
/// `pixelInclusive` measures every side as `max - min + 1` (the VOC devkit's convention for integer pixel
/// boxes): [0, 0, 9, 9] is then 10 x 10 pixels. Off by default.
@inlinable
public func iou<Scalar>(_ a: Box<Scalar>, _ b: Box<Scalar>, pixelInclusive: Bool = false) -> Scalar {
    let one: Scalar = pixelInclusive ? 1 : 0
    let iw = min(a.xmax, b.xmax) - max(a.xmin, b.xmin) + one
    let ih = min(a.ymax, b.ymax) - max(a.ymin, b.ymin) + one
    if iw <= 0 || ih <= 0 { return 0 }
    let intersection = iw * ih
    let union = (a.xmax - a.xmin + one) * (a.ymax - a.ymin + one) + (b.xmax - b.xmin + one) * (b.ymax - b.ymin + one) - intersection
    return union > 0 ? intersection / union : 0
}
