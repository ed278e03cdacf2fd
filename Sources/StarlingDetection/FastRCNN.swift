import StarlingCore
import StarlingNN
import StarlingONNX

/// Fast R-CNN (R. Girshick, "Fast R-CNN", ICCV 2015): the whole image goes through a convolutional network once; each
/// region proposal stored with the data (selective search, `starling proposals --store`) is max-pooled from the last
/// feature map into a 7 x 7 grid, passed through two fully connected layers, and scored by a K + 1 softmax and refined
/// by class-specific box regression (`FastRCNNPredictor`). Training takes minibatches of 2 images x `rois_per_image`
/// (64) RoIs, 25 % foreground at IoU >= 0.5 and background in [0.1, 0.5) (`FastRCNNTargets`), and the multi-task
/// loss L = L_cls + [u >= 1] L_loc with smooth L1 (`RoIHeads`, normalised over the RoIs of the global batch).
///
/// Backbone: VGG16's convolutions (conv1_1 ... conv5_3, 3x3, ReLU, 2x2 max-pooling after blocks 1-4), feature stride 16,
/// as the paper's VGG16 model whose pool5 the RoI pooling replaces. Inputs are pixels 0...255 minus ImageNet's channel
/// means (123, 117, 104).
///
/// Options (`--width-multiplier`, `--option NAME=VALUE`): `width` multiplies every convolution's channels (default 0.25:
/// 16 ... 128 channels, about 1/16 of VGG16's convolution cost, what a CPU trains from scratch in hours rather than
/// days; 1 is the paper's network); `hidden` units in fc6 and fc7 (default 1,024; the paper's 4,096 follow VGG16's
/// ImageNet classifier, which is not loaded here); `rois_per_image` (64), `foreground_fraction` (0.25) and
/// `test_proposals` (the best 2,000 proposals of an image are scored at test time, as the paper's selective search
/// "fast" mode gives).
///
/// Deviations from the paper: no ImageNet pretraining, so batch normalisation follows every convolution (training VGG16
/// from scratch without it does not converge in a CPU budget); single scale (the data's image size) instead of
/// resizing the shorter side to 600; no truncated SVD of fc6 and fc7 at test time; fully connected layers with
/// Glorot-uniform initialisation and no dropout (`FastRCNNPredictor`).
public final class FastRCNN: TwoStageDetector {
    public static let family = "fast-rcnn"
    /// Feature stride of conv5_3: four 2 x 2 max-poolings.
    public static let stride = VGGBackbone.stride

    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false
    public let roiHeads: RoIHeads
    public var readsProposals: Bool { true }
    /// VGG16's convolutions, shared with faster-rcnn (the same layer names, so the two families' checkpoints share them).
    let backbone: VGGBackbone

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let names = config.classNames, names.count >= 2 else {
            throw ModelError.inputShape(family: config.family, expected: [3, 375, 500], got: config.inputShape,
                                        source: "model configuration (needs colour images and class names)")
        }
        let width = config.option("width", default: 0.25)
        let hidden = Int(config.option("hidden", default: 1024))
        let roisPerImage = Int(config.option("rois_per_image", default: 64))
        let foreground = Float(config.option("foreground_fraction", default: 0.25))
        let testProposals = Int(config.option("test_proposals", default: 2000))
        guard width > 0, hidden > 0, roisPerImage > 0, (0...1).contains(foreground), testProposals > 0 else {
            throw ModelError.configuration(family: config.family, problem: "width \(width), hidden \(hidden), rois_per_image \(roisPerImage), foreground_fraction \(foreground) and test_proposals \(testProposals) must be positive (the fraction in [0, 1])")
        }
        self.config = config
        let store = parameters
        backbone = VGGBackbone(store, buffers: buffersStore, width: width)
        let predictor = FastRCNNPredictor(store, channels: backbone.channels, hidden: hidden, classCount: names.count, spatialScale: 1 / Float(Self.stride))
        roiHeads = RoIHeads(predictor: predictor, sampling: FastRCNNTargets(roisPerImage: roisPerImage, foregroundFraction: foreground),
                            testProposals: testProposals)
        parameters.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffersStore.allocate(rng: &unused)
    }

    public static func defaultConfig(height: Int = 375, width: Int = 500, classNames: [String] = VOC.classNames,
                                     widthMultiplier: Double = 0.25) -> ModelConfig {
        ModelConfig(family: family, inputShape: [3, height, width],
                    options: ["width": widthMultiplier, "hidden": 1024, "rois_per_image": 64, "foreground_fraction": 0.25, "test_proposals": 2000],
                    classNames: classNames)
    }

    /// The family's configuration for a detection dataset: its image size and classes (nil: VOC at 375 x 500).
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        guard let dataset else { return defaultConfig() }
        let (height, width, classNames) = try dataset.detectionImages()
        guard height >= stride && width >= stride else {
            throw DataError(file: dataset.path, message: "images of \(height)x\(width) are too small for fast-rcnn (at least \(stride)x\(stride))")
        }
        return defaultConfig(height: height, width: width, classNames: classNames)
    }

    /// conv5_3's feature map: the one backbone pass, on Tensors (`LayoutTensor`) to train and infer and on ONNX values
    /// to export.
    func featureMap<Value: NetworkValue>(_ images: Value, training: Bool) -> Value {
        let sum: CrossReplicaSum? = synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil
        return backbone(images, training: training, crossReplicaSum: sum)
    }

    /// Class logits [R, K + 1] and box deltas [R, 4 (K + 1)] of `rois` [R, 5] (batch index, x1, y1, x2, y2 in input
    /// pixels) on `images`: the whole network written once.
    func regionOutputs<Value: NetworkValue>(_ images: Value, rois: Value, training: Bool) -> (classLogits: Value, boxDeltas: Value) {
        roiHeads.predictor(featureMap(images, training: training), rois: rois)
    }

    public func features(_ images: Tensor, training: Bool) -> Tensor {
        featureMap(LayoutTensor(images), training: training).tensor
    }

    /// The batch's stored proposals (the data kind is `detectionProposals`, so training and validation batches carry
    /// them; `predict` and `eval` set them).
    public func proposals(for batch: Batch, features: Tensor, training: Bool) -> RegionProposals {
        guard let boxes = batch.proposals, boxes.count == batch.size else {
            preconditionFailure("fast-rcnn needs each image's proposals in its batches (Batch.proposals)")
        }
        return RegionProposals(boxes: boxes)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        twoStageLoss(batch, training: training)
    }
}

extension FastRCNN: ONNXExportable {
    /// The graph takes `images` [N, 3, H, W] and `rois` [R, 5] (batch index, x1, y1, x2, y2 in input pixels: the
    /// proposals to score, e.g. the best 2,000 of selective search) and gives each RoI's class probabilities and
    /// class-specific deltas; decoding and NMS per class are left to the caller (`DetectionDecoding.decodeFastRCNN`),
    /// as the box count per class varies with the RoIs.
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        let rois = images.graph.input("rois", shape: [-1, 5], batchName: "R")
        let (logits, deltas) = regionOutputs(images, rois: rois, training: false)
        return [ONNXOutput(name: "class_logits", value: logits, batchName: "R", meaning: "[R, K + 1] class logits of each RoI, background first"),
                ONNXOutput(name: "class_probabilities", value: logits.softmax(axis: 1), batchName: "R", meaning: "[R, K + 1] softmax of class_logits"),
                ONNXOutput(name: "box_deltas", value: deltas, batchName: "R",
                           meaning: "[R, 4 (K + 1)] class-specific deltas (dx, dy, dw, dh) scaled by BoxCoder's weights (10, 10, 5, 5)")]
    }
}
