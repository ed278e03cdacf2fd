#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import StarlingCore
import StarlingNN
import StarlingONNX

/// YOLOv3's head (J. Redmon and A. Farhadi, "YOLOv3: An Incremental Improvement", 2018), as darknet's yolo_layer.c
/// computes it: on each output grid, every cell predicts, for each of its anchors, a box (tx, ty, tw, th), an
/// objectness logit and one independent logit per class (sigmoids, so a box may carry overlapping labels).
///
/// - Decoding: centre ((column + sigmoid(tx)) / W, (row + sigmoid(ty)) / H) times the image size, size
///   (exp(tw) anchor width, exp(th) anchor height) with anchors in pixels of the network's input; the score of class k is
///   sigmoid(objectness) sigmoid(class k). Then per-class NMS (`DetectionDecoding`).
/// - Targets: each box is given to the one anchor, over every scale, whose shape matches it best (IoU of the two
///   sizes laid on a common corner; the first of equal IoUs), in the cell holding its centre (a centre on a cell
///   border belongs to the cell right of and below it). Two boxes taking the same anchor of the same cell: the later
///   one in annotation order keeps it, as darknet's loop leaves it. Difficult boxes are never targets.
/// - Loss, summed as darknet sums it and divided by the images of the batch: for the responsible predictions, the
///   squared errors (1/2 (sigmoid(tx) - x)^2, 1/2 (tw - log(w / anchor))^2, ...) weighted by 2 - w h / (image area),
///   binary cross-entropy of the objectness towards 1 and of each class towards its 0 or 1; for every other
///   prediction, binary cross-entropy of the objectness towards 0, unless its decoded box overlaps a ground-truth box
///   (difficult ones included) by IoU > `ignoreThreshold` (0.7), when it counts for nothing. Each rank divides by its
///   own images, all ranks having as many, so N ranks average to exactly the gradient of one process on the whole
///   batch; nothing depends on other ranks' counts.
///
/// Outputs, one per scale in `scales` order: [N, A x (5 + C), H, W] with anchor a's channels a (5 + C) + (tx, ty, tw,
/// th, objectness, class 1 ... C); C counts the object classes (no background channel).
///
/// YOLOv2's head (J. Redmon and A. Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017), darknet's region_layer.c,
/// is this one with options (`regionLayer(...)`): class scores a softmax over the classes (`classScores`), the
/// objectness a squared error on its sigmoid scaled by darknet's object_scale and noobject_scale (`objectness`), its
/// target the IoU of the decoded prediction with its box (`rescore`, the IoU a constant), the ignore threshold 0.6,
/// and `coordinateScale` and `classScale` multiplying the box and class terms. The targets and the decoding of boxes
/// are v3's (v2 introduced both).
public struct YOLOHead: DetectionHead {
    /// One output grid and the anchors (indices into `anchorSizes`) its cells predict with.
    public struct Scale: Sendable, Equatable {
        public let height: Int, width: Int
        public let anchors: [Int]
        public init(height: Int, width: Int, anchors: [Int]) {
            self.height = height
            self.width = width
            self.anchors = anchors
        }
    }

    public let scales: [Scale]
    /// Anchor widths and heights in pixels of the input image.
    public let anchorSizes: [(width: Float, height: Float)]
    /// The network's input size; `letterbox` places the model's input images in it.
    public let imageHeight: Int, imageWidth: Int
    /// Ground truth goes into network pixels through it before targets are assigned, detections come back to the
    /// input's pixels through it.
    public let letterbox: Letterbox
    /// Classes with background (the head predicts classCount - 1 of them).
    public let classCount: Int
    public var ignoreThreshold: Float = 0.7

