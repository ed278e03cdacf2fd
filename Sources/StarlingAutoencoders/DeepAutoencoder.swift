import StarlingCore
import StarlingNN
import StarlingONNX

/// The deep fully connected autoencoder of F. Chollet, "Building Autoencoders in Keras" (The Keras Blog, 2016):
/// 784 -> 128 -> 64 -> 32 -> 64 -> 128 -> 784, ReLU on every hidden layer and the code, sigmoid on the output,
/// trained with per-pixel binary cross-entropy (fused with the sigmoid, as in `FCAutoencoder`).
///
/// Options: `units_1` (128), `units_2` (64), `code_size` (32); the decoder mirrors the encoder.
/// Weights: `encoder_1`..`encoder_3`, `decoder_1`..`decoder_3`, each `kernel` [in, out] and `bias` [out].
public final class DeepAutoencoder: ONNXAutoencoder {
    public static let family = "deep-ae"
    public let config: ModelConfig
    public let parameters = ParameterStore()
    let encoder: [Dense]
    let decoder: [Dense]

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        let pixels = config.inputShape.reduce(1, *)
        let sizes = [pixels, Int(config.option("units_1", default: 128)), Int(config.option("units_2", default: 64)),
                     Int(config.option("code_size", default: 32))]
        guard sizes.allSatisfy({ $0 > 0 }) else {
            throw ModelError.inputShape(family: config.family, expected: [784], got: config.inputShape, source: "model configuration \(config.options)")
        }
        self.config = config
        let p = parameters
        encoder = (1...3).map { Dense(p, name: "encoder_\($0)", inputs: sizes[$0 - 1], outputs: sizes[$0]) }
        decoder = (1...3).map { Dense(p, name: "decoder_\($0)", inputs: sizes[4 - $0], outputs: sizes[3 - $0]) }
        parameters.allocate(rng: &rng)
    }

    public static func defaultConfig() -> ModelConfig {
        ModelConfig(family: family, inputShape: [784], options: ["units_1": 128, "units_2": 64, "code_size": 32])
    }

    /// The 32-unit code, [N, 32].
    public func code<Value: NetworkValue>(_ images: Value) -> Value {
        var h = images.flattened()
        for layer in encoder { h = h.applyingWithReLU(layer) }
        return h
    }

    public func reconstructionLogits<Value: NetworkValue>(_ images: Value, training: Bool) -> Value {
        var h = code(images)
        for layer in decoder.dropLast() { h = h.applyingWithReLU(layer) }
        return decoder[decoder.count - 1](h).reshaped(images.shape)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        reconstructionLogits(batch.images, training: training).binaryCrossEntropy(logits: batch.images)
    }
}
