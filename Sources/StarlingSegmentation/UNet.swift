import StarlingCore
import StarlingNN
import StarlingONNX

/// U-Net: O. Ronneberger, P. Fischer and T. Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
/// MICCAI 2015 (arXiv:1505.04597).
///
/// Contracting path: at each level two 3x3 convolutions with ReLU, then a 2x2 max-pool (stride 2), the channels
/// doubling from level to level (64, 128, 256, 512, 1024 in the paper's five levels). Expanding path: a 2x2
/// up-convolution (transposed convolution, stride 2) halving the channels, its output concatenated after the
/// contracting path's features of that level (skip first, then up-convolution, along the channels), two 3x3
/// convolutions with ReLU; a 1x1 convolution to the class scores.
///
/// Options (`ModelConfig.options`):
/// - `width` multiplies every level's channels (1: the paper's 64 at the first level).
/// - `levels`, the number of levels (5 in the paper: four pools).
/// - `valid` 1: the paper's unpadded convolutions, so the output is smaller than the input (572 -> 388 with five
///   levels) and the skip features are centre-cropped to the expanding path's size; the loss and the metrics then
///   score the centre of the image the output covers (`outputWindow`). The paper's overlap-tile strategy (mirroring
///   the input so that tiles cover a whole image) is not done. 0 (default): same padding, output the input's size;
///   odd sizes are floored by the pools and the up-convolution's output is padded with zeros (below and right) to
///   its skip's size.
/// - `sigmoid` 1 (two classes only): one output channel, class 1's logit, trained with binary cross-entropy, which is
///   softmax cross-entropy over the logits (0, z). Default: C channels and a per-pixel softmax.
/// - `border_weight` (w0, default 0: off; the paper's 10), `border_sigma` (default 5 px), `class_weight_<c>` (default
///   1): the weight map of the paper's equation 2 (`PixelWeights`), computed on the data thread.
///
/// The loss is the sum over pixels of w(x) times the cross-entropy of the pixel's class, divided by the batch's
/// pixels (void pixels weigh 0 but still count in the divisor), so ranks that share a global batch equally average to
/// exactly one process's loss. Input pixels 0...255 are scaled to [0, 1].
///
/// Initialisation as the paper's: Gaussian weights with standard deviation sqrt(2 / N), N = inputs x kernel area
/// (Keras's he_normal, truncated at two standard deviations and rescaled to that variance), zero biases; the
/// up-convolutions keep the layer's Glorot-uniform default. Deviations from the paper: RGB input (three channels
/// rather than one), no dropout at the end of the contracting path, Adam rather than SGD with momentum 0.99 on
/// single-image batches (any `--optimizer` works).
public final class UNet: Model {
    public static let family = "unet"

    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let classCount: Int
    public let sigmoidOutput: Bool
    public let valid: Bool
    public let levels: Int
    /// Where the output lies in the input: all of it with same padding, the centre with valid padding.
    public let outputWindow: (top: Int, left: Int, height: Int, width: Int)
    let contracting: [(Conv2D, Conv2D)]
    let upConvolutions: [Conv2DTranspose]
    let expanding: [(Conv2D, Conv2D)]
    let classifier: Conv2D
    let weights: PixelWeights
    let encoder: UNetTargetEncoder

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, config.inputShape[1] > 0, config.inputShape[2] > 0,
              let names = config.classNames, names.count >= 2 else {
            throw ModelError.inputShape(family: config.family, expected: [3, 572, 572], got: config.inputShape,
                                        source: "model configuration (needs colour images and at least two classes)")
        }
        self.config = config
        classCount = names.count
        levels = Int(config.option("levels", default: 5))
        valid = config.option("valid", default: 0) != 0
        sigmoidOutput = config.option("sigmoid", default: 0) != 0
        guard (2...7).contains(levels) else { throw ModelError.configuration(family: config.family, problem: "levels \(levels) outside 2...7") }
        if sigmoidOutput && classCount != 2 {
            throw ModelError.configuration(family: config.family, problem: "sigmoid output needs two classes, the data has \(classCount)")
        }
        let classes = names.count
        if let stray = config.options.keys.first(where: { $0.hasPrefix("class_weight_") && (Int($0.dropFirst(13)) ?? classes) >= classes }) {
            throw ModelError.configuration(family: config.family, problem: "\(stray) names no class of 0...\(classes - 1)")
        }
        let (height, width) = (config.inputShape[1], config.inputShape[2])
        guard let rows = Self.geometry(height, levels: levels, valid: valid), let cols = Self.geometry(width, levels: levels, valid: valid) else {
            let sizes = Self.validInputSizes(near: max(height, width), levels: levels).map(String.init).joined(separator: ", ")
            throw ModelError.configuration(family: config.family, problem: valid
                ? "valid padding with \(levels) levels does not fit \(height)x\(width) inputs (sizes near it that fit: \(sizes)); resize the data or use same padding"
                : "\(height)x\(width) inputs are too small for \(levels) levels")
        }
        outputWindow = ((height - rows.output) / 2, (width - cols.output) / 2, rows.output, cols.output)

