import Foundation
import StarlingCore
import StarlingNN

/// R-CNN: R. Girshick, J. Donahue, T. Darrell, J. Malik, "Rich feature hierarchies for accurate object detection and
/// semantic segmentation", CVPR 2014 (and its tech report v5, appendices A-C). The course's first step of the family:
/// every region proposal is cut out of the image, warped to the CNN's fixed input and classified on its own.
///
/// Three stages, one command each (README, "The R-CNN family"):
/// 1. `starling train --model rcnn` fine-tunes the CNN on warped proposals (section 2.3, "Domain-specific
///    fine-tuning"): a K + 1 softmax; proposals with IoU >= 0.5 with a box are that box's class, the rest background;
///    minibatches of 32 positive and 96 background windows a 128 (here per image: `rois_per_image` at 25 %
///    foreground, `FastRCNNTargets` with no lower IoU bound, drawn from the sample's own stream).
/// 2. `starling rcnn-svm` trains one linear SVM per class on the fine-tuned fc7 features (ground-truth boxes positive,
///    proposals under IoU 0.3 with every box of the class negative, hard negative mining: `HardNegativeMiner`) and the
///    class-specific ridge box regressors on pool5 (appendix C, `RidgeBoxRegressor`). They are stored in the
///    checkpoint as this model's buffers.
/// 3. `eval` / `predict` score each image's proposals (all of them, up to `test_proposals`) with the SVMs (or with
///    the softmax before stage 2, the paper's ablation), move the boxes by the regressors, and suppress per class.
///
/// Warping (appendix A): each proposal is dilated about its centre so that, warped to `warp` x `warp`, it carries
/// `16 x warp / 227` pixels of context on every side (the paper's p = 16 at 227), then bilinearly resampled
/// (`roiAlign` with one sample a pixel, which is a plain warp); outside the image the mean-subtracted image is 0, the
/// paper's fill with the mean.
///
/// Deviations for CPUs: the CNN is a small AlexNet-like stack (four 3x3 convolutions with ReLU and 2x2 max pooling,
/// 32, 64, 128, 128 filters times `width`, then fc6 and fc7 of `hidden` units), trained from scratch rather than from
/// ImageNet weights, on `warp` = 64 pixel windows; pool5 is the last pooling's output. SVM scores are reported through
/// the logistic function so that detections carry a confidence in (0, 1) (the ranking, hence AP, is the SVM's).
public final class RCNN: RegionDetector {
    public static let family = "rcnn"
    public static let filters = [32, 64, 128, 128]
    public let config: ModelConfig
    public let parameters = ParameterStore()
    public let buffersStore = ParameterStore(trainable: false)
    public var buffers: ParameterStore? { buffersStore }
    public var crossReplica = CrossReplica.single
    /// No batch norm.
    public var synchronizeBatchNorm = false
    public let classCount: Int
    public let warp: Int
    /// Context pixels on each side of a warped window.
    public let contextPadding: Float
    public var sampling: FastRCNNTargets
    public var testProposals: Int
    let convs: [Conv2D]
    let fc6: Dense, fc7: Dense, classScore: Dense
    /// Stage 2's products: per object class (1 ..< K) an SVM on fc7 features times `svmFeatureScale`, a ridge
    /// regressor on pool5 features; `stage` is 0 until `installSVMs` sets it to 1.
    let svmWeights: Parameter, svmBias: Parameter, svmFeatureScale: Parameter
    let regressorWeights: Parameter, regressorBias: Parameter
    let stage: Parameter
    /// R-CNN's regression targets are unweighted (appendix C).
    public static let regressionCoder = BoxCoder(weights: (1, 1, 1, 1))
    /// Separates the fine-tuning windows' stream from other uses of a sample's (`Batch.randomStream`).
    public static let samplingPurpose: UInt64 = 0x5243_4E4E

    public var pool5Dimension: Int { fc6.inputs }
    public var fc7Dimension: Int { fc7.outputs }

