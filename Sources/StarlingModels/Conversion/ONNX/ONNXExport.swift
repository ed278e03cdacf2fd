import Foundation
import ONNXProto
import StarlingCore
import StarlingIO
import SwiftProtobuf

/// One named output of an exported graph.
public struct ONNXOutput {
    public let name: String
    public let value: ONNXValue
    public var type: Onnx_TensorProto.DataType = .float
    /// What a symbolic axis 0 counts ("N" images, or "K" detections).
    public var batchName = "N"
    /// One line for the model's doc string and `convert`'s report.
    public let meaning: String
}

/// A model whose inference pass can be written as an ONNX graph on the input "images", float32
/// [N] + the model's input shape, in the values Starling feeds it (MNIST intensities in [0, 1]; detector pixels in
/// [0, 255], NCHW, RGB).
public protocol ONNXExportable: Model {
    func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput]
}

/// An autoencoder whose forward pass is written once, over `NetworkValue`: training and inference run it on
/// `Tensor`s (these generic methods are also `Autoencoder`'s and `Encoding`'s), the export on `ONNXValue`s. The
/// graph's outputs are the reconstruction (the sigmoid of the logits the loss is fused with) and the code.
public protocol ONNXAutoencoder: ONNXExportable, Autoencoder, Encoding {
    /// The encoder's output, flattened to [N, D].
    func code<Value: NetworkValue>(_ images: Value) -> Value
    /// Logits whose sigmoid is the reconstruction, shaped like `images`.
    func reconstructionLogits<Value: NetworkValue>(_ images: Value, training: Bool) -> Value
}

extension ONNXAutoencoder {
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        [ONNXOutput(name: "reconstruction", value: reconstructionLogits(images, training: false).sigmoid(), meaning: "reconstructed image, probabilities in [0, 1], shape of the input"),
         ONNXOutput(name: "code", value: code(images), meaning: "the encoder's code [N, code size] (what `starling index` stores)")]
    }
}

/// Variational autoencoders export the posterior's mean and log-variance, and the reconstruction decoded from the
/// mean (what `starling eval` reports at z = mean), from `VariationalModel`'s forward pass on `ONNXValue`s.
public protocol ONNXVariational: ONNXExportable, VariationalModel {}

extension ONNXVariational {
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        let (mean, logVariance) = posterior(images)
        return [ONNXOutput(name: "reconstruction", value: reconstructionLogits(images, training: false).sigmoid(), meaning: "image decoded from z = mean, probabilities in [0, 1]"),
                ONNXOutput(name: "z_mean", value: mean, meaning: "posterior mean [N, latent]"),
                ONNXOutput(name: "z_log_var", value: logVariance, meaning: "posterior log-variance [N, latent]")]
    }
}

/// SSD detectors export their raw predictions and, with ONNX operators, the decoded and suppressed detections.
public protocol ONNXDetector: ONNXExportable, Detector {
    /// Class logits [N, A, classes] and encoded box offsets [N, A, 4], anchors in `encoder`'s order.
    func onnxPredict(_ images: ONNXValue) -> (classLogits: ONNXValue, boxOffsets: ONNXValue)
}

