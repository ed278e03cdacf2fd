import StarlingCore
import StarlingNN

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
    /// What a family needs to know to size itself to these samples.
    var datasetDescription: DatasetDescription { get }
    /// Does once, before training, what the first batch would otherwise do (e.g. read a small split into memory), so
    /// that it is not counted in the first epoch's time. Not safe beside another read of the same source.
    func prepare() throws
    /// Whether `batch(indices:epoch:training:config:)` may run on several threads at once: true once a split is held in
    /// memory and a batch is a gather from it (after `prepare()`). Replicas on threads of one process then each make
    /// their own slices, in parallel, rather than one shared prefetcher making every replica's in turn (`Trainer.run`).
    var readsConcurrently: Bool { get }
}

extension TrainingSource {
    public func prepare() throws {}
    public var readsConcurrently: Bool { false }
}

extension TrainingSource {
    /// The samples at `indices` as one batch for `model`, with the targets its loss reads (`Model.targetEncoder`).
    public func batch(indices: [Int], epoch: Int, training: Bool, for model: any Model) throws -> Batch {
        var batch = try self.batch(indices: indices, epoch: epoch, training: training, config: model.config)
        model.targetEncoder?.encodeTargets(into: &batch)
        return batch
    }
}

/// The training and validation sources of a dataset file, opened by the kind of data a family trains on.
public enum TrainingData {
    /// `validationSplit` nil: the kind's usual split (`test` for image sets, as the Keras tutorial validates on the
    /// test set; `val` otherwise); "none": no validation. `augment`: detection's box-aware augmentation of training
    /// images (ssd_keras's chain) and segmentation's mask-aware one (`SegmentationAugmentation`: flip, zoom and crop,
    /// with `elastic` the U-Net paper's elastic deformation, with `photometric` SSD's colour distortions of the image),
    /// drawn from (seed, epoch, sample).
    public static func open(_ kind: DataKind, path: String, trainSplit: String, validationSplit: String?, augment: Bool,
                            seed: UInt64, elastic: Bool = false, photometric: Bool = false) throws -> (train: any TrainingSource, validation: (any TrainingSource)?) {
        switch kind {
        case .images:
            let split = validationSplit ?? "test"
            return (try ImageDataset(path: path, split: trainSplit), split == "none" ? nil : try ImageDataset(path: path, split: split))
        case .detection:
            let dataset = try DetectionDataset(path: path, split: trainSplit)
            let (height, width) = (dataset.imageHeight, dataset.imageWidth)
            let augmentation = DetectionAugmentation()
            let train = DetectionSource(dataset: dataset, augment: augment ? { pixels, objects, epoch, index in
                augmentation.apply(pixels: pixels, objects: objects, height: height, width: width, seed: seed, epoch: epoch, sampleIndex: index)
            } : nil)
            let split = validationSplit ?? "val"
            return (train, split == "none" ? nil : DetectionSource(dataset: try DetectionDataset(path: path, split: split)))
        case .detectionProposals:
            let train = try DetectionSource.withProposals(path: path, split: trainSplit, augmentation: augment ? DetectionAugmentation() : nil, seed: seed)
            let split = validationSplit ?? "val"
            return (train, split == "none" ? nil : try DetectionSource.withProposals(path: path, split: split))
        case .segmentation, .instances:
            let dataset = try SegmentationDataset(path: path, split: trainSplit)
            if kind == .instances && !dataset.hasInstances {
                throw DataError(file: path, message: "/\(trainSplit) has no instance masks (instance_offsets); this model trains on instance data")
            }
            let (height, width, void) = (dataset.imageHeight, dataset.imageWidth, dataset.voidLabel)
            let augmentation = SegmentationAugmentation(elastic: elastic, photometric: photometric)
            let train = SegmentationSource(dataset: dataset, augment: augment ? { pixels, map, instances, epoch, index in
                augmentation.apply(pixels: pixels, classMap: map, instances: instances, height: height, width: width, voidLabel: void,
                                   seed: seed, epoch: epoch, sampleIndex: index)
            } : nil)
            let split = validationSplit ?? "val"
            return (train, split == "none" ? nil : SegmentationSource(dataset: try SegmentationDataset(path: path, split: split)))
        }
    }
}

extension ImageDataset: TrainingSource {
    public func prepare() throws { try loadResident() }

    /// A resident split's batches are gathers from memory that no longer changes (`read`), touching no HDF5.
    public var readsConcurrently: Bool { isResident }

    public func batch(indices: [Int], epoch: Int, training: Bool, config: ModelConfig) throws -> Batch {
        try batch(indices: indices, modelInputShape: config.inputShape)
    }

    public var datasetDescription: DatasetDescription {
        DatasetDescription(path: path, sampleShape: sampleShape)
    }

    public func checkCompatible(with config: ModelConfig) throws {
        guard sampleSize == config.inputShape.reduce(1, *) else {
            throw ModelError.inputShape(family: config.family, expected: config.inputShape, got: sampleShape, source: path)
        }
    }
}
