import StarlingCore
import StarlingNN
import StarlingONNX

/// The sequence-to-sequence autoencoder of F. Chollet, "Building Autoencoders in Keras" (The Keras Blog, 2016),
/// on the LSTM of S. Hochreiter and J. Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997.
///
/// An image is read as a sequence of T = 28 rows of F = 28 pixels. An LSTM encoder reads it and its last hidden
/// state is the code (`code_size`, 64 units); the code is repeated T times (Keras's RepeatVector) and fed to an LSTM
/// decoder (`decoder_units`, 64) whose every hidden state goes through one shared dense layer to F logits (Keras's
/// TimeDistributed(Dense(F))), the sigmoid of which is the row. The tutorial sketches the decoder as an LSTM
/// emitting the pixels directly; the dense read-out lets the decoder's state be wider than a row and keeps the
/// output a sigmoid trained with binary cross-entropy (fused, on logits), like the other autoencoders.
///
/// Input shape [T, F]. Weights: `encoder_lstm` and `decoder_lstm` (`kernel`, `recurrent_kernel`, `bias`),
/// `output_dense` (`kernel` [H, F], `bias` [F]).
public final class Seq2SeqAutoencoder: ONNXAutoencoder {
    public static let family = "seq2seq-ae"
    public let config: ModelConfig
    public let parameters = ParameterStore()
    let steps: Int, features: Int
    let encoder: LSTMLayer
    let decoder: LSTMLayer
    let output: Dense

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        let shape = config.inputShape
        let codeSize = Int(config.option("code_size", default: 64))
        let decoderUnits = Int(config.option("decoder_units", default: 64))
        guard shape.count == 2, shape[0] > 0, shape[1] > 0, codeSize > 0, decoderUnits > 0 else {
            throw ModelError.inputShape(family: config.family, expected: [28, 28], got: shape, source: "model configuration (rows, pixels per row)")
        }
        self.config = config
        (steps, features) = (shape[0], shape[1])
        encoder = LSTMLayer(parameters, name: "encoder_lstm", inputs: features, units: codeSize)
        decoder = LSTMLayer(parameters, name: "decoder_lstm", inputs: codeSize, units: decoderUnits)
        output = Dense(parameters, name: "output_dense", inputs: decoderUnits, outputs: features)
        parameters.allocate(rng: &rng)
        encoder.initializeForgetBias()
        decoder.initializeForgetBias()
    }

    public static func defaultConfig() -> ModelConfig {
        ModelConfig(family: family, inputShape: [28, 28], options: ["code_size": 64, "decoder_units": 64])
    }

    /// The encoder's last hidden state, [N, code_size].
    public func code<Value: NetworkValue>(_ images: Value) -> Value {
        encoder(images.reshaped([images.shape[0], steps, features])).lastTimestep()
    }

    public func reconstructionLogits<Value: NetworkValue>(_ images: Value, training: Bool) -> Value {
        // RepeatVector: the code is every step's input to the decoder.
        let states = decoder(code(images).repeatedOverSteps(steps))                // [N, T, decoder_units]
        return output(states.reshaped([-1, decoder.units])).reshaped(images.shape)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        reconstructionLogits(batch.images, training: training).binaryCrossEntropy(logits: batch.images)
    }
}
