import Foundation
import StarlingCore
import StarlingNN
import StarlingONNX
import ONNXProto

/// Faster R-CNN (S. Ren, K. He, R. Girshick, J. Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region
/// Proposal Networks", NeurIPS 2015): a region proposal network on the backbone's feature map proposes the regions
/// that Fast R-CNN's head classifies and refines, both trained end to end by approximate joint training (section 3.2:
/// the RoI head's loss does not flow back through the proposals' coordinates).
///
/// - Backbone: `VGGBackbone` (VGG16's convolutions with batch norm, stride 16), `width` its channel multiplier.
/// - RPN (`RPNHead`, `AnchorGenerator`, `RPNTargets`, `Tensor.rpnLoss`, `ProposalLayer`): one level, the sizes
///   s 2^(k / m) for k < `anchor_octaves` m (`anchorSizes`: s = `anchor_size`, m = `anchor_scales_per_octave`; the
///   defaults 3 and 1 give the paper's s, 2s, 4s) x ratios 1:2, 1:1, 2:1; 256 anchors an image at 1:1 (`rpn_batch`); proposals by NMS at 0.7
///   (`rpn_nms`), `rpn_pre_nms_train` / `rpn_post_nms_train` (2,000 / 2,000, torchvision's) in training and
///   `rpn_pre_nms_test` / `rpn_post_nms_test` (1,000 / 300: the paper's 300 proposals at test time, section 4.1) otherwise.
/// - RoI head (`RoIHeads`): `rois_per_image` (128, py-faster-rcnn's) RoIs at `foreground_fraction` (0.25) from the
///   proposals plus the ground truths, RoI max pooling 7 x 7, fc6 and fc7 of `hidden` units (1,024), K + 1 classes and
///   class-specific deltas.
/// - Loss: the RPN's plus the RoI head's, each normalised by its sampled anchors or RoIs over the global batch.
///
/// Anchors: with a dataset, `anchor_size` defaults to the paper's 128 scaled from its ~600-pixel shorter side to the
/// data's (at least 8); without one (VOC at 375 x 500), 128, the paper's 128, 256, 512. Data whose boxes are small
/// against the image (KITTI's cars) need smaller and denser sizes, as detectron2's users set `ANCHOR_GENERATOR.SIZES` per
/// dataset: more octaves from a smaller s, and with `anchor_scales_per_octave` 2 or 3 the intermediate sizes of
/// RetinaNet's anchors (detectron2's `[x, x 2^(1/3), x 2^(2/3)]`).
///
/// Deviations from the paper: no ImageNet pretraining (hence batch norm in the backbone); one scale (the data's image
/// size) instead of a shorter side of 600; anchors crossing the border are kept in training (torchvision's choice,
/// `RPNTargets`); one objectness logit per anchor with a sigmoid (torchvision) instead of two with a softmax.
public final class FasterRCNN: TwoStageDetector {
    public static let family = "faster-rcnn"

    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false
    public let roiHeads: RoIHeads
    let backbone: VGGBackbone
    let rpn: RPNHead
    public let anchorGenerator: AnchorGenerator
    public let rpnTargets: RPNTargets
    public let trainingProposals: ProposalLayer
    public let testingProposals: ProposalLayer
    /// The feature map's size and its anchors (fixed by the input size).
    public let featureSize: (height: Int, width: Int)
    public let anchors: [BoxCorners]

