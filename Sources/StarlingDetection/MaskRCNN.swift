import Foundation
import StarlingCore
import StarlingNN

/// Mask R-CNN (K. He, G. Gkioxari, P. Dollár, R. Girshick, "Mask R-CNN", ICCV 2017): Faster R-CNN with a feature
/// pyramid, RoIAlign in place of RoI pooling, and a mask branch beside the box head, trained on instance data
/// (`starling data segmentation --format pennfudan`: boxes and one mask per object).
///
/// - Backbone: `ResNetFPN` (ResNet-50's stages under an FPN, P2-P6), `width` and `depth` its multipliers.
/// - RPN over the pyramid (`RPNHead` shared by the levels, `AnchorGenerator` with one size a level, `anchor_size` on
///   P2 doubling to P6, ratios 1:2, 1:1, 2:1): 256 anchors an image at 1:1, NMS 0.7 per level, the best
///   `rpn_post_nms_train` / `rpn_post_nms_test` over the levels.
/// - Box head (FPN's): `MultiScaleRoIAlign` 7 x 7 from the level of each RoI's size, two fully connected layers of
///   `hidden` units (fc6, fc7), K + 1 class logits and class-specific deltas (`BoxCoder` (10, 10, 5, 5));
///   `rois_per_image` RoIs at `foreground_fraction` from the proposals plus the ground truths (`FastRCNNTargets`).
/// - Mask head (`MaskHead`): 14 x 14 RoIAlign, four 3x3 convolutions, a 2x upsampling, a 28 x 28 map per class; its
///   loss only on the positive RoIs, only on their class's map; the target is the RoI's matched instance mask cut
///   and resampled (`MaskTargets`).
/// - Loss: L = L_rpn + L_cls + L_box + L_mask, each normalised by its sampled anchors, RoIs or positive RoIs over the
///   global batch (N ranks give one process's gradient).
/// - Inference: the box head on the RPN's proposals, per-class NMS, then the mask head on the kept boxes, each mask
///   pasted into the image at 0.5 (`MaskTargets.paste`).
///
/// Deviations for CPUs: no ImageNet weights (batch norm trains; `--sync-bn` over ranks), narrow and shallow by default,
/// images at the data's size, which must be a multiple of 32 on each side.
public final class MaskRCNN: Model, CrossReplicaAware {
    public static let family = "mask-rcnn"
    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false
    public let classCount: Int
    let backbone: ResNetFPN
    let rpn: RPNHead
    public let anchorGenerator: AnchorGenerator
    /// Each level's anchors over its map (fixed by the input size), P2 first.
    public let anchors: [[BoxCorners]]
    public let rpnTargets: RPNTargets
    public let trainingProposals: ProposalLayer, testingProposals: ProposalLayer
    public var sampling: FastRCNNTargets
    let boxPool = MultiScaleRoIAlign(outputSize: 7)
    let maskPool = MultiScaleRoIAlign(outputSize: MaskHead.pooledSize)
    let fc6: Dense, fc7: Dense, classScore: Dense, boxDeltas: Dense
    let maskHead: MaskHead
    /// Separates the RoI sampling's stream from other uses of a sample's (`Batch.randomStream`).
    public static let samplingPurpose: UInt64 = 0x4D41_534B

