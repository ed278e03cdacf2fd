import StarlingCore
import StarlingNN
import StarlingDetection
import StarlingTraining

/// A detector moved to a new class list by re-sampling its classifier heads, the weight sampling of P. Ferrari's
/// ssd_keras (weight_sampling_tutorial): each `classes<k>` convolution predicts, for every default box of a cell,
/// one logit per class, in channels box x classes + class. For every box the new head keeps the channels of the
/// chosen source classes, in the new order, followed by freshly initialised channels for classes the source
/// never knew (the detector's own initialiser: he_normal kernels and zero biases, drawn from `seed`). Every other
/// weight, the box heads included, is copied as it is.
public struct ClassSelection: Sendable {
    /// Object classes of the new model, background not counted (ssd_keras's `n_classes`).
    public var objectClasses: Int
    /// Source classes kept, in their new order; 0 (background) first.
    public var keep: [Int]
    /// Names of the new object classes (`objectClasses` of them, or one more, led by the background's name).
    /// Nil: the kept classes keep their names, new ones are called `class<k>`.
    public var names: [String]?
    public var seed: UInt64

    public init(objectClasses: Int, keep: [Int], names: [String]? = nil, seed: UInt64 = 0) {
        self.objectClasses = objectClasses
        self.keep = keep
        self.names = names
        self.seed = seed
    }
}

public enum ClassResampling {
    /// The prefix of a detector's classifier heads (ssd_keras's names).
    static let headPrefix = "classes"

    /// A new model of `model`'s family with the selected classes. `file` names the source in errors.
    public static func resample(_ model: any Model, _ selection: ClassSelection, file: String) throws -> any Model {
        func fail(_ message: String) -> ConversionError { ConversionError(file: file, message: message) }
        let config = model.config
        guard model is any Detector, let sourceNames = config.classNames else {
            throw fail("model \(config.family) is not a detector; only detectors' classes can be re-sampled")
        }
        let (keep, total) = (selection.keep, selection.objectClasses + 1)
        guard selection.objectClasses >= 1 else { throw fail("--num-classes must be at least 1, got \(selection.objectClasses)") }
        guard keep.first == 0 else { throw fail("the kept classes must start with 0, the background, got \(keep)") }
        guard keep.count <= total else { throw fail("\(keep.count - 1) object classes kept, more than --num-classes \(selection.objectClasses)") }
        guard Set(keep).count == keep.count else { throw fail("class listed twice in \(keep)") }
        if let bad = keep.first(where: { !sourceNames.indices.contains($0) }) {
            throw fail("class \(bad) does not exist: the model has classes 0...\(sourceNames.count - 1) (\(sourceNames.joined(separator: ", ")))")
        }
        var names = keep.map { sourceNames[$0] } + (keep.count..<total).map { "class\($0)" }
        if let given = selection.names {
            switch given.count {
            case total - 1: names = [sourceNames[0]] + given
            case total: names = given
            default: throw fail("\(given.count) class names for \(selection.objectClasses) object classes")
            }
        }
        var newConfig = config
        newConfig.classNames = names
        let resampled = try ModelRegistry.build(newConfig, seed: selection.seed)
        let source = Dictionary(uniqueKeysWithValues: WeightGroup.of(model).flatMap(\.weights).map { ($0.parameter.name, $0.parameter) })
        for weight in WeightGroup.of(resampled).flatMap(\.weights) {
            let target = weight.parameter
            guard let from = source[target.name] else { throw fail("model \(config.family) lacks weight '\(target.name)'") }
            if target.name.hasPrefix(headPrefix) {
                try copyClassChannels(from: from, to: target, sourceClasses: sourceNames.count, keep: keep, total: total, file: file)
            } else {
                guard from.shape == target.shape else { throw fail("weight '\(target.name)' changed shape from \(from.shape) to \(target.shape)") }
                target.value.storage.copy(from: from.value.storage)
            }
        }
        return resampled
    }

    /// For each box, output channels box x sourceClasses + keep[j] of `from` become channels box x total + j of
    /// `to` (axis 0 of a kernel or bias); the other channels of `to` keep their fresh initialisation.
    static func copyClassChannels(from: Parameter, to: Parameter, sourceClasses: Int, keep: [Int], total: Int, file: String) throws {
        let boxes = from.shape[0] / sourceClasses
        guard from.shape[0] == boxes * sourceClasses, to.shape[0] == boxes * total,
              Array(from.shape.dropFirst()) == Array(to.shape.dropFirst()) else {
            throw ConversionError(file: file, message: "classifier head '\(from.name)' of shape \(from.shape) does not hold \(sourceClasses) classes per box")
        }
        let row = from.count / from.shape[0]
        let source = from.value.data, target = to.value.data
        for box in 0..<boxes {
            for (j, k) in keep.enumerated() {
                (target + (box * total + j) * row).update(from: source + (box * sourceClasses + k) * row, count: row)
            }
        }
    }
}
