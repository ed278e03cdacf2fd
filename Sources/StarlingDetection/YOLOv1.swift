import StarlingCore
import StarlingNN
import StarlingONNX

/// YOLOv1: J. Redmon, S. Divvala, R. Girshick and A. Farhadi, "You Only Look Once: Unified, Real-Time Object
/// Detection" (CVPR 2016), the network of its figure 3 with its head (`YOLOv1Head`): S = 7, B = 2 at 448 x 448.
///
/// 24 convolutions (leaky ReLU 0.1; 3x3 unless said), as figure 3 stacks them:
/// conv 64 7x7 stride 2, max-pool 2/2; conv 192, max-pool; conv 128 1x1, 256, 256 1x1, 512, max-pool;
/// four times (conv 256 1x1, 512), conv 512 1x1, 1024, max-pool; twice (conv 512 1x1, 1024), conv 1024, conv 1024
/// stride 2; conv 1024, conv 1024. Then two fully connected layers: 4096 (leaky ReLU) and S x S x (5B + C), linear,
/// read as the [N, Sh, Sw, 5B + C] grid. The network's stride is 64, so a network input of H x W (multiples of 64)
/// gives an H/64 x W/64 grid; images are letterboxed into it as yolov3-tiny's (`--network-size`, by default the data's
/// size rounded up to multiples of 64). Input pixels 0...255 scaled to [0, 1].
///
/// `width` multiplies every convolution's channels and the 4096 units. Named `conv_0` ... `conv_23`, `fc_0`, `fc_1` in
/// figure 3's order. Deviations from the paper: batch norm after every convolution (darknet's later yolov1 cfgs, and
/// v2, have it; the paper's network had none and trained with an ImageNet-pretrained first 20 layers), no dropout
/// after the first fully connected layer (0.5 in the paper), Keras's initialisations, and a bias in every convolution.
public final class YOLOv1: Detector {
    public static let family = "yolov1"
    /// Figure 3's convolutions: (filters, kernel size, stride, max-pool after it).
    static let convolutions: [(filters: Int, kernel: Int, stride: Int, pool: Bool)] = {
        typealias Layer = (filters: Int, kernel: Int, stride: Int, pool: Bool)
        var layers: [Layer] = [(64, 7, 2, true), (192, 3, 1, true), (128, 1, 1, false), (256, 3, 1, false), (256, 1, 1, false), (512, 3, 1, true)]
        for _ in 0..<4 { layers += [(256, 1, 1, false), (512, 3, 1, false)] as [Layer] }
        layers += [(512, 1, 1, false), (1024, 3, 1, true)] as [Layer]
        for _ in 0..<2 { layers += [(512, 1, 1, false), (1024, 3, 1, false)] as [Layer] }
        layers += [(1024, 3, 1, false), (1024, 3, 2, false), (1024, 3, 1, false), (1024, 3, 1, false)] as [Layer]
        return layers
    }()

    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false
    public let yolo: YOLOv1Head
    public var head: any DetectionHead { yolo }
    let convs: [DarknetConvolution]
    let hidden: Dense
    let output: Dense

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let names = config.classNames, names.count >= 2 else {
            throw ModelError.inputShape(family: config.family, expected: [3, 448, 448], got: config.inputShape,
                                        source: "model configuration (needs colour images and class names)")
        }
        let letterbox = try Letterbox.network(of: config, multiple: 64)
        let (height, width) = (letterbox.networkHeight, letterbox.networkWidth)
        self.config = config
        let boxes = Int(config.option("boxes", default: 2))
        yolo = YOLOv1Head(gridHeight: height / 64, gridWidth: width / 64, boxesPerCell: boxes, imageHeight: height, imageWidth: width,
                          classCount: names.count, letterbox: letterbox)
        let multiplier = config.option("width", default: 1)
        func channels(_ c: Int) -> Int { max(4, Int((Double(c) * multiplier).rounded())) }
        let store = parameters, buffers = buffersStore
        var inputs = 3
        convs = Self.convolutions.enumerated().map { k, plan in
            defer { inputs = channels(plan.filters) }
            return DarknetConvolution(store, buffers: buffers, layer: k, inputs: inputs, outputs: channels(plan.filters), kernelSize: plan.kernel,
                                      stride: plan.stride)
        }
        let units = channels(4096)
        hidden = Dense(store, name: "fc_0", inputs: channels(1024) * yolo.gridHeight * yolo.gridWidth, outputs: units)
        output = Dense(store, name: "fc_1", inputs: units, outputs: yolo.gridHeight * yolo.gridWidth * yolo.depth)
        parameters.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffersStore.allocate(rng: &unused)
    }

    /// The family's configuration: the paper's 448 x 448 with the driving classes, or a detection dataset's image size
    /// and classes (letterboxed into the network's input, by default that size rounded up to multiples of 64).
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        guard let dataset else {
            return defaultConfig(height: 448, width: 448, classNames: Udacity.classNames)
        }
        let (height, width, classNames) = try dataset.detectionImages()
        return defaultConfig(height: height, width: width, classNames: classNames)
    }

    public static func defaultConfig(height: Int, width: Int, classNames: [String], widthMultiplier: Double = 1, boxesPerCell: Int = 2) -> ModelConfig {
        ModelConfig(family: family, inputShape: [3, height, width], options: ["width": widthMultiplier, "boxes": Double(boxesPerCell)],
                    classNames: classNames)
    }

    /// The grid [N, Sh, Sw, 5B + C]: the one forward pass, run on Tensors to train and infer and on ONNX values to
    /// export.
    func outputMaps<Value: NetworkValue>(_ images: Value, training: Bool) -> [Value] {
        let sum: CrossReplicaSum? = synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil
        var h = images.letterboxed(yolo.letterbox).affine(scale: 1 / 255, shift: 0)
        for (layer, plan) in zip(convs, Self.convolutions) {
            h = layer(h, training: training, crossReplicaSum: sum)
            if plan.pool { h = h.maxPool2d(kernel: (2, 2), padding: .valid) }
        }
        let grid = output(hidden(h.flattened()).leakyRelu(slope: 0.1))
        return [grid.reshaped([h.shape[0], yolo.gridHeight, yolo.gridWidth, yolo.depth])]
    }

    public func headOutputs(_ images: Tensor, training: Bool) -> [Tensor] {
        outputMaps(LayoutTensor(images), training: training).map(\.tensor)
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        detectionLoss(batch, training: training, kernels: [], l2: 0)
    }
}

extension YOLOv1: ONNXDetector {
    public func onnxHeadOutputs(_ images: ONNXValue) -> [ONNXValue] { outputMaps(images, training: false) }
}
