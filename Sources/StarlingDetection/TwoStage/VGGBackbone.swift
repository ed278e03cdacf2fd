import StarlingCore
import StarlingNN

/// VGG16's convolutional layers (K. Simonyan and A. Zisserman, ICLR 2015, configuration D: conv1_1 ... conv5_3, 3x3,
/// 2x2 max-pooling after blocks 1-4) as the R-CNN family's shared feature map at stride 16, the paper's pool5 left to
/// the RoI pooling. Inputs are pixels 0...255 minus ImageNet's channel means (123, 117, 104).
///
/// `width` multiplies every convolution's channels (at least 4): 1 is VGG16, 0.25 a network a CPU trains from scratch.
/// Deviation from VGG16: batch normalisation (Keras's defaults) after every convolution, then ReLU, because without
/// ImageNet weights VGG16 does not converge from scratch in a CPU budget. Layers are named `convB_L` and `convB_L_bn`.
public struct VGGBackbone: Sendable {
    /// Input pixels per feature cell: four 2 x 2 poolings.
    public static let stride = 16
    /// VGG16's convolutions by block, channels at width 1.
    static let blocks: [[Int]] = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]

    let layers: [(conv: Conv2D, norm: BatchNormalization, poolAfter: Bool)]
    /// Channels of the feature map.
    public let channels: Int

    public init(_ store: ParameterStore, buffers: ParameterStore, width: Double) {
        precondition(width > 0, "VGG backbone at width \(width)")
        func scaled(_ c: Int) -> Int { max(4, Int((Double(c) * width).rounded())) }
        var inputs = 3
        var layers: [(conv: Conv2D, norm: BatchNormalization, poolAfter: Bool)] = []
        for (b, block) in Self.blocks.enumerated() {
            for (l, out) in block.enumerated() {
                let name = "conv\(b + 1)_\(l + 1)", c = scaled(out)
                layers.append((Conv2D(store, name: name, inputs: inputs, outputs: c, initializer: .heNormal(fanIn: inputs * 9)),
                               BatchNormalization(store, buffers: buffers, name: name + "_bn", channels: c),
                               l == block.count - 1 && b < Self.blocks.count - 1))
                inputs = c
            }
        }
        self.layers = layers
        channels = inputs
    }

    /// The feature map's height and width for an input of `height` x `width` (each valid pooling floors).
    public static func featureSize(height: Int, width: Int) -> (height: Int, width: Int) { (height / stride, width / stride) }

    /// conv5_3's feature map [N, channels, H / 16, W / 16]. The ReLU follows the batch norm as an op of its own: the
    /// fused batch norm + leaky ReLU needs a slope in (0, 1) to read its derivative from its output; `LayoutTensor` still
    /// fuses the ReLU into the convolution at inference.
    public func callAsFunction<Value: NetworkValue>(_ images: Value, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Value {
        var x = images.subtractingChannelMeans([123, 117, 104])
        for layer in layers {
            x = layer.conv(x).applying(layer.norm, training: training, crossReplicaSum: crossReplicaSum).relu()
            if layer.poolAfter { x = x.maxPool2d(kernel: (2, 2), padding: .valid) }
        }
        return x
    }
}
