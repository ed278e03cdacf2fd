import StarlingCore
import StarlingNN

/// Batches for a detector from a `DetectionDataset`: images as float NCHW in 0...255 (the model maps intensities
/// itself) and each image's objects; the model's head encodes its targets from them (`Model.targetEncoder`).
///
/// `augment` (training only) receives (pixels HWC, objects, epoch, sample index) and returns the augmented pair; it
/// must draw its randomness from (seed, epoch, sample index) so every rank augments a sample the same way.
public final class DetectionSource: TrainingSource, @unchecked Sendable {
    public typealias Augmentation = (_ pixels: [UInt8], _ objects: [Object], _ epoch: Int, _ index: Int) -> ([UInt8], [Object])
    public let dataset: DetectionDataset
    public let augment: Augmentation?

    public init(dataset: DetectionDataset, augment: Augmentation? = nil) {
        self.dataset = dataset
        self.augment = augment
    }

    public var path: String { dataset.path }
    public var split: String { dataset.split }
    public var count: Int { dataset.count }

    public func checkCompatible(with config: ModelConfig) throws { try datasetDescription.checkImagesAndClasses(fit: config) }

    public func batch(indices: [Int], epoch: Int, training: Bool, config: ModelConfig) throws -> Batch {
        let (h, w) = (dataset.imageHeight, dataset.imageWidth)
        let plane = h * w
        var pixels = [UInt8](repeating: 0, count: indices.count * plane * 3)
        try pixels.withUnsafeMutableBufferPointer { try dataset.readImages(indices, into: $0) }
        let images = Tensor(zeros: [indices.count, 3, h, w])
        var objects: [[Object]] = []
        for (k, i) in indices.enumerated() {
            var hwc = Array(pixels[(k * plane * 3)..<((k + 1) * plane * 3)])
            var objs = dataset.objects(of: i)
            if training, let augment { (hwc, objs) = augment(hwc, objs, epoch, i) }
            objects.append(objs)
            // HWC bytes to CHW floats.
            let out = images.data + k * 3 * plane
            hwc.withUnsafeBufferPointer { src in
                for c in 0..<3 {
                    let dst = out + c * plane
                    for p in 0..<plane { dst[p] = Float(src[p &* 3 &+ c]) }
                }
            }
        }
        var batch = Batch(images: images, indices: indices)
        batch.objects = objects
        return batch
    }

    public var datasetDescription: DatasetDescription {
        DatasetDescription(path: path, sampleShape: [3, dataset.imageHeight, dataset.imageWidth], classNames: dataset.classNames)
    }
}