    /// How class scores are made from their logits.
    public enum ClassScores: Sendable, Equatable {
        /// Independent sigmoids, each trained by binary cross-entropy (YOLOv3).
        case sigmoid
        /// One softmax over the classes, trained by cross-entropy (YOLOv2).
        case softmax
    }
    public var classScores = ClassScores.sigmoid
    /// The objectness term.
    public enum Objectness: Sendable, Equatable {
        /// Binary cross-entropy of sigmoid(objectness) (YOLOv3).
        case crossEntropy
        /// object / 2 (sigmoid(objectness) - target)^2 for the responsible predictions, noObject / 2
        /// sigmoid(objectness)^2 for the others (YOLOv2: darknet's deltas times the logistic's gradient).
        case squaredError(object: Float, noObject: Float)
    }
    public var objectness = Objectness.crossEntropy
    /// A responsible prediction's objectness target: the IoU of its decoded box with its ground-truth box (a
    /// constant of the loss, as darknet computes it), instead of 1.
    public var rescore = false
    /// Multiplies the box terms (darknet's coord_scale) and the class terms (class_scale).
    public var coordinateScale: Float = 1, classScale: Float = 1

    /// This head as darknet's region layer (YOLOv2) computes its loss, with yolov2-voc.cfg's scales: softmax classes,
    /// squared-error objectness (object 5, no object 1) towards the IoU, ignore threshold 0.6. darknet's extra term
    /// for the first 12,800 images seen (every prediction's box pulled towards its anchor, scale 0.01) is left out.
    public func regionLayer(objectScale: Float = 5, noObjectScale: Float = 1, coordinateScale: Float = 1, classScale: Float = 1,
                            ignoreThreshold: Float = 0.6) -> YOLOHead {
        var head = self
        head.classScores = .softmax
        head.objectness = .squaredError(object: objectScale, noObject: noObjectScale)
        head.rescore = true
        head.coordinateScale = coordinateScale
        head.classScale = classScale
        head.ignoreThreshold = ignoreThreshold
        return head
    }

    public init(scales: [Scale], anchorSizes: [(width: Float, height: Float)], imageHeight: Int, imageWidth: Int, classCount: Int,
                letterbox: Letterbox? = nil) {
        precondition(classCount >= 2 && scales.allSatisfy { $0.anchors.allSatisfy(anchorSizes.indices.contains) }, "YOLO head configuration")
        self.scales = scales
        self.anchorSizes = anchorSizes
        self.imageHeight = imageHeight
        self.imageWidth = imageWidth
        self.classCount = classCount
        self.letterbox = letterbox ?? Letterbox(input: (imageHeight, imageWidth), network: (imageHeight, imageWidth))
        precondition(self.letterbox.networkHeight == imageHeight && self.letterbox.networkWidth == imageWidth, "letterbox into another size")
    }

    /// Channels per anchor: four box values, the objectness and the object classes.
    public var depth: Int { 5 + classCount - 1 }

    /// The prediction a ground-truth box is assigned to, with what it should predict.
    public struct Assignment: Equatable, Sendable {
        public var scale: Int
        /// Index within the scale's anchors.
        public var anchor: Int
        public var row: Int, column: Int
        /// Targets of sigmoid(tx), sigmoid(ty): the centre's offset within its cell, in [0, 1).
        public var x: Float, y: Float
        /// Targets of tw, th: log(box size / anchor size).
        public var w: Float, h: Float
        /// 2 - w h / (image area): small boxes weigh more.
        public var weight: Float
        /// 1 ... C.
        public var classID: Int
    }

