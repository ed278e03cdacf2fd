import StarlingCore
import StarlingNN
import StarlingONNX

/// SSD300 (W. Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016) with the layer names, anchors and
/// predictor layout of ssd_keras's keras_ssd300.py, so Keras weights map by name.
///
/// VGG-16 base (conv1_1 ... conv5_3, 2x2 same max-pooling, pool5 3x3 stride 1), fc6 as a 3x3 convolution dilated by 6,
/// fc7 1x1, then conv6_1/6_2 (stride 2), conv7_1/7_2 (stride 2), conv8_1/8_2 and conv9_1/9_2 (valid); ReLU throughout,
/// no batch norm. Predictors on conv4_3 (L2-normalised, scale 20), fc7, conv6_2, conv7_2, conv8_2 and conv9_2:
/// 38, 19, 10, 5, 3 and 1 cells at 300 x 300, 4 or 6 boxes a cell, 8,732 anchors. Anchors: scales
/// [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05] (VOC), aspect ratios [1, 2, 1/2] plus [3, 1/3] on the middle four layers,
/// steps [8, 16, 32, 64, 100, 300], variances [0.1, 0.1, 0.2, 0.2]. Kernels he_normal with an L2 penalty 5e-4.
///
/// `width` multiplies every layer's channel count (ssd_keras has no such option): 1 is the paper's network; 0.25 or
/// less trains on a CPU. Input intensities are used as they are minus the ImageNet channel means (123, 117, 104).
public final class SSD300: Detector {
    public static let family = "ssd300"
    public let config: ModelConfig
    public let parameters = ParameterStore()
    public var crossReplica = CrossReplica.single
    public var synchronizeBatchNorm = false   // no batch norm in SSD300
    /// The anchors, matching, loss and decoding.
    public let ssd: SSDHead
    public var head: any DetectionHead { ssd }
    public var encoder: SSDBoxEncoder { ssd.encoder }
    let base: [(name: String, conv: Conv2D)]
    let extras: [(name: String, conv: Conv2D)]
    let conv4_3Scale: Parameter
    let classHeads: [Conv2D]
    let boxHeads: [Conv2D]
    let l2: Float

