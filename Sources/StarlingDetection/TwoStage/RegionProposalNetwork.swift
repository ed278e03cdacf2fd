import Foundation
import StarlingCore
import StarlingNN

// The region proposal network of S. Ren, K. He, R. Girshick, J. Sun, "Faster R-CNN: Towards Real-Time Object Detection
// with Region Proposal Networks", NeurIPS 2015, section 3.1, in torchvision's manner
// (torchvision/models/detection/rpn.py): a head over each feature level, targets from a matcher and a balanced sampler,
// the loss over the sampled anchors, and the proposal layer. Levels are lists throughout so that a feature pyramid
// (Mask R-CNN's FPN) runs the same parts over several maps.

/// The RPN's head (section 3.1, figure 3): a 3x3 convolution with ReLU over the feature map, then two sibling 1x1
/// convolutions, one objectness logit per anchor (`cls_logits`, sigmoid: torchvision's single-logit form of the paper's
/// two-class softmax) and four box deltas per anchor (`bbox_pred`). The same weights run over every level, as in
/// torchvision. Initialised as the paper and torchvision do: zero-mean Gaussians of standard deviation 0.01, zero biases.
///
/// Outputs per level: objectness [N, A, H, W] and deltas [N, 4A, H, W], channel 4a + k being coordinate k
/// (dx, dy, dw, dh) of anchor a, the anchors of a location in `AnchorGenerator`'s order.
public struct RPNHead: Sendable {
    public let anchorsPerLocation: Int
    let conv: Conv2D, objectness: Conv2D, deltas: Conv2D

    public init(_ store: ParameterStore, channels: Int, anchorsPerLocation a: Int, prefix: String = "rpn") {
        precondition(channels > 0 && a > 0, "RPN head over \(channels) channels with \(a) anchors a location")
        anchorsPerLocation = a
        let gaussian = Initializer.normal(mean: 0, std: 0.01)
        conv = Conv2D(store, name: "\(prefix)_conv", inputs: channels, outputs: channels, kernelSize: (3, 3), initializer: gaussian)
        objectness = Conv2D(store, name: "\(prefix)_cls_logits", inputs: channels, outputs: a, kernelSize: (1, 1), initializer: gaussian)
        deltas = Conv2D(store, name: "\(prefix)_bbox_pred", inputs: channels, outputs: 4 * a, kernelSize: (1, 1), initializer: gaussian)
    }

    public func callAsFunction<Value: NetworkValue>(_ features: [Value]) -> [(objectness: Value, deltas: Value)] {
        features.map { map in
            let t = conv(map).relu()
            return (objectness(t), deltas(t))
        }
    }
}

/// One image's sampled anchors: indices into the anchors of every level concatenated (`AnchorGenerator`'s order), the
/// positives' regression targets in `positives`' order.
public struct RPNSample: Equatable, Sendable {
    public var positives: [Int]
    public var negatives: [Int]
    public var targets: [SIMD4<Float>]
    public var count: Int { positives.count + negatives.count }
    public init(positives: [Int], negatives: [Int], targets: [SIMD4<Float>]) {
        self.positives = positives
        self.negatives = negatives
        self.targets = targets
    }
}

/// The RPN's training labels (section 3.1.2): an anchor is positive at IoU >= 0.7 with a ground-truth box or when it is
/// a box's best anchor (ties included: `Matcher.allowLowQualityMatches`), negative under 0.3 with every box, otherwise
/// ignored; `BalancedSampler` then draws `batchSize` (256) anchors an image, at most half of them positive, from the
/// sample's own stream (`purpose`), so that one rank or N draw the same anchors.
///
/// Anchors crossing the image's border are kept (torchvision's choice; the paper ignores them in training). On the
/// small images a CPU trains on, the paper's rule would leave the largest anchors almost never sampled, and proposals
/// are clipped to the image anyway. Difficult boxes are no positives, and anchors overlapping one by IoU >= 0.7 are
/// ignored rather than negative (as `FastRCNNTargets` treats RoIs).
public struct RPNTargets: Sendable {
    public var matcher = Matcher(high: 0.7, low: 0.3, allowLowQualityMatches: true)
    public var sampler: BalancedSampler
    public var coder = BoxCoder(weights: (1, 1, 1, 1))
    /// Separates the RPN's draw from the RoI head's (`BalancedSampler.purpose`) on the same sample's stream.
    public static let purpose: UInt64 = 0x5250_4E53