        let multiplier = config.option("width", default: 1)
        let base = max(2, Int((64 * multiplier).rounded()))
        func channels(_ level: Int) -> Int { base << level }
        let store = parameters
        let padding: Padding = valid ? .valid : .same
        func conv(_ name: String, _ inputs: Int, _ outputs: Int) -> Conv2D {
            Conv2D(store, name: name, inputs: inputs, outputs: outputs, kernelSize: (3, 3), padding: padding,
                   initializer: .heNormal(fanIn: inputs * 9))
        }
        var inputs = 3
        contracting = (0..<levels).map { level in
            defer { inputs = channels(level) }
            return (conv("down\(level)_conv1", inputs, channels(level)), conv("down\(level)_conv2", channels(level), channels(level)))
        }
        upConvolutions = (0..<(levels - 1)).map { level in
            Conv2DTranspose(store, name: "up\(level)_upconv", inputs: channels(level + 1), outputs: channels(level), kernelSize: (2, 2),
                            stride: (2, 2), padding: .valid)
        }
        expanding = (0..<(levels - 1)).map { level in
            (conv("up\(level)_conv1", 2 * channels(level), channels(level)), conv("up\(level)_conv2", channels(level), channels(level)))
        }
        classifier = Conv2D(store, name: "classifier", inputs: channels(0), outputs: sigmoidOutput ? 1 : classCount, kernelSize: (1, 1),
                            padding: .valid, initializer: .heNormal(fanIn: channels(0)))
        parameters.allocate(rng: &rng)
        weights = PixelWeights(classWeights: (0..<classCount).map { Float(config.option("class_weight_\($0)", default: 1)) },
                               borderWeight: Float(config.option("border_weight", default: 0)),
                               sigma: Float(config.option("border_sigma", default: 5)))
        encoder = UNetTargetEncoder(weights: weights, window: outputWindow)
    }

    /// The family's configuration: the paper's 572 x 572 input with two classes (membrane, cell) and valid padding,
    /// or a segmentation dataset's image size and classes with same padding.
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        guard let dataset else {
            return ModelConfig(family: family, inputShape: [3, 572, 572], options: ["width": 1, "levels": 5, "valid": 1], classNames: ["membrane", "cell"])
        }
        guard dataset.sampleShape.count == 3, dataset.sampleShape[0] == 3, let names = dataset.classNames, names.count >= 2 else {
            throw DataError(file: dataset.path, message: "not a segmentation dataset of colour images with classes (model \(family))")
        }
        return ModelConfig(family: family, inputShape: dataset.sampleShape, options: ["width": 1, "levels": 5, "valid": 0], classNames: names)
    }

    /// Per level of the contracting path, the side of its feature map before pooling; and the output's side. Nil when
    /// the side does not fit (valid padding: a map that vanishes or is odd before a pool).
    static func geometry(_ side: Int, levels: Int, valid: Bool) -> (skips: [Int], output: Int)? {
        var s = side, skips: [Int] = []
        for _ in 0..<(levels - 1) {
            if valid { s -= 4 }
            guard s >= 2, !valid || s % 2 == 0 else { return nil }
            skips.append(s)
            s /= 2
        }
        if valid { s -= 4 }
        guard s >= 1 else { return nil }
        for skip in skips.reversed() {
            s *= 2
            if !valid { s = skip }
            if valid { s -= 4 }
            guard s >= 1 else { return nil }
        }
        return (skips, s)
    }

    /// Valid-padding input sides around `side` (for the error message).
    static func validInputSizes(near side: Int, levels: Int) -> [Int] {
        let fitting = (max(1, side - 200)...(side + 200)).filter { geometry($0, levels: levels, valid: true) != nil }
        return Array(fitting.sorted { abs($0 - side) < abs($1 - side) }.prefix(2)).sorted()
    }

    /// The class scores [N, C, h, w] (sigmoid: [N, 1, h, w], class 1's logit), h x w the output window: the one
    /// forward pass, run on LayoutTensors to train and infer (`loss`, `predictClasses`: the blocked layout in training,
    /// oneDNN's with fused ReLUs in inference), on plain Tensors by the tests, and on ONNX values to export.
    public func logits<Value: NetworkValue>(_ images: Value) -> Value {
        var h = images.affine(scale: 1 / 255, shift: 0)
        var skips: [Value] = []
        for level in 0..<levels {
            let (first, second) = contracting[level]
            h = h.applyingWithReLU(first).applyingWithReLU(second)
            if level < levels - 1 {
                skips.append(h)
                h = h.maxPool2d(kernel: (2, 2), padding: .valid)
            }
        }
        for level in (0..<(levels - 1)).reversed() {
            let skip = skips[level]
            // The 2x2 up-convolution at stride 2 (valid) doubles the map.
            let (skipH, skipW, upH, upW) = (skip.shape[2], skip.shape[3], 2 * h.shape[2], 2 * h.shape[3])
            let aligned = valid ? skip.cropped(top: (skipH - upH) / 2, left: (skipW - upW) / 2, height: upH, width: upW) : skip
            var up = upConvolutions[level](h)
            if !valid && (upH != skipH || upW != skipW) {
                up = up.padded(top: 0, left: 0, bottom: skipH - upH, right: skipW - upW, value: 0)
            }
            // The first convolution reads the skip features, then the up-convolution's output, along its input channels.
            let (first, second) = expanding[level]
            h = aligned.applyingWithReLU(first, concatenating: up).applyingWithReLU(second)
        }
        return classifier(h)
    }

    /// Class probabilities [N, C, h, w] (the sigmoid's two classes as 1 - p and p).
    public func probabilities<Value: NetworkValue>(_ images: Value) -> Value {
        let z = logits(images)
        guard sigmoidOutput else { return z.softmax(axis: 1) }
        let p = z.sigmoid()
        return Value.concat([p.affine(scale: -1, shift: 1), p], axis: 1)
    }

    /// The most likely class of every pixel of the output window, [N x h x w] row-major.
    public func predictClasses(_ images: Tensor) -> [Int32] {
        let z = GradMode.disabled { logits(LayoutTensor(images)).tensor }
        let (n, c, plane) = (z.shape[0], z.shape[1], z.shape[2] * z.shape[3])
        var classes = [Int32](repeating: 0, count: n * plane)
        let data = z.data
        for image in 0..<n {
            let base = data + image * c * plane
            for p in 0..<plane {
                if c == 1 { classes[image * plane + p] = base[p] > 0 ? 1 : 0; continue }
                var best = 0
                for k in 1..<c where base[k * plane + p] > base[best * plane + p] { best = k }
                classes[image * plane + p] = Int32(best)
            }
        }
        return classes
    }

    public var targetEncoder: (any TargetEncoder)? { encoder }

    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        var batch = batch
        if !(batch.targets is UNetTargets) { encoder.encodeTargets(into: &batch) }
        guard let targets = batch.targets as? UNetTargets else { preconditionFailure("U-Net needs segmentation data (Batch.segmentation)") }
        return Self.pixelLoss(logits: logits(LayoutTensor(batch.images)).tensor, targets: targets)
    }

    /// sum over pixels of weight x cross-entropy of the pixel's class, over the pixel count (void pixels weigh 0).
    /// Logits [N, C, h, w], or [N, 1, h, w] for a sigmoid (binary cross-entropy as softmax over (0, z)).
    public static func pixelLoss(logits: Tensor, targets: UNetTargets) -> Tensor {
        let z = logits.shape[1] == 1 ? Tensor.concat([Tensor(zeros: logits.shape), logits], axis: 1) : logits
        precondition(targets.labels.count == z.shape[0] * z.shape[2] * z.shape[3], "targets of \(targets.labels.count) pixels for \(z.shape)")
        let perPixel = z.softmaxCrossEntropy(labels: targets.labels, axis: 1, reduction: .unreduced)
        let weighted = perPixel * Tensor(shape: perPixel.shape, values: targets.weights)
        return weighted.sum() * (1 / Float(targets.labels.count))
    }
}

