import StarlingCore
import StarlingNN
import StarlingONNX

/// YOLOv3: J. Redmon and A. Farhadi, "YOLOv3: An Incremental Improvement" (arXiv:1804.02767, 2018), as darknet's
/// yolov3.cfg builds it, with YOLOv3's head (`YOLOHead`) on three scales.
///
/// Darknet-53 (every convolution batch norm and leaky ReLU 0.1; 3x3 unless said): layer 0 conv 32, then five stages,
/// each a 3x3 stride-2 conv doubling the channels (64, 128, 256, 512, 1024) followed by residual blocks (1, 2, 8, 8, 4
/// of them), a block being conv 1x1 to half the channels, conv 3x3 back, and a `[shortcut]` adding the block's input.
/// The detection layers, coarsest first, as the cfg numbers them at depth 1:
///
/// - stride 32: 75-79 conv 512 1x1, 1024, 512 1x1, 1024, 512 1x1; 80 conv 1024; 81 conv 1x1 to 3 x (5 + C) linear;
///   82 yolo (anchors 6, 7, 8);
/// - stride 16: 83 route 79, 84 conv 256 1x1, 85 upsample x2, 86 route 85 and 61 (the stride-16 stage, concatenated
///   in that order), 87-91 conv 256 1x1, 512, 256 1x1, 512, 256 1x1, 92 conv 512, 93 conv 1x1 linear, 94 yolo (3, 4, 5);
/// - stride 8: 95 route 91, 96 conv 128 1x1, 97 upsample, 98 route 97 and 36, 99-103 conv 128 1x1, 256, ..., 104
///   conv 256, 105 conv 1x1 linear, 106 yolo (anchors 0, 1, 2).
///
/// Input pixels 0...255 scaled to [0, 1], letterboxed into the network's input (as yolov3-tiny). The stride-2 convolutions pad
/// one pixel on every side as darknet does.
///
/// `width` multiplies every layer's channel count and `depth` the residual blocks of each stage (rounded, at least one
/// each): (1, 1) is darknet's network; CPU runs take e.g. (0.25, 0.34), blocks 1-1-3-3-1. Convolutions are named
/// `conv_<layer>` / `bn_<layer>` after the layer index darknet's cfg would give the network at that depth.
/// Deviations from darknet: Keras's batch-norm defaults (momentum 0.99, epsilon 1e-3) and initialisation (he_normal
/// kernels), and a bias in every convolution (darknet drops it before batch norm). Weight decay is `--weight-decay`.
public final class YOLOv3: Detector {
    public static let family = "yolov3"
    /// yolov3.cfg's anchors (k-means on COCO at 416 x 416), smallest first.
    public static let defaultAnchors: [[Double]] = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]]
    /// Darknet-53's residual blocks per stage.
    public static let residualBlocks = [1, 2, 8, 8, 4]

    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false
    public let yolo: YOLOHead
    public var head: any DetectionHead { yolo }

    /// A residual block: 1x1 to half the channels, 3x3 back, the input added.
    struct Residual { let squeeze: DarknetConvolution, expand: DarknetConvolution }
    /// A stride-2 convolution and its residual blocks.
    struct Stage { let down: DarknetConvolution, residuals: [Residual] }
    /// One detection scale: the 1x1 convolution before the upsampling (none on the coarsest), five alternating 1x1 and
    /// 3x3 convolutions (the last one's output is routed to the next scale), a 3x3 and the linear 1x1 output.
    struct Branch { let lateral: DarknetConvolution?, neck: [DarknetConvolution], predict: DarknetConvolution, output: Conv2D }

    let stem: DarknetConvolution
    let stages: [Stage]
    /// Strides 32, 16, 8.
    let branches: [Branch]

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let names = config.classNames, names.count >= 2,
              let sizes = config.anchorSizes, sizes.count == 9, sizes.allSatisfy({ $0.count == 2 && $0[0] > 0 && $0[1] > 0 }) else {
            throw ModelError.inputShape(family: config.family, expected: [3, 416, 416], got: config.inputShape,
                                        source: "model configuration (needs colour images, class names and nine anchors)")
        }
        let letterbox = try Letterbox.network(of: config, multiple: 32)
        let (height, width) = (letterbox.networkHeight, letterbox.networkWidth)
        self.config = config
        yolo = YOLOHead(scales: [.init(height: height / 32, width: width / 32, anchors: [6, 7, 8]),
                                 .init(height: height / 16, width: width / 16, anchors: [3, 4, 5]),
                                 .init(height: height / 8, width: width / 8, anchors: [0, 1, 2])],
                        anchorSizes: sizes.map { (Float($0[0]), Float($0[1])) }, imageHeight: height, imageWidth: width, classCount: names.count,
                        letterbox: letterbox)
        let multiplier = config.option("width", default: 1), depth = config.option("depth", default: 1)
        func channels(_ c: Int) -> Int { max(4, Int((Double(c) * multiplier).rounded())) }
        let store = parameters, buffers = buffersStore
        var layer = 0
        /// The next cfg layer, a convolution.
        func conv(_ inputs: Int, _ outputs: Int, _ kernelSize: Int, stride: Int = 1) -> DarknetConvolution {
            defer { layer += 1 }
            return DarknetConvolution(store, buffers: buffers, layer: layer, inputs: inputs, outputs: outputs, kernelSize: kernelSize, stride: stride)
        }
        stem = conv(3, channels(32), 3)
        var stages: [Stage] = []
        for (s, blocks) in Self.residualBlocks.enumerated() {
            let (inputs, outputs) = (channels(32 << s), channels(64 << s))
            let down = conv(inputs, outputs, 3, stride: 2)
            let residuals = (0..<max(1, Int((Double(blocks) * depth).rounded()))).map { _ in
                let block = Residual(squeeze: conv(outputs, channels(32 << s), 1), expand: conv(channels(32 << s), outputs, 3))
                layer += 1                                                            // the [shortcut]
                return block
            }
            stages.append(Stage(down: down, residuals: residuals))
        }
        self.stages = stages
        var branches: [Branch] = []
        for k in 0..<3 {
            let c = 512 >> k                                                         // 512, 256, 128
            var lateral: DarknetConvolution?, inputs = channels(1024)
            if k > 0 {
                layer += 1                                                            // route
                lateral = conv(channels(2 * c), channels(c), 1)
                layer += 2                                                            // upsample, route
                inputs = channels(c) + channels(2 * c)                                // upsampled, then the stage's output
            }
            let neck = [conv(inputs, channels(c), 1), conv(channels(c), channels(2 * c), 3), conv(channels(2 * c), channels(c), 1),
                        conv(channels(c), channels(2 * c), 3), conv(channels(2 * c), channels(c), 1)]
            let predict = conv(channels(c), channels(2 * c), 3)
            let output = Conv2D(store, name: "conv_\(layer)", inputs: channels(2 * c), outputs: 3 * yolo.depth, kernelSize: (1, 1),
                                initializer: .heNormal(fanIn: channels(2 * c)))
            layer += 2                                                                // the output convolution, yolo
            branches.append(Branch(lateral: lateral, neck: neck, predict: predict, output: output))
        }
        self.branches = branches
        parameters.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffersStore.allocate(rng: &unused)
    }

    /// The family's configuration: darknet's 416 x 416 with the driving classes, or a detection dataset's image size and
    /// classes (letterboxed into the network's input, by default that size rounded up to multiples of 32).
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        guard let dataset else {
            return defaultConfig(height: 416, width: 416, classNames: Udacity.classNames)
        }
        let (height, width, classNames) = try dataset.detectionImages()
        return defaultConfig(height: height, width: width, classNames: classNames)
    }

    public static func defaultConfig(height: Int, width: Int, classNames: [String], anchorSizes: [[Double]] = defaultAnchors,
                                     widthMultiplier: Double = 1, depthMultiplier: Double = 1) -> ModelConfig {
        ModelConfig(family: family, inputShape: [3, height, width], options: ["width": widthMultiplier, "depth": depthMultiplier],
                    classNames: classNames, anchorSizes: anchorSizes)
    }

    /// The stride-32, 16 and 8 outputs, [N, 3 (5 + C), H / s, W / s]: the one forward pass, run on Tensors to train
    /// and infer and on ONNX values to export.
    func outputMaps<Value: NetworkValue>(_ images: Value, training: Bool) -> [Value] {
        let sum: CrossReplicaSum? = synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil
        func apply(_ layer: DarknetConvolution, _ x: Value) -> Value { layer(x, training: training, crossReplicaSum: sum) }
        var h = apply(stem, images.letterboxed(yolo.letterbox).affine(scale: 1 / 255, shift: 0))
        var features: [Value] = []                                                    // strides 2, 4, 8, 16, 32
        for stage in stages {
            h = apply(stage.down, h)
            for block in stage.residuals { h = h + apply(block.expand, apply(block.squeeze, h)) }
            features.append(h)
        }
        var outputs: [Value] = []
        var route = features[4]
        for (k, branch) in branches.enumerated() {
            if let lateral = branch.lateral {                                         // route, 1x1, upsample, route
                route = Value.concat([apply(lateral, route).upsampleNearest(scale: (2, 2)), features[4 - k]], axis: 1)
            }
            for layer in branch.neck { route = apply(layer, route) }
            outputs.append(branch.output(apply(branch.predict, route)))
        }
        return outputs
    }

    public func headOutputs(_ images: Tensor, training: Bool) -> [Tensor] {
        outputMaps(LayoutTensor(images), training: training).map(\.tensor)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        detectionLoss(batch, training: training, kernels: [], l2: 0)
    }
}

extension YOLOv3: ONNXDetector {
    public func onnxHeadOutputs(_ images: ONNXValue) -> [ONNXValue] { outputMaps(images, training: false) }
}
