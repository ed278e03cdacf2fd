import StarlingCore

/// Where the trainer's batches come from: a split of a dataset file, read a batch at a time.
/// `epoch` and `training` let a source draw augmentation or noise deterministically from (seed, epoch, sample).
public protocol TrainingSource: AnyObject, Sendable {
    var path: String { get }
    var split: String { get }
    var count: Int { get }
    /// The samples at `indices` as one batch for `model`'s input.
    func batch(indices: [Int], epoch: Int, training: Bool, config: ModelConfig) throws -> Batch
    /// Throws a one-line error when the samples do not fit the model.
    func checkCompatible(with config: ModelConfig) throws
}

extension ImageDataset: TrainingSource {
    public func batch(indices: [Int], epoch: Int, training: Bool, config: ModelConfig) throws -> Batch {
        try batch(indices: indices, modelInputShape: config.inputShape)
    }

    public func checkCompatible(with config: ModelConfig) throws {
        guard sampleSize == config.inputShape.reduce(1, *) else {
            throw ModelError.inputShape(family: config.family, expected: config.inputShape, got: sampleShape, source: path)
        }
    }
}