    /// (name, output channels at width 1, kernel, stride, padding, dilation); "pool" entries are max-pooling.
    static let layout: [(String, Int, Int, Int, Padding, Int)] = [
        ("conv1_1", 64, 3, 1, .same, 1), ("conv1_2", 64, 3, 1, .same, 1), ("pool", 0, 0, 0, .same, 0),
        ("conv2_1", 128, 3, 1, .same, 1), ("conv2_2", 128, 3, 1, .same, 1), ("pool", 0, 0, 0, .same, 0),
        ("conv3_1", 256, 3, 1, .same, 1), ("conv3_2", 256, 3, 1, .same, 1), ("conv3_3", 256, 3, 1, .same, 1), ("pool", 0, 0, 0, .same, 0),
        ("conv4_1", 512, 3, 1, .same, 1), ("conv4_2", 512, 3, 1, .same, 1), ("conv4_3", 512, 3, 1, .same, 1), ("pool", 0, 0, 0, .same, 0),
        ("conv5_1", 512, 3, 1, .same, 1), ("conv5_2", 512, 3, 1, .same, 1), ("conv5_3", 512, 3, 1, .same, 1), ("pool5", 0, 0, 0, .same, 0),
        ("fc6", 1024, 3, 1, .same, 6), ("fc7", 1024, 1, 1, .same, 1),
    ]
    static let extraLayout: [(String, Int, Int, Int, Padding)] = [
        ("conv6_1", 256, 1, 1, .same), ("conv6_2", 512, 3, 2, .explicit(top: 1, bottom: 1, left: 1, right: 1)),
        ("conv7_1", 128, 1, 1, .same), ("conv7_2", 256, 3, 2, .explicit(top: 1, bottom: 1, left: 1, right: 1)),
        ("conv8_1", 128, 1, 1, .same), ("conv8_2", 256, 3, 1, .valid),
        ("conv9_1", 128, 1, 1, .same), ("conv9_2", 256, 3, 1, .valid),
    ]
    static let predictorNames = ["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"]

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let anchors = config.anchors, let names = config.classNames,
              anchors.featureMapSizes.count == 6 else {
            throw ModelError.inputShape(family: config.family, expected: [3, 300, 300], got: config.inputShape, source: "model configuration (needs class names and six predictor layers of anchors)")
        }
        self.config = config
        ssd = SSDHead(anchors: anchors, classCount: names.count)
        l2 = Float(config.option("l2_regularization", default: 5e-4))
        let width = config.option("width", default: 1)
        func channels(_ c: Int) -> Int { max(4, Int((Double(c) * width).rounded())) }
        let store = parameters
        var inputs = 3
        var b: [(String, Conv2D)] = []
        var predictorChannels: [Int] = []
        for (name, out, k, stride, padding, dilation) in Self.layout {
            if name.hasPrefix("pool") { continue }
            let c = channels(out)
            b.append((name, Conv2D(store, name: name, inputs: inputs, outputs: c, kernelSize: (k, k), stride: (stride, stride),
                                   padding: padding, dilation: (dilation, dilation), initializer: .heNormal(fanIn: inputs * k * k))))
            if name == "conv4_3" || name == "fc7" { predictorChannels.append(c) }
            inputs = c
        }
        base = b
        conv4_3Scale = store.declare("conv4_3_norm/gamma", shape: [predictorChannels[0]], initializer: .constant(20))
        var e: [(String, Conv2D)] = []
        for (name, out, k, stride, padding) in Self.extraLayout {
            let c = channels(out)
            e.append((name, Conv2D(store, name: name, inputs: inputs, outputs: c, kernelSize: (k, k), stride: (stride, stride),
                                   padding: padding, initializer: .heNormal(fanIn: inputs * k * k))))
            if name.hasSuffix("_2") { predictorChannels.append(c) }
            inputs = c
        }
        extras = e
        classHeads = Self.predictorNames.enumerated().map { (k, name) in
            Conv2D(store, name: "\(name)_mbox_conf", inputs: predictorChannels[k], outputs: anchors.boxesPerCell(layer: k) * names.count,
                   initializer: .heNormal(fanIn: predictorChannels[k] * 9))
        }
        boxHeads = Self.predictorNames.enumerated().map { (k, name) in
            Conv2D(store, name: "\(name)_mbox_loc", inputs: predictorChannels[k], outputs: anchors.boxesPerCell(layer: k) * 4,
                   initializer: .heNormal(fanIn: predictorChannels[k] * 9))
        }
        parameters.allocate(rng: &rng)
        let expected = Self.featureMapSizes(height: config.inputShape[1], width: config.inputShape[2])
        guard anchors.featureMapSizes == expected else {
            throw ModelError.inputShape(family: config.family, expected: config.inputShape, got: anchors.featureMapSizes.flatMap { $0 },
                                        source: "anchor configuration (feature maps \(expected) expected)")
        }
    }

    /// Predictor feature maps for an input size: four 2x2 same poolings (ceil), then the stride-2 and valid extras.
    public static func featureMapSizes(height: Int, width: Int) -> [[Int]] {
        var (h, w) = (height, width)
        for _ in 0..<3 { h = (h + 1) / 2; w = (w + 1) / 2 }
        var sizes = [[h, w]]                        // conv4_3
        h = (h + 1) / 2; w = (w + 1) / 2
        sizes.append([h, w])                        // fc7 (pool5 keeps the size)
        for _ in 0..<2 { h = (h - 1) / 2 + 1; w = (w - 1) / 2 + 1; sizes.append([h, w]) }   // conv6_2, conv7_2: pad 1, 3x3, stride 2
        for _ in 0..<2 { h -= 2; w -= 2; sizes.append([h, w]) }                              // conv8_2, conv9_2: valid 3x3
        return sizes
    }

    public static func defaultConfig(height: Int = 300, width: Int = 300, classNames: [String] = VOC.classNames, widthMultiplier: Double = 1) -> ModelConfig {
        var anchors = AnchorConfig(imageHeight: height, imageWidth: width, featureMapSizes: featureMapSizes(height: height, width: width),
                                   scales: [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05],
                                   aspectRatios: [[1, 2, 0.5], [1, 2, 0.5, 3, 1.0 / 3], [1, 2, 0.5, 3, 1.0 / 3], [1, 2, 0.5, 3, 1.0 / 3], [1, 2, 0.5], [1, 2, 0.5]])
        if height == 300 && width == 300 { anchors.steps = [8, 16, 32, 64, 100, 300].map { [Double($0), Double($0)] } }
        anchors.variances = [0.1, 0.1, 0.2, 0.2]
        return ModelConfig(family: family, inputShape: [3, height, width], options: ["l2_regularization": 5e-4, "width": widthMultiplier],
                           classNames: classNames, anchors: anchors)
    }

    /// The family's configuration for a detection dataset: its image size and classes (nil: `defaultConfig()`).
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        guard let dataset else { return defaultConfig() }
        let (height, width, classNames) = try dataset.detectionImages()
        guard featureMapSizes(height: height, width: width).allSatisfy({ $0.allSatisfy { $0 >= 1 } }) else {
            throw DataError(file: dataset.path, message: "images of \(height)x\(width) are too small for SSD300 (at least 260x260)")
        }
        return defaultConfig(height: height, width: width, classNames: classNames)
    }

    public func headOutputs(_ images: Tensor, training: Bool) -> [Tensor] {
        let (classes, boxes) = predict(images, training: training)
        return [classes, boxes]
    }

    /// Class logits [N x A, classes] and box offsets [N x A, 4], image-major in anchor order.
    public func predict(_ images: Tensor, training: Bool) -> (classLogits: Tensor, boxOffsets: Tensor) {
        let maps = predictionMaps(LayoutTensor(images), training: training).map(\.tensor)
        return (maps[0].reshaped([-1, classCount]), maps[1].reshaped([-1, 4]))
    }

    /// Class logits [N, A, classes] and box offsets [N, A, 4], anchors in the encoder's order: the one forward pass,
    /// run on Tensors (`LayoutTensor`) to train and infer and on ONNX values to export. `training` changes nothing here (no batch norm
    /// or dropout).
    func predictionMaps<Value: NetworkValue>(_ images: Value, training: Bool) -> [Value] {
        var x = images.subtractingChannelMeans([123, 117, 104])        // ImageNet's, as ssd_keras's subtract_mean
        var features: [Value] = []
        var layer = 0
        for (name, _, _, _, _, _) in Self.layout {
            if name == "pool5" { x = x.maxPool2d(kernel: (3, 3), stride: (1, 1), padding: .same); continue }
            if name == "pool" { x = x.maxPool2d(kernel: (2, 2), padding: .same); continue }
            x = base[layer].conv(x).relu()
            layer += 1
            if name == "conv4_3" { features.append(x.l2NormalizeChannels(gamma: conv4_3Scale, epsilon: 1e-10)) }    // conv4_3_norm
            if name == "fc7" { features.append(x) }
        }
        for (name, conv) in extras {
            x = conv(x).relu()
            if name.hasSuffix("_2") { features.append(x) }                // conv6_2 ... conv9_2
        }
        let classes = Value.concat(zip(classHeads, features).map { $0($1).anchorRows(depth: classCount) }, axis: 1)
        let boxes = Value.concat(zip(boxHeads, features).map { $0($1).anchorRows(depth: 4) }, axis: 1)
        return [classes, boxes]
    }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        detectionLoss(batch, training: training, kernels: (base.map(\.conv) + extras.map(\.conv) + classHeads + boxHeads).map(\.kernel), l2: l2)
    }
}

extension SSD300: ONNXDetector {
    public func onnxHeadOutputs(_ images: ONNXValue) -> [ONNXValue] { predictionMaps(images, training: false) }
}

/// The PASCAL VOC classes, SSD300's default.
public enum VOC {
    public static let classNames = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                                    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
}
