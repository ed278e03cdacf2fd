import StarlingCore

/// A fully connected layer y = x W + b with Keras's kernel layout [in, out] and Keras's initialisation
/// (Glorot-uniform kernel, zero bias), so weights convert to and from Keras without transposes.
public struct Dense: Sendable {
    public let kernel: Parameter
    public let bias: Parameter
    public let inputs: Int, outputs: Int

    public init(_ store: ParameterStore, name: String, inputs: Int, outputs: Int) {
        self.inputs = inputs
        self.outputs = outputs
        kernel = store.declare("\(name)/kernel", shape: [inputs, outputs], initializer: .glorotUniform(fanIn: inputs, fanOut: outputs))
        bias = store.declare("\(name)/bias", shape: [outputs], initializer: .zeros)
    }

    /// On a Tensor (training, inference) or an ONNXValue (the export): `NetworkValue.applying(_:)`.
    @inlinable public func callAsFunction<Value: NetworkValue>(_ x: Value) -> Value { x.applying(self) }
}