    /// The assignments of one image's objects, in network pixels (see the type's documentation for the rules).
    public func assign(_ objects: [Object]) -> [Assignment] {
        var assignments: [Assignment] = []
        let (imageW, imageH) = (Float(imageWidth), Float(imageHeight))
        for object in objects where !object.difficult {
            let (w, h) = (object.box.width, object.box.height)
            guard w > 0, h > 0 else { continue }
            var best = -1, bestIoU: Float = -1
            for (k, anchor) in anchorSizes.enumerated() {
                let overlap = iou(BoxCorners(xmin: 0, ymin: 0, xmax: w, ymax: h), BoxCorners(xmin: 0, ymin: 0, xmax: anchor.width, ymax: anchor.height))
                if overlap > bestIoU { (best, bestIoU) = (k, overlap) }
            }
            guard let s = scales.firstIndex(where: { $0.anchors.contains(best) }), let a = scales[s].anchors.firstIndex(of: best) else { continue }
            let grid = scales[s]
            let cx = (object.box.xmin + object.box.xmax) / 2 / imageW * Float(grid.width)
            let cy = (object.box.ymin + object.box.ymax) / 2 / imageH * Float(grid.height)
            let column = min(max(Int(cx.rounded(.down)), 0), grid.width - 1), row = min(max(Int(cy.rounded(.down)), 0), grid.height - 1)
            let assignment = Assignment(scale: s, anchor: a, row: row, column: column, x: cx - Float(column), y: cy - Float(row),
                                        w: logf(w / anchorSizes[best].width), h: logf(h / anchorSizes[best].height),
                                        weight: 2 - w * h / (imageW * imageH), classID: object.classID)
            if let taken = assignments.firstIndex(where: { $0.scale == s && $0.anchor == a && $0.row == row && $0.column == column }) {
                assignments[taken] = assignment
            } else {
                assignments.append(assignment)
            }
        }
        return assignments
    }

    public func encodeTargets(into batch: inout Batch) {
        let objects = (batch.objects ?? []).map { $0.map { Object(box: letterbox.toNetwork($0.box), classID: $0.classID, difficult: $0.difficult) } }
        batch.targets = YOLOTargets(assignments: objects.map(assign), boxes: objects.map { $0.map(\.box) })
    }

    /// The decoded box of prediction (anchor index `k` into `anchorSizes`, cell row, column) on grid `scale`, from its
    /// raw tx, ty, tw, th.
    @inline(__always)
    func box(_ tx: Float, _ ty: Float, _ tw: Float, _ th: Float, anchor k: Int, row: Int, column: Int, scale: Scale) -> BoxCorners {
        let cx = (Float(column) + VectorMath.sigmoid(tx)) / Float(scale.width) * Float(imageWidth)
        let cy = (Float(row) + VectorMath.sigmoid(ty)) / Float(scale.height) * Float(imageHeight)
        let w = expf(tw) * anchorSizes[k].width, h = expf(th) * anchorSizes[k].height
        return BoxCorners(xmin: cx - w / 2, ymin: cy - h / 2, xmax: cx + w / 2, ymax: cy + h / 2)
    }

