import StarlingCore
import StarlingNN
import StarlingONNX

/// SSD's head (W. Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, as ssd_keras implements it): default
/// boxes matched to the ground truth by `SSDBoxEncoder`, the softmax and smooth-L1 objective with hard-negative
/// mining (`SSDLoss`), and decoding with per-class NMS (`DetectionDecoding`).
///
/// Outputs, in order: class logits [N x A, classes] and encoded box offsets [N x A, 4], image-major, anchors in the
/// encoder's order (ONNX: [N, A, classes] and [N, A, 4]).
public struct SSDHead: DetectionHead {
    public let encoder: SSDBoxEncoder
    public let classCount: Int
    public var lossFunction = SSDLoss()

    public init(anchors: AnchorConfig, classCount: Int) {
        encoder = SSDBoxEncoder(config: anchors)
        self.classCount = classCount
    }

    public func encodeTargets(into batch: inout Batch) {
        batch.anchorTargets = (batch.objects ?? []).map { encoder.encode($0) }
    }

    public func loss(_ outputs: [Tensor], targets: any BatchTargets, crossReplica: CrossReplica) -> Tensor {
        guard let targets = targets as? SSDTargets else { preconditionFailure("SSD's loss takes SSDTargets, not \(type(of: targets))") }
        precondition(outputs.count == 2, "SSD's head reads class logits and box offsets")
        let (loss, _) = lossFunction(classLogits: outputs[0], boxOffsets: outputs[1], targetClasses: targets.images.flatMap(\.classes),
                                     targetOffsets: targets.images.flatMap(\.offsets), crossReplica: crossReplica)
        return loss
    }

    public func decode(_ outputs: [Tensor], decoding: DetectionDecoding) -> [[DetectedBox]] {
        precondition(outputs.count == 2, "SSD's head reads class logits and box offsets")
        let probabilities = outputs[0].softmax(axis: -1), offsets = outputs[1]
        let a = encoder.anchorCount, images = offsets.shape[0] / a
        return (0..<images).map { i in
            decoding.decode(probabilities: probabilities.data + i * a * classCount, offsets: offsets.data + i * a * 4,
                            classCount: classCount, encoder: encoder)
        }
    }

    public func onnxOutputs(_ outputs: [ONNXValue], decoding: DetectionDecoding) -> [ONNXOutput] {
        precondition(outputs.count == 2, "SSD's head reads class logits and box offsets")
        let (logits, offsets) = (outputs[0], outputs[1])
        let probabilities = logits.softmax()
        let boxes = onnxDecode(offsets)
        let (_, detections) = decoding.onnxSuppress(boxes: boxes, scores: probabilities.slice(axis: 2, 1..<classCount))
        return [
            ONNXOutput(name: "class_probabilities", value: probabilities, meaning: "softmax over classes [N, A, \(classCount)], column 0 background"),
            ONNXOutput(name: "box_offsets", value: offsets, meaning: "encoded box offsets [N, A, 4] (centroid encoding, variances \(encoder.config.variances))"),
            ONNXOutput(name: "boxes", value: boxes, meaning: "decoded boxes [N, A, 4], xmin ymin xmax ymax in input pixels, clipped to the image"),
            ONNXOutput(name: "detections", value: detections, type: .int64, batchName: "K",
                       meaning: "per-class NMS (IoU \(decoding.iouThreshold), score > \(decoding.confidenceThreshold), empty boxes dropped, at most \(decoding.topK) per class): rows (image, class id, anchor)"),
        ]
    }

    /// `SSDBoxEncoder.decode` for every anchor, with the same operations in the same order, then clipped to the image.
    func onnxDecode(_ offsets: ONNXValue) -> ONNXValue {
        let g = offsets.graph, config = encoder.config
        let a = encoder.anchorCount, anchors = encoder.anchors
        let v = config.variances.map(Float.init)
        var centreValues = [Float](), sizeValues = [Float]()
        for j in 0..<a {
            centreValues += [anchors[4 * j], anchors[4 * j + 1]]
            sizeValues += [anchors[4 * j + 2], anchors[4 * j + 3]]
        }
        let centres = g.constant("anchor_centres", centreValues, shape: [a, 2])
        let sizes = g.constant("anchor_sizes", sizeValues, shape: [a, 2])
        let (sx, sy): (Float, Float) = config.normalize ? (Float(config.imageWidth), Float(config.imageHeight)) : (1, 1)
        let centreVariances = g.constant("centre_variances", [v[0], v[1]], shape: [2])
        let sizeVariances = g.constant("size_variances", [v[2], v[3]], shape: [2])
        let centreOffsets: ONNXValue = offsets.slice(axis: 2, 0..<2) * centreVariances
        let centre: ONNXValue = centreOffsets * sizes + centres
        let sizeOffsets: ONNXValue = offsets.slice(axis: 2, 2..<4) * sizeVariances
        let size: ONNXValue = sizeOffsets.exp() * sizes
        let half: ONNXValue = size * g.constant("half", [0.5], shape: [])
        let scale = g.constant("image_scale", [sx, sy], shape: [2])
        let low: ONNXValue = (centre - half) * scale, high: ONNXValue = (centre + half) * scale
        let corners = ONNXValue.concat([low, high], axis: 2)
        let (width, height) = (Float(config.imageWidth), Float(config.imageHeight))
        let clipped = g.node("Max", [corners.name, g.constant("zero", [0], shape: []).name], shape: corners.shape)
        return g.node("Min", [clipped.name, g.constant("image_size", [width, height, width, height], shape: [4]).name], shape: corners.shape)
    }
}

extension NetworkValue {
    /// An SSD predictor's output [N, boxes x depth, H, W] as rows [N, H x W x boxes, depth], the anchors' order (that
    /// of ssd_keras's Reshape). The row count is spelled out: ONNX allows one -1, and the batch is already symbolic.
    func anchorRows(depth: Int) -> Self {
        transposed([0, 2, 3, 1]).reshaped([shape[0], shape[1] * shape[2] * shape[3] / depth, depth])
    }
}

/// SSD's targets for a batch: per image, what each anchor should predict.
public struct SSDTargets: BatchTargets {
    public var images: [AnchorTargets]
    public init(images: [AnchorTargets]) { self.images = images }
}

extension Batch {
    /// SSD's targets (`SSDTargets`) per image, when the batch carries them.
    public var anchorTargets: [AnchorTargets]? {
        get { (targets as? SSDTargets)?.images }
        set { targets = newValue.map(SSDTargets.init(images:)) }
    }
}
