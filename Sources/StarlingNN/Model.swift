import StarlingCore

/// What a checkpoint records about a model so that it can be rebuilt: the family name, the input shape and
/// the family's hyperparameters. Stored as JSON in the checkpoint's `model_config` attribute.
public struct ModelConfig: Codable, Equatable, Sendable {
    public var family: String
    /// Shape of one input sample, e.g. [784] or [1, 28, 28].
    public var inputShape: [Int]
    /// Family-specific numbers (code size, penalties, ...), by name.
    public var options: [String: Double]
    public var classNames: [String]?
    /// SSD's default boxes (scales, aspect ratios and feature maps).
    public var anchors: AnchorConfig?
    /// YOLO's anchors from v2 on: [width, height] in pixels of the input image, smallest first.
    public var anchorSizes: [[Double]]?

    public init(family: String, inputShape: [Int], options: [String: Double] = [:], classNames: [String]? = nil, anchors: AnchorConfig? = nil,
                anchorSizes: [[Double]]? = nil) {
        self.family = family
        self.inputShape = inputShape
        self.options = options
        self.classNames = classNames
        self.anchors = anchors
        self.anchorSizes = anchorSizes
    }

    public func option(_ name: String, default value: Double) -> Double { options[name] ?? value }
}

/// One step's worth of data: images (NCHW or flattened, as the model's input shape says; MNIST scaled to [0, 1],
/// detection images as 0...255) and, where the dataset has them, integer labels or a detector's anchor targets.
///
/// Models that draw noise per sample (the denoiser's corruption, a VAE's latent sample) key it on where the batch
/// came from: each sample's dataset index, and during training the run's seed and the epoch. So a sample gets the
/// same noise whichever batch, step or rank it lands in, fresh noise every epoch, and a resumed run repeats it.
public struct Batch {
    public var images: Tensor
    public var labels: [Int32]?
    /// Dataset index of each sample, in batch order (set by the data sources); nil: the position in the batch.
    public var indices: [Int]?
    /// The epoch (0-based) and the run's seed during training (set by the Trainer); nil outside training.
    public var epoch: Int?
    public var seed: UInt64?
    /// Detection and instance data: the annotated objects per image.
    public var objects: [[Object]]?
    /// Segmentation data: the class of every pixel and, for instance data, each object's mask.
    public var segmentation: SegmentationMaps?
    /// Detection data with stored region proposals (`DataKind.detectionProposals`): each image's proposals in pixels of
    /// the model's input, best first, moved with the image by augmentation.
    public var proposals: [[BoxCorners]]?
    /// What the model's loss compares its outputs with, encoded from the annotations by the model's
    /// `targetEncoder` on the data thread (SSD: `SSDTargets`).
    public var targets: (any BatchTargets)?
    public init(images: Tensor, labels: [Int32]? = nil, indices: [Int]? = nil, epoch: Int? = nil, seed: UInt64? = nil) {
        self.images = images
        self.labels = labels
        self.indices = indices
        self.epoch = epoch
        self.seed = seed
    }
    public var size: Int { images.shape[0] }

    /// The seed of all noise drawn outside training (validation loss, `starling eval`): fixed, so that figures repeat.
    public static let evaluationSeed: UInt64 = 0x5EED_E7A1

    /// The random stream of sample `r`: keyed by (seed, epoch, dataset index) when training, by
    /// (evaluationSeed, dataset index) otherwise. `purpose` separates independent uses of one sample's stream.
    public func randomStream(sample r: Int, purpose: UInt64, training: Bool) -> RandomGenerator {
        let index = UInt64(indices?[r] ?? r)
        if training { return RandomGenerator(seed: seed ?? 0, stream: purpose, UInt64(epoch ?? 0), index) }
        return RandomGenerator(seed: Batch.evaluationSeed, stream: purpose, index)
    }
}

