import StarlingCore

/// The fully connected autoencoder of F. Chollet, "Building Autoencoders in Keras" (The Keras Blog, 2016):
/// 784 -> 32 (ReLU) -> 784 (sigmoid), trained with per-pixel binary cross-entropy.
///
/// The sigmoid is fused into the loss (BCE on logits): the same objective, without the log(0) that Keras avoids
/// by clipping. With `l1Activity > 0` it is the tutorial's sparse autoencoder (an L1 activity penalty on the code):
/// the registry's `sparse-ae` is this class with `l1_activity` 1e-4.
public final class FCAutoencoder: Autoencoder, Encoding {
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

    func flat(_ images: Tensor) -> Tensor {
        images.rank == 2 ? images : images.reshaped([images.shape[0], -1])
    }

    public func code(_ images: Tensor) -> Tensor { encoder(flat(images)).relu() }

    public func reconstructionLogits(_ images: Tensor, training: Bool) -> Tensor {
        decoder(code(images)).reshaped(images.shape)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        let x = flat(batch.images)
        let h = encoder(x).relu()
        let bce = decoder(h).binaryCrossEntropy(logits: x)
        guard l1Activity > 0 else { return bce }
        // Keras's activity_regularizer adds l1 * sum|h| averaged over the batch to the loss.
        return bce + h.sum() * (l1Activity / Float(batch.size))   // h >= 0 after ReLU, so sum h = sum abs(h)
    }
}

extension FCAutoencoder: ONNXAutoencoder {
    public func onnxCode(_ images: ONNXValue) -> ONNXValue { encoder(images.flattened()).relu() }

    public func onnxReconstructionLogits(_ images: ONNXValue) -> ONNXValue {
        decoder(onnxCode(images)).reshaped(images.shape)
    }
}
