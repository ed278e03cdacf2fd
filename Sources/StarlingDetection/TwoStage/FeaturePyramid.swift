import Foundation
import StarlingCore
import StarlingNN

/// Mask R-CNN's backbone: a ResNet (K. He et al., "Deep residual learning for image recognition", CVPR 2016,
/// table 1: ResNet-50's bottleneck stages of 3, 4, 6, 3 blocks) under a feature pyramid network (T.-Y. Lin et al.,
/// "Feature pyramid networks for object detection", CVPR 2017, section 3): C2-C5, the stages' outputs at strides 4, 8,
/// 16 and 32, each reduced to `pyramidChannels` by a 1x1 lateral convolution; from the top, each level adds the one
/// above upsampled 2x (nearest), and a 3x3 convolution smooths it: P2-P5; P6 subsamples P5 by 2 (for the RPN's largest
/// anchors). Written once over `NetworkValue`.
///
/// ResNet's details as torchvision's `resnet50` (v1.5: a block's stride on its 3x3 convolution; a projection shortcut,
/// 1x1 with batch norm, where the shape changes): stem 7x7/2 with 64 filters, batch norm, ReLU, 3x3/2 max pooling.
/// `width` multiplies every channel count (stem, stages, pyramid), `depth` every stage's blocks (rounded, at least
/// one): ResNet-50 and FPN's 256 channels at 1 and 1, sizes that train on a CPU at 1/8 and 1/3. Batch norm trains (no
/// ImageNet weights to freeze it at); batch norm over small batches is what `--sync-bn` is for. Inputs must be
/// multiples of 32 pixels on each side, so that every level is exactly twice the one above.
public struct ResNetFPN: Sendable {
    public static let stageBlocks = [3, 4, 6, 3]
    public static let stageWidths = [64, 128, 256, 512]
    /// The strides of P2 ... P6.
    public static let strides = [4, 8, 16, 32, 64]
    public let pyramidChannels: Int

    struct Bottleneck: Sendable {
        let reduce: Conv2D, spatial: Conv2D, expand: Conv2D
        let reduceNorm: BatchNormalization, spatialNorm: BatchNormalization, expandNorm: BatchNormalization
        let projection: (conv: Conv2D, norm: BatchNormalization)?
    }

    let stem: Conv2D, stemNorm: BatchNormalization
    let stages: [[Bottleneck]]
    let laterals: [Conv2D], smoothing: [Conv2D]

    public init(_ store: ParameterStore, buffers: ParameterStore, width: Double = 1, depth: Double = 1) {
        precondition(width > 0 && depth > 0, "ResNet-FPN width \(width), depth \(depth)")
        func scaled(_ c: Int) -> Int { max(1, Int((Double(c) * width).rounded())) }
        let stemWidth = scaled(64)
        stem = Conv2D(store, name: "conv1", inputs: 3, outputs: stemWidth, kernelSize: (7, 7), stride: (2, 2), initializer: .heNormal(fanIn: 3 * 49))
        stemNorm = BatchNormalization(store, buffers: buffers, name: "bn1", channels: stemWidth)
        var inputs = stemWidth
        var stages: [[Bottleneck]] = []
        for (s, blocks) in Self.stageBlocks.enumerated() {
            let inner = scaled(Self.stageWidths[s]), outer = 4 * inner
            let count = max(1, Int((Double(blocks) * depth).rounded()))
            var stage: [Bottleneck] = []
            for b in 0..<count {
                let name = "layer\(s + 1).\(b)"
                let stride = b == 0 && s > 0 ? 2 : 1
                let projection = b == 0
                    ? (Conv2D(store, name: "\(name).downsample", inputs: inputs, outputs: outer, kernelSize: (1, 1), stride: (stride, stride),
                              initializer: .heNormal(fanIn: inputs)),
                       BatchNormalization(store, buffers: buffers, name: "\(name).downsample_bn", channels: outer))
                    : nil
                stage.append(Bottleneck(
                    reduce: Conv2D(store, name: "\(name).conv1", inputs: inputs, outputs: inner, kernelSize: (1, 1), initializer: .heNormal(fanIn: inputs)),
                    spatial: Conv2D(store, name: "\(name).conv2", inputs: inner, outputs: inner, stride: (stride, stride), initializer: .heNormal(fanIn: inner * 9)),
                    expand: Conv2D(store, name: "\(name).conv3", inputs: inner, outputs: outer, kernelSize: (1, 1), initializer: .heNormal(fanIn: inner)),
                    reduceNorm: BatchNormalization(store, buffers: buffers, name: "\(name).bn1", channels: inner),
                    spatialNorm: BatchNormalization(store, buffers: buffers, name: "\(name).bn2", channels: inner),
                    expandNorm: BatchNormalization(store, buffers: buffers, name: "\(name).bn3", channels: outer),
                    projection: projection))
                inputs = outer
            }
            stages.append(stage)
        }
        self.stages = stages
        let d = scaled(256)
        pyramidChannels = d
        laterals = (0..<4).map { s in
            let c = 4 * scaled(Self.stageWidths[s])
            return Conv2D(store, name: "fpn_inner\(s + 2)", inputs: c, outputs: d, kernelSize: (1, 1), initializer: .heNormal(fanIn: c))
        }
        smoothing = (0..<4).map { s in Conv2D(store, name: "fpn_layer\(s + 2)", inputs: d, outputs: d, initializer: .heNormal(fanIn: d * 9)) }
    }