    public init(config: ModelConfig, rng: inout RandomGenerator) throws {
        guard config.inputShape.count == 3, config.inputShape[0] == 3, let names = config.classNames, names.count >= 2 else {
            throw ModelError.inputShape(family: config.family, expected: [3, 375, 500], got: config.inputShape, source: "model configuration (needs colour images and class names)")
        }
        self.config = config
        classCount = names.count
        warp = Int(config.option("warp", default: 64))
        guard warp >= 16, warp % 16 == 0 else {
            throw ModelError.configuration(family: config.family, problem: "warp \(warp) must be a multiple of 16 (four 2x2 poolings)")
        }
        contextPadding = 16 * Float(warp) / 227
        sampling = FastRCNNTargets(roisPerImage: Int(config.option("rois_per_image", default: 64)), foregroundFraction: 0.25,
                                   foregroundIoU: 0.5, backgroundIoU: 0, coder: Self.regressionCoder, includeTruths: true)
        testProposals = Int(config.option("test_proposals", default: 2000))
        var inputs = 3, c: [Conv2D] = []
        for (k, f) in Self.filters.enumerated() {
            let outputs = max(1, Int((Double(f) * config.option("width", default: 1)).rounded()))
            c.append(Conv2D(parameters, name: "conv\(k + 1)", inputs: inputs, outputs: outputs, initializer: .heNormal(fanIn: inputs * 9)))
            inputs = outputs
        }
        convs = c
        let pool5 = inputs * (warp / 16) * (warp / 16)
        let hidden = Int(config.option("hidden", default: 256))
        fc6 = Dense(parameters, name: "fc6", inputs: pool5, outputs: hidden)
        fc7 = Dense(parameters, name: "fc7", inputs: hidden, outputs: hidden)
        classScore = Dense(parameters, name: "cls_score", inputs: hidden, outputs: classCount)
        let objects = classCount - 1
        svmWeights = buffersStore.declare("svm/weights", shape: [objects, hidden], initializer: .zeros)
        svmBias = buffersStore.declare("svm/bias", shape: [objects], initializer: .zeros)
        svmFeatureScale = buffersStore.declare("svm/feature_scale", shape: [1], initializer: .ones)
        regressorWeights = buffersStore.declare("box_regressor/weights", shape: [objects, 4, pool5], initializer: .zeros)
        regressorBias = buffersStore.declare("box_regressor/bias", shape: [objects, 4], initializer: .zeros)
        stage = buffersStore.declare("rcnn/stage", shape: [1], initializer: .zeros)
        parameters.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffersStore.allocate(rng: &unused)
    }

    /// The configuration for a detection dataset with stored proposals (its image size and classes); nil: Penn-Fudan's
    /// 375 x 500 pedestrians.
    public static func configuration(for dataset: DatasetDescription?) throws -> ModelConfig {
        var (height, width, names) = (375, 500, ["background", "person"])
        if let dataset { (height, width, names) = try dataset.detectionImages() }
        return ModelConfig(family: family, inputShape: [3, height, width],
                           options: ["width": 0.5, "hidden": 256, "warp": 64, "rois_per_image": 64, "test_proposals": 2000], classNames: names)
    }

    // MARK: The network

    /// Each proposal dilated for context, as `roiAlign`'s rows [R, 5] (image index, corners).
    public func windows(_ perImage: [[BoxCorners]]) -> Tensor {
        let grow = Float(warp) / (Float(warp) - 2 * contextPadding)
        var values: [Float] = []
        values.reserveCapacity(5 * perImage.reduce(0) { $0 + $1.count })
        for (k, boxes) in perImage.enumerated() {
            for b in boxes {
                let (cx, cy) = (0.5 * (b.xmin + b.xmax), 0.5 * (b.ymin + b.ymax))
                let (hw, hh) = (0.5 * b.width * grow, 0.5 * b.height * grow)
                values += [Float(k), cx - hw, cy - hh, cx + hw, cy + hh]
            }
        }
        return Tensor(shape: [values.count / 5, 5], values: values)
    }

    /// The warped windows [R, 3, warp, warp] of `images` (NCHW, 0...255), mean-subtracted and scaled.
    public func crops(_ images: Tensor, windows: Tensor) -> Tensor {
        images.affine(scale: 1 / 127.5, shift: -1)
            .roiAlign(rois: windows, outputHeight: warp, outputWidth: warp, spatialScale: 1, samplingRatio: 1, aligned: true)
    }

    /// The CNN on warped windows: pool5 (flattened), fc7 and the K + 1 class logits. Written once over `NetworkValue`.
    func network<Value: NetworkValue>(_ crops: Value) -> (pool5: Value, fc7: Value, logits: Value) {
        var h = crops
        for conv in convs { h = conv(h).relu().maxPool2d(kernel: (2, 2), padding: .valid) }
        let pool5 = h.flattened()
        let features = fc7(fc6(pool5).relu()).relu()
        return (pool5, features, classScore(features))
    }

