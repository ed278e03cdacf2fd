import Foundation
import ONNXProto
import StarlingCore
import StarlingIO
import SwiftProtobuf
import StarlingNN
import StarlingONNX
import StarlingTraining

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