    /// The sizes of P2 ... P6 for an input of `height` x `width` (multiples of 32): P6 subsamples P5 by 2, rounding up.
    public static func levelSizes(height: Int, width: Int) -> [(height: Int, width: Int)] {
        strides.prefix(4).map { (height / $0, width / $0) } + [((height / 32 + 1) / 2, (width / 32 + 1) / 2)]
    }

    /// P2, P3, P4, P5, P6 of `images` (NCHW, already normalised), at strides 4 ... 64.
    public func callAsFunction<Value: NetworkValue>(_ images: Value, training: Bool, crossReplicaSum sum: CrossReplicaSum?) -> [Value] {
        precondition(images.shape.count == 4 && images.shape[2] % 32 == 0 && images.shape[3] % 32 == 0,
                     "ResNet-FPN takes sides that are multiples of 32, not \(images.shape)")
        var h = stemNorm(stem(images), training: training, crossReplicaSum: sum).relu()
        h = h.maxPool2d(kernel: (3, 3), stride: (2, 2), padding: .same)
        var c: [Value] = []
        for stage in stages {
            for block in stage {
                var y = block.reduceNorm(block.reduce(h), training: training, crossReplicaSum: sum).relu()
                y = block.spatialNorm(block.spatial(y), training: training, crossReplicaSum: sum).relu()
                y = block.expandNorm(block.expand(y), training: training, crossReplicaSum: sum)
                let shortcut = block.projection.map { $0.norm($0.conv(h), training: training, crossReplicaSum: sum) } ?? h
                h = (y + shortcut).relu()
            }
            c.append(h)
        }
        // Top-down: P5 from C5, then each level its lateral plus the level above, doubled.
        var merged: [Value] = [laterals[3](c[3])]
        for s in stride(from: 2, through: 0, by: -1) {
            merged.insert(laterals[s](c[s]) + merged[0].upsampleNearest(scale: (2, 2)), at: 0)
        }
        let p = zip(smoothing, merged).map { $0($1) }
        return p + [p[3].maxPool2d(kernel: (1, 1), stride: (2, 2), padding: .valid)]
    }
}

/// FPN's RoI pooling over the pyramid (Lin et al., equation 1; torchvision's `MultiScaleRoIAlign`): a RoI of w x h
/// input pixels is pooled from P_k, k = floor(4 + log2(sqrt(w h) / 224)) clamped to 2 ... 5 (a 224 x 224 RoI, ImageNet's
/// size, reads P4), by RoIAlign at that level's scale (1 / 2^k).
///
/// The pooled rows come level by level (`order`), so the caller permutes its RoIs' labels and targets the same way
/// and no scatter back is needed in training; `restore` puts per-RoI results back into the callers' order.
public struct MultiScaleRoIAlign: Sendable {
    public var outputSize: Int
    public var samplingRatio: Int
    public static let levels = 2...5

    public init(outputSize: Int, samplingRatio: Int = 2) {
        self.outputSize = outputSize
        self.samplingRatio = samplingRatio
    }

    /// The level of a RoI (equation 1, with torchvision's epsilon against log of 0).
    public static func level(of box: BoxCorners) -> Int {
        let side = (max(box.width, 0) * max(box.height, 0)).squareRoot()
        let k = Foundation.floor(4 + Foundation.log2(Double(side) / 224 + 1e-6))
        return min(max(Int(k), levels.lowerBound), levels.upperBound)
    }

    /// The RoIs' indices (rows of [R, 5] with image index first) sorted by level, stable within a level.
    public static func order(_ rois: [(image: Int, box: BoxCorners)]) -> [Int] {
        rois.indices.sorted { (level(of: rois[$0].box), $0) < (level(of: rois[$1].box), $1) }
    }

    /// Pooled features [R, C, size, size] of `rois` from `pyramid` (P2 ... P5, more are ignored), one row per RoI in
    /// the order given, which must be `order`'s (level by level).
    public func callAsFunction(_ pyramid: [Tensor], rois: [(image: Int, box: BoxCorners)]) -> Tensor {
        precondition(pyramid.count >= 4, "multi-scale RoIAlign over \(pyramid.count) levels")
        var pooled: [Tensor] = []
        var start = 0
        while start < rois.count {
            let k = Self.level(of: rois[start].box)
            var end = start
            while end < rois.count && Self.level(of: rois[end].box) == k { end += 1 }
            precondition(rois[end...].allSatisfy { Self.level(of: $0.box) > k }, "RoIs not in level order")
            let rows = rois[start..<end].flatMap { [Float($0.image), $0.box.xmin, $0.box.ymin, $0.box.xmax, $0.box.ymax] }
            pooled.append(pyramid[k - 2].roiAlign(rois: Tensor(shape: [end - start, 5], values: rows), outputHeight: outputSize, outputWidth: outputSize,
                                                  spatialScale: 1 / Float(1 << k), samplingRatio: samplingRatio, aligned: true))
            start = end
        }
        guard !pooled.isEmpty else { return Tensor(zeros: [0, pyramid[0].shape[1], outputSize, outputSize]) }
        return pooled.count == 1 ? pooled[0] : Tensor.concat(pooled, axis: 0)
    }

    /// Rows of `values` (one per RoI in `order`'s order) back in the RoIs' original order.
    public static func restore<T>(_ values: [T], order: [Int]) -> [T] {
        var out = values
        for (position, original) in order.enumerated() { out[original] = values[position] }
        return out
    }
}