extension ONNXDetector {
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        let g = images.graph
        let (logits, offsets) = onnxPredict(images)
        let probabilities = logits.softmax()
        let boxes = onnxDecode(offsets)
        // ONNX NonMaxSuppression: boxes [N, A, 4] (any corner order: IoU does not care), scores [N, classes, A].
        // Background is left out, so the class column is shifted back by one afterwards.
        let decoding = DetectionDecoding.evaluation
        // A box the clipping left (nearly) empty is no detection, as in DetectionDecoding: its scores become 0.
        let sides = boxes.slice(axis: 2, 2..<4) - boxes.slice(axis: 2, 0..<2)
        let a = encoder.anchorCount
        let shortest = g.node("ReduceMin", [sides.name], shape: [-1, a], attributes: [ONNXAttribute.ints("axes", [2]), ONNXAttribute.int("keepdims", 0)])
        let nonEmpty = g.node("Greater", [shortest.name, g.constant("smallest_side", [1e-3], shape: []).name], shape: [-1, a])
        let mask = g.node("Cast", [nonEmpty.name], shape: [-1, a], attributes: [ONNXAttribute.int("to", Int(Onnx_TensorProto.DataType.float.rawValue))])
        let classScores = probabilities.slice(axis: 2, 1..<classCount).transposed([0, 2, 1])       // [N, classes - 1, A]
        let scores = classScores * mask.reshaped([-1, 1, a])
        let perClass = g.int64Constant("max_output_boxes_per_class", [Int64(decoding.topK)])
        let iou = g.constant("iou_threshold", [decoding.iouThreshold], shape: [1])
        let threshold = g.constant("score_threshold", [decoding.confidenceThreshold], shape: [1])
        let selected = g.node("NonMaxSuppression", [boxes.name, scores.name, perClass.name, iou.name, threshold.name], shape: [-1, 3])
        let classShift = g.int64Constant("class_shift", [0, 1, 0], shape: [1, 3])
        let detections = g.node("Add", [selected.name, classShift.name], shape: [-1, 3])
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

extension ONNXValue {
    /// [N, boxes x depth, H, W] predictor maps -> [N, H x W x boxes, depth] rows, the order of the anchors.
    func anchorRows(depth: Int) -> ONNXValue {
        transposed([0, 2, 3, 1]).reshaped([-1, shape[1] * shape[2] * shape[3] / depth, depth])
    }

    /// Channel-wise L2 normalisation with a learned scale (Tensor.l2NormalizeChannels).
    public func l2NormalizeChannels(gamma: Parameter, epsilon: Float = 1e-10) -> ONNXValue {
        let g = graph
        let squares = g.node("ReduceSumSquare", [name], shape: [shape[0], 1] + shape.dropFirst(2), attributes: [
            ONNXAttribute.ints("axes", [1]), ONNXAttribute.int("keepdims", 1)])
        let norm = g.node("Sqrt", [(squares + g.constant("epsilon", [epsilon], shape: [])).name], shape: squares.shape)
        let scale = g.constant(gamma.name, gamma.value.toArray(), shape: [1, gamma.count, 1, 1])
        return self / norm * scale
    }
}

/// `starling convert --to onnx`.
public enum ONNXExport {
    /// The model's inference graph.
    public static func graph(of model: any Model) throws -> (graph: ONNXGraph, outputs: [ONNXOutput]) {
        guard let exportable = model as? any ONNXExportable else {
            throw ConversionError(file: "", message: "model \(model.config.family) has no ONNX export")
        }
        let g = ONNXGraph()
        let images = g.input("images", shape: [-1] + model.config.inputShape)
        let outputs = exportable.onnxOutputs(images)
        for o in outputs { g.output(o.value, as: o.name, type: o.type, batchName: o.batchName) }
        return (g, outputs)
    }

    /// Writes the model's inference graph with its weights as an ONNX file (atomically). Returns the outputs.
    @discardableResult
    public static func write(_ model: any Model, to path: String) throws -> [ONNXOutput] {
        let (graph, outputs) = try graph(of: model)
        let input = "images: float32 [N, \(model.config.inputShape.map(String.init).joined(separator: ", "))]"
        let doc = ([input] + outputs.map { "\($0.name): \($0.meaning)" }).joined(separator: "\n")
        var proto = graph.model(producerVersion: Checkpoint.formatVersion.description, docString: "Starling \(model.config.family)\n" + doc)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var config = Onnx_StringStringEntryProto()
        config.key = PyTorchWeights.configKey
        config.value = String(decoding: try encoder.encode(model.config), as: UTF8.self)
        proto.metadataProps = [config]
        if let names = model.config.classNames {
            var classes = Onnx_StringStringEntryProto()
            classes.key = "class_names"
            classes.value = names.joined(separator: ",")
            proto.metadataProps.append(classes)
        }
        let bytes: [UInt8] = try proto.serializedBytes()
        try AtomicFile.write(bytes, to: path)
        return outputs
    }
}
