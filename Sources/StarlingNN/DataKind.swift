import StarlingCore

/// What a family trains on, and so which reader `starling train` opens and what a batch carries besides images.
public enum DataKind: String, Sendable, CaseIterable {
    /// Image datasets such as MNIST (`starling data mnist`): images and optional integer labels.
    case images
    /// Detection datasets (`starling data detection`): images and their boxes (`Batch.objects`).
    case detection
    /// Detection datasets with region proposals stored beside each split (`starling proposals --store`): images, boxes
    /// and each image's proposals (`Batch.objects`, `Batch.proposals`). Fast R-CNN trains on them.
    case detectionProposals
    /// Semantic segmentation: images and a class per pixel (`Batch.segmentation`'s class maps).
    case segmentation
    /// Instance segmentation: images, boxes and a mask per object (`Batch.objects` and `Batch.segmentation`'s masks).
    case instances
}

/// What a dataset file tells a family about its samples, so the family can size itself to them.
public struct DatasetDescription: Sendable {
    /// The file, for errors.
    public var path: String
    /// One sample as the model takes it: [C, H, W] for colour images, [H, W] or [H x W] for MNIST-like sets.
    public var sampleShape: [Int]
    /// Class names with "background" first, where the dataset has classes.
    public var classNames: [String]?

    public init(path: String, sampleShape: [Int], classNames: [String]? = nil) {
        self.path = path
        self.sampleShape = sampleShape
        self.classNames = classNames
    }
}

extension DatasetDescription {
    /// Throws, naming the file, when a model's configuration was made for images of another size or other classes
    /// (a detector or segmentation model trained on one file, given another).
    public func checkImagesAndClasses(fit config: ModelConfig) throws {
        guard config.inputShape == sampleShape else {
            let stored = sampleShape.count == 3 ? [sampleShape[1], sampleShape[2], sampleShape[0]] : sampleShape
            throw ModelError.inputShape(family: config.family, expected: config.inputShape, got: stored, source: path)
        }
        guard let names = config.classNames, names == classNames else {
            throw DataError(file: path, message: "classes \(classNames?.dropFirst().map { $0 } ?? []) differ from the model's \(config.classNames?.dropFirst().map { $0 } ?? [])")
        }
    }
}
