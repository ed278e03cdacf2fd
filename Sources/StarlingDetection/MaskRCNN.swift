import Foundation
import StarlingCore
import StarlingNN
import StarlingONNX
import ONNXProto

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

    /// Class logits and deltas of RoIs pooled 7 x 7, on Tensors and ONNX values alike.
    func boxHead<Value: NetworkValue>(_ pooled: Value) -> (logits: Value, deltas: Value) {
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
        let (h, w) = (batch.images.shape[2], batch.images.shape[3])
        return detectionsAndMasks(batch, decoding: decoding, batchStatistics: batchStatistics).map { list in
            list.map { d, probabilities in
                Instance(detection: d, mask: probabilities.withUnsafeBufferPointer { MaskTargets.paste($0.baseAddress!, box: d.box, height: h, width: w) })
            }
        }
    }

    /// Detections per image of `batch.images` and, for each, the 28 x 28 mask probabilities of its class (row-major,
    /// before the paste): what the exported graph outputs.
    public func detectionsAndMasks(_ batch: Batch, decoding: DetectionDecoding, batchStatistics: Bool = false) -> [[(detection: DetectedBox, mask: [Float])]] {
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
            // The mask head on the kept boxes, level by level, each its class's map.
            let kept = detections.enumerated().flatMap { k, list in list.map { (image: k, box: $0.box) } }
            guard !kept.isEmpty else { return detections.map { _ in [] } }
            let maskOrder = MultiScaleRoIAlign.order(kept)
            let maskProbabilities = maskHead(LayoutTensor(maskPool(p.pyramid, rois: maskOrder.map { kept[$0] }))).tensor.sigmoid()
            let plane = MaskHead.maskSize * MaskHead.maskSize
            var masks = [[Float]](repeating: [], count: kept.count)
            let classes = detections.flatMap { $0.map(\.classID) }
            for (row, r) in maskOrder.enumerated() {
                masks[r] = Array(UnsafeBufferPointer(start: maskProbabilities.data + (row * c + classes[r]) * plane, count: plane))
            }
            var next = 0
            return detections.map { list in list.map { d in
                defer { next += 1 }
                return (d, masks[next])
            } }
        }
    }
}

extension MaskRCNN: ONNXExportable {
    /// The decoding written into the exported graph: `DetectionDecoding.evaluation` (class probability above 0.01,
    /// per-class NMS at 0.45, the best 200 an image), which keeps what `eval` scores; a user filters higher scores.
    public static let onnxDecoding = DetectionDecoding.evaluation

    /// The whole of `detectionsAndMasks` from `images` alone: the one pass of `network` (backbone, pyramid, RPN), each
    /// level's proposal candidates (`ProposalLayer.onnxCandidates`) suppressed level by level (one NonMaxSuppression
    /// whose classes are the levels) and the best `rpn_post_nms_test` an image over the levels (ScatterND of the
    /// survivors' scores, TopK); FPN's box head on `MultiScaleRoIAlign` 7 x 7; Fast R-CNN's class-specific decoding
    /// (`decodeFastRCNN`: `BoxCoder` (10, 10, 5, 5), clipping, `onnxDecoding`'s threshold) and per-class NMS (one
    /// NonMaxSuppression with a batch an image and a class a foreground class, each class's boxes its own), the best
    /// `topK` an image; then the mask head on the kept boxes, 14 x 14 RoIAlign, and each box's own class's sigmoid.
    /// Outputs detections (image, box, score, label) and their 28 x 28 mask probabilities; pasting a mask into the
    /// image (`MaskTargets.paste`: bilinear, at 0.5) is left to the caller.
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        let g = images.graph
        let (pyramid, rpnOutputs) = network(images, training: false)
        let (height, width) = (config.inputShape[1], config.inputShape[2])
        let layer = testingProposals, decoding = Self.onnxDecoding
        let one = g.constant("one", [1], shape: []), absentScore = g.constant("absent_score", [-1], shape: [])
        let scoreThreshold = g.constant("score_threshold", [-0.5], shape: [1])
        func int64Cast(_ v: ONNXValue) -> ONNXValue { v.cast(to: .int64) }
        /// Image indices [N, k] (0, 1, ...) of a value [N, k]: a running sum of ones down the batch.
        func imageIndices(_ like: ONNXValue) -> ONNXValue {
            let ones = like * g.constant("zero", [0], shape: []) + one
            return g.node("CumSum", [ones.name, g.int64Constant("batch_axis", [0], shape: []).name], shape: like.shape) - one
        }