    public static let defaults: [String: Double] = [
        "width": 0.125, "depth": 0.34, "hidden": 256, "mask_width": 64, "rois_per_image": 128, "foreground_fraction": 0.25, "anchor_size": 32,
        "rpn_batch": 256, "rpn_positive_fraction": 0.5, "rpn_nms": 0.7,
        "rpn_pre_nms_train": 2000, "rpn_post_nms_train": 2000, "rpn_pre_nms_test": 1000, "rpn_post_nms_test": 1000,
    ]

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let names = config.classNames, names.count >= 2 else {
            throw ModelError.inputShape(family: config.family, expected: [3, 320, 416], got: config.inputShape,
                                        source: "model configuration (needs colour images and class names)")
        }
        func option(_ name: String) -> Double { config.option(name, default: Self.defaults[name] ?? 0) }
        let (height, width) = (config.inputShape[1], config.inputShape[2])
        guard height % 32 == 0, width % 32 == 0, height >= 64, width >= 64 else {
            throw ModelError.configuration(family: config.family, problem: "images of \(height)x\(width): each side must be a multiple of 32, at least 64")
        }
        let counts = ["hidden", "mask_width", "rois_per_image", "rpn_batch", "rpn_pre_nms_train", "rpn_post_nms_train", "rpn_pre_nms_test", "rpn_post_nms_test"]
        let fractions = ["foreground_fraction", "rpn_positive_fraction", "rpn_nms"]
        guard option("width") > 0, option("depth") > 0, option("anchor_size") > 0, counts.allSatisfy({ option($0) >= 1 }),
              fractions.allSatisfy({ (0...1).contains(option($0)) }) else {
            throw ModelError.configuration(family: config.family, problem: "width, depth and anchor_size must be positive, \(counts.joined(separator: ", ")) at least 1, \(fractions.joined(separator: ", ")) in [0, 1]")
        }
        self.config = config
        classCount = names.count
        backbone = ResNetFPN(parameters, buffers: buffersStore, width: option("width"), depth: option("depth"))
        let d = backbone.pyramidChannels
        let size = Float(option("anchor_size"))
        let generator = AnchorGenerator(levels: ResNetFPN.strides.enumerated().map { l, stride in
            AnchorGenerator.Level(sizes: [size * Float(1 << l)], stride: stride)
        })
        anchorGenerator = generator
        anchors = ResNetFPN.levelSizes(height: height, width: width).enumerated().map { l, size in
            generator.anchors(level: l, height: size.height, width: size.width)
        }
        rpn = RPNHead(parameters, channels: d, anchorsPerLocation: anchorGenerator.levels[0].anchorsPerLocation)
        rpnTargets = RPNTargets(batchSize: Int(option("rpn_batch")), positiveFraction: Float(option("rpn_positive_fraction")))
        let nms = Float(option("rpn_nms"))
        trainingProposals = ProposalLayer(preNMSTopN: Int(option("rpn_pre_nms_train")), postNMSTopN: Int(option("rpn_post_nms_train")), nmsThreshold: nms)
        testingProposals = ProposalLayer(preNMSTopN: Int(option("rpn_pre_nms_test")), postNMSTopN: Int(option("rpn_post_nms_test")), nmsThreshold: nms)
        sampling = FastRCNNTargets(roisPerImage: Int(option("rois_per_image")), foregroundFraction: Float(option("foreground_fraction")))
        let hidden = Int(option("hidden"))
        fc6 = Dense(parameters, name: "fc6", inputs: d * 49, outputs: hidden)
        fc7 = Dense(parameters, name: "fc7", inputs: hidden, outputs: hidden)
        classScore = Dense(parameters, name: "cls_score", inputs: hidden, outputs: classCount)
        boxDeltas = Dense(parameters, name: "bbox_pred", inputs: hidden, outputs: 4 * classCount)
        maskHead = MaskHead(parameters, channels: d, width: Int(option("mask_width")), classCount: classCount)
        parameters.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffersStore.allocate(rng: &unused)
    }

    /// The family's configuration for an instance dataset (its size, which must be a multiple of 32, and classes);
    /// nil: Penn-Fudan pedestrians at 320 x 416.
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        var (height, width, names) = (320, 416, ["background", "pedestrian"])
        if let dataset {
            guard dataset.sampleShape.count == 3, dataset.sampleShape[0] == 3, let classes = dataset.classNames, classes.count >= 2 else {
                throw DataError(file: dataset.path, message: "not an instance dataset of colour images with classes (samples \(dataset.sampleShape))")
            }
            (height, width, names) = (dataset.sampleShape[1], dataset.sampleShape[2], classes)
            guard height % 32 == 0, width % 32 == 0, height >= 64, width >= 64 else {
                throw DataError(file: dataset.path, message: "images of \(height)x\(width) do not fit mask-rcnn, whose sides are multiples of 32 (at least 64): import them at such a size")
            }
        }
        return ModelConfig(family: family, inputShape: [3, height, width], options: defaults, classNames: names)
    }

    // MARK: The network

    /// The pyramid P2-P6 of `images` (0...255) and the RPN's objectness and deltas on each level: the one pass over the
    /// whole image, on Tensors (`LayoutTensor`) and ONNX values alike.
    public func network<Value: NetworkValue>(_ images: Value, training: Bool) -> (pyramid: [Value], rpn: [(objectness: Value, deltas: Value)]) {
        let sum: CrossReplicaSum? = synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil
        let pyramid = backbone(images.affine(scale: 1 / 127.5, shift: -1), training: training, crossReplicaSum: sum)
        return (pyramid, rpn(pyramid))
    }

    /// Class logits and deltas of RoIs pooled 7 x 7 (level order).
    func boxHead(_ pooled: Tensor) -> (logits: Tensor, deltas: Tensor) {
        let h = fc7(fc6(pooled.flattened()).relu()).relu()
        return (classScore(h), boxDeltas(h))
    }

    struct Pass {
        var pyramid: [Tensor]
        var objectness: [Tensor], deltas: [Tensor]
        var proposals: [[BoxCorners]]
    }

    /// The pyramid, the RPN's outputs and its proposals (training's or testing's top n); `batchStatistics` normalises
    /// with the batch's own statistics (training) rather than the moving ones.
    func pass(_ batch: Batch, training: Bool, batchStatistics: Bool? = nil) -> Pass {
        let (pyramid, outputs) = network(LayoutTensor(batch.images), training: batchStatistics ?? training)
        let objectness = outputs.map(\.objectness.tensor), deltas = outputs.map(\.deltas.tensor)
        let layer = training ? trainingProposals : testingProposals
        let boxes = layer.proposals(objectness: objectness, deltas: deltas, anchors: anchors,
                                    imageHeight: batch.images.shape[2], imageWidth: batch.images.shape[3]).map { $0.map(\.box) }
        return Pass(pyramid: pyramid.map(\.tensor), objectness: objectness, deltas: deltas, proposals: boxes)
    }

    // MARK: Training

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        guard let objects = batch.objects, let masks = batch.segmentation?.instanceMasks else {
            preconditionFailure("\(config.family) needs the annotated objects and their masks in its batches")
        }
        let p = pass(batch, training: training)
        let allAnchors = anchors.flatMap { $0 }
        let rpnSamples = objects.indices.map { k in rpnTargets.sample(anchors: allAnchors, objects: objects[k], batch: batch, sample: k, training: training) }
        let rpnLoss = Tensor.rpnLoss(objectness: p.objectness, deltas: p.deltas, samples: rpnSamples, crossReplica: crossReplica)

        // Each image's RoI minibatch, then all RoIs level by level.
        var rois: [(image: Int, box: BoxCorners)] = [], labels: [Int32] = [], targets: [SIMD4<Float>] = [], instances: [Int] = []
        for k in objects.indices {
            var rng = batch.randomStream(sample: k, purpose: Self.samplingPurpose, training: training)
            let sample = sampling.sample(proposals: p.proposals[k], objects: objects[k], using: &rng)
            // The instance each positive regresses to: the matcher's choice among the image's countable objects.
            let countable = objects[k].indices.filter { !objects[k][$0].difficult }
            let matches = sampling.matcher(truths: countable.map { objects[k][$0].box }, predictions: sample.rois)
            for (r, box) in sample.rois.enumerated() {
                rois.append((k, box))
                labels.append(sample.labels[r])
                targets.append(sample.targets[r])
                if sample.labels[r] > 0, case .matched(let g) = matches[r] { instances.append(countable[g]) } else { instances.append(-1) }
            }
        }
        var counts = [Double(rois.count)]
        counts.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
        guard !rois.isEmpty else { return rpnLoss + p.pyramid[0].sum() * 0 }
        let order = MultiScaleRoIAlign.order(rois)
        let ordered = order.map { rois[$0] }
        let (logits, deltas) = boxHead(boxPool(p.pyramid, rois: ordered))
        let scale = Float(rois.count) * Float(crossReplica.size) / Float(counts[0])
        let boxLoss = Tensor.fastRCNNLoss(classLogits: logits, boxDeltas: deltas, labels: order.map { labels[$0] }, targets: order.map { targets[$0] }) * scale

        // The mask branch on the positives, in the same level order.
        let positives = order.filter { labels[$0] > 0 && instances[$0] >= 0 }
        let (h, w) = (batch.images.shape[2], batch.images.shape[3])
        let plane = MaskHead.maskSize * MaskHead.maskSize
        let maskTargets = Tensor(zeros: [positives.count, MaskHead.maskSize, MaskHead.maskSize])
        for k in objects.indices {
            let mine = positives.indices.filter { rois[positives[$0]].image == k }
            guard !mine.isEmpty else { continue }
            let cut = MaskTargets.targets(masks: masks[k], height: h, width: w, rois: mine.map { rois[positives[$0]].box },
                                          instances: mine.map { instances[positives[$0]] })
            for (j, row) in mine.enumerated() {
                (maskTargets.data + row * plane).update(from: cut.data + j * plane, count: plane)
            }
        }
        let maskLogits = positives.isEmpty ? nil : maskHead(LayoutTensor(maskPool(p.pyramid, rois: positives.map { rois[$0] }))).tensor
        let maskLoss = maskHead.loss(maskLogits: maskLogits ?? Tensor(zeros: [0, classCount, MaskHead.maskSize, MaskHead.maskSize]),
                                     classes: positives.map { labels[$0] }, targets: maskTargets, crossReplica: crossReplica)
        return maskLoss.map { rpnLoss + boxLoss + $0 } ?? rpnLoss + boxLoss
    }

    // MARK: Inference

    /// One detected instance: its box, class and score, and its mask in the image (row-major H x W, 1 inside).
    public struct Instance: Sendable {
        public var detection: DetectedBox
        public var mask: [UInt8]
    }

    /// Instances per image of `batch.images`, from the RPN's test proposals. `batchStatistics`: batch norm with the
    /// batch's own statistics, for a model whose moving averages have not settled (a few steps of overfitting).
    public func detectInstances(_ batch: Batch, decoding: DetectionDecoding, batchStatistics: Bool = false) -> [[Instance]] {
        GradMode.disabled {
            let p = pass(batch, training: false, batchStatistics: batchStatistics)
            let (h, w) = (batch.images.shape[2], batch.images.shape[3])
            let rois = p.proposals.enumerated().flatMap { k, boxes in boxes.map { (image: k, box: $0) } }
            guard !rois.isEmpty else { return p.proposals.map { _ in [] } }
            let order = MultiScaleRoIAlign.order(rois)
            let (logits, deltas) = boxHead(boxPool(p.pyramid, rois: order.map { rois[$0] }))
            let probabilities = logits.softmax(axis: 1)
            // Rows back in proposal order, image by image, for Fast R-CNN's decoding.
            let c = classCount
            var rowOf = [Int](repeating: 0, count: rois.count)
            for (row, r) in order.enumerated() { rowOf[r] = row }
            var first = 0
            var detections: [[DetectedBox]] = []
            for boxes in p.proposals {
                var probs = [Float](repeating: 0, count: boxes.count * c), dels = [Float](repeating: 0, count: boxes.count * 4 * c)
                for i in boxes.indices {
                    let row = rowOf[first + i]
                    for j in 0..<c { probs[i * c + j] = probabilities.data[row * c + j] }
                    for j in 0..<(4 * c) { dels[i * 4 * c + j] = deltas.data[row * 4 * c + j] }
                }
                first += boxes.count
                detections.append(boxes.isEmpty ? [] : decoding.decodeFastRCNN(probabilities: probs, deltas: dels, rois: boxes, classCount: c, imageHeight: h, imageWidth: w))
            }
            // The mask head on the kept boxes, level by level, each mask pasted at its box.
            let kept = detections.enumerated().flatMap { k, list in list.map { (image: k, box: $0.box) } }
            guard !kept.isEmpty else { return detections.map { _ in [] } }
            let maskOrder = MultiScaleRoIAlign.order(kept)
            let maskProbabilities = maskHead(LayoutTensor(maskPool(p.pyramid, rois: maskOrder.map { kept[$0] }))).tensor.sigmoid()
            let plane = MaskHead.maskSize * MaskHead.maskSize
            var pasted = [[UInt8]](repeating: [], count: kept.count)
            let classes = detections.flatMap { $0.map(\.classID) }
            for (row, r) in maskOrder.enumerated() {
                let channel = maskProbabilities.data + (row * c + classes[r]) * plane
                pasted[r] = MaskTargets.paste(channel, box: kept[r].box, height: h, width: w)
            }
            var next = 0
            return detections.map { list in list.map { d in
                defer { next += 1 }
                return Instance(detection: d, mask: pasted[next])
            } }
        }
    }
}