    /// The options a user may set (`--width-multiplier`, `--option NAME=VALUE`) and their defaults.
    public static let defaults: [String: Double] = [
        "width": 0.25, "hidden": 1024, "rois_per_image": 128, "foreground_fraction": 0.25,
        "anchor_size": 128, "anchor_octaves": 3, "anchor_scales_per_octave": 1,
        "rpn_batch": 256, "rpn_positive_fraction": 0.5, "rpn_nms": 0.7,
        "rpn_pre_nms_train": 2000, "rpn_post_nms_train": 2000, "rpn_pre_nms_test": 1000, "rpn_post_nms_test": 300,
    ]

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let names = config.classNames, names.count >= 2 else {
            throw ModelError.inputShape(family: config.family, expected: [3, 375, 500], got: config.inputShape,
                                        source: "model configuration (needs colour images and class names)")
        }
        func option(_ name: String) -> Double { config.option(name, default: Self.defaults[name] ?? 0) }
        let (height, width) = (config.inputShape[1], config.inputShape[2])
        let counts = ["hidden", "rois_per_image", "anchor_octaves", "anchor_scales_per_octave", "rpn_batch", "rpn_pre_nms_train", "rpn_post_nms_train", "rpn_pre_nms_test", "rpn_post_nms_test"]
        let fractions = ["foreground_fraction", "rpn_positive_fraction", "rpn_nms"]
        guard option("width") > 0, option("anchor_size") > 0, counts.allSatisfy({ option($0) >= 1 && option($0) == option($0).rounded() }),
              fractions.allSatisfy({ (0...1).contains(option($0)) }) else {
            throw ModelError.configuration(family: config.family, problem: "width and anchor_size must be positive, \(counts.joined(separator: ", ")) whole numbers at least 1, \(fractions.joined(separator: ", ")) in [0, 1]")
        }
        guard height >= VGGBackbone.stride && width >= VGGBackbone.stride else {
            throw ModelError.configuration(family: config.family, problem: "images of \(height)x\(width) are smaller than the feature stride \(VGGBackbone.stride)")
        }
        self.config = config
        let store = parameters
        backbone = VGGBackbone(store, buffers: buffersStore, width: option("width"))
        anchorGenerator = .singleLevel(sizes: Self.anchorSizes(smallest: option("anchor_size"), octaves: Int(option("anchor_octaves")),
                                                               scalesPerOctave: Int(option("anchor_scales_per_octave"))),
                                       stride: VGGBackbone.stride)
        rpn = RPNHead(store, channels: backbone.channels, anchorsPerLocation: anchorGenerator.levels[0].anchorsPerLocation)
        rpnTargets = RPNTargets(batchSize: Int(option("rpn_batch")), positiveFraction: Float(option("rpn_positive_fraction")))
        let nms = Float(option("rpn_nms"))
        trainingProposals = ProposalLayer(preNMSTopN: Int(option("rpn_pre_nms_train")), postNMSTopN: Int(option("rpn_post_nms_train")), nmsThreshold: nms)
        testingProposals = ProposalLayer(preNMSTopN: Int(option("rpn_pre_nms_test")), postNMSTopN: Int(option("rpn_post_nms_test")), nmsThreshold: nms)
        featureSize = VGGBackbone.featureSize(height: height, width: width)
        anchors = anchorGenerator.anchors(level: 0, height: featureSize.height, width: featureSize.width)
        let predictor = FastRCNNPredictor(store, channels: backbone.channels, hidden: Int(option("hidden")), classCount: names.count,
                                          spatialScale: 1 / Float(VGGBackbone.stride))
        roiHeads = RoIHeads(predictor: predictor,
                            sampling: FastRCNNTargets(roisPerImage: Int(option("rois_per_image")), foregroundFraction: Float(option("foreground_fraction"))),
                            testProposals: Int(option("rpn_post_nms_test")))
        parameters.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffersStore.allocate(rng: &unused)
    }

    /// The RPN's anchor sizes: `smallest` 2^(k / `scalesPerOctave`) for k < `octaves` `scalesPerOctave`, smallest first.
    public static func anchorSizes(smallest: Double, octaves: Int, scalesPerOctave: Int) -> [Float] {
        (0..<(octaves * scalesPerOctave)).map { Float(smallest * pow(2, Double($0) / Double(scalesPerOctave))) }
    }

    public static func defaultConfig(height: Int = 375, width: Int = 500, classNames: [String] = VOC.classNames, widthMultiplier: Double = 0.25,
                                     anchorSize: Double = 128) -> ModelConfig {
        var options = defaults
        options["width"] = widthMultiplier
        options["anchor_size"] = anchorSize
        return ModelConfig(family: family, inputShape: [3, height, width], options: options, classNames: classNames)
    }

    /// The family's configuration for a detection dataset: its image size and classes, anchors scaled to its shorter
    /// side (nil: VOC at 375 x 500 with the paper's anchors).
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        guard let dataset else { return defaultConfig() }
        let (height, width, classNames) = try dataset.detectionImages()
        guard height >= VGGBackbone.stride && width >= VGGBackbone.stride else {
            throw DataError(file: dataset.path, message: "images of \(height)x\(width) are too small for faster-rcnn (at least \(VGGBackbone.stride)x\(VGGBackbone.stride))")
        }
        return defaultConfig(height: height, width: width, classNames: classNames,
                             anchorSize: max(8, (128 * Double(min(height, width)) / 600).rounded()))
    }

    /// The one pass over the shared feature map: the backbone's map and the RPN's objectness and deltas per level, on
    /// Tensors (`LayoutTensor`) to train and infer and on ONNX values to export.
    func network<Value: NetworkValue>(_ images: Value, training: Bool) -> (features: Value, rpn: [(objectness: Value, deltas: Value)]) {
        let sum: CrossReplicaSum? = synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil
        let map = backbone(images, training: training, crossReplicaSum: sum)
        return (map, rpn([map]))
    }

    public func features(_ images: Tensor, training: Bool) -> Tensor {
        backbone(LayoutTensor(images), training: training,
                 crossReplicaSum: synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil).tensor
    }

    /// The RPN's outputs on `features`, its proposals (best first; no gradient: approximate joint training) and, where the
    /// batch has boxes (training, validation), its loss over the anchors sampled from each image's own stream.
    public func proposals(for batch: Batch, features: Tensor, training: Bool) -> RegionProposals {
        let outputs = rpn([LayoutTensor(features)]).map { ($0.objectness.tensor, $0.deltas.tensor) }
        let objectness = outputs.map(\.0), deltas = outputs.map(\.1)
        let layer = training ? trainingProposals : testingProposals
        let boxes = layer.proposals(objectness: objectness, deltas: deltas, anchors: [anchors],
                                    imageHeight: batch.images.shape[2], imageWidth: batch.images.shape[3]).map { $0.map(\.box) }
        guard let objects = batch.objects else { return RegionProposals(boxes: boxes) }
        let samples = objects.indices.map { k in rpnTargets.sample(anchors: anchors, objects: objects[k], batch: batch, sample: k, training: training) }
        return RegionProposals(boxes: boxes, loss: Tensor.rpnLoss(objectness: objectness, deltas: deltas, samples: samples,
                                                                  crossReplica: crossReplica))
    }

    /// Each image's proposals from the RPN on `features` through `layer` (for example more of them than the model keeps,
    /// to measure their recall: `starling proposals --checkpoint`), best first, without gradient.
    public func proposals(features: Tensor, layer: ProposalLayer, imageHeight: Int, imageWidth: Int) -> [[ScoredBox]] {
        GradMode.disabled {
            let outputs = rpn([LayoutTensor(features)]).map { ($0.objectness.tensor, $0.deltas.tensor) }
            return layer.proposals(objectness: outputs.map(\.0), deltas: outputs.map(\.1), anchors: [anchors], imageHeight: imageHeight, imageWidth: imageWidth)
        }
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        twoStageLoss(batch, training: training)
    }
}

