import StarlingCore
import StarlingNN

/// Mask R-CNN's mask branch (K. He, G. Gkioxari, P. Dollár, R. Girshick, "Mask R-CNN", ICCV 2017, section 3 and figure 4,
/// right, the FPN head): each RoI's features, RoIAligned to 14 x 14, pass four 3x3 convolutions with ReLU, a 2x2
/// transposed convolution of stride 2 with ReLU, and a 1x1 convolution to one 28 x 28 mask logit map per class
/// (channel 0, background, is never read, as in torchvision). Written once over `NetworkValue`.
///
/// Its loss (`loss`) is the paper's L_mask: the per-pixel sigmoid cross-entropy of the RoI's own class's mask only
/// ("decouples mask and class prediction"), averaged over the pixels and the positive RoIs of the global batch. Its
/// targets (`MaskTargets`) and the paste into the image at inference (`MaskTargets.paste`) are alongside.
public struct MaskHead: Sendable {
    public static let pooledSize = 14
    public static let maskSize = 28
    public let classCount: Int
    let convs: [Conv2D]
    let upsample: Conv2DTranspose
    let logits: Conv2D

    /// `channels` of the pooled features, `width` channels in the head (256 in the paper), `classCount` with background.
    public init(_ store: ParameterStore, channels: Int, width: Int, classCount: Int) {
        precondition(channels > 0 && width > 0 && classCount >= 2, "mask head of \(channels) channels, width \(width), \(classCount) classes")
        self.classCount = classCount
        var inputs = channels, c: [Conv2D] = []
        for k in 1...4 {
            c.append(Conv2D(store, name: "mask_fcn\(k)", inputs: inputs, outputs: width, initializer: .heNormal(fanIn: inputs * 9)))
            inputs = width
        }
        convs = c
        upsample = Conv2DTranspose(store, name: "conv5_mask", inputs: width, outputs: width, kernelSize: (2, 2), stride: (2, 2))
        logits = Conv2D(store, name: "mask_fcn_logits", inputs: width, outputs: classCount, kernelSize: (1, 1))
    }

    /// Mask logits [R, classCount, 28, 28] of pooled RoI features [R, channels, 14, 14].
    public func callAsFunction<Value: NetworkValue>(_ pooled: Value) -> Value {
        var h = pooled
        for conv in convs { h = conv(h).relu() }
        return logits(upsample(h).relu())
    }

    /// L_mask of this rank's positive RoIs: their classes and 28 x 28 targets (`MaskTargets.targets`), divided by the
    /// positive RoIs of the global batch (summed through `crossReplica`) times the 784 pixels, and multiplied by the
    /// ranks, whose gradients the trainer averages: N ranks give one process's gradient. Nil when this rank has no
    /// positive RoI (after taking part in the sum); the caller then adds a zero that reaches the head's parameters.
    public func loss(maskLogits: Tensor, classes: [Int32], targets: Tensor, crossReplica: CrossReplica) -> Tensor? {
        var count = [Double(classes.count)]
        count.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
        guard !classes.isEmpty, count[0] > 0 else { return nil }
        let pixels = Float(Self.maskSize * Self.maskSize)
        return maskLogits.selectedChannelBCESum(classes: classes, targets: targets) * (Float(crossReplica.size) / (Float(count[0]) * pixels))
    }
}