    public init(batchSize: Int = 256, positiveFraction: Float = 0.5) {
        sampler = BalancedSampler(size: batchSize, positiveFraction: positiveFraction)
    }

    public func sample(anchors: [BoxCorners], objects: [Object], using rng: inout RandomGenerator) -> RPNSample {
        let truths = objects.filter { !$0.difficult }
        let difficult = objects.filter(\.difficult).map(\.box)
        let matches = matcher(truths: truths.map(\.box), predictions: anchors)
        let labels: [BalancedSampler.Label] = anchors.indices.map { i in
            switch matches[i] {
            case .matched: return .positive
            case .between: return .ignored
            case .below: return difficult.contains(where: { iou($0, anchors[i]) >= matcher.high }) ? .ignored : .negative
            }
        }
        let (positives, negatives) = sampler.sample(labels, using: &rng)
        let targets = positives.map { i -> SIMD4<Float> in
            guard case .matched(let g) = matches[i] else { preconditionFailure("a positive anchor without a box") }
            return coder.encode(truths[g].box, reference: anchors[i])
        }
        return RPNSample(positives: positives, negatives: negatives, targets: targets)
    }

    /// Image `r` of `batch`, drawn from its stream.
    public func sample(anchors: [BoxCorners], objects: [Object], batch: Batch, sample r: Int, training: Bool) -> RPNSample {
        var rng = batch.randomStream(sample: r, purpose: Self.purpose, training: training)
        return sample(anchors: anchors, objects: objects, using: &rng)
    }
}

