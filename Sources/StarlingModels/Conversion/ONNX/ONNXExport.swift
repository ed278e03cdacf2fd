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

extension ONNXValue {
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
