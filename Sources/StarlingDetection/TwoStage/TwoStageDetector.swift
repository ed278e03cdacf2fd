import StarlingCore
import StarlingNN

/// A two-stage detector in torchvision's `GeneralizedRCNN` manner: a backbone computes one feature map of the whole
/// image, a proposal stage gives each image's regions of interest, and the RoI heads (`RoIHeads`) classify and refine
/// them. Fast R-CNN reads its proposals from the data (`Batch.proposals`); Faster R-CNN computes them with its region
/// proposal network from the same features and adds that network's loss.
///
/// Images are NCHW pixels 0...255, as every detector takes them; proposals, RoIs and detections are boxes in pixels of
/// the model's input (`BoxCorners`, xmin, ymin, xmax, ymax).
///
/// Training runs `twoStageLoss`: features, proposals, the RoI minibatch of each image (drawn from the sample's own random
/// stream, so ranks draw alike) and the multi-task loss over the RoIs of the global batch. Inference runs `detect`.
public protocol TwoStageDetector: RegionDetector {
    /// The RoI heads: predictor, minibatch sampling, loss and decoding.
    var roiHeads: RoIHeads { get }
    /// The backbone's feature map [N, C, H, W] of `images`, at `roiHeads.predictor.spatialScale` of the input.
    func features(_ images: Tensor, training: Bool) -> Tensor
    /// The regions to classify in each image of `batch` and the proposal stage's own loss, if it has one (an RPN's;
    /// normalised over the global batch like the RoI heads' loss). Stored proposals have no loss.
    func proposals(for batch: Batch, features: Tensor, training: Bool) -> RegionProposals
}

/// A detector that classifies regions of each image rather than a fixed grid of anchors: the R-CNN family. R-CNN
/// (`RCNN`) cuts each stored proposal out of the image; the two-stage detectors (`TwoStageDetector`) pool them from a
/// shared feature map. `eval`, `predict` and `bench` take them through this protocol.
public protocol RegionDetector: Model, CrossReplicaAware {
    /// Classes with background.
    var classCount: Int { get }
    /// Whether the model reads its proposals from the batch (`Batch.proposals`: stored with the data, or searched by
    /// `predict` for a raw image) rather than computing them. Default false for two-stage detectors.
    var readsProposals: Bool { get }
    /// Detections per image of `batch.images` (pixels of the input), with the number of proposals scored in each image:
    /// what `eval` reports beside mAP, for stored proposals and computed ones (an RPN's) alike.
    func detectCountingProposals(_ batch: Batch, decoding: DetectionDecoding) -> (detections: [[DetectedBox]], proposals: [Int])
}

extension RegionDetector {
    /// Detections per image of `batch.images` (pixels of the input); a model that reads proposals needs them in the batch.
    public func detect(_ batch: Batch, decoding: DetectionDecoding) -> [[DetectedBox]] {
        detectCountingProposals(batch, decoding: decoding).detections
    }
}

/// Each image's regions of interest, best first, and the loss of the stage that proposed them (nil: none, as for stored
/// proposals).
public struct RegionProposals {
    public var boxes: [[BoxCorners]]
    public var loss: Tensor?
    public init(boxes: [[BoxCorners]], loss: Tensor? = nil) {
        self.boxes = boxes
        self.loss = loss
    }
}

extension TwoStageDetector {
    public var readsProposals: Bool { false }

    /// Classes with background.
    public var classCount: Int { roiHeads.classCount }

    /// The detection objective on this rank's slice of the batch: the proposal stage's loss (if any) plus the RoI
    /// heads' multi-task loss, each normalised over the global batch through `crossReplica`.
    public func twoStageLoss(_ batch: Batch, training: Bool) -> Tensor {
        guard let objects = batch.objects else {
            preconditionFailure("\(config.family) needs the annotated objects in its batches")
        }
        let map = features(batch.images, training: training)
        let regions = proposals(for: batch, features: map, training: training)
        let heads = roiHeads.loss(features: map, proposals: regions.boxes, objects: objects, batch: batch, training: training,
                                  crossReplica: crossReplica)
        return regions.loss.map { $0 + heads } ?? heads
    }

    /// Detections from the proposal stage's regions (for Fast R-CNN the batch must carry `proposals`), with the number of
    /// proposals the RoI heads scored in each image (at most `roiHeads.testProposals`).
    public func detectCountingProposals(_ batch: Batch, decoding: DetectionDecoding) -> (detections: [[DetectedBox]], proposals: [Int]) {
        GradMode.disabled {
            let map = features(batch.images, training: false)
            let regions = proposals(for: batch, features: map, training: false)
            let found = roiHeads.detect(features: map, proposals: regions.boxes, imageHeight: batch.images.shape[2],
                                        imageWidth: batch.images.shape[3], decoding: decoding)
            return (found, regions.boxes.map { min($0.count, roiHeads.testProposals) })
        }
    }
}