    public func loss(_ outputs: [Tensor], targets: any BatchTargets, crossReplica: CrossReplica) -> Tensor {
        guard let targets = targets as? YOLOTargets else { preconditionFailure("YOLO's loss takes YOLOTargets, not \(type(of: targets))") }
        precondition(outputs.count == scales.count, "YOLO's head reads \(scales.count) outputs, got \(outputs.count)")
        let images = outputs[0].shape[0], d = depth, foreground = classCount - 1
        precondition(targets.assignments.count == images, "YOLO targets for \(targets.assignments.count) images, outputs for \(images)")
        // d loss / d output, filled while the loss is summed (the loss is a sum of per-prediction terms).
        let gradients = outputs.map { FloatStorage(count: $0.count) }
        var total = 0.0
        for (s, scale) in scales.enumerated() {
            let output = outputs[s], (h, w, a) = (scale.height, scale.width, scale.anchors.count)
            precondition(output.shape == [images, a * d, h, w], "YOLO output \(s) has shape \(output.shape), expected \([images, a * d, h, w])")
            let plane = h * w, x = output.data, g = gradients[s].pointer
            for n in 0..<images {
                let truths = targets.boxes[n]
                var responsible: [Int: Assignment] = [:]
                for t in targets.assignments[n] where t.scale == s { responsible[(t.anchor * h + t.row) * w + t.column] = t }
                for j in 0..<a {
                    let base = (n * a + j) * d * plane
                    for cell in 0..<plane {
                        let at = { (channel: Int) in base + channel * plane + cell }
                        if let t = responsible[j * plane + cell] {
                            let weight = coordinateScale * t.weight
                            for (channel, target) in [(0, t.x), (1, t.y)] {
                                let p = VectorMath.sigmoid(x[at(channel)]), e = p - target
                                total += Double(0.5 * weight * e * e)
                                g[at(channel)] = weight * e * p * (1 - p)
                            }
                            for (channel, target) in [(2, t.w), (3, t.h)] {
                                let e = x[at(channel)] - target
                                total += Double(0.5 * weight * e * e)
                                g[at(channel)] = weight * e
                            }
                            var target: Float = 1
                            if rescore {
                                let predicted = box(x[at(0)], x[at(1)], x[at(2)], x[at(3)], anchor: scale.anchors[j], row: t.row, column: t.column, scale: scale)
                                target = iou(predicted, truthBox(t, anchor: scale.anchors[j], scale: scale))
                            }
                            switch objectness {
                            case .crossEntropy:
                                total += Double(Self.softplus(x[at(4)]) - target * x[at(4)])
                                g[at(4)] = VectorMath.sigmoid(x[at(4)]) - target
                            case .squaredError(let object, _):
                                let p = VectorMath.sigmoid(x[at(4)]), e = p - target
                                total += Double(0.5 * object * e * e)
                                g[at(4)] = object * e * p * (1 - p)
                            }
                            switch classScores {
                            case .sigmoid:
                                for k in 0..<foreground {
                                    let z = x[at(5 + k)], target: Float = k + 1 == t.classID ? 1 : 0
                                    total += Double(classScale * (Self.softplus(z) - target * z))
                                    g[at(5 + k)] = classScale * (VectorMath.sigmoid(z) - target)
                                }
                            case .softmax:
                                var largest = -Float.infinity
                                for k in 0..<foreground { largest = max(largest, x[at(5 + k)]) }
                                var sum: Float = 0
                                for k in 0..<foreground { sum += expf(x[at(5 + k)] - largest) }
                                total += Double(classScale * (largest + logf(sum) - x[at(4 + t.classID)]))
                                for k in 0..<foreground {
                                    g[at(5 + k)] = classScale * (expf(x[at(5 + k)] - largest) / sum - (k + 1 == t.classID ? 1 : 0))
                                }
                            }
                            continue
                        }
                        if !truths.isEmpty {
                            let predicted = box(x[at(0)], x[at(1)], x[at(2)], x[at(3)], anchor: scale.anchors[j], row: cell / w, column: cell % w, scale: scale)
                            if truths.contains(where: { iou(predicted, $0) > ignoreThreshold }) { continue }
                        }
                        switch objectness {
                        case .crossEntropy:
                            total += Double(Self.softplus(x[at(4)]))
                            g[at(4)] = VectorMath.sigmoid(x[at(4)])
                        case .squaredError(_, let noObject):
                            let p = VectorMath.sigmoid(x[at(4)])
                            total += Double(0.5 * noObject * p * p)
                            g[at(4)] = noObject * p * p * (1 - p)
                        }
                    }
                }
            }
        }
        let normaliser = 1 / Float(max(images, 1))
        let out = Tensor.result(shape: [1], inputs: outputs) { out in
            let seed = out.grad[0] * normaliser
            for (output, gradient) in zip(outputs, gradients) where output.requiresGrad {
                let dx = output.grad, gx = gradient.pointer
                for i in 0..<output.count { dx[i] += seed * gx[i] }
            }
        }
        out.data[0] = Float(total) * normaliser
        return out
    }

