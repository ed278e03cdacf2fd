import ONNXProto
import StarlingCore
import StarlingNN

/// One named output of an exported graph.
public struct ONNXOutput {
    public let name: String
    public let value: ONNXValue
    public var type: Onnx_TensorProto.DataType = .float
    /// What a symbolic axis 0 counts ("N" images, or "K" detections).
    public var batchName = "N"
    /// One line for the model's doc string and `convert`'s report.
    public let meaning: String

    package init(name: String, value: ONNXValue, type: Onnx_TensorProto.DataType = .float, batchName: String = "N", meaning: String) {
        self.name = name
        self.value = value
        self.type = type
        self.batchName = batchName
        self.meaning = meaning
    }
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
