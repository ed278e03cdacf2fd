import StarlingCore
import StarlingNN

/// A convolutional variational autoencoder: D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes",
/// ICLR 2014, with the small convolutional encoder and decoder of F. Chollet's Keras example "Variational
/// AutoEncoder" (keras.io, 2020). Images are NCHW [N, 1, H, W] with H and W multiples of 4 (MNIST: 28).
///
///     encoder  conv2d_1   3x3, 32 filters, stride 2, same, ReLU      28 -> 14
///              conv2d_2   3x3, 64 filters, stride 2, same, ReLU      14 -> 7
///              flatten (7 * 7 * 64 = 3136), encoder_hidden dense 16, ReLU
///              z_mean, z_log_var: dense 16 -> latent (2, or e.g. 16 with `latent_dim`)
///     decoder  decoder_hidden dense latent -> 3136, ReLU, reshaped to [64, 7, 7]
///              conv2d_transpose_1  3x3, 64 filters, stride 2, same, ReLU   7 -> 14
///              conv2d_transpose_2  3x3, 32 filters, stride 2, same, ReLU   14 -> 28
///              conv2d_transpose_3  3x3, 1 filter, stride 1, same: Bernoulli logits
///
/// Training objective, sampling and evaluation are those of `VariationalModel` (see `VariationalAutoencoder`):
/// the negative ELBO per image, BCE summed over pixels plus the KL summed over latent dimensions, with
/// z = mean + exp(logvar / 2) * eps.
///
/// In training the convolutions run on `LayoutTensor`'s blocked path, as conv-ae's: the encoder's blocked from the
/// image on, unblocked once for the flatten (64 x 7 x 7); the decoder's blocked from the reshaped dense output on, each
/// up-convolution with its ReLU as one op, the last into the planar image on the narrow kernels.
///
/// Options: `filters_1` (32), `filters_2` (64), `hidden` (16), `latent_dim` (2).
public final class ConvVariationalAutoencoder: ONNXVariational {
    public static let family = "conv-vae"
    public let config: ModelConfig
    public let parameters = ParameterStore()
    let convolutions: [Conv2D]
    let hidden: Dense, mean: Dense, logVariance: Dense
    let decoderHidden: Dense
    let transposed: [Conv2DTranspose]
    /// The decoder's first feature map: [filters_2, H / 4, W / 4].
    package let bottleneck: [Int]

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        let shape = config.inputShape
        let f1 = Int(config.option("filters_1", default: 32)), f2 = Int(config.option("filters_2", default: 64))
        let width = Int(config.option("hidden", default: 16)), latent = Int(config.option("latent_dim", default: 2))
        guard shape.count == 3, shape[0] == 1, shape[1] > 0, shape[2] > 0, shape[1] % 4 == 0, shape[2] % 4 == 0,
              f1 > 0, f2 > 0, width > 0, latent > 0 else {
            throw ModelError.inputShape(family: config.family, expected: [1, 28, 28], got: shape,
                                        source: "model configuration \(config.options) (one channel, sides multiples of 4)")
        }
        self.config = config
        bottleneck = [f2, shape[1] / 4, shape[2] / 4]
        let flat = bottleneck.reduce(1, *)
        let p = parameters
        convolutions = [Conv2D(p, name: "conv2d_1", inputs: 1, outputs: f1, stride: (2, 2)),
                        Conv2D(p, name: "conv2d_2", inputs: f1, outputs: f2, stride: (2, 2))]
        hidden = Dense(p, name: "encoder_hidden", inputs: flat, outputs: width)
        mean = Dense(p, name: "z_mean", inputs: width, outputs: latent)
        logVariance = Dense(p, name: "z_log_var", inputs: width, outputs: latent)
        decoderHidden = Dense(p, name: "decoder_hidden", inputs: latent, outputs: flat)
        transposed = [Conv2DTranspose(p, name: "conv2d_transpose_1", inputs: f2, outputs: f2, stride: (2, 2)),
                      Conv2DTranspose(p, name: "conv2d_transpose_2", inputs: f2, outputs: f1, stride: (2, 2)),
                      Conv2DTranspose(p, name: "conv2d_transpose_3", inputs: f1, outputs: 1)]
        parameters.allocate(rng: &rng)
    }

    public static func defaultConfig() -> ModelConfig {
        ModelConfig(family: family, inputShape: [1, 28, 28], options: ["filters_1": 32, "filters_2": 64, "hidden": 16, "latent_dim": 2])
    }

    public func posterior<Value: NetworkValue>(_ images: Value) -> (mean: Value, logVariance: Value) {
        var h = images
        for conv in convolutions { h = conv(h).relu() }
        let features = hidden(h.flattened()).relu()
        return (mean(features), logVariance(features))
    }

    public func decoderLogits<Value: NetworkValue>(_ z: Value, imageShape: [Int]) -> Value {
        var h = decoderHidden(z).relu().reshaped([z.shape[0]] + bottleneck)
        for layer in transposed.dropLast() { h = h.applyingWithReLU(layer) }
        return transposed[transposed.count - 1](h).reshaped(imageShape)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor { negativeELBO(batch, training: training).total }
}
