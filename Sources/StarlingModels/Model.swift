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
    /// Detectors: their default boxes.
    public var anchors: AnchorConfig?

    public init(family: String, inputShape: [Int], options: [String: Double] = [:], classNames: [String]? = nil, anchors: AnchorConfig? = nil) {
        self.family = family
        self.inputShape = inputShape
        self.options = options
        self.classNames = classNames
        self.anchors = anchors
    }

    public func option(_ name: String, default value: Double) -> Double { options[name] ?? value }
}

/// One step's worth of data: images (NCHW or flattened, as the model's input shape says; MNIST scaled to [0, 1],
/// detection images as 0...255) and, where the dataset has them, integer labels or a detector's anchor targets.
public struct Batch {
    public var images: Tensor
    public var labels: [Int32]?
    /// Detectors: per image, what each anchor should predict (image-major, as the model's predictions).
    public var anchorTargets: [AnchorTargets]?
    /// Detectors: the annotated objects per image (for evaluation and pictures).
    public var objects: [[Object]]?
    public init(images: Tensor, labels: [Int32]? = nil) { self.images = images; self.labels = labels }
    public var size: Int { images.shape[0] }
}

/// A trainable model: its parameters in one flat store, and a loss on a batch.
public protocol Model: AnyObject {
    var config: ModelConfig { get }
    var parameters: ParameterStore { get }
    /// State that is not trained by gradients but belongs to the model (batch norm's moving mean and variance):
    /// checkpointed beside the weights and broadcast from rank 0 at start. Nil for models without any.
    var buffers: ParameterStore? { get }
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
    public var description: String {
        switch self {
        case .unknownFamily(let name, let known):
            return "unknown model '\(name)'; known models: \(known.joined(separator: ", "))"
        case .inputShape(let family, let expected, let got, let source):
            return "\(source): samples of shape \(got) do not fit model \(family), which takes \(expected)"
        }
    }
}
