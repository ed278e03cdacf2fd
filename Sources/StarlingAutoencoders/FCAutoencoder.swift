import StarlingCore
import StarlingNN
import StarlingONNX

/// The fully connected autoencoder of F. Chollet, "Building Autoencoders in Keras" (The Keras Blog, 2016):
/// 784 -> 32 (ReLU) -> 784 (sigmoid), trained with per-pixel binary cross-entropy.
///
/// The sigmoid is fused into the loss (BCE on logits): the same objective, without the log(0) that Keras avoids
/// by clipping. With `l1Activity > 0` it is the tutorial's sparse autoencoder (an L1 activity penalty on the code):
/// the registry's `sparse-ae` is this class with `l1_activity` 1e-4.
public final class FCAutoencoder: ONNXAutoencoder {
    public static let family = "fc-ae"
    public let config: ModelConfig
    public let parameters = ParameterStore()
    let encoder: Dense
    let decoder: Dense
    let l1Activity: Float

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        let pixels = config.inputShape.reduce(1, *)
        let code = Int(config.option("code_size", default: 32))
        guard pixels > 0, code > 0 else { throw ModelError.inputShape(family: config.family, expected: [784], got: config.inputShape, source: "model configuration") }
        self.config = config
        l1Activity = Float(config.option("l1_activity", default: 0))
        encoder = Dense(parameters, name: "encoder", inputs: pixels, outputs: code)
        decoder = Dense(parameters, name: "decoder", inputs: code, outputs: pixels)
        parameters.allocate(rng: &rng)
    }

    public static func defaultConfig(inputShape: [Int] = [784]) -> ModelConfig {
        ModelConfig(family: family, inputShape: inputShape, options: ["code_size": 32])
    }

    /// The code, [N, code_size].
    public func code<Value: NetworkValue>(_ images: Value) -> Value { images.flattened().applyingWithReLU(encoder) }

    /// The decoder's logits for codes [N, code_size]: [N, pixels].
    func decoderLogits<Value: NetworkValue>(_ code: Value) -> Value { decoder(code) }

    public func reconstructionLogits<Value: NetworkValue>(_ images: Value, training: Bool) -> Value {
        decoderLogits(code(images)).reshaped(images.shape)
    }

    /// The BCE of the flat [N, pixels] logits and, for the sparse autoencoder, the L1 penalty on the same code.
    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        let x = batch.images.flattened()
        let h = code(x)
        let bce = decoderLogits(h).binaryCrossEntropy(logits: x)
        guard l1Activity > 0 else { return bce }
        // Keras's activity_regularizer adds l1 * sum|h| averaged over the batch to the loss.
        return bce + h.sum() * (l1Activity / Float(batch.size))   // h >= 0 after ReLU, so sum h = sum abs(h)
    }
}
