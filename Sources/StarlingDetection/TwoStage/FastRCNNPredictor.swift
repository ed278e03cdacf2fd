import StarlingCore
import StarlingNN

/// Fast R-CNN's RoI head (R. Girshick, "Fast R-CNN", ICCV 2015, figure 1 and section 2.1): each region of interest is
/// max-pooled from the shared feature map into a `pooledSize` x `pooledSize` grid (7 x 7, `Tensor.roiMaxPool`, the
/// paper's quantisation), flattened, passed through two fully connected layers with ReLU (`fc6`, `fc7`; 4,096 units in
/// VGG16, `hidden` here) and two sibling layers: `cls_score`, K + 1 class logits (background first), and `bbox_pred`,
/// 4 (K + 1) class-specific box deltas in `BoxCoder`'s terms. Written once over `NetworkValue`, so the same pass trains
/// (Tensors) and exports (ONNX MaxRoiPool, MatMul/Add, Relu).
///
/// Deviations: the fully connected layers start from Keras's Glorot-uniform initialisation (the paper: ImageNet
/// weights for fc6 and fc7, zero-mean Gaussians of standard deviation 0.01 and 0.001 for the siblings); no dropout.
public struct FastRCNNPredictor: Sendable {
    public let pooledSize: Int
    /// 1 / the feature map's stride (1/16 for VGG16's conv5_3).
    public let spatialScale: Float
    public let classCount: Int
    let fc6: Dense, fc7: Dense, classScore: Dense, boxDeltas: Dense

    /// `channels` of the feature map, `hidden` units in fc6 and fc7, `classCount` with background.
    public init(_ store: ParameterStore, channels: Int, hidden: Int, classCount: Int, spatialScale: Float, pooledSize: Int = 7) {
        precondition(channels > 0 && hidden > 0 && classCount >= 2 && pooledSize > 0 && spatialScale > 0, "Fast R-CNN predictor configuration")
        self.pooledSize = pooledSize
        self.spatialScale = spatialScale
        self.classCount = classCount
        fc6 = Dense(store, name: "fc6", inputs: channels * pooledSize * pooledSize, outputs: hidden)
        fc7 = Dense(store, name: "fc7", inputs: hidden, outputs: hidden)
        classScore = Dense(store, name: "cls_score", inputs: hidden, outputs: classCount)
        boxDeltas = Dense(store, name: "bbox_pred", inputs: hidden, outputs: 4 * classCount)
    }

    /// Class logits [R, K + 1] and box deltas [R, 4 (K + 1)] of the regions `rois` [R, 5] (batch index, x1, y1, x2, y2
    /// in image pixels) on `features` [N, C, H, W].
    public func callAsFunction<Value: NetworkValue>(_ features: Value, rois: Value) -> (classLogits: Value, boxDeltas: Value) {
        let pooled = features.roiMaxPool(rois: rois, outputHeight: pooledSize, outputWidth: pooledSize, spatialScale: spatialScale)
        let h = fc7(fc6(pooled.flattened()).relu()).relu()
        return (classScore(h), boxDeltas(h))
    }
}

extension DetectionDecoding {
    /// Fast R-CNN's detections of one image (section 3 and its test code): each region's class probabilities
    /// [R x (K + 1)] (softmax, column 0 background) and class-specific deltas [R x 4 (K + 1)]; for every class k >= 1
    /// whose probability passes `confidenceThreshold`, the region's box decoded by class k's deltas (`coder`), clipped
    /// to the image (a box with nothing left inside is dropped); then `suppress` (per-class NMS, top k).
    public func decodeFastRCNN(probabilities: UnsafePointer<Float>, deltas: UnsafePointer<Float>, rois: [BoxCorners], classCount c: Int,
                               imageHeight: Int, imageWidth: Int, coder: BoxCoder = BoxCoder()) -> [DetectedBox] {
        var perClass: [[DetectedBox]] = Array(repeating: [], count: c)
        let (width, height) = (Float(imageWidth), Float(imageHeight))
        for (i, roi) in rois.enumerated() {
            for k in 1..<c where probabilities[i * c + k] > confidenceThreshold {
                let d = deltas + (i * c + k) * 4
                var b = coder.decode(SIMD4(d[0], d[1], d[2], d[3]), reference: roi)
                b = BoxCorners(xmin: max(0, b.xmin), ymin: max(0, b.ymin), xmax: min(width, b.xmax), ymax: min(height, b.ymax))
                guard b.xmin.isFinite && b.ymin.isFinite && b.xmax.isFinite && b.ymax.isFinite,
                      b.xmax - b.xmin > 1e-3, b.ymax - b.ymin > 1e-3 else { continue }
                perClass[k].append(DetectedBox(box: b, classID: k, score: probabilities[i * c + k]))
            }
        }
        return suppress(perClass)
    }
}