extension Tensor {
    /// The RPN's loss (equation 1 as torchvision computes it): binary cross-entropy of the sampled anchors' objectness
    /// logits (positives towards 1, negatives towards 0) plus the smooth L1 with `beta` (1/9) of the positives' deltas,
    /// summed over their four coordinates, both divided by the number of sampled anchors over the global batch. That
    /// count is summed over ranks (`crossReplica`) and each rank's share scaled by the ranks, so that the averaged
    /// gradient of N ranks is one process's at the same global batch (images sample different anchor counts).
    ///
    /// `objectness[l]` [N, A, H, W] and `deltas[l]` [N, 4A, H, W] per level (`RPNHead`'s outputs); `samples[n]` indexes
    /// image n's anchors over the levels in order. The smooth L1 is 0.5 d^2 / beta for |d| < beta, |d| - 0.5 beta above.
    public static func rpnLoss(objectness: [Tensor], deltas: [Tensor], samples: [RPNSample], beta: Float = 1.0 / 9,
                               crossReplica: CrossReplica = .single) -> Tensor {
        precondition(!objectness.isEmpty && objectness.count == deltas.count, "RPN loss: \(objectness.count) objectness maps, \(deltas.count) delta maps")
        let images = objectness[0].shape[0]
        precondition(samples.count == images, "RPN loss: samples for \(samples.count) images, outputs for \(images)")
        // Where each level's anchors start in the concatenated index, and its map's sizes.
        var levels: [(first: Int, a: Int, plane: Int)] = []
        var total = 0
        for (o, d) in zip(objectness, deltas) {
            precondition(o.rank == 4 && d.shape == [images, 4 * o.shape[1], o.shape[2], o.shape[3]] && o.shape[0] == images,
                         "RPN loss: objectness \(o.shape) and deltas \(d.shape) do not pair up")
            levels.append((total, o.shape[1], o.shape[2] * o.shape[3]))
            total += o.shape[1] * o.shape[2] * o.shape[3]
        }
        /// (level, offset of the anchor's logit in its level's objectness tensor for image n, plane size)
        func locate(_ index: Int, image n: Int) -> (level: Int, at: Int, plane: Int) {
            precondition(index >= 0 && index < total, "RPN loss: anchor \(index) of \(total)")
            let l = levels.lastIndex { $0.first <= index }!
            let (first, a, plane) = levels[l]
            let p = index - first, location = p / a, anchor = p % a
            return (l, (n * a + anchor) * plane + location, plane)
        }
        var counts = [Double(samples.reduce(0) { $0 + $1.count })]
        counts.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
        let scale = Float(crossReplica.size) / Float(max(1, counts[0]))
        // The gradient of the summed loss, filled while it is summed; scaled by `scale` in backward.
        let objectnessGradients = objectness.map { FloatStorage(count: $0.count) }
        let deltaGradients = deltas.map { FloatStorage(count: $0.count) }
        let logits = objectness.map(\.data), predicted = deltas.map(\.data)
        let gLogits = objectnessGradients.map(\.pointer), gDeltas = deltaGradients.map(\.pointer)
        var sum = 0.0
        for (n, sample) in samples.enumerated() {
            precondition(sample.targets.count == sample.positives.count, "RPN sample: \(sample.targets.count) targets for \(sample.positives.count) positives")
            for (index, target) in [(sample.positives, Float(1)), (sample.negatives, Float(0))].flatMap({ list, t in list.map { ($0, t) } }) {
                let (l, at, _) = locate(index, image: n)
                let z = logits[l][at]
                sum += Double(max(z, 0) - z * target + log1pf(expf(-abs(z))))
                gLogits[l][at] += VectorMath.sigmoid(z) - target
            }
            for (index, target) in zip(sample.positives, sample.targets) {
                let (l, at, plane) = locate(index, image: n)
                // Logit at (n a + anchor) plane + location; delta k at ((n a + anchor) 4 + k) plane + location.
                let location = at % plane, row = at / plane
                for k in 0..<4 {
                    let offset = (row * 4 + k) * plane + location
                    let d = predicted[l][offset] - target[k], m = abs(d)
                    sum += Double(m < beta ? 0.5 * d * d / beta : m - 0.5 * beta)
                    gDeltas[l][offset] += m < beta ? d / beta : (d > 0 ? 1 : -1)
                }
            }
        }
        let inputs = objectness + deltas
        let out = Tensor.result(shape: [1], inputs: inputs) { out in
            let seed = out.grad[0] * scale
            for (tensor, gradient) in zip(inputs, objectnessGradients + deltaGradients) where tensor.requiresGrad {
                let dx = tensor.grad, g = gradient.pointer
                for i in 0..<tensor.count { dx[i] += seed * g[i] }
            }
        }
        out.data[0] = Float(sum) * scale
        return out
    }
}

/// A proposal and its objectness probability.
public struct ScoredBox: Equatable, Sendable {
    public var box: BoxCorners
    public var score: Float
    public init(box: BoxCorners, score: Float) { self.box = box; self.score = score }
}

/// The proposal layer (section 3.1 and torchvision's `RegionProposalNetwork.filter_proposals`): per image, each level's
/// `preNMSTopN` anchors of highest objectness are decoded (`BoxCoder` (1, 1, 1, 1)), clipped to the image, those with a
/// side under `minimumSize` pixels dropped, suppressed level by level at IoU `nmsThreshold` (0.7), and the best
/// `postNMSTopN` over the levels kept, best first. No gradient flows through the proposals: the RoI head treats them as
/// constants (approximate joint training, section 3.2).
///
/// torchvision's defaults for one level are 2,000 / 2,000 in training and 1,000 / 1,000 in testing; `FasterRCNN` sets
/// its own (smaller, for small images on a CPU).
public struct ProposalLayer: Codable, Equatable, Sendable {
    public var preNMSTopN: Int
    public var postNMSTopN: Int
    public var nmsThreshold: Float
    public var minimumSize: Float

    public init(preNMSTopN: Int, postNMSTopN: Int, nmsThreshold: Float = 0.7, minimumSize: Float = 1e-3) {
        precondition(preNMSTopN > 0 && postNMSTopN > 0, "proposal layer top n \(preNMSTopN) / \(postNMSTopN)")
        self.preNMSTopN = preNMSTopN
        self.postNMSTopN = postNMSTopN
        self.nmsThreshold = nmsThreshold
        self.minimumSize = minimumSize
    }

