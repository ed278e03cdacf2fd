import ONNXProto
import StarlingCore
import StarlingNN
import StarlingONNX

/// How a detector's raw outputs relate to boxes: the part of a single-stage detector that torchvision calls the
/// head's box coder plus its matcher and loss. SSD's anchors and matching are one implementation (`SSDHead`).
///
/// `outputs` are the network's raw outputs in the order the head defines (for SSD: class logits [N x A, classes] and
/// box offsets [N x A, 4]); detections are in pixels of the model's input image.
public protocol DetectionHead: TargetEncoder {
    /// Classes with background at 0.
    var classCount: Int { get }
    /// The detection objective on this rank's slice, normalised over the global batch through `crossReplica`.
    func loss(_ outputs: [Tensor], targets: any BatchTargets, crossReplica: CrossReplica) -> Tensor
    /// Detections per image.
    func decode(_ outputs: [Tensor], decoding: DetectionDecoding) -> [[DetectedBox]]
    /// The ONNX graph's outputs: the raw outputs, the decoded boxes and the suppressed detections, computed with ONNX
    /// operators as `decode` computes them.
    func onnxOutputs(_ outputs: [ONNXValue], decoding: DetectionDecoding) -> [ONNXOutput]
}

/// A detector: a network whose outputs a `DetectionHead` reads.
public protocol Detector: Model, CrossReplicaAware {
    var head: any DetectionHead { get }
    /// The network's raw outputs for `images` (NCHW, pixels 0...255), in the order `head` reads them.
    func headOutputs(_ images: Tensor, training: Bool) -> [Tensor]
}

extension Detector {
    /// Classes with background.
    public var classCount: Int { head.classCount }

    /// The head encodes each batch's boxes into its targets.
    public var targetEncoder: (any TargetEncoder)? { head }

    /// The head's objective plus Keras's L2 kernel penalty: `l2 * sum(w^2)` for each of `kernels`, added once per step.
    func detectionLoss(_ batch: Batch, training: Bool, kernels: [Parameter], l2: Float) -> Tensor {
        guard let targets = batch.targets else {
            preconditionFailure("\(config.family) needs its head's targets in its batches (Model.targetEncoder)")
        }
        let detection = head.loss(headOutputs(batch.images, training: training), targets: targets, crossReplica: crossReplica)
        guard l2 > 0 else { return detection }
        return kernels.map { $0.value.l2Penalty(l2) }.reduce(detection) { $0 + $1 }
    }

    /// Detections per image, in pixels of the model's input.
    public func detect(_ images: Tensor, decoding: DetectionDecoding) -> [[DetectedBox]] {
        GradMode.disabled { head.decode(headOutputs(images, training: false), decoding: decoding) }
    }
}

extension DatasetDescription {
    /// A detection dataset's image height, width and class names (background first), or a one-line error naming the
    /// file when its samples are not colour images with classes.
    public func detectionImages() throws -> (height: Int, width: Int, classNames: [String]) {
        guard sampleShape.count == 3, sampleShape[0] == 3, let classNames, classNames.count >= 2 else {
            throw DataError(file: path, message: "not a detection dataset (samples \(sampleShape), classes \(classNames ?? [])); make one with `starling data detection`")
        }
        return (sampleShape[1], sampleShape[2], classNames)
    }
}

extension DetectionDecoding {
    /// `suppress` in ONNX operators, for boxes [N, P, 4] in input pixels, already clipped to the image, and object-class
    /// scores [N, P, C - 1] (class 1 first). A box the clipping left (nearly) empty scores 0, as decoding drops it;
    /// then ONNX's per-class NonMaxSuppression. Returns the scores so masked and the rows (image, class id 1...C - 1,
    /// box index) it keeps; the global top k is left to the caller.
    func onnxSuppress(boxes: ONNXValue, scores: ONNXValue) -> (scores: ONNXValue, detections: ONNXValue) {
        let g = boxes.graph, p = boxes.shape[1]
        let sides = boxes.slice(axis: 2, 2..<4) - boxes.slice(axis: 2, 0..<2)
        let shortest = g.node("ReduceMin", [sides.name], shape: [-1, p], attributes: [ONNXAttribute.ints("axes", [2]), ONNXAttribute.int("keepdims", 0)])
        let nonEmpty = g.node("Greater", [shortest.name, g.constant("smallest_side", [1e-3], shape: []).name], shape: [-1, p])
        let mask = g.node("Cast", [nonEmpty.name], shape: [-1, p], attributes: [ONNXAttribute.int("to", Int(Onnx_TensorProto.DataType.float.rawValue))])
        let masked = scores * mask.reshaped([-1, p, 1])
        let perClass = g.int64Constant("max_output_boxes_per_class", [Int64(topK)])
        let iou = g.constant("iou_threshold", [iouThreshold], shape: [1])
        let threshold = g.constant("score_threshold", [confidenceThreshold], shape: [1])
        // NonMaxSuppression takes scores [N, classes, P] and gives rows (image, class index from 0, box).
        let selected = g.node("NonMaxSuppression", [boxes.name, masked.transposed([0, 2, 1]).name, perClass.name, iou.name, threshold.name], shape: [-1, 3])
        let classShift = g.int64Constant("class_shift", [0, 1, 0], shape: [1, 3])
        return (masked, g.node("Add", [selected.name, classShift.name], shape: [-1, 3]))
    }
}

/// Detectors export their head's raw outputs; the head adds its decoding and suppression (`DetectionHead.onnxOutputs`).
public protocol ONNXDetector: ONNXExportable, Detector {
    /// The network's raw outputs in the order of `headOutputs`.
    func onnxHeadOutputs(_ images: ONNXValue) -> [ONNXValue]
}

extension ONNXDetector {
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        head.onnxOutputs(onnxHeadOutputs(images), decoding: .evaluation)
    }
}

/// The driving classes of the course's Udacity set (background first), the detectors' reference classes.
public enum Udacity {
    public static let classNames = ["background", "car", "truck", "pedestrian", "bicyclist", "light"]
}