    /// The ground-truth box of an assignment, from its encoding (anchor index `k` into `anchorSizes`).
    func truthBox(_ t: Assignment, anchor k: Int, scale: Scale) -> BoxCorners {
        let cx = (Float(t.column) + t.x) / Float(scale.width) * Float(imageWidth)
        let cy = (Float(t.row) + t.y) / Float(scale.height) * Float(imageHeight)
        let w = expf(t.w) * anchorSizes[k].width, h = expf(t.h) * anchorSizes[k].height
        return BoxCorners(xmin: cx - w / 2, ymin: cy - h / 2, xmax: cx + w / 2, ymax: cy + h / 2)
    }

    /// The class probabilities of the prediction whose class logits start at `first`, `stride` apart: sigmoids or
    /// one softmax (`classScores`); index k for class k + 1.
    func classProbabilities(_ x: UnsafeMutablePointer<Float>, first: Int, stride: Int) -> [Float] {
        let logits = (0..<(classCount - 1)).map { x[first + $0 * stride] }
        switch classScores {
        case .sigmoid: return logits.map(VectorMath.sigmoid)
        case .softmax:
            let largest = logits.max() ?? 0
            let e = logits.map { expf($0 - largest) }, sum = e.reduce(0, +)
            return e.map { $0 / sum }
        }
    }

    /// log(1 + e^z) without overflow.
    @inline(__always)
    static func softplus(_ z: Float) -> Float { max(z, 0) + log1pf(expf(-abs(z))) }

    public func decode(_ outputs: [Tensor], decoding: DetectionDecoding) -> [[DetectedBox]] {
        precondition(outputs.count == scales.count, "YOLO's head reads \(scales.count) outputs, got \(outputs.count)")
        let images = outputs[0].shape[0], d = depth
        let (width, height) = (Float(letterbox.inputWidth), Float(letterbox.inputHeight))
        return (0..<images).map { n in
            var perClass: [[DetectedBox]] = Array(repeating: [], count: classCount)
            for (s, scale) in scales.enumerated() {
                let x = outputs[s].data, plane = scale.height * scale.width
                for (j, k) in scale.anchors.enumerated() {
                    let base = (n * scale.anchors.count + j) * d * plane
                    for cell in 0..<plane {
                        let objectness = VectorMath.sigmoid(x[base + 4 * plane + cell])
                        guard objectness > decoding.confidenceThreshold else { continue }   // every score is at most this
                        var decoded: BoxCorners?
                        let probabilities = classProbabilities(x, first: base + 5 * plane + cell, stride: plane)
                        for c in 1..<classCount {
                            let score = objectness * probabilities[c - 1]
                            guard score > decoding.confidenceThreshold else { continue }
                            if decoded == nil {
                                var b = letterbox.toInput(box(x[base + cell], x[base + plane + cell], x[base + 2 * plane + cell], x[base + 3 * plane + cell],
                                                              anchor: k, row: cell / scale.width, column: cell % scale.width, scale: scale))
                                b = BoxCorners(xmin: max(0, b.xmin), ymin: max(0, b.ymin), xmax: min(width, b.xmax), ymax: min(height, b.ymax))
                                guard b.width > 1e-3, b.height > 1e-3, b.xmin.isFinite, b.ymin.isFinite, b.xmax.isFinite, b.ymax.isFinite else { break }
                                decoded = b
                            }
                            if let decoded { perClass[c].append(DetectedBox(box: decoded, classID: c, score: score)) }
                        }
                    }
                }
            }
            return decoding.suppress(perClass)
        }
    }

    /// Every scale's predictions as rows [N, P, 5 + C], scale by scale, anchor by anchor, cell by cell (the order of
    /// `decode` and of the `detections` output's box index).
    func onnxRows(_ outputs: [ONNXValue]) -> ONNXValue {
        let rows = zip(scales, outputs).map { scale, output -> ONNXValue in
            let (a, plane) = (scale.anchors.count, scale.height * scale.width)
            return output.reshaped([-1, a, depth, plane]).transposed([0, 1, 3, 2]).reshaped([-1, a * plane, depth])
        }
        return rows.count == 1 ? rows[0] : ONNXValue.concat(rows, axis: 1)
    }