    /// One image's proposals from its levels' logits and deltas (per level: anchor i's logit and deltas, anchors in
    /// `AnchorGenerator`'s order).
    public func proposals(levels: [(logits: [Float], deltas: [SIMD4<Float>], anchors: [BoxCorners])],
                          imageHeight: Int, imageWidth: Int) -> [ScoredBox] {
        let coder = BoxCoder(weights: (1, 1, 1, 1))
        let (width, height) = (Float(imageWidth), Float(imageHeight))
        var kept: [ScoredBox] = []
        for level in levels {
            precondition(level.logits.count == level.anchors.count && level.deltas.count == level.anchors.count, "proposal level sizes")
            // Highest logit first, ties in anchor order (a stable top-k).
            let order = level.logits.indices.sorted { level.logits[$0] > level.logits[$1] || (level.logits[$0] == level.logits[$1] && $0 < $1) }
            var candidates: [ScoredBox] = []
            for i in order.prefix(preNMSTopN) {
                var b = coder.decode(level.deltas[i], reference: level.anchors[i])
                b = BoxCorners(xmin: min(max(b.xmin, 0), width), ymin: min(max(b.ymin, 0), height),
                               xmax: min(max(b.xmax, 0), width), ymax: min(max(b.ymax, 0), height))
                guard b.xmin.isFinite && b.ymin.isFinite && b.xmax.isFinite && b.ymax.isFinite,
                      b.width >= minimumSize, b.height >= minimumSize else { continue }
                candidates.append(ScoredBox(box: b, score: VectorMath.sigmoid(level.logits[i])))
            }
            kept += nonMaximumSuppression(candidates.map(\.box), scores: candidates.map(\.score), iouThreshold: nmsThreshold).map { candidates[$0] }
        }
        let ranked = kept.indices.sorted { kept[$0].score > kept[$1].score || (kept[$0].score == kept[$1].score && $0 < $1) }
        return ranked.prefix(postNMSTopN).map { kept[$0] }
    }

    /// Every image's proposals from the RPN's outputs (`RPNHead`) and each level's anchors.
    public func proposals(objectness: [Tensor], deltas: [Tensor], anchors: [[BoxCorners]], imageHeight: Int, imageWidth: Int) -> [[ScoredBox]] {
        precondition(objectness.count == deltas.count && deltas.count == anchors.count, "proposal layer: levels do not pair up")
        let images = objectness.first?.shape[0] ?? 0
        return (0..<images).map { n in
            let levels = objectness.indices.map { l -> (logits: [Float], deltas: [SIMD4<Float>], anchors: [BoxCorners]) in
                let (a, plane) = (objectness[l].shape[1], objectness[l].shape[2] * objectness[l].shape[3])
                precondition(anchors[l].count == a * plane && deltas[l].shape == [images, 4 * a, objectness[l].shape[2], objectness[l].shape[3]],
                             "proposal layer: level \(l) has \(anchors[l].count) anchors for objectness \(objectness[l].shape), deltas \(deltas[l].shape)")
                let o = objectness[l].data + n * a * plane, d = deltas[l].data + n * 4 * a * plane
                var logits = [Float](repeating: 0, count: a * plane)
                var boxDeltas = [SIMD4<Float>](repeating: .zero, count: a * plane)
                for anchor in 0..<a {
                    for location in 0..<plane {
                        let i = location * a + anchor
                        logits[i] = o[anchor * plane + location]
                        boxDeltas[i] = SIMD4(d[(anchor * 4) * plane + location], d[(anchor * 4 + 1) * plane + location],
                                             d[(anchor * 4 + 2) * plane + location], d[(anchor * 4 + 3) * plane + location])
                    }
                }
                return (logits, boxDeltas, anchors[l])
            }
            return proposals(levels: levels, imageHeight: imageHeight, imageWidth: imageWidth)
        }
    }
}
