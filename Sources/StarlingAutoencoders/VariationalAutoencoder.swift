import StarlingCore
import StarlingNN
import StarlingONNX

/// The variational autoencoder of D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014,
/// in the fully connected form of F. Chollet, "Building Autoencoders in Keras" (The Keras Blog, 2016):
/// 784 -> 64 (ReLU) -> two heads, the mean and the log-variance of a 2-D Gaussian posterior q(z|x);
/// z = mean + exp(logvar / 2) * eps with eps ~ N(0, I); decoder 2 -> 64 (ReLU) -> 784 Bernoulli logits.
///
/// The loss is the true negative ELBO per image, averaged over the batch:
///     sum over pixels of BCE(x, decoder(z)) + KL(q(z|x) || N(0, I)) summed over latent dimensions,
/// not the tutorial's per-pixel mean of the cross-entropy mixed with a per-image KL (which weighs the KL 784
/// times too much). The tutorial's code also names its second head `z_log_sigma` but uses it as a log-variance
/// in the KL and as a log-sigma in the sampling; here it is the log-variance everywhere.
///
/// eps comes from each sample's stream (`Batch.randomStream`): (seed, epoch, index) in training, a fixed seed
/// outside it, so the validation loss is a repeatable one-sample estimate. `reconstructionLogits` and `code`
/// use z = mean.
///
/// Options: `intermediate_dim` (64), `latent_dim` (2). Weights: `encoder_hidden`, `z_mean`, `z_log_var`,
/// `decoder_hidden`, `decoder_output`, each `kernel` [in, out] and `bias` [out].
public final class VariationalAutoencoder: ONNXVariational {
    public static let family = "vae"
    public let config: ModelConfig
    public let parameters = ParameterStore()
    let hidden: Dense, mean: Dense, logVariance: Dense
    let decoderHidden: Dense, decoderOutput: Dense

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        let pixels = config.inputShape.reduce(1, *)
        let intermediate = Int(config.option("intermediate_dim", default: 64))
        let latent = Int(config.option("latent_dim", default: 2))
        guard pixels > 0, intermediate > 0, latent > 0 else {
            throw ModelError.inputShape(family: config.family, expected: [784], got: config.inputShape, source: "model configuration \(config.options)")
        }
        self.config = config
        let p = parameters
        hidden = Dense(p, name: "encoder_hidden", inputs: pixels, outputs: intermediate)
        mean = Dense(p, name: "z_mean", inputs: intermediate, outputs: latent)
        logVariance = Dense(p, name: "z_log_var", inputs: intermediate, outputs: latent)
        decoderHidden = Dense(p, name: "decoder_hidden", inputs: latent, outputs: intermediate)
        decoderOutput = Dense(p, name: "decoder_output", inputs: intermediate, outputs: pixels)
        parameters.allocate(rng: &rng)
    }

    public static func defaultConfig() -> ModelConfig {
        ModelConfig(family: family, inputShape: [784], options: ["intermediate_dim": 64, "latent_dim": 2])
    }

    public func posterior<Value: NetworkValue>(_ images: Value) -> (mean: Value, logVariance: Value) {
        let h = hidden(images.flattened()).relu()
        return (mean(h), logVariance(h))
    }

    public func decoderLogits<Value: NetworkValue>(_ z: Value, imageShape: [Int]) -> Value {
        decoderOutput(decoderHidden(z).relu()).reshaped(imageShape)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor { negativeELBO(batch, training: training).total }
}

/// A VAE with a diagonal Gaussian posterior and a Bernoulli decoder: what training and evaluation need of it. The
/// encoder and decoder are written once, over `NetworkValue`: training and inference run them on `Tensor`s, the
/// ONNX export (`ONNXVariational`) on `ONNXValue`s.
public protocol VariationalModel: Autoencoder, Encoding {
    /// q(z|x): mean and log-variance, [N, latent] each.
    func posterior<Value: NetworkValue>(_ images: Value) -> (mean: Value, logVariance: Value)
    /// Logits of p(x|z) for latents z [N, latent], shaped `imageShape` ([N] + the input shape).
    func decoderLogits<Value: NetworkValue>(_ z: Value, imageShape: [Int]) -> Value
}

