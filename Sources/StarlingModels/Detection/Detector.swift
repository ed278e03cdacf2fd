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