extension FasterRCNN: ONNXExportable {
    /// The whole detector up to the RoI head's outputs, from `images` alone: the backbone and the RPN (the one pass of
    /// `network`), the test-time proposal layer in ONNX operators (anchors as a constant, `BoxCoder` (1, 1, 1, 1)
    /// decoding with its clamp, clipping, TopK of the logits, boxes with a side under `minimumSize` scored -1, batched
    /// NonMaxSuppression at `rpn_nms` keeping `rpn_post_nms_test` an image), then MaxRoiPool and the RoI head on those
    /// proposals. Outputs `rois` [R, 5] (image, x1, y1, x2, y2), each RoI's class logits and probabilities [R, K + 1] and
    /// class-specific deltas [R, 4 (K + 1)]; class-specific decoding and NMS are left to the caller
    /// (`DetectionDecoding.decodeFastRCNN`), as for fast-rcnn.
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        let g = images.graph
        let (features, rpnOutputs) = network(images, training: false)
        let (objectness, deltas) = rpnOutputs[0]
        let layer = testingProposals
        let (topBoxes, scores) = layer.onnxCandidates(objectness: objectness, deltas: deltas, anchors: anchors,
                                                      imageHeight: config.inputShape[1], imageWidth: config.inputShape[2])
        let k = scores.shape[1]
        let selected = g.node("NonMaxSuppression", [topBoxes.name, scores.reshaped([-1, 1, k]).name,
                                                    g.int64Constant("post_nms_top_n", [Int64(layer.postNMSTopN)]).name,
                                                    g.constant("rpn_nms_threshold", [layer.nmsThreshold], shape: [1]).name,
                                                    g.constant("score_threshold", [-0.5], shape: [1]).name], shape: [-1, 3])
        // Rows (image, 0, index among the top k): the proposal's image and box.
        let imageAndIndex = g.node("Gather", [selected.name, g.int64Constant("image_and_index", [0, 2]).name], shape: [-1, 2],
                                   attributes: [ONNXAttribute.int("axis", 1)])
        let proposals = g.node("GatherND", [topBoxes.name, imageAndIndex.name], shape: [-1, 4])
        let image = g.node("Cast", [imageAndIndex.slice(axis: 1, 0..<1).name], shape: [-1, 1],
                           attributes: [ONNXAttribute.int("to", Int(Onnx_TensorProto.DataType.float.rawValue))])
        let rois = ONNXValue.concat([image, proposals], axis: 1)
        let (classLogits, boxDeltas) = roiHeads.predictor(features, rois: rois)
        return [ONNXOutput(name: "rois", value: rois, batchName: "R",
                           meaning: "[R, 5] the RPN's proposals (image, x1, y1, x2, y2 in input pixels), at most \(layer.postNMSTopN) an image, best first"),
                ONNXOutput(name: "class_logits", value: classLogits, batchName: "R", meaning: "[R, K + 1] class logits of each RoI, background first"),
                ONNXOutput(name: "class_probabilities", value: classLogits.softmax(axis: 1), batchName: "R", meaning: "[R, K + 1] softmax of class_logits"),
                ONNXOutput(name: "box_deltas", value: boxDeltas, batchName: "R",
                           meaning: "[R, 4 (K + 1)] class-specific deltas (dx, dy, dw, dh) scaled by BoxCoder's weights (10, 10, 5, 5)")]
    }
}