    public func onnxOutputs(_ outputs: [ONNXValue], decoding: DetectionDecoding) -> [ONNXOutput] {
        let rows = onnxRows(outputs), g = rows.graph
        // Per prediction: its cell's corner, the cell size in pixels, its anchor's size.
        var cells: [Float] = [], strides: [Float] = [], anchors: [Float] = []
        for scale in scales {
            let (sx, sy) = (Float(imageWidth) / Float(scale.width), Float(imageHeight) / Float(scale.height))
            for k in scale.anchors {
                for cell in 0..<(scale.height * scale.width) {
                    cells += [Float(cell % scale.width), Float(cell / scale.width)]
                    strides += [sx, sy]
                    anchors += [anchorSizes[k].width, anchorSizes[k].height]
                }
            }
        }
        let p = cells.count / 2, c = classCount - 1
        let centre: ONNXValue = (rows.slice(axis: 2, 0..<2).sigmoid() + g.constant("yolo_cells", cells, shape: [p, 2])) * g.constant("yolo_strides", strides, shape: [p, 2])
        let size: ONNXValue = rows.slice(axis: 2, 2..<4).exp() * g.constant("yolo_anchors", anchors, shape: [p, 2])
        let half: ONNXValue = size * g.constant("half", [0.5], shape: [])
        var corners = ONNXValue.concat([centre - half, centre + half], axis: 2)
        if !letterbox.isIdentity {   // network pixels to input pixels, as Letterbox.toInput
            let (l, t, sx, sy) = (Float(letterbox.left), Float(letterbox.top), letterbox.scaleX, letterbox.scaleY)
            corners = (corners - g.constant("letterbox_offset", [l, t, l, t], shape: [4])) / g.constant("letterbox_scale", [sx, sy, sx, sy], shape: [4])
        }
        let (width, height) = (Float(letterbox.inputWidth), Float(letterbox.inputHeight))
        let low = g.node("Max", [corners.name, g.constant("zero", [0], shape: []).name], shape: corners.shape)
        let boxes = g.node("Min", [low.name, g.constant("image_size", [width, height, width, height], shape: [4]).name], shape: corners.shape)
        let logits = rows.slice(axis: 2, 5..<(5 + c))
        let probabilities = classScores == .softmax ? logits.softmax(axis: 2) : logits.sigmoid()
        let (scores, detections) = decoding.onnxSuppress(boxes: boxes, scores: rows.slice(axis: 2, 4..<5).sigmoid() * probabilities)
        return [
            ONNXOutput(name: "predictions", value: rows, meaning: "raw predictions [N, P, \(depth)]: tx, ty, tw, th, objectness and \(c) class logits, scale by scale, anchor by anchor, cell by cell"),
            ONNXOutput(name: "boxes", value: boxes, meaning: "decoded boxes [N, P, 4], xmin ymin xmax ymax in input pixels (before letterboxing), clipped to the image"),
            ONNXOutput(name: "scores", value: scores, meaning: "sigmoid(objectness) \(classScores == .softmax ? "softmax(classes)" : "sigmoid(class)") [N, P, \(c)] for classes 1...\(c)"),
            ONNXOutput(name: "detections", value: detections, type: .int64, batchName: "K",
                       meaning: "per-class NMS (IoU \(decoding.iouThreshold), score > \(decoding.confidenceThreshold), empty boxes dropped, at most \(decoding.topK) per class): rows (image, class id, prediction)"),
        ]
    }
}

/// YOLO's targets for a batch: per image, the responsible predictions and every ground-truth box (for the ignore rule).
public struct YOLOTargets: BatchTargets {
    public var assignments: [[YOLOHead.Assignment]]
    public var boxes: [[BoxCorners]]
    public init(assignments: [[YOLOHead.Assignment]], boxes: [[BoxCorners]]) {
        self.assignments = assignments
        self.boxes = boxes
    }
}