/// Mask R-CNN's mask targets and the way back into the image.
public enum MaskTargets {
    /// For each positive RoI, the mask of the instance it regresses to (`instances[r]` indexes `masks`, each H x W,
    /// row-major, nonzero inside) cut by the RoI and resampled to `size` x `size` by RoIAlign (continuous coordinates,
    /// the `aligned` half-pixel convention, adaptive sampling), then binarised at 0.5 — Detectron2's
    /// `ROIMasks.crop_and_resize` and the paper's "m x m binary mask". [R, size, size], 0 or 1.
    public static func targets(masks: [[UInt8]], height: Int, width: Int, rois: [BoxCorners], instances: [Int], size: Int = MaskHead.maskSize) -> Tensor {
        precondition(rois.count == instances.count, "\(rois.count) RoIs, \(instances.count) instances")
        guard !rois.isEmpty else { return Tensor(zeros: [0, size, size]) }
        // Only the instances some RoI uses, stacked as [M, 1, H, W].
        var slot: [Int: Int] = [:], used: [Int] = []
        for i in instances where slot[i] == nil {
            precondition(masks.indices.contains(i) && masks[i].count == height * width, "instance \(i) of \(masks.count) masks of \(height)x\(width)")
            slot[i] = used.count
            used.append(i)
        }
        let plane = height * width
        let stacked = Tensor(zeros: [used.count, 1, height, width])
        for (k, i) in used.enumerated() {
            masks[i].withUnsafeBufferPointer { m in
                let out = stacked.data + k * plane
                for p in 0..<plane { out[p] = m[p] != 0 ? 1 : 0 }
            }
        }
        var rows: [Float] = []
        for (r, box) in rois.enumerated() { rows += [Float(slot[instances[r]]!), box.xmin, box.ymin, box.xmax, box.ymax] }
        let sampled = GradMode.disabled {
            stacked.roiAlign(rois: Tensor(shape: [rois.count, 5], values: rows), outputHeight: size, outputWidth: size, spatialScale: 1,
                             samplingRatio: 0, aligned: true)
        }
        let out = Tensor(zeros: [rois.count, size, size])
        for j in 0..<out.count { out.data[j] = sampled.data[j] >= 0.5 ? 1 : 0 }
        return out
    }

    /// A predicted `size` x `size` mask of probabilities for `box`, pasted into an image of `height` x `width`: each
    /// pixel whose centre lies in the box reads the mask bilinearly at the matching point (the mask's cells spread
    /// evenly over the box, edges clamped), and is 1 where that reaches `threshold` (0.5, the paper's). Pixels outside
    /// the box are 0. Row-major H x W.
    public static func paste(_ probabilities: UnsafePointer<Float>, size: Int = MaskHead.maskSize, box: BoxCorners, height: Int, width: Int,
                             threshold: Float = 0.5) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: height * width)
        let (bw, bh) = (box.xmax - box.xmin, box.ymax - box.ymin)
        guard bw > 0, bh > 0 else { return out }
        // Pixels whose centres x + 0.5 lie in [xmin, xmax).
        let x0 = max(0, Int((box.xmin - 0.5).rounded(.up))), x1 = min(width, Int((box.xmax - 0.5).rounded(.up)))
        let y0 = max(0, Int((box.ymin - 0.5).rounded(.up))), y1 = min(height, Int((box.ymax - 0.5).rounded(.up)))
        guard x0 < x1, y0 < y1 else { return out }
        let last = Float(size - 1)
        out.withUnsafeMutableBufferPointer { o in
            for y in y0..<y1 {
                let v = min(max((Float(y) + 0.5 - box.ymin) / bh * Float(size) - 0.5, 0), last)
                let (r0, fy) = (Int(v), v - Float(Int(v)))
                let r1 = min(r0 + 1, size - 1)
                for x in x0..<x1 {
                    let u = min(max((Float(x) + 0.5 - box.xmin) / bw * Float(size) - 0.5, 0), last)
                    let (c0, fx) = (Int(u), u - Float(Int(u)))
                    let c1 = min(c0 + 1, size - 1)
                    let top = probabilities[r0 * size + c0] * (1 - fx) + probabilities[r0 * size + c1] * fx
                    let bottom = probabilities[r1 * size + c0] * (1 - fx) + probabilities[r1 * size + c1] * fx
                    if top * (1 - fy) + bottom * fy >= threshold { o[y * width + x] = 1 }
                }
            }
        }
        return out
    }
}
