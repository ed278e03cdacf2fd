import Foundation
import StarlingCore
import StarlingNN
import StarlingONNX
import ONNXProto

/// The two-stage detectors' inference steps in ONNX operators, shared by faster-rcnn's and mask-rcnn's exports: one
/// level's proposal candidates (`ProposalLayer`), FPN's pooling over the pyramid (`MultiScaleRoIAlign`), and the
/// small helpers they need. Each mirrors the Swift step of the same name, whose comment gives the method.
extension ProposalLayer {
    /// One level's candidates before NMS, as `proposals(levels:imageHeight:imageWidth:)` makes them: the level's
    /// `objectness` [N, A, H, W] and `deltas` [N, 4A, H, W] over `anchors` (AnchorGenerator's order, A a location),
    /// `BoxCoder` (1, 1, 1, 1) decoding with its clamp, clipping to the image, TopK of the logits (ties to the lower
    /// index, as Starling's stable order), boxes with a side under `minimumSize` scored -1. Returns the boxes
    /// [N, k, 4] (x1, y1, x2, y2) and their scores [N, k] (the sigmoid of the logit, or -1), best logit first.
    /// `suffix` tells the levels' constants apart ("" for one level).
    func onnxCandidates(objectness: ONNXValue, deltas: ONNXValue, anchors: [BoxCorners], imageHeight: Int, imageWidth: Int,
                        suffix: String = "") -> (boxes: ONNXValue, scores: ONNXValue) {
        let g = objectness.graph
        let (a, h, w) = (objectness.shape[1], objectness.shape[2], objectness.shape[3])
        let p = h * w * a
        precondition(anchors.count == p, "ONNX proposals: \(anchors.count) anchors for objectness \(objectness.shape)")
        // Anchor order: location-major, anchor-minor (AnchorGenerator's).
        let logits = objectness.transposed([0, 2, 3, 1]).reshaped([-1, p])
        let rows = deltas.reshaped([-1, a, 4, h, w]).transposed([0, 3, 4, 1, 2]).reshaped([-1, p, 4])
        var centres = [Float](), sizes = [Float]()
        for anchor in anchors {
            centres += [anchor.xmin + 0.5 * anchor.width, anchor.ymin + 0.5 * anchor.height]
            sizes += [anchor.width, anchor.height]
        }
        let anchorCentres = g.constant("anchor_centres" + suffix, centres, shape: [p, 2])
        let anchorSizes = g.constant("anchor_sizes" + suffix, sizes, shape: [p, 2])
        let centre = rows.slice(axis: 2, 0..<2) * anchorSizes + anchorCentres
        let clamp = g.constant("scale_clamp", [BoxCoder.scaleClamp], shape: [])
        let growth = g.node("Min", [rows.slice(axis: 2, 2..<4).name, clamp.name], shape: [-1, p, 2])
        let half = growth.exp() * anchorSizes * g.constant("half", [0.5], shape: [])
        let corners = ONNXValue.concat([centre - half, centre + half], axis: 2)
        let (width, height) = (Float(imageWidth), Float(imageHeight))
        let floor = g.node("Max", [corners.name, g.constant("zero", [0], shape: []).name], shape: [-1, p, 4])
        let boxes = g.node("Min", [floor.name, g.constant("image_size", [width, height, width, height], shape: [4]).name], shape: [-1, p, 4])
        let k = min(preNMSTopN, p)
        let top = g.node("TopK", [logits.name, g.int64Constant("pre_nms_top_n", [Int64(k)]).name], names: ["top_logits", "top_indices"],
                         shapes: [[-1, k], [-1, k]], attributes: [ONNXAttribute.int("axis", 1), ONNXAttribute.int("largest", 1), ONNXAttribute.int("sorted", 1)])
        let indices = top[1].reshaped([-1, k, 1])
        let topBoxes = g.node("GatherND", [boxes.name, indices.name], shape: [-1, k, 4], attributes: [ONNXAttribute.int("batch_dims", 1)])
        let sides = topBoxes.slice(axis: 2, 2..<4) - topBoxes.slice(axis: 2, 0..<2)
        let shortest = g.node("ReduceMin", [sides.name], shape: [-1, k], attributes: [ONNXAttribute.ints("axes", [2]), ONNXAttribute.int("keepdims", 0)])
        let large = g.node("GreaterOrEqual", [shortest.name, g.constant("minimum_size", [minimumSize], shape: []).name], shape: [-1, k])
        let keep = large.cast(to: .float)
        // Kept boxes score their sigmoid, dropped ones -1, under NonMaxSuppression's score threshold of -0.5.
        let scores = top[0].sigmoid() * keep + keep - g.constant("one", [1], shape: [])
        return (topBoxes, scores)
    }
}