    /// pool5, fc7 and logits of warped windows, through the layouts' fast paths.
    public func forward(_ crops: Tensor) -> (pool5: Tensor, fc7: Tensor, logits: Tensor) {
        let (pool5, features, logits) = network(LayoutTensor(crops))
        return (pool5.tensor, features.tensor, logits.tensor)
    }

    // MARK: Stage 1, fine-tuning

    /// Each image's fine-tuning windows: proposals and ground-truth boxes, at most 25 % foreground (IoU >= 0.5).
    public func sample(_ batch: Batch, training: Bool) -> [FastRCNNTargets.Sample] {
        guard let objects = batch.objects, let proposals = batch.proposals else {
            preconditionFailure("\(config.family) needs the annotated objects and stored proposals in its batches")
        }
        return proposals.indices.map { k in
            var rng = batch.randomStream(sample: k, purpose: Self.samplingPurpose, training: training)
            return sampling.sample(proposals: proposals[k], objects: objects[k], using: &rng)
        }
    }

    /// The softmax cross-entropy of this rank's windows, divided by the windows of the global batch and multiplied by
    /// the ranks (whose gradients the trainer averages): N ranks give one process's gradient at the same global batch.
    public func loss(_ batch: Batch, training: Bool) -> Tensor {
        let samples = sample(batch, training: training)
        let local = samples.reduce(0) { $0 + $1.rois.count }
        var count = [Double(local)]
        count.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
        guard local > 0 else {
            // No windows on this rank: a zero that reaches every parameter keeps its backward pass and the gradient
            // allreduce in step with the other ranks.
            return forward(Tensor(zeros: [1, 3, warp, warp])).logits.sum() * 0
        }
        let logits = forward(crops(batch.images, windows: windows(samples.map(\.rois)))).logits
        let scale = Float(local) * Float(crossReplica.size) / Float(count[0])
        return logits.softmaxCrossEntropy(labels: samples.flatMap(\.labels)) * scale
    }

    // MARK: Stage 2's products

    /// Whether `installSVMs` has run: detections are scored by the SVMs and moved by the regressors.
    public var hasSVMs: Bool { stage.value.data[0] >= 1 }

    /// Features of `boxes` in image `k` of `images`, in windows of at most `chunk` at a time: pool5 [R, D5], fc7 [R, D7].
    /// One image at a time in fixed chunks, so a window's features do not depend on which rank or batch computed them.
    public func regionFeatures(_ images: Tensor, image k: Int, boxes: [BoxCorners], chunk: Int = 256) -> (pool5: [Float], fc7: [Float]) {
        let one = images.shape[0] == 1 ? images : images.slice(axis: 0, start: k, end: k + 1)
        var pool5: [Float] = [], features: [Float] = []
        GradMode.disabled {
            for first in stride(from: 0, to: boxes.count, by: chunk) {
                let part = Array(boxes[first..<min(first + chunk, boxes.count)])
                let out = forward(crops(one, windows: windows([part])))
                pool5 += UnsafeBufferPointer(start: out.pool5.data, count: out.pool5.count)
                features += UnsafeBufferPointer(start: out.fc7.data, count: out.fc7.count)
            }
        }
        return (pool5, features)
    }

    /// Stores the SVMs (per object class 1 ..< K, on fc7 features times `featureScale`) and the box regressors.
    public func installSVMs(_ svms: [LinearSVM], featureScale: Float, regressors: [RidgeBoxRegressor]) {
        let objects = classCount - 1, d7 = fc7Dimension, d5 = pool5Dimension
        precondition(svms.count == objects && regressors.count == objects, "\(svms.count) SVMs and \(regressors.count) regressors for \(objects) classes")
        for (c, svm) in svms.enumerated() {
            precondition(svm.weights.count == d7, "SVM of \(svm.weights.count) features, fc7 has \(d7)")
            for j in 0..<d7 { svmWeights.value.data[c * d7 + j] = svm.weights[j] }
            svmBias.value.data[c] = svm.bias
        }
        for (c, regressor) in regressors.enumerated() {
            precondition(regressor.dimension == d5, "regressor of \(regressor.dimension) features, pool5 has \(d5)")
            for k in 0..<4 {
                for j in 0..<d5 { regressorWeights.value.data[(c * 4 + k) * d5 + j] = regressor.weights[k][j] }
                regressorBias.value.data[c * 4 + k] = regressor.bias[k]
            }
        }
        svmFeatureScale.value.data[0] = featureScale
        stage.value.data[0] = 1
    }