        // Proposals: each level's candidates, NMS within each level, the best postNMSTopN of an image over the levels.
        let levels = rpnOutputs.enumerated().map { l, o in
            layer.onnxCandidates(objectness: o.objectness, deltas: o.deltas, anchors: anchors[l], imageHeight: height, imageWidth: width, suffix: "_p\(l + 2)")
        }
        let total = levels.map { $0.scores.shape[1] }.reduce(0, +)
        let candidates = ONNXValue.concat(levels.map(\.boxes), axis: 1)
        let absent = levels.map { $0.scores * g.constant("zero", [0], shape: []) + absentScore }
        let byLevel = ONNXValue.concat(levels.indices.map { l in
            ONNXValue.concat(levels.indices.map { $0 == l ? levels[$0].scores : absent[$0] }, axis: 1).reshaped([-1, 1, total])
        }, axis: 1)
        let survivors = g.node("NonMaxSuppression", [candidates.name, byLevel.name, g.int64Constant("level_nms_keep_all", [Int64(total)]).name,
                                                     g.constant("rpn_nms_threshold", [layer.nmsThreshold], shape: [1]).name, scoreThreshold.name], shape: [-1, 3])
        let imageAndIndex = g.node("Gather", [survivors.name, g.int64Constant("image_and_index", [0, 2]).name], shape: [-1, 2],
                                   attributes: [ONNXAttribute.int("axis", 1)])
        let allScores = ONNXValue.concat(levels.map(\.scores), axis: 1)
        let survivorScores = g.node("GatherND", [allScores.name, imageAndIndex.name], shape: [-1])
        let ranked = g.node("ScatterND", [ONNXValue.concat(absent, axis: 1).name, imageAndIndex.name, survivorScores.name], shape: [-1, total])
        let n = min(layer.postNMSTopN, total)
        let best = g.node("TopK", [ranked.name, g.int64Constant("post_nms_top_n", [Int64(n)]).name], names: ["proposal_scores", "proposal_indices"],
                          shapes: [[-1, n], [-1, n]], attributes: [ONNXAttribute.int("axis", 1), ONNXAttribute.int("largest", 1), ONNXAttribute.int("sorted", 1)])
        let proposalBoxes = g.node("GatherND", [candidates.name, best[1].reshaped([-1, n, 1]).name], shape: [-1, n, 4],
                                   attributes: [ONNXAttribute.int("batch_dims", 1)])
        let proposalRows = ONNXValue.concat([imageIndices(best[0]).reshaped([-1, n, 1]), proposalBoxes], axis: 2).reshaped([-1, 5])
        let isProposal = g.node("GreaterOrEqual", [best[0].name, g.constant("zero", [0], shape: []).name], shape: [-1, n]).reshaped([-1])
        let rois = g.node("Compress", [proposalRows.name, isProposal.name], shape: [-1, 5], attributes: [ONNXAttribute.int("axis", 0)])