extension MultiScaleRoIAlign {
    /// The pooled features [R, C, size, size] of `rois` [R, 5] (image, x1, y1, x2, y2) in their own order: every level's
    /// RoiAlign on all the RoIs, each row taken from the level `level(of:)` assigns it (equation 1 in float32, where
    /// Starling takes the logarithm in double: a RoI whose size lies within rounding of a level's boundary may read
    /// the neighbouring level).
    func onnx(_ pyramid: [ONNXValue], rois: ONNXValue) -> ONNXValue {
        precondition(pyramid.count >= 4, "multi-scale RoIAlign over \(pyramid.count) levels")
        let g = rois.graph
        let sides = (rois.slice(axis: 1, 3..<5) - rois.slice(axis: 1, 1..<3)).relu()
        let area = sides.slice(axis: 1, 0..<1) * sides.slice(axis: 1, 1..<2)
        let side = g.node("Sqrt", [area.name], shape: area.shape)
        let ratio = side / g.constant("canonical_side", [224], shape: []) + g.constant("log_epsilon", [1e-6], shape: [])
        let log2 = g.node("Log", [ratio.name], shape: area.shape) / g.constant("ln_2", [Float(Foundation.log(2.0))], shape: [])
        let raw = g.node("Floor", [(log2 + g.constant("canonical_level", [4], shape: [])).name], shape: area.shape)
        let low = g.node("Max", [raw.name, g.constant("lowest_level", [Float(Self.levels.lowerBound)], shape: []).name], shape: area.shape)
        let level = g.node("Min", [low.name, g.constant("highest_level", [Float(Self.levels.upperBound)], shape: []).name], shape: area.shape)
        var pooled: ONNXValue?
        for k in Self.levels {
            let rows = pyramid[k - 2].roiAlign(rois: rois, outputHeight: outputSize, outputWidth: outputSize, spatialScale: 1 / Float(1 << k),
                                               samplingRatio: samplingRatio, aligned: true)
            let here = g.node("Equal", [level.name, g.constant("level", [Float(k)], shape: []).name], shape: area.shape).cast(to: .float)
            let selected = rows * here.reshaped([-1, 1, 1, 1])
            pooled = pooled.map { $0 + selected } ?? selected
        }
        return pooled!
    }
}

extension ONNXValue {
    /// A Cast to `type` (a mask to float32, an index to int64).
    func cast(to type: Onnx_TensorProto.DataType) -> ONNXValue {
        graph.node("Cast", [name], shape: shape, attributes: [ONNXAttribute.int("to", Int(type.rawValue))])
    }
}

extension ONNXValue {
    /// A Reshape to `pattern` in ONNX's own terms: 0 keeps the input's axis there, -1 takes what is left; for values
    /// with more than one axis of run-time size (RoIs, detections), which `reshaped` cannot spell.
    func reshapedKeeping(_ pattern: [Int]) -> ONNXValue {
        let target = graph.int64Constant("shape", pattern.map(Int64.init))
        return graph.node("Reshape", [name, target.name], shape: pattern.enumerated().map { $1 == 0 ? shape[$0] : $1 })
    }
}
