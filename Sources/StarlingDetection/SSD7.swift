import StarlingCore
import StarlingNN
import StarlingONNX

/// SSD7: the small seven-layer SSD of P. Ferrari's ssd_keras (keras_ssd7.py), the network of the course's
/// "train an SSD in a self-driving car application" project, after W. Liu et al., "SSD: Single Shot MultiBox
/// Detector" (ECCV 2016).
///
/// Input 300 x 480 x 3 (any size works; the anchors follow it), intensities mapped by (x - 127.5) / 127.5. Seven conv
/// blocks - 32 filters 5x5, then 48, 64, 64, 48, 48 and 32 filters 3x3, each with batch norm and ELU, 2x2 max-pooling
/// (valid) after the first six - named conv1..conv7 and bn1..bn7. Predictors on blocks 4 to 7: classes4..7 (boxes x
/// (classes + 1) channels) and boxes4..7 (boxes x 4 channels), 3x3 same convolutions. Kernels are he_normal with an
/// L2 penalty of 5e-4 (Keras's kernel_regularizer) added to the loss. Default boxes: scales [0.08, 0.16, 0.32, 0.64,
/// 0.96], aspect ratios [0.5, 1, 2] with two boxes for 1, variances [1, 1, 1, 1], normalised coordinates: 11,692
/// anchors at 300 x 480.
///
/// Deviation from ssd_keras: kernels are stored [out, in, kh, kw] (the converter writes Keras's [kh, kw, in, out]);
/// the softmax is fused into the loss and applied at prediction.
public final class SSD7: Detector {
    public static let family = "ssd7"
    public static let filters = [32, 48, 64, 64, 48, 48, 32]
    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false
    /// The anchors, matching, loss and decoding.
    public let ssd: SSDHead
    public var head: any DetectionHead { ssd }
    public var encoder: SSDBoxEncoder { ssd.encoder }
    let convs: [Conv2D]
    let norms: [BatchNormalization]
    let classHeads: [Conv2D]
    let boxHeads: [Conv2D]
    let l2: Float

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let anchors = config.anchors, let names = config.classNames else {
            throw ModelError.inputShape(family: config.family, expected: [3, 300, 480], got: config.inputShape, source: "model configuration (needs class names and anchors)")
        }
        self.config = config
        ssd = SSDHead(anchors: anchors, classCount: names.count)
        l2 = Float(config.option("l2_regularization", default: 5e-4))
        var inputs = 3
        var c: [Conv2D] = [], n: [BatchNormalization] = []
        for (k, f) in Self.filters.enumerated() {
            let size = k == 0 ? 5 : 3
            c.append(Conv2D(parameters, name: "conv\(k + 1)", inputs: inputs, outputs: f, kernelSize: (size, size),
                            initializer: .heNormal(fanIn: inputs * size * size)))
            n.append(BatchNormalization(parameters, buffers: buffersStore, name: "bn\(k + 1)", channels: f))
            inputs = f
        }
        convs = c
        norms = n
        let store = parameters
        classHeads = (4...7).map { k in
            let boxes = anchors.boxesPerCell(layer: k - 4), fin = SSD7.filters[k - 1]
            return Conv2D(store, name: "classes\(k)", inputs: fin, outputs: boxes * names.count, initializer: .heNormal(fanIn: fin * 9))
        }
        boxHeads = (4...7).map { k in
            let boxes = anchors.boxesPerCell(layer: k - 4), fin = SSD7.filters[k - 1]
            return Conv2D(store, name: "boxes\(k)", inputs: fin, outputs: boxes * 4, initializer: .heNormal(fanIn: fin * 9))
        }
        parameters.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffersStore.allocate(rng: &unused)
        let expected = Self.featureMapSizes(height: config.inputShape[1], width: config.inputShape[2])
        guard anchors.featureMapSizes == expected else {
            throw ModelError.inputShape(family: config.family, expected: config.inputShape, got: anchors.featureMapSizes.flatMap { $0 }, source: "anchor configuration (feature maps \(expected) expected)")
        }
    }

    /// Feature map sizes of conv4..conv7 for an input: each 2x2 valid pooling floors the size.
    public static func featureMapSizes(height: Int, width: Int) -> [[Int]] {
        var (h, w) = (height, width)
        var sizes: [[Int]] = []
        for k in 1...7 {
            if k >= 4 { sizes.append([h, w]) }
            if k <= 6 { h /= 2; w /= 2 }
        }
        return sizes
    }

    /// The project's configuration: 300 x 480 Udacity frames, five classes.
    public static func defaultConfig(height: Int = 300, width: Int = 480,
                                     classNames: [String] = Udacity.classNames) -> ModelConfig {
        let anchors = AnchorConfig(imageHeight: height, imageWidth: width, featureMapSizes: featureMapSizes(height: height, width: width),
                                   scales: [0.08, 0.16, 0.32, 0.64, 0.96], aspectRatios: Array(repeating: [0.5, 1, 2], count: 4))
        return ModelConfig(family: family, inputShape: [3, height, width], options: ["l2_regularization": 5e-4],
                           classNames: classNames, anchors: anchors)
    }

    /// The family's configuration for a detection dataset: its image size and classes (nil: `defaultConfig()`).
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        guard let dataset else { return defaultConfig() }
        let (height, width, classNames) = try dataset.detectionImages()
        guard height >= 64, width >= 64 else {
            throw DataError(file: dataset.path, message: "images of \(height)x\(width) are too small for SSD7 (at least 64x64)")
        }
        return defaultConfig(height: height, width: width, classNames: classNames)
    }

    public func headOutputs(_ images: Tensor, training: Bool) -> [Tensor] {
        let (classes, boxes) = predict(images, training: training)
        return [classes, boxes]
    }

    /// Class logits [N x A, classes] and box offsets [N x A, 4], image-major in anchor order.
    public func predict(_ images: Tensor, training: Bool) -> (classLogits: Tensor, boxOffsets: Tensor) {
        let sum: CrossReplicaSum? = synchronizeBatchNorm && crossReplica.size > 1 ? crossReplica.sum : nil
        let maps = predictionMaps(LayoutTensor(images), training: training, crossReplicaSum: sum).map(\.tensor)
        return (maps[0].reshaped([-1, classCount]), maps[1].reshaped([-1, 4]))
    }

    /// Class logits [N, A, classes] and box offsets [N, A, 4], anchors in the encoder's order: the one forward pass,
    /// run on Tensors (`LayoutTensor`: blocked layout in training, folded batch norm in inference) and on ONNX values to
    /// export. The first three blocks' normalised outputs feed only their pooling, which lets the blocked layout run
    /// batch norm, ELU and pooling as one op.
    func predictionMaps<Value: NetworkValue>(_ images: Value, training: Bool, crossReplicaSum sum: CrossReplicaSum?) -> [Value] {
        var h = images.affine(scale: 1 / 127.5, shift: -1)                                    // (x - 127.5) / 127.5
        var features: [Value] = []
        for k in 0..<7 {
            h = convs[k](h)
            if k < 3 {                                                                         // conv, bn, ELU, pool
                h = h.applyingWithELUAndMaxPool2x2(norms[k], alpha: 1, training: training, crossReplicaSum: sum)
                continue
            }
            h = h.applyingWithELU(norms[k], alpha: 1, training: training, crossReplicaSum: sum)   // conv4 ... conv7 predict
            features.append(h)
            if k < 6 { h = h.maxPool2d(kernel: (2, 2), padding: .valid) }
        }
        let classes = Value.concat(zip(classHeads, features).map { $0($1).anchorRows(depth: classCount) }, axis: 1)
        let boxes = Value.concat(zip(boxHeads, features).map { $0($1).anchorRows(depth: 4) }, axis: 1)
        return [classes, boxes]
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        detectionLoss(batch, training: training, kernels: (convs + classHeads + boxHeads).map(\.kernel), l2: l2)
    }
}

extension SSD7: ONNXDetector {
    public func onnxHeadOutputs(_ images: ONNXValue) -> [ONNXValue] { predictionMaps(images, training: false, crossReplicaSum: nil) }
}
