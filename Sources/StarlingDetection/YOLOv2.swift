import StarlingCore
import StarlingNN
import StarlingONNX

/// YOLOv2: J. Redmon and A. Farhadi, "YOLO9000: Better, Faster, Stronger" (CVPR 2017), as darknet's yolov2-voc.cfg
/// builds it, with YOLOv2's head: `YOLOHead` as darknet's region layer computes its loss (`YOLOHead.regionLayer`).
///
/// Darknet-19 (every convolution batch norm and leaky ReLU 0.1, 3x3 unless said; max-pool 2/2 after layers 0, 2, 6,
/// 10 and 16), as the cfg numbers its layers: 0 conv 32, 2 conv 64, 4 conv 128, 5 conv 64 1x1, 6 conv 128, 8 conv
/// 256, 9 conv 128 1x1, 10 conv 256, 12 conv 512, 13 conv 256 1x1, 14 conv 512, 15 conv 256 1x1, 16 conv 512
/// (stride 16), 18 conv 1024, 19 conv 512 1x1, 20 conv 1024, 21 conv 512 1x1, 22 conv 1024; then the detection
/// layers 23 conv 1024, 24 conv 1024, the passthrough (25 route 16, 26 conv 64 1x1, 27 reorg stride 2, 28 route 27
/// and 24, concatenated in that order), 29 conv 1024, 30 conv 1x1 to 5 x (5 + C) linear, 31 region: one stride-32
/// grid, five anchors per cell. Input pixels 0...255 scaled to [0, 1]; images letterboxed into the network's input (as yolov3-tiny).
///
/// The reorg is pjreddie's darknet's (`darknetReorg`): its reorg_cpu, called with forward = 0 on the input's sizes,
/// reads the [C, H, W] input as [C/4, 2H, 2W], takes ONNX's space-to-depth of that and writes the result's memory as
/// [4C, H/2, W/2]. AlexeyAB's darknet (and ONNX's SpaceToDepth, and TensorFlow's) stacks the 2 x 2 blocks of the
/// input itself; the two orders differ, both are permutations of the same values.
///
/// Options: `width` multiplies every layer's channel count (layer 26 kept a multiple of four for the reorg);
/// `passthrough` 1 (the cfg) or 0 (layers 25-28 left out, layer 29 reading layer 24 alone). Deviations from darknet:
/// Keras's batch-norm defaults and he_normal kernels, a bias in every convolution, and the loss's prior-matching term
/// for the first 12,800 images left out (see `YOLOHead.regionLayer`). Weight decay is `--weight-decay`.
public final class YOLOv2: Detector {
    public static let family = "yolov2"
    /// yolov2-voc.cfg's anchors, which the cfg gives in grid cells of the stride-32 output.
    public static let cfgAnchors: [[Double]] = [[1.3221, 1.73145], [3.19275, 4.00944], [5.05587, 8.09892], [9.47112, 4.84053], [11.2364, 10.0071]]
    /// The same anchors in pixels of the input (32 pixels a cell), smallest first.
    public static let defaultAnchors: [[Double]] = cfgAnchors.map { $0.map { $0 * 32 } }
    /// Darknet-19's convolutions up to layer 22: (cfg layer, filters, kernel size, max-pool after it).
    static let darknet19: [(layer: Int, filters: Int, kernel: Int, pool: Bool)] = [
        (0, 32, 3, true), (2, 64, 3, true), (4, 128, 3, false), (5, 64, 1, false), (6, 128, 3, true),
        (8, 256, 3, false), (9, 128, 1, false), (10, 256, 3, true),
        (12, 512, 3, false), (13, 256, 1, false), (14, 512, 3, false), (15, 256, 1, false), (16, 512, 3, true),
        (18, 1024, 3, false), (19, 512, 1, false), (20, 1024, 3, false), (21, 512, 1, false), (22, 1024, 3, false),
    ]

    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false
    public let yolo: YOLOHead
    public var head: any DetectionHead { yolo }
    /// Layers 0-22 in order.
    let backbone: [DarknetConvolution]
    /// Layers 23 and 24.
    let detection: [DarknetConvolution]
    /// Layer 26, before the reorg; nil without the passthrough.
    let passthrough: DarknetConvolution?
    /// Layer 29.
    let merge: DarknetConvolution
    /// Layer 30.
    let output: Conv2D

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let names = config.classNames, names.count >= 2,
              let sizes = config.anchorSizes, sizes.count == 5, sizes.allSatisfy({ $0.count == 2 && $0[0] > 0 && $0[1] > 0 }) else {
            throw ModelError.inputShape(family: config.family, expected: [3, 416, 416], got: config.inputShape,
                                        source: "model configuration (needs colour images, class names and five anchors)")
        }
        let letterbox = try Letterbox.network(of: config, multiple: 32)
        let (height, width) = (letterbox.networkHeight, letterbox.networkWidth)
        self.config = config
        yolo = YOLOHead(scales: [.init(height: height / 32, width: width / 32, anchors: [0, 1, 2, 3, 4])],
                        anchorSizes: sizes.map { (Float($0[0]), Float($0[1])) }, imageHeight: height, imageWidth: width,
                        classCount: names.count, letterbox: letterbox).regionLayer()
        let multiplier = config.option("width", default: 1)
        func channels(_ c: Int) -> Int { max(4, Int((Double(c) * multiplier).rounded())) }
        let store = parameters, buffers = buffersStore
        func conv(_ layer: Int, _ inputs: Int, _ outputs: Int, _ kernelSize: Int) -> DarknetConvolution {
            DarknetConvolution(store, buffers: buffers, layer: layer, inputs: inputs, outputs: outputs, kernelSize: kernelSize)
        }
        var inputs = 3
        backbone = Self.darknet19.map { plan in
            defer { inputs = channels(plan.filters) }
            return conv(plan.layer, inputs, channels(plan.filters), plan.kernel)
        }
        detection = [conv(23, channels(1024), channels(1024), 3), conv(24, channels(1024), channels(1024), 3)]
        var merged = channels(1024)
        if config.option("passthrough", default: 1) != 0 {
            let reorgChannels = 4 * max(1, Int((16 * multiplier).rounded()))
            passthrough = conv(26, channels(512), reorgChannels, 1)
            merged += 4 * reorgChannels
        } else {
            passthrough = nil
        }
        merge = conv(29, merged, channels(1024), 3)
        output = Conv2D(store, name: "conv_30", inputs: channels(1024), outputs: 5 * yolo.depth, kernelSize: (1, 1),
                        initializer: .heNormal(fanIn: channels(1024)))
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
                                     widthMultiplier: Double = 1, passthrough: Bool = true) -> ModelConfig {
        ModelConfig(family: family, inputShape: [3, height, width], options: ["width": widthMultiplier, "passthrough": passthrough ? 1 : 0],
                    classNames: classNames, anchorSizes: anchorSizes)
    }

    /// darknet's `[reorg] stride=2` as pjreddie's reorg_cpu computes it: [N, C, H, W] -> [N, 4C, H/2, W/2] through the
    /// input read as [N, C/4, 2H, 2W] (C a multiple of 4; see the type's documentation).
    static func darknetReorg<Value: NetworkValue>(_ x: Value) -> Value {
        let (c, h, w) = (x.shape[1], x.shape[2], x.shape[3])
        precondition(c % 4 == 0 && h % 2 == 0 && w % 2 == 0, "darknet's reorg takes channels in fours and even sides, got \(x.shape)")
        return x.reshaped([x.shape[0], c / 4, 2 * h, 2 * w]).spaceToDepth(blockSize: 2).reshaped([x.shape[0], 4 * c, h / 2, w / 2])
    }

    /// The stride-32 output [N, 5 (5 + C), H / 32, W / 32]: the one forward pass, run on Tensors to train and infer and
    /// on ONNX values to export.
    func outputMaps<Value: NetworkValue>(_ images: Value, training: Bool) -> [Value] {
        let sum: CrossReplicaSum? = synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil
        func apply(_ layer: DarknetConvolution, _ x: Value) -> Value { layer(x, training: training, crossReplicaSum: sum) }
        var h = images.letterboxed(yolo.letterbox).affine(scale: 1 / 255, shift: 0)
        var fine = h
        for (layer, plan) in zip(backbone, Self.darknet19) {
            h = apply(layer, h)
            if plan.layer == 16 { fine = h }                                          // routed by layer 25
            if plan.pool { h = h.maxPool2d(kernel: (2, 2), padding: .valid) }
        }
        for layer in detection { h = apply(layer, h) }                                // 23, 24
        if let passthrough {                                                          // 25-28
            h = Value.concat([Self.darknetReorg(apply(passthrough, fine)), h], axis: 1)
        }
        return [output(apply(merge, h))]                                              // 29, 30
    }

    public func headOutputs(_ images: Tensor, training: Bool) -> [Tensor] {
        outputMaps(LayoutTensor(images), training: training).map(\.tensor)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        detectionLoss(batch, training: training, kernels: [], l2: 0)
    }
}

extension YOLOv2: ONNXDetector {
    public func onnxHeadOutputs(_ images: ONNXValue) -> [ONNXValue] { outputMaps(images, training: false) }
}