        // The box head and Fast R-CNN's class-specific decoding of each foreground class.
        let c = classCount, f = classCount - 1
        let (logits, deltas) = boxHead(boxPool.onnx(pyramid, rois: rois))
        let probabilities = logits.softmax(axis: 1).slice(axis: 1, 1..<c)
        let classDeltas = deltas.reshaped([-1, c, 4]).slice(axis: 1, 1..<c)
        let corners = rois.slice(axis: 1, 1..<5)
        let sizes = (corners.slice(axis: 1, 2..<4) - corners.slice(axis: 1, 0..<2)).reshaped([-1, 1, 2])
        let centres = corners.slice(axis: 1, 0..<2).reshaped([-1, 1, 2]) + sizes * g.constant("half", [0.5], shape: [])
        let coder = BoxCoder()
        let centre = classDeltas.slice(axis: 2, 0..<2) / g.constant("centre_weights", [coder.weights.x, coder.weights.y], shape: [2]) * sizes + centres
        let scaled = classDeltas.slice(axis: 2, 2..<4) / g.constant("size_weights", [coder.weights.w, coder.weights.h], shape: [2])
        let growth = g.node("Min", [scaled.name, g.constant("scale_clamp", [BoxCoder.scaleClamp], shape: []).name], shape: scaled.shape)
        let half = growth.exp() * sizes * g.constant("half", [0.5], shape: [])
        // decodeFastRCNN clips each corner on its outer side only.
        let big = Float.greatestFiniteMagnitude
        let raised = g.node("Max", [ONNXValue.concat([centre - half, centre + half], axis: 2).name,
                                    g.constant("box_floor", [0, 0, -big, -big], shape: [4]).name], shape: [-1, f, 4])
        let boxes = g.node("Min", [raised.name, g.constant("box_ceiling", [big, big, Float(width), Float(height)], shape: [4]).name], shape: [-1, f, 4])
        let sides = boxes.slice(axis: 2, 2..<4) - boxes.slice(axis: 2, 0..<2)
        let shortest = g.node("ReduceMin", [sides.name], shape: [-1, f], attributes: [ONNXAttribute.ints("axes", [2]), ONNXAttribute.int("keepdims", 0)])
        let nonEmpty = g.node("Greater", [shortest.name, g.constant("minimum_side", [1e-3], shape: []).name], shape: [-1, f])
        let confident = g.node("Greater", [probabilities.name, g.constant("confidence_threshold", [decoding.confidenceThreshold], shape: []).name], shape: [-1, f])
        let valid = g.node("And", [nonEmpty.name, confident.name], shape: [-1, f])
        let scores = g.node("Where", [valid.name, probabilities.name, absentScore.name], shape: [-1, f])

