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
