import StarlingCore
import StarlingNN
import StarlingONNX

/// YOLOv3-tiny: the small network of darknet's yolov3-tiny.cfg, after J. Redmon and A. Farhadi, "YOLOv3: An
/// Incremental Improvement" (arXiv:1804.02767, 2018), with YOLOv3's head (`YOLOHead`) on two scales.
///
/// Layers as the cfg numbers them (every convolution 3x3 unless said, batch norm and leaky ReLU 0.1, same padding):
/// 0 conv 16, 1 max-pool 2/2, 2 conv 32, 3 pool, 4 conv 64, 5 pool, 6 conv 128, 7 pool, 8 conv 256, 9 pool,
/// 10 conv 512, 11 max-pool 2/1 (padded right and below), 12 conv 1024, 13 conv 256 1x1, 14 conv 512, 15 conv 1x1 to
/// 3 x (5 + C) linear: the stride-32 output (anchors 3, 4, 5); 17 route 13, 18 conv 128 1x1, 19 upsample x2, 20 route
/// 19 and 8 (concatenated in that order), 21 conv 256, 22 conv 1x1 to 3 x (5 + C) linear: the stride-16 output
/// (anchors 0, 1, 2). Input pixels 0...255 scaled to [0, 1].
///
/// The network's input (options `network_height`, `network_width`: multiples of 32) need not be the data's size: the
/// images are letterboxed into it (`Letterbox`: resized to fit, centred, grey around) and the head maps boxes both
/// ways. By default it is the data's size rounded up to multiples of 32, so nothing is resized (300 x 480 frames get 10
/// grey rows above and below); `--network-size 416x416` is darknet's square input.
///
/// `width` multiplies every layer's channel count (1: darknet's network). Deviations from darknet: Keras's batch-norm
/// defaults (momentum 0.99, epsilon 1e-3) and initialisation (he_normal kernels), and a bias in every convolution
/// (darknet drops it before batch norm, where it changes nothing but the parameter count). Weight decay, darknet's
/// 5e-4, is `--weight-decay`.
public final class YOLOv3Tiny: Detector {
    public static let family = "yolov3-tiny"
    /// yolov3-tiny.cfg's anchors (k-means on COCO at 416 x 416), smallest first.
    public static let defaultAnchors: [[Double]] = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]

    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false
    public let yolo: YOLOHead
    public var head: any DetectionHead { yolo }
    /// Layers 0, 2, 4, 6, 8, 10, 12, 13, 14, 18, 21 of the cfg.
    let blocks: [DarknetConvolution]
    /// Layers 15 and 22.
    let outputs: [Conv2D]

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, config.inputShape[1] > 0, config.inputShape[2] > 0,
              let names = config.classNames, names.count >= 2,
              let sizes = config.anchorSizes, sizes.count == 6, sizes.allSatisfy({ $0.count == 2 && $0[0] > 0 && $0[1] > 0 }) else {
            throw ModelError.inputShape(family: config.family, expected: [3, 416, 416], got: config.inputShape,
                                        source: "model configuration (needs colour images, class names and six anchors)")
        }
        let letterbox = try Letterbox.network(of: config, multiple: 32)
        let (height, width) = (letterbox.networkHeight, letterbox.networkWidth)
        self.config = config
        yolo = YOLOHead(scales: [.init(height: height / 32, width: width / 32, anchors: [3, 4, 5]),
                                 .init(height: height / 16, width: width / 16, anchors: [0, 1, 2])],
                        anchorSizes: sizes.map { (Float($0[0]), Float($0[1])) }, imageHeight: height, imageWidth: width, classCount: names.count,
                        letterbox: letterbox)
        let multiplier = config.option("width", default: 1)
        func channels(_ c: Int) -> Int { max(4, Int((Double(c) * multiplier).rounded())) }
        // (cfg layer, filters, kernel size, input channels)
        var plan: [(Int, Int, Int, Int)] = []
        var inputs = 3
        for (layer, filters) in [(0, 16), (2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 1024)] {
            plan.append((layer, channels(filters), 3, inputs))
            inputs = channels(filters)
        }
        plan += [(13, channels(256), 1, channels(1024)), (14, channels(512), 3, channels(256)), (18, channels(128), 1, channels(256)),
                 (21, channels(256), 3, channels(128) + channels(256))]
        let store = parameters, buffers = buffersStore
        blocks = plan.map { DarknetConvolution(store, buffers: buffers, layer: $0.0, inputs: $0.3, outputs: $0.1, kernelSize: $0.2) }
        let predicted = 3 * yolo.depth
        outputs = [Conv2D(store, name: "conv_15", inputs: channels(512), outputs: predicted, kernelSize: (1, 1), initializer: .heNormal(fanIn: channels(512))),
                   Conv2D(store, name: "conv_22", inputs: channels(256), outputs: predicted, kernelSize: (1, 1), initializer: .heNormal(fanIn: channels(256)))]
        parameters.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffersStore.allocate(rng: &unused)
    }

    /// The family's configuration: darknet's 416 x 416 with the driving classes, or a detection dataset's image size
    /// and classes (the network's input that size rounded up to multiples of 32).
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        guard let dataset else {
            return defaultConfig(height: 416, width: 416, classNames: Udacity.classNames)
        }
        let (height, width, classNames) = try dataset.detectionImages()
        return defaultConfig(height: height, width: width, classNames: classNames)
    }

    public static func defaultConfig(height: Int, width: Int, classNames: [String], anchorSizes: [[Double]] = defaultAnchors,
                                     widthMultiplier: Double = 1) -> ModelConfig {
        ModelConfig(family: family, inputShape: [3, height, width], options: ["width": widthMultiplier], classNames: classNames,
                    anchorSizes: anchorSizes)
    }

    /// The stride-32 and stride-16 outputs, [N, 3 (5 + C), H / 32, W / 32] and [N, 3 (5 + C), H / 16, W / 16]: the one
    /// forward pass, run on Tensors to train and infer and on ONNX values to export.
    func outputMaps<Value: NetworkValue>(_ images: Value, training: Bool) -> [Value] {
        let sum: CrossReplicaSum? = synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil
        func block(_ k: Int, _ x: Value) -> Value { blocks[k](x, training: training, crossReplicaSum: sum) }
        var h = images.letterboxed(yolo.letterbox).affine(scale: 1 / 255, shift: 0)
        for k in 0..<4 { h = block(k, h).maxPool2d(kernel: (2, 2), padding: .valid) }        // layers 0-7
        let fine = block(4, h)                                                                // 8: stride 16
        h = block(5, fine.maxPool2d(kernel: (2, 2), padding: .valid))                         // 9, 10: stride 32
        h = block(6, h.maxPool2d(kernel: (2, 2), stride: (1, 1), padding: .same))             // 11, 12
        let lateral = block(7, h)                                                             // 13
        let coarse = outputs[0](block(8, lateral))                                            // 14, 15
        h = block(9, lateral).upsampleNearest(scale: (2, 2))                                  // 18, 19
        let fineOutput = outputs[1](block(10, Value.concat([h, fine], axis: 1)))              // 20, 21, 22
        return [coarse, fineOutput]
    }

    public func headOutputs(_ images: Tensor, training: Bool) -> [Tensor] {
        outputMaps(LayoutTensor(images), training: training).map(\.tensor)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        detectionLoss(batch, training: training, kernels: [], l2: 0)
    }
}

