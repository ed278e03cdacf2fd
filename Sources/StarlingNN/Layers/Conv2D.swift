import StarlingCore

/// A 2-D convolution layer over NCHW tensors, with PyTorch's kernel layout [out, in, kh, kw] (the converter
/// transposes to Keras's [kh, kw, in, out]) and Keras's initialisation: Glorot-uniform over
/// fan-in = in * kh * kw and fan-out = out * kh * kw, zero bias.
public struct Conv2D: Sendable {
    public let kernel: Parameter
    public let bias: Parameter
    public let stride: (Int, Int)
    public let padding: Padding
    public let dilation: (Int, Int)

    public init(_ store: ParameterStore, name: String, inputs: Int, outputs: Int, kernelSize: (Int, Int) = (3, 3),
                stride: (Int, Int) = (1, 1), padding: Padding = .same, dilation: (Int, Int) = (1, 1), initializer: Initializer? = nil) {
        let (kh, kw) = kernelSize
        kernel = store.declare("\(name)/kernel", shape: [outputs, inputs, kh, kw],
                               initializer: initializer ?? .glorotUniform(fanIn: inputs * kh * kw, fanOut: outputs * kh * kw))
        bias = store.declare("\(name)/bias", shape: [outputs], initializer: .zeros)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
    }

    /// On a Tensor (training, inference) or an ONNXValue (the export): `NetworkValue.applying(_:)`.
    @inlinable public func callAsFunction<Value: NetworkValue>(_ x: Value) -> Value { x.applying(self) }
}
