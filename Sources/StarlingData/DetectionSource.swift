import StarlingCore
import StarlingNN

/// Batches for a detector from a `DetectionDataset`: images as float NCHW in 0...255 (the model maps intensities
/// itself) and each image's objects; the model's head encodes its targets from them (`Model.targetEncoder`).
///
/// `augment` (training only) receives (pixels HWC, objects, epoch, sample index) and returns the augmented pair; it
/// must draw its randomness from (seed, epoch, sample index) so every rank augments a sample the same way.
///
/// With a `ProposalReader` the batches also carry each image's stored proposals (`Batch.proposals`), read image by image
/// and moved by the same augmentation as the boxes.
public final class DetectionSource: TrainingSource, @unchecked Sendable {
    public typealias Augmentation = (_ pixels: [UInt8], _ objects: [Object], _ epoch: Int, _ index: Int) -> ([UInt8], [Object])
    public typealias ProposalAugmentation = (_ pixels: [UInt8], _ objects: [Object], _ proposals: [BoxCorners], _ epoch: Int, _ index: Int)
        -> ([UInt8], [Object], [BoxCorners])
    public let dataset: DetectionDataset
    public let proposals: ProposalReader?
    private let transform: ProposalAugmentation?

    public init(dataset: DetectionDataset, augment: Augmentation? = nil) {
        self.dataset = dataset
        proposals = nil
        transform = augment.map { augment in { pixels, objects, proposals, epoch, index in
            let (p, o) = augment(pixels, objects, epoch, index)
            return (p, o, proposals)
        } }
    }

    /// Batches with each image's stored proposals from `proposals` (the same split of the same file).
    public init(dataset: DetectionDataset, proposals: ProposalReader, augment: ProposalAugmentation? = nil) {
        precondition(proposals.path == dataset.path && proposals.split == dataset.split && proposals.count == dataset.count,
                     "proposals of \(proposals.path):/\(proposals.split) for \(dataset.path):/\(dataset.split)")
        self.dataset = dataset
        self.proposals = proposals
        transform = augment
    }

    /// Opens `split` of `path` with its stored proposals; one line naming the file when the split has none.
    public static func withProposals(path: String, split: String, augmentation: DetectionAugmentation? = nil, seed: UInt64 = 0) throws -> DetectionSource {
        let dataset = try DetectionDataset(path: path, split: split)
        let reader = try ProposalReader(dataset: dataset)
        let (height, width) = (dataset.imageHeight, dataset.imageWidth)
        return DetectionSource(dataset: dataset, proposals: reader, augment: augmentation.map { augmentation in { pixels, objects, proposals, epoch, index in
            augmentation.apply(pixels: pixels, objects: objects, proposals: proposals, height: height, width: width, seed: seed, epoch: epoch, sampleIndex: index)
        } })
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
        var regions: [[BoxCorners]] = []
        for (k, i) in indices.enumerated() {
            var hwc = Array(pixels[(k * plane * 3)..<((k + 1) * plane * 3)])
            var objs = dataset.objects(of: i)
            var boxes = try proposals?.proposals(of: i) ?? []
            if training, let transform { (hwc, objs, boxes) = transform(hwc, objs, boxes, epoch, i) }
            objects.append(objs)
            regions.append(boxes)
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
        if proposals != nil { batch.proposals = regions }
        return batch
    }

    public var datasetDescription: DatasetDescription {
        DatasetDescription(path: path, sampleShape: [3, dataset.imageHeight, dataset.imageWidth], classNames: dataset.classNames)
    }
}
