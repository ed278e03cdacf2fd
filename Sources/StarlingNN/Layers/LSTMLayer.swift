import StarlingCore

/// An LSTM layer (Keras `LSTM(units, return_sequences=True)`) over [N, T, F] sequences, with Keras's weight names
/// and layouts (`kernel` [F, 4H], `recurrent_kernel` [H, 4H], `bias` [4H], gates in the order i, f, c, o) and its
/// initialisation: Glorot-uniform kernel, orthogonal recurrent kernel (orthonormal rows of the [H, 4H] matrix, as
/// Keras's Orthogonal gives for that shape), zero bias except the forget gate's, which is 1 (`unit_forget_bias`).
public struct LSTMLayer: Sendable {
    public let kernel: Parameter
    public let recurrentKernel: Parameter
    public let bias: Parameter
    public let units: Int

    public init(_ store: ParameterStore, name: String, inputs: Int, units: Int) {
        self.units = units
        kernel = store.declare("\(name)/kernel", shape: [inputs, 4 * units],
                               initializer: .glorotUniform(fanIn: inputs, fanOut: 4 * units))
        recurrentKernel = store.declare("\(name)/recurrent_kernel", shape: [units, 4 * units],
                                        initializer: .orthogonal(rows: units, cols: 4 * units))
        bias = store.declare("\(name)/bias", shape: [4 * units], initializer: .zeros)
    }

    /// Sets the forget-gate bias to 1 (Keras's `unit_forget_bias`). The store has no per-slice initialiser, so
    /// the model calls this once after `ParameterStore.allocate`; it draws no random numbers.
    public func initializeForgetBias() {
        let b = bias.value.data
        for j in units..<(2 * units) { b[j] = 1 }
    }

    /// All hidden states, [N, T, H], of a Tensor or an ONNXValue (`NetworkValue.applying(_:)`).
    @inlinable public func callAsFunction<Value: NetworkValue>(_ x: Value) -> Value { x.applying(self) }
}
