import Foundation
import StarlingNN

/// R-CNN's box regression targets (R. Girshick et al., CVPR 2014, appendix C; Fast R-CNN's L_loc) between a
/// reference box (a proposal, an anchor) P and a box G, scaled by weights (torchvision's `BoxCoder`):
/// dx = wx (Gx - Px) / Pw, dy = wy (Gy - Py) / Ph, dw = ww ln(Gw / Pw), dh = wh ln(Gh / Ph), with centres and sizes in
/// Starling's continuous pixels (width = xmax - xmin, no + 1). (10, 10, 5, 5), Faster R-CNN's RoI head weights, scale
/// the targets to about unit variance; the RPN uses (1, 1, 1, 1). Decoding clamps dw / ww and dh / wh at ln(1000 / 16)
/// so that no box grows more than 62.5-fold.
public struct BoxCoder: Sendable {
    public var weights: (x: Float, y: Float, w: Float, h: Float)
    public static let scaleClamp = Float(Foundation.log(1000.0 / 16))

    public init(weights: (x: Float, y: Float, w: Float, h: Float) = (10, 10, 5, 5)) { self.weights = weights }

    /// The targets (dx, dy, dw, dh) that take `reference` to `box`; both must have positive sides.
    public func encode(_ box: BoxCorners, reference: BoxCorners) -> SIMD4<Float> {
        let (pw, ph) = (reference.width, reference.height)
        let (px, py) = (reference.xmin + 0.5 * pw, reference.ymin + 0.5 * ph)
        let (gw, gh) = (box.width, box.height)
        let (gx, gy) = (box.xmin + 0.5 * gw, box.ymin + 0.5 * gh)
        return SIMD4(weights.x * (gx - px) / pw, weights.y * (gy - py) / ph,
                     weights.w * Foundation.log(gw / pw), weights.h * Foundation.log(gh / ph))
    }

    /// The box that `deltas` make of `reference`.
    public func decode(_ deltas: SIMD4<Float>, reference: BoxCorners) -> BoxCorners {
        let (pw, ph) = (reference.width, reference.height)
        let (px, py) = (reference.xmin + 0.5 * pw, reference.ymin + 0.5 * ph)
        let dw = min(deltas[2] / weights.w, Self.scaleClamp), dh = min(deltas[3] / weights.h, Self.scaleClamp)
        let (x, y) = (px + deltas[0] / weights.x * pw, py + deltas[1] / weights.y * ph)
        let (w, h) = (Foundation.exp(dw) * pw, Foundation.exp(dh) * ph)
        return BoxCorners(xmin: x - 0.5 * w, ymin: y - 0.5 * h, xmax: x + 0.5 * w, ymax: y + 0.5 * h)
    }
}