/// The two terms of the negative ELBO of a batch, each a one-element tensor averaged over the images (nats/image).
public struct NegativeELBO {
    /// Sum over pixels of the binary cross-entropy of the images under the decoder at the sampled z.
    public let reconstruction: Tensor
    /// KL(q(z|x) || N(0, I)), summed over latent dimensions.
    public let kl: Tensor
    public var total: Tensor { reconstruction + kl }
}

extension VariationalModel {
    /// Separates the latent samples' stream from other per-sample streams.
    static var latentPurpose: UInt64 { 0x1A7E_27 }

    /// The posterior mean, [N, latent].
    public func code<Value: NetworkValue>(_ images: Value) -> Value { posterior(images).mean }

    /// The reconstruction at z = mean (deterministic).
    public func reconstructionLogits<Value: NetworkValue>(_ images: Value, training: Bool) -> Value {
        decoderLogits(posterior(images).mean, imageShape: images.shape)
    }

    /// The passes on Tensors run on `LayoutTensor`s, which choose the fast layout op by op.
    public func code(_ images: Tensor) -> Tensor { posterior(LayoutTensor(images)).mean.tensor }

    public func reconstructionLogits(_ images: Tensor, training: Bool) -> Tensor {
        reconstructionLogits(LayoutTensor(images), training: training).tensor
    }

    /// eps ~ N(0, I), [N, dimensions], each row from its sample's stream.
    public func latentNoise(_ batch: Batch, dimensions: Int, training: Bool) -> Tensor {
        let eps = Tensor(zeros: [batch.size, dimensions])
        let e = eps.data
        for r in 0..<batch.size {
            var rng = batch.randomStream(sample: r, purpose: Self.latentPurpose, training: training)
            for k in 0..<dimensions { e[r * dimensions + k] = rng.normal() }
        }
        return eps
    }

    /// The reparameterisation z = mean + exp(logVariance / 2) * eps, differentiable in mean and logVariance.
    public func sampleLatent(mean: Tensor, logVariance: Tensor, noise: Tensor) -> Tensor {
        mean + (logVariance * 0.5).exp() * noise
    }

    /// The negative ELBO of a batch with one latent sample per image.
    public func negativeELBO(_ batch: Batch, training: Bool) -> NegativeELBO {
        let posterior = posterior(LayoutTensor(batch.images))
        let (mean, logVariance) = (posterior.mean.tensor, posterior.logVariance.tensor)
        let z = sampleLatent(mean: mean, logVariance: logVariance,
                             noise: latentNoise(batch, dimensions: mean.shape[1], training: training))
        let logits = decoderLogits(LayoutTensor(z), imageShape: batch.images.shape).tensor
        // The per-pixel mean times the pixels of an image is the per-image sum averaged over the batch.
        let pixels = Float(batch.images.count / max(batch.size, 1))
        let reconstruction = logits.binaryCrossEntropy(logits: batch.images) * pixels
        let kl = Tensor.klDivergenceStandardNormal(mean: mean, logVariance: logVariance, reduction: .meanOfSampleSums)
        return NegativeELBO(reconstruction: reconstruction, kl: kl)
    }
}

/// Variational autoencoders export the posterior's mean and log-variance, and the reconstruction decoded from the
/// mean (what `starling eval` reports at z = mean), from `VariationalModel`'s forward pass on `ONNXValue`s.
public protocol ONNXVariational: ONNXExportable, VariationalModel {}

extension ONNXVariational {
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        let (mean, logVariance) = posterior(images)
        return [ONNXOutput(name: "reconstruction", value: reconstructionLogits(images, training: false).sigmoid(), meaning: "image decoded from z = mean, probabilities in [0, 1]"),
                ONNXOutput(name: "z_mean", value: mean, meaning: "posterior mean [N, latent]"),
                ONNXOutput(name: "z_log_var", value: logVariance, meaning: "posterior log-variance [N, latent]")]
    }
}