        // Per-class NMS within each image: NonMaxSuppression's batch is the image, its class the foreground class, and
        // its boxes every (RoI, class) pair, scored -1 outside their own image and class.
        var identity = [Float](repeating: 0, count: f * f)
        for k in 0..<f { identity[k * f + k] = 1 }
        let sameClass = g.constant("same_class", identity, shape: [f, 1, f])
        let byClass = scores.reshaped([1, -1, f]) * sameClass + sameClass - one                                  // [f, R, f]
        let imageCount = g.node("Slice", [g.node("Shape", [images.name], shape: [4]).name, g.int64Constant("starts", [0]).name,
                                          g.int64Constant("ends", [1]).name], shape: [1])
        let imageRange = g.node("Range", [g.int64Constant("range_start", [0], shape: []).name, imageCount.reshaped([]).name,
                                          g.int64Constant("range_step", [1], shape: []).name], shape: [-1]).cast(to: .float)
        let roiImage = rois.slice(axis: 1, 0..<1).reshaped([1, -1])
        let inImage = g.node("Equal", [roiImage.name, imageRange.reshaped([-1, 1]).name], shape: [-1, -1])       // [N, R]
        let perImage = g.node("Where", [inImage.reshapedKeeping([0, 1, -1, 1]).name, byClass.name, absentScore.name], shape: [-1, f, -1, f])
        let nmsScores = perImage.reshapedKeeping([0, 0, -1])                                               // [N, f, R f]
        let expandShape = ONNXValue.concat([imageCount, g.int64Constant("box_expand", [1, 1])], axis: 0)
        let nmsBoxes = g.node("Expand", [boxes.reshaped([1, -1, 4]).name, expandShape.name], shape: [-1, -1, 4])
        let kept = g.node("NonMaxSuppression", [nmsBoxes.name, nmsScores.name, g.int64Constant("top_k", [Int64(decoding.topK)]).name,
                                                g.constant("iou_threshold", [decoding.iouThreshold], shape: [1]).name, scoreThreshold.name], shape: [-1, 3])
        // The best topK of each image over its classes.
        let keptScores = g.node("GatherND", [nmsScores.name, kept.name], shape: [-1])
        let pairs = g.node("Gather", [kept.name, g.int64Constant("image_and_index", [0, 2]).name], shape: [-1, 2], attributes: [ONNXAttribute.int("axis", 1)])
        let none = nmsScores.slice(axis: 1, 0..<1).reshapedKeeping([0, -1]) * g.constant("zero", [0], shape: []) + absentScore
        let keptByImage = g.node("ScatterND", [none.name, pairs.name, keptScores.name], shape: [-1, -1])
        let pairCount = g.node("Slice", [g.node("Shape", [keptByImage.name], shape: [2]).name, g.int64Constant("starts", [1]).name,
                                         g.int64Constant("ends", [2]).name], shape: [1])
        let limit = g.node("Min", [pairCount.name, g.int64Constant("top_k", [Int64(decoding.topK)]).name], shape: [1])
        let top = g.node("TopK", [keptByImage.name, limit.name], names: ["detection_scores", "detection_indices"], shapes: [[-1, -1], [-1, -1]],
                         attributes: [ONNXAttribute.int("axis", 1), ONNXAttribute.int("largest", 1), ONNXAttribute.int("sorted", 1)])
        let isDetection = g.node("GreaterOrEqual", [top[0].name, g.constant("zero", [0], shape: []).name], shape: [-1, -1]).reshaped([-1])
        func detections(_ v: ONNXValue, _ shape: [Int]) -> ONNXValue {
            g.node("Compress", [v.name, isDetection.name], shape: shape, attributes: [ONNXAttribute.int("axis", 0)])
        }
        let pairBoxes = g.node("GatherND", [nmsBoxes.name, top[1].reshapedKeeping([0, -1, 1]).name], shape: [-1, -1, 4],
                               attributes: [ONNXAttribute.int("batch_dims", 1)])
        let detectedBoxes = detections(pairBoxes.reshaped([-1, 4]), [-1, 4])
        let detectedScores = detections(top[0].reshaped([-1]), [-1])
        let classIndex = g.node("Mod", [top[1].name, g.int64Constant("foreground_classes", [Int64(f)], shape: []).name], shape: [-1, -1])
        let labels = detections((classIndex + g.int64Constant("first_class", [1], shape: [])).reshaped([-1]), [-1])
        let detectedImages = detections(imageIndices(top[0]).reshaped([-1]), [-1])

        // The mask head on the kept boxes, each its class's probabilities.
        let maskRois = ONNXValue.concat([detectedImages.reshaped([-1, 1]), detectedBoxes], axis: 1)
        let maskLogits = maskHead(maskPool.onnx(pyramid, rois: maskRois))
        let s = MaskHead.maskSize
        let masks = g.node("GatherND", [maskLogits.sigmoid().name, labels.reshaped([-1, 1]).name], shape: [-1, s, s], attributes: [ONNXAttribute.int("batch_dims", 1)])
        return [ONNXOutput(name: "images_of_detections", value: int64Cast(detectedImages), type: .int64, batchName: "D",
                           meaning: "[D] the image of each detection, images in order, each image's best score first"),
                ONNXOutput(name: "boxes", value: detectedBoxes, batchName: "D", meaning: "[D, 4] x1, y1, x2, y2 in input pixels"),
                ONNXOutput(name: "scores", value: detectedScores, batchName: "D",
                           meaning: "[D] class probability (above \(decoding.confidenceThreshold), NMS at \(decoding.iouThreshold) per class, at most \(decoding.topK) an image)"),
                ONNXOutput(name: "labels", value: labels, type: .int64, batchName: "D", meaning: "[D] class index (1 ... K, 0 is background)"),
                ONNXOutput(name: "masks", value: masks, batchName: "D",
                           meaning: "[D, \(s), \(s)] mask probabilities of the detection's class over its box, to paste into the image at 0.5")]
    }
}