    public var svms: [LinearSVM] {
        let d7 = fc7Dimension
        return (0..<(classCount - 1)).map { c in
            LinearSVM(weights: Array(UnsafeBufferPointer(start: svmWeights.value.data + c * d7, count: d7)), bias: svmBias.value.data[c])
        }
    }

    public var regressors: [RidgeBoxRegressor] {
        let d5 = pool5Dimension
        return (0..<(classCount - 1)).map { c in
            RidgeBoxRegressor(weights: (0..<4).map { k in Array(UnsafeBufferPointer(start: regressorWeights.value.data + (c * 4 + k) * d5, count: d5)) },
                              bias: SIMD4((0..<4).map { regressorBias.value.data[c * 4 + $0] }))
        }
    }

    public var featureScale: Float { svmFeatureScale.value.data[0] }

    // MARK: Stage 3, detection

    /// R-CNN classifies the proposals stored with its data (or searched by `predict` for a raw image).
    public var readsProposals: Bool { true }

    public func detectCountingProposals(_ batch: Batch, decoding: DetectionDecoding) -> (detections: [[DetectedBox]], proposals: [Int]) {
        let found = detections(batch, decoding: decoding)
        return (found, (batch.proposals ?? []).map { min($0.count, testProposals) })
    }

    /// Detections per image of `batch` (its `proposals` required): every proposal up to `testProposals` warped and
    /// scored, by the SVMs and regressors once installed, else by the softmax with the proposal's own box.
    func detections(_ batch: Batch, decoding: DetectionDecoding) -> [[DetectedBox]] {
        guard let proposals = batch.proposals else { preconditionFailure("\(config.family) needs proposals to detect") }
        let (height, width) = (Float(batch.images.shape[2]), Float(batch.images.shape[3]))
        let svms = hasSVMs ? self.svms : [], regressors = hasSVMs ? self.regressors : []
        let scale = featureScale, d5 = pool5Dimension, d7 = fc7Dimension, c = classCount
        return proposals.indices.map { k in
            let rois = Array(proposals[k].prefix(testProposals))
            guard !rois.isEmpty else { return [] }
            var perClass: [[DetectedBox]] = Array(repeating: [], count: c)
            GradMode.disabled {
                for first in stride(from: 0, to: rois.count, by: 256) {
                    let part = Array(rois[first..<min(first + 256, rois.count)])
                    let one = batch.images.shape[0] == 1 ? batch.images : batch.images.slice(axis: 0, start: k, end: k + 1)
                    let out = forward(crops(one, windows: windows([part])))
                    let probabilities = hasSVMs ? out.logits : out.logits.softmax(axis: 1)
                    var scaled = [Float](repeating: 0, count: d7)
                    for (i, roi) in part.enumerated() {
                        for j in 0..<d7 { scaled[j] = out.fc7.data[i * d7 + j] * scale }
                        for cls in 1..<c {
                            var score: Float
                            var box = roi
                            if hasSVMs {
                                score = 1 / (1 + Foundation.exp(-scaled.withUnsafeBufferPointer { svms[cls - 1].score($0.baseAddress!) }))
                                guard score > decoding.confidenceThreshold else { continue }
                                box = Self.regressionCoder.decode(regressors[cls - 1].deltas(out.pool5.data + i * d5), reference: roi)
                            } else {
                                score = probabilities.data[i * c + cls]
                                guard score > decoding.confidenceThreshold else { continue }
                            }
                            box = BoxCorners(xmin: max(0, box.xmin), ymin: max(0, box.ymin), xmax: min(width, box.xmax), ymax: min(height, box.ymax))
                            guard box.xmin.isFinite && box.ymin.isFinite && box.xmax.isFinite && box.ymax.isFinite,
                                  box.xmax - box.xmin > 1e-3, box.ymax - box.ymin > 1e-3 else { continue }
                            perClass[cls].append(DetectedBox(box: box, classID: cls, score: score))
                        }
                    }
                }
            }
            return decoding.suppress(perClass)
        }
    }
}