/// What U-Net's loss reads for a batch, cut to the output window: each pixel's class (void pixels as class 0, with
/// weight 0) and weight.
public struct UNetTargets: BatchTargets {
    public let labels: [Int32]
    public let weights: [Float]
}

/// Makes `UNetTargets` from a batch's class maps (and instance masks) on the data thread: the weight map over the whole
/// image (so distances see objects outside the window), then both cut to the output window.
struct UNetTargetEncoder: TargetEncoder {
    let weights: PixelWeights
    let window: (top: Int, left: Int, height: Int, width: Int)

    func encodeTargets(into batch: inout Batch) {
        guard let maps = batch.segmentation else { return }
        var pixelWeights = weights
        pixelWeights.voidLabel = maps.voidLabel
        let plane = maps.height * maps.width
        let count = maps.classes.count / plane
        var labels: [Int32] = [], values: [Float] = []
        labels.reserveCapacity(count * window.height * window.width)
        values.reserveCapacity(count * window.height * window.width)
        for image in 0..<count {
            let map = Array(maps.classes[(image * plane)..<((image + 1) * plane)])
            let w = pixelWeights.weights(classMap: map, height: maps.height, width: maps.width, instances: maps.instanceMasks?[image])
            for y in window.top..<(window.top + window.height) {
                for x in window.left..<(window.left + window.width) {
                    let i = y * maps.width + x
                    labels.append(map[i] == maps.voidLabel || Int(map[i]) >= weights.classWeights.count ? 0 : Int32(map[i]))
                    values.append(w[i])
                }
            }
        }
        batch.targets = UNetTargets(labels: labels, weights: values)
    }
}

extension UNet: ONNXExportable {
    public func onnxOutputs(_ images: ONNXValue) -> [ONNXOutput] {
        [ONNXOutput(name: "logits", value: logits(images), meaning: "class scores [N, C, h, w] (sigmoid models: [N, 1, h, w], class 1's logit)"),
         ONNXOutput(name: "probabilities", value: probabilities(images), meaning: "class probabilities [N, C, h, w] over the output window")]
    }
}