/// Per-pixel annotations of a segmentation batch, in the model's input size.
public struct SegmentationMaps: Sendable {
    /// The class of each pixel, [N, H, W] row-major; `voidLabel` marks pixels that count for nothing.
    public var classes: [UInt8]
    public var height: Int, width: Int
    public var voidLabel: UInt8
    /// Instance data: per image, one H x W mask per object of `Batch.objects` (1 inside, 0 outside), in that order.
    public var instanceMasks: [[[UInt8]]]?

    public init(classes: [UInt8], height: Int, width: Int, voidLabel: UInt8 = 255, instanceMasks: [[[UInt8]]]? = nil) {
        precondition(height > 0 && width > 0 && classes.count % (height * width) == 0, "class maps of \(classes.count) bytes for \(height)x\(width)")
        self.classes = classes
        self.height = height
        self.width = width
        self.voidLabel = voidLabel
        self.instanceMasks = instanceMasks
    }
}

/// What a model's loss compares its outputs with, encoded from a batch's annotations (an SSD's class and offsets
/// per anchor, a YOLO's responsible cell and anchor per box). Families define their own; `Batch.targets` holds them.
public protocol BatchTargets: Sendable {}

/// Turns a batch's annotations into the targets of a model's loss. It runs on the data thread beside reading, so it
/// holds only immutable state (anchors, thresholds) and never touches the model.
public protocol TargetEncoder: Sendable {
    func encodeTargets(into batch: inout Batch)
}

/// A trainable model: its parameters in one flat store, and a loss on a batch.
public protocol Model: AnyObject {
    var config: ModelConfig { get }
    var parameters: ParameterStore { get }
    /// State that is not trained by gradients but belongs to the model (batch norm's moving mean and variance):
    /// checkpointed beside the weights and broadcast from rank 0 at start. Nil for models without any.
    var buffers: ParameterStore? { get }
    /// Encodes a batch's annotations into `Batch.targets` before the loss reads them (nil: the loss reads the images
    /// or labels as they are).
    var targetEncoder: (any TargetEncoder)? { get }
    /// The training objective on a batch (a one-element tensor), recorded for backward when gradients are on.
    func loss(_ batch: Batch, training: Bool) -> Tensor
}

/// Autoencoders also reconstruct: `reconstruction` returns probabilities in [0, 1], shaped like the input.
public protocol Autoencoder: Model {
    func reconstruction(_ images: Tensor) -> Tensor
    /// Logits whose sigmoid is the reconstruction: the per-pixel BCE of evaluation is computed on them.
    func reconstructionLogits(_ images: Tensor, training: Bool) -> Tensor
}

public extension Model {
    var buffers: ParameterStore? { nil }
    var targetEncoder: (any TargetEncoder)? { nil }
}

/// Models with an encoder: `code` is its output for a batch of images, flattened to [N, D] (a VAE's posterior mean).
/// Plots, outlier scores and image indexes work on it.
public protocol Encoding: Model {
    func code(_ images: Tensor) -> Tensor
}

public extension Autoencoder {
    func reconstruction(_ images: Tensor) -> Tensor {
        GradMode.disabled { reconstructionLogits(images, training: false).sigmoid() }
    }
}

/// Errors a user can cause by naming a model, or by handing over data or a checkpoint that does not fit.
public enum ModelError: Error, CustomStringConvertible {
    case unknownFamily(String, known: [String])
    case inputShape(family: String, expected: [Int], got: [Int], source: String)
    case unsupportedOption(family: String, flag: String)
    case optionOutOfRange(flag: String, value: Double, range: ClosedRange<Double>)
    case configuration(family: String, problem: String)
    public var description: String {
        switch self {
        case .unknownFamily(let name, let known):
            return "unknown model '\(name)'; known models: \(known.joined(separator: ", "))"
        case .inputShape(let family, let expected, let got, let source):
            return "\(source): samples of shape \(got) do not fit model \(family), which takes \(expected)"
        case .unsupportedOption(let family, let flag):
            return "model \(family) has no option \(flag)"
        case .configuration(let family, let problem):
            return "model \(family): \(problem)"
        case .optionOutOfRange(let flag, let value, let range):
            return "\(flag) must lie in [\(range.lowerBound), \(range.upperBound)], got \(value)"
        }
    }
}
