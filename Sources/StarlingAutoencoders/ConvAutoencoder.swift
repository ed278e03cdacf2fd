import StarlingCore
import StarlingNN
import StarlingONNX

/// The convolutional autoencoder of F. Chollet, "Building Autoencoders in Keras" (The Keras Blog, 2016).
///
/// Encoder: 3x3 convolutions of 16, 8 and 8 filters (ReLU, same padding), each followed by 2x2 max-pooling with
/// same padding: 28 -> 14 -> 7 -> 4, a 4x4x8 code. Decoder: 3x3 convolutions of 8 and 8 filters each followed by
/// 2x upsampling (4 -> 8 -> 16), a valid 3x3 convolution of 16 filters (16 -> 14), 2x upsampling (28) and a 3x3
/// convolution to one channel whose sigmoid is the image. As the FC autoencoder, the sigmoid is fused into the
/// binary cross-entropy. Images are NCHW [N, 1, 28, 28].
public final class ConvAutoencoder: ONNXAutoencoder {
    public static let family = "conv-ae"
    public let config: ModelConfig
    public let parameters = ParameterStore()
    let encoder: [Conv2D]
    let decoder: [Conv2D]
    let output: Conv2D

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 1 else {
            throw ModelError.inputShape(family: config.family, expected: [1, 28, 28], got: config.inputShape, source: "model configuration")
        }
        self.config = config
        let p = parameters
        encoder = [Conv2D(p, name: "conv2d_1", inputs: 1, outputs: 16),
                   Conv2D(p, name: "conv2d_2", inputs: 16, outputs: 8),
                   Conv2D(p, name: "conv2d_3", inputs: 8, outputs: 8)]
        decoder = [Conv2D(p, name: "conv2d_4", inputs: 8, outputs: 8),
                   Conv2D(p, name: "conv2d_5", inputs: 8, outputs: 8),
                   Conv2D(p, name: "conv2d_6", inputs: 8, outputs: 16, padding: .valid)]
        output = Conv2D(p, name: "conv2d_7", inputs: 16, outputs: 1)
        parameters.allocate(rng: &rng)
    }

    public static func defaultConfig() -> ModelConfig {
        ModelConfig(family: family, inputShape: [1, 28, 28])
    }

    /// The 4x4x8 code, [N, 8, 4, 4].
    func featureMap<Value: NetworkValue>(_ images: Value) -> Value {
        var h = images
        for conv in encoder { h = h.applyingWithReLU(conv).maxPool2d(kernel: (2, 2), padding: .same) }
        return h
    }

    /// The code flattened to [N, 128] (channel-major, as the NCHW feature map lies in memory).
    public func code<Value: NetworkValue>(_ images: Value) -> Value { featureMap(images).flattened() }

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

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        reconstructionLogits(batch.images, training: training).binaryCrossEntropy(logits: batch.images)
    }
}
