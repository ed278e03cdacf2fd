import StarlingCore

/// A single-shot detector: class logits and box offsets for every default box, decoded with its own encoder.
public protocol Detector: Model, CrossReplicaAware {
    var encoder: SSDBoxEncoder { get }
    /// Classes with background.
    var classCount: Int { get }
    /// Class logits [N x A, classes] and box offsets [N x A, 4], image-major in anchor order.
    func predict(_ images: Tensor, training: Bool) -> (classLogits: Tensor, boxOffsets: Tensor)
}

extension Detector {
    /// The SSD objective on a batch plus Keras's L2 kernel penalty: `l2 * sum(w^2)` for each of `kernels`, added once
    /// per step.
    func detectionLoss(_ batch: Batch, training: Bool, lossFunction: SSDLoss, kernels: [Parameter], l2: Float) -> Tensor {
        precondition(batch.anchorTargets != nil, "\(config.family) needs anchor targets in its batches")
        let (classes, boxes) = predict(batch.images, training: training)
        let targets = batch.anchorTargets ?? []
        let (detection, _) = lossFunction(classLogits: classes, boxOffsets: boxes, targetClasses: targets.flatMap(\.classes),
                                          targetOffsets: targets.flatMap(\.offsets), crossReplica: crossReplica)
        guard l2 > 0 else { return detection }
        return kernels.map { $0.value.l2Penalty(l2) }.reduce(detection) { $0 + $1 }
    }

    /// Detections per image, in pixels of the model's input.
    public func detect(_ images: Tensor, decoding: DetectionDecoding) -> [[DetectedBox]] {
        GradMode.disabled {
            let (classes, boxes) = predict(images, training: false)
            let probabilities = classes.softmax(axis: -1)
            let a = encoder.anchorCount
            return (0..<images.shape[0]).map { i in
                decoding.decode(probabilities: probabilities.data + i * a * classCount, offsets: boxes.data + i * a * 4,
                                classCount: classCount, encoder: encoder)
            }
        }
    }
}