/// The second stage both Fast and Faster R-CNN share (torchvision's `RoIHeads` with Fast R-CNN's settings): each
/// image's RoI minibatch (`FastRCNNTargets`), the predictor on the pooled regions (`FastRCNNPredictor`), the multi-task
/// loss and the class-specific decoding.
///
/// Data-parallel: the loss is the sum over this rank's RoIs of the class term and the foreground RoIs' box term,
/// divided by the RoIs of the global batch (summed over ranks through `CrossReplica`) and multiplied by the number of
/// ranks, whose gradients the trainer averages: N ranks give the gradient one process gives at the same global batch,
/// even when images yield different numbers of RoIs (an image with few proposals, or without boxes, gives fewer).
/// The validation loss, where ranks score unequal shares in unequal numbers of batches, runs with `CrossReplica.single`
/// (`Trainer.evaluateLoss`), so it is this rank's own mean.
public struct RoIHeads: Sendable {
    public let predictor: FastRCNNPredictor
    public var sampling: FastRCNNTargets
    /// At inference, the best `testProposals` proposals of each image are scored (Fast R-CNN: 2,000).
    public var testProposals: Int
    /// Separates the RoI sampling's stream from other uses of a sample's (`Batch.randomStream`).
    public static let samplingPurpose: UInt64 = 0x524F_4953

    public init(predictor: FastRCNNPredictor, sampling: FastRCNNTargets = FastRCNNTargets(), testProposals: Int = 2000) {
        precondition(testProposals > 0, "RoI heads: testProposals \(testProposals)")
        self.predictor = predictor
        self.sampling = sampling
        self.testProposals = testProposals
    }

    public var classCount: Int { predictor.classCount }
    public var coder: BoxCoder { sampling.coder }

    /// Each image's RoI minibatch, drawn from image k's stream (`Batch.randomStream(sample: k, purpose: samplingPurpose)`).
    public func sample(proposals: [[BoxCorners]], objects: [[Object]], batch: Batch, training: Bool) -> [FastRCNNTargets.Sample] {
        precondition(proposals.count == objects.count, "\(proposals.count) proposal lists for \(objects.count) images")
        return proposals.indices.map { k in
            var rng = batch.randomStream(sample: k, purpose: Self.samplingPurpose, training: training)
            return sampling.sample(proposals: proposals[k], objects: objects[k], using: &rng)
        }
    }

    /// The multi-task loss (see the type's comment) of the RoIs sampled from `proposals` on `features`.
    public func loss(features: Tensor, proposals: [[BoxCorners]], objects: [[Object]], batch: Batch, training: Bool,
                     crossReplica: CrossReplica) -> Tensor {
        let samples = sample(proposals: proposals, objects: objects, batch: batch, training: training)
        let local = samples.reduce(0) { $0 + $1.rois.count }
        var count = [Double(local)]
        count.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
        let global = Int(count[0])
        // A rank whose images gave no RoIs still takes part in the sum above and returns a zero that reaches the
        // parameters, so its backward pass (and the gradient allreduce after it) runs as on the other ranks.
        guard local > 0 else { return features.sum() * 0 }
        let rois = Self.roiTensor(samples.map(\.rois))
        let (logits, deltas) = predictor(features, rois: rois)
        let labels = samples.flatMap(\.labels), targets = samples.flatMap(\.targets)
        // fastRCNNLoss divides by this rank's RoIs; rescaled to the global count (times the ranks, which the
        // gradient average divides out again).
        let scale = Float(local) * Float(crossReplica.size) / Float(global)
        return Tensor.fastRCNNLoss(classLogits: logits, boxDeltas: deltas, labels: labels, targets: targets) * scale
    }

    /// Detections of each image from its best `testProposals` proposals (`DetectionDecoding.decodeFastRCNN`).
    public func detect(features: Tensor, proposals: [[BoxCorners]], imageHeight: Int, imageWidth: Int,
                       decoding: DetectionDecoding) -> [[DetectedBox]] {
        let kept = proposals.map { Array($0.prefix(testProposals)) }
        guard kept.contains(where: { !$0.isEmpty }) else { return kept.map { _ in [] } }
        let (logits, deltas) = predictor(features, rois: Self.roiTensor(kept))
        let probabilities = logits.softmax(axis: 1)
        let c = classCount
        var first = 0
        return kept.map { rois in
            defer { first += rois.count }
            guard !rois.isEmpty else { return [] }
            return decoding.decodeFastRCNN(probabilities: probabilities.data + first * c, deltas: deltas.data + first * 4 * c, rois: rois,
                                           classCount: c, imageHeight: imageHeight, imageWidth: imageWidth, coder: coder)
        }
    }

    /// RoIs [R, 5] (batch index, x1, y1, x2, y2), image by image.
    public static func roiTensor(_ perImage: [[BoxCorners]]) -> Tensor {
        var values: [Float] = []
        values.reserveCapacity(5 * perImage.reduce(0) { $0 + $1.count })
        for (k, boxes) in perImage.enumerated() {
            for b in boxes { values += [Float(k), b.xmin, b.ymin, b.xmax, b.ymax] }
        }
        return Tensor(shape: [values.count / 5, 5], values: values)
    }
}
