import StarlingCore

/// A 2-D transposed convolution layer over NCHW tensors (Keras Conv2DTranspose), with PyTorch's kernel layout
/// [in, out, kh, kw] and Keras's initialisation: Glorot-uniform over fan-in = out * kh * kw and
/// fan-out = in * kh * kw (Keras reads its [kh, kw, out, in] kernel's fans that way round), zero bias.
/// With `.same` padding the output is exactly input * stride.
public struct Conv2DTranspose: Sendable {
    public let kernel: Parameter
    public let bias: Parameter
    public let stride: (Int, Int)
    public let padding: Padding

    public init(_ store: ParameterStore, name: String, inputs: Int, outputs: Int, kernelSize: (Int, Int) = (3, 3),
                stride: (Int, Int) = (1, 1), padding: Padding = .same) {
        let (kh, kw) = kernelSize
        kernel = store.declare("\(name)/kernel", shape: [inputs, outputs, kh, kw],
                               initializer: .glorotUniform(fanIn: outputs * kh * kw, fanOut: inputs * kh * kw))
        bias = store.declare("\(name)/bias", shape: [outputs], initializer: .zeros)
        self.stride = stride
        self.padding = padding
    }

    /// On a Tensor (training, inference) or an ONNXValue (the export): `NetworkValue.applying(_:)`.
    @inlinable public func callAsFunction<Value: NetworkValue>(_ x: Value) -> Value { x.applying(self) }
}
