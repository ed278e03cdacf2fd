import StarlingCore
import StarlingNN
import StarlingONNX

/// The convolutional denoising autoencoder of F. Chollet, "Building Autoencoders in Keras" (The Keras Blog, 2016),
/// after P. Vincent et al., "Extracting and Composing Robust Features with Denoising Autoencoders", ICML 2008.
///
/// Encoder: two 3x3 convolutions of 32 filters (ReLU, same padding), each followed by 2x2 max-pooling:
/// 28 -> 14 -> 7, a 7x7x32 code. Decoder: two 3x3 convolutions of 32 filters (ReLU, same), each followed by 2x
/// upsampling (7 -> 14 -> 28), and a 3x3 convolution to one channel whose sigmoid is the image (fused into the
/// binary cross-entropy, as in the other autoencoders). Images are NCHW [N, 1, H, W] with H and W multiples of 4.
///
/// The input is the clean image plus Gaussian noise, `noise_factor` (0.5) * N(0, 1), clipped to [0, 1]; the target
/// is the clean image. Where the tutorial corrupts the training set once, here the noise is drawn afresh every
/// epoch from (seed, epoch, sample index) (see `Batch.randomStream`), so the model never sees the same noisy copy
/// twice; outside training it comes from a fixed seed, so validation and `starling eval` figures repeat.
///
/// Options: `filters` (32), `noise_factor` (0.5). Weights `conv2d_1`..`conv2d_5`, kernels [out, in, 3, 3].
public final class DenoisingAutoencoder: ONNXAutoencoder {
    public static let family = "denoising-ae"
    /// Separates this model's noise stream from other per-sample streams.
    static let noisePurpose: UInt64 = 0xD3_0153
    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let noiseFactor: Float
    let encoder: [Conv2D]
    let decoder: [Conv2D]
    let output: Conv2D

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        let shape = config.inputShape
        let filters = Int(config.option("filters", default: 32))
        guard shape.count == 3, shape[0] == 1, shape[1] > 0, shape[2] > 0, shape[1] % 4 == 0, shape[2] % 4 == 0, filters > 0 else {
            throw ModelError.inputShape(family: config.family, expected: [1, 28, 28], got: shape, source: "model configuration (one channel, sides multiples of 4)")
        }
        self.config = config
        noiseFactor = Float(config.option("noise_factor", default: 0.5))
        let p = parameters
        encoder = [Conv2D(p, name: "conv2d_1", inputs: 1, outputs: filters),
                   Conv2D(p, name: "conv2d_2", inputs: filters, outputs: filters)]
        decoder = [Conv2D(p, name: "conv2d_3", inputs: filters, outputs: filters),
                   Conv2D(p, name: "conv2d_4", inputs: filters, outputs: filters)]
        output = Conv2D(p, name: "conv2d_5", inputs: filters, outputs: 1)
        parameters.allocate(rng: &rng)
    }

    public static func defaultConfig() -> ModelConfig {
        ModelConfig(family: family, inputShape: [1, 28, 28], options: ["filters": 32, "noise_factor": 0.5])
    }

    /// The batch's images with this sample's noise added and clipped to [0, 1] (a constant: no gradient).
    public func corrupted(_ batch: Batch, training: Bool) -> Tensor {
        let clean = batch.images
        let noisy = Tensor(zeros: clean.shape)
        let perSample = clean.count / max(batch.size, 1)
        let x = clean.data, y = noisy.data
        for r in 0..<batch.size {
            var rng = batch.randomStream(sample: r, purpose: Self.noisePurpose, training: training)
            let base = r * perSample
            for i in base..<(base + perSample) { y[i] = min(max(x[i] + noiseFactor * rng.normal(), 0), 1) }
        }
        return noisy
    }

    /// The 7x7x32 code, [N, 32, 7, 7].
    func featureMap<Value: NetworkValue>(_ images: Value) -> Value {
        var h = images
        for conv in encoder { h = h.applyingWithReLU(conv).maxPool2d(kernel: (2, 2), padding: .same) }
        return h
    }

    /// The code flattened to [N, 1568] (channel-major).
    public func code<Value: NetworkValue>(_ images: Value) -> Value { featureMap(images).flattened() }

    /// Logits of the clean image the model sees in `images` (pass `corrupted(...)` to denoise).
    public func reconstructionLogits<Value: NetworkValue>(_ images: Value, training: Bool) -> Value {
        var h = featureMap(images)
        for conv in decoder { h = h.applyingWithReLU(conv).upsampleNearest(scale: (2, 2)) }
        return output(h)
    }

    /// The passes on Tensors run on `LayoutTensor`s, which choose the fast layout op by op.
    public func code(_ images: Tensor) -> Tensor { code(LayoutTensor(images)).tensor }

    public func reconstructionLogits(_ images: Tensor, training: Bool) -> Tensor {
        reconstructionLogits(LayoutTensor(images), training: training).tensor
    }

    /// Per-pixel BCE of the reconstruction of the noisy images against the clean ones.
    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        reconstructionLogits(corrupted(batch, training: training), training: training).binaryCrossEntropy(logits: batch.images)
    }
}