/// darknet's `[convolutional]` with `batch_normalize=1`, `pad=1` and `activation=leaky`: convolution (stride 1: same
/// padding; stride 2: darknet's size / 2 pixels on every side, so even sides halve), batch norm, leaky ReLU with slope
/// 0.1. Named `conv_<layer>` and `bn_<layer>` after the cfg's layer index.
struct DarknetConvolution {
    let conv: Conv2D
    let norm: BatchNormalization

    init(_ store: ParameterStore, buffers: ParameterStore, layer: Int, inputs: Int, outputs: Int, kernelSize: Int, stride: Int = 1) {
        let pad = kernelSize / 2
        conv = Conv2D(store, name: "conv_\(layer)", inputs: inputs, outputs: outputs, kernelSize: (kernelSize, kernelSize),
                      stride: (stride, stride), padding: stride == 1 ? .same : .explicit(top: pad, bottom: pad, left: pad, right: pad),
                      initializer: .heNormal(fanIn: inputs * kernelSize * kernelSize))
        norm = BatchNormalization(store, buffers: buffers, name: "bn_\(layer)", channels: outputs)
    }

    func callAsFunction<Value: NetworkValue>(_ x: Value, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Value {
        conv(x).applyingWithLeakyReLU(norm, slope: 0.1, training: training, crossReplicaSum: crossReplicaSum)
    }
}

extension YOLOv3Tiny: ONNXDetector {
    public func onnxHeadOutputs(_ images: ONNXValue) -> [ONNXValue] { outputMaps(images, training: false) }
}
