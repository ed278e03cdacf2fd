#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import StarlingCore
import StarlingNN
import StarlingONNX

/// YOLOv1's head: J. Redmon, S. Divvala, R. Girshick and A. Farhadi, "You Only Look Once: Unified, Real-Time Object
/// Detection" (CVPR 2016), section 2 and equation 3. The image is an Sh x Sw grid (7 x 7 at 448 x 448); each cell
/// predicts B boxes (x, y, sqrt w, sqrt h, confidence), all linear, and one set of C class probabilities, linear too.
///
/// - Output: [N, Sh, Sw, 5B + C], per cell predictor b's (x, y, sqrt w, sqrt h, confidence) at 5b ..< 5b + 5, then
///   the classes 1 ... C. x, y are the centre's offset within the cell (0...1), w and h fractions of the image's width
///   and height, whose square roots the network predicts.
/// - Targets: a box belongs to the cell holding its centre (a centre on a cell border belongs to the cell right of
///   and below it); a cell holds one box, the later one in annotation order when two fall into it (darknet's label
///   grid keeps the last). Difficult boxes are never targets.
/// - Responsible predictor, chosen in the loss from the current predictions as darknet's detection_layer.c does: the
///   one of the cell's B whose box (sqrt sizes squared) has the highest IoU with the ground truth, the first of equal
///   ones; when every IoU is 0, the one with the smallest root-mean-square difference of (x, y, w, h) in image
///   fractions.
/// - Loss, equation 3 summed over the images and divided by their number: lambda_coord [(x - x^)^2 + (y - y^)^2 +
///   (sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2] and (C - C^)^2 for each responsible predictor, its confidence
///   target C^ the IoU of its predicted box with the ground truth (darknet's rescore; a constant of the loss), or 1
///   with `rescore` off; lambda_noobj C^2 for every other predictor; sum over classes (p(c) - p^(c))^2 for each cell
///   holding a box. lambda_coord 5, lambda_noobj 0.5. (darknet's deltas are the negative gradient of half this sum.)
/// - Decoding: class-specific confidence Pr(class | object) x confidence = p(c) x C for each predictor, then per-class
///   NMS (`DetectionDecoding`).
public struct YOLOv1Head: DetectionHead {
    public let gridHeight: Int, gridWidth: Int
    /// Boxes per cell, B.
    public let boxesPerCell: Int
    public let imageHeight: Int, imageWidth: Int
    /// Ground truth goes into network pixels through it, detections come back to the input's pixels (as `YOLOHead`).
    public let letterbox: Letterbox
    /// Classes with background (the head predicts classCount - 1 of them).
    public let classCount: Int
    public var coordinateScale: Float = 5, noObjectScale: Float = 0.5
    public var rescore = true

    public init(gridHeight: Int, gridWidth: Int, boxesPerCell: Int, imageHeight: Int, imageWidth: Int, classCount: Int,
                letterbox: Letterbox? = nil) {
        precondition(gridHeight > 0 && gridWidth > 0 && boxesPerCell > 0 && classCount >= 2, "YOLOv1 head configuration")
        self.gridHeight = gridHeight
        self.gridWidth = gridWidth
        self.boxesPerCell = boxesPerCell
        self.imageHeight = imageHeight
        self.imageWidth = imageWidth
        self.letterbox = letterbox ?? Letterbox(input: (imageHeight, imageWidth), network: (imageHeight, imageWidth))
        precondition(self.letterbox.networkHeight == imageHeight && self.letterbox.networkWidth == imageWidth, "letterbox into another size")
        self.classCount = classCount
    }

    /// Values per cell: 5B + C.
    public var depth: Int { 5 * boxesPerCell + classCount - 1 }

    /// The box a cell holds, with what its responsible predictor should predict.
    public struct CellTarget: Equatable, Sendable {
        public var row: Int, column: Int
        /// The centre's offset within the cell, in [0, 1).
        public var x: Float, y: Float
        /// Square roots of the width and height as fractions of the image's.
        public var sqrtW: Float, sqrtH: Float
        /// 1 ... C.
        public var classID: Int
        /// The box in pixels of the input image.
        public var box: BoxCorners
    }

    /// The cells of one image's objects (see the type's documentation for the rules).
    public func assign(_ objects: [Object]) -> [CellTarget] {
        var cells: [CellTarget] = []
        let (imageW, imageH) = (Float(imageWidth), Float(imageHeight))
        for object in objects where !object.difficult {
            let b = object.box
            guard b.width > 0, b.height > 0 else { continue }
            let cx = (b.xmin + b.xmax) / 2 / imageW * Float(gridWidth), cy = (b.ymin + b.ymax) / 2 / imageH * Float(gridHeight)
            let column = min(max(Int(cx.rounded(.down)), 0), gridWidth - 1), row = min(max(Int(cy.rounded(.down)), 0), gridHeight - 1)
            let target = CellTarget(row: row, column: column, x: cx - Float(column), y: cy - Float(row), sqrtW: (b.width / imageW).squareRoot(),
                                    sqrtH: (b.height / imageH).squareRoot(), classID: object.classID, box: b)
            if let taken = cells.firstIndex(where: { $0.row == row && $0.column == column }) {
                cells[taken] = target
            } else {
                cells.append(target)
            }
        }
        return cells
    }

    public func encodeTargets(into batch: inout Batch) {
        let objects = (batch.objects ?? []).map { $0.map { Object(box: letterbox.toNetwork($0.box), classID: $0.classID, difficult: $0.difficult) } }
        batch.targets = YOLOv1Targets(cells: objects.map(assign))
    }

    /// The box predicted from raw (x, y, sqrt w, sqrt h) in cell (row, column), in pixels.
    @inline(__always)
    func box(_ x: Float, _ y: Float, _ sw: Float, _ sh: Float, row: Int, column: Int) -> BoxCorners {
        let cx = (Float(column) + x) / Float(gridWidth) * Float(imageWidth), cy = (Float(row) + y) / Float(gridHeight) * Float(imageHeight)
        let w = sw * sw * Float(imageWidth), h = sh * sh * Float(imageHeight)
        return BoxCorners(xmin: cx - w / 2, ymin: cy - h / 2, xmax: cx + w / 2, ymax: cy + h / 2)
    }

    /// The responsible predictor of cell target `t` among the B predictions of the cell whose values start at `cell`:
    /// the highest IoU with the box, else (all IoUs 0) the smallest RMSE of (x, y, w, h) in image fractions; with the
    /// IoU, the confidence target.
    func responsible(_ x: UnsafeMutablePointer<Float>, cell: Int, target t: CellTarget) -> (predictor: Int, iou: Float) {
        var best = 0, bestIoU: Float = 0, bestRMSE = Float.infinity
        let (imageW, imageH) = (Float(imageWidth), Float(imageHeight))
        let truth = (x: (t.box.xmin + t.box.xmax) / 2 / imageW, y: (t.box.ymin + t.box.ymax) / 2 / imageH, w: t.box.width / imageW, h: t.box.height / imageH)
        for b in 0..<boxesPerCell {
            let p = cell + 5 * b
            let predicted = box(x[p], x[p + 1], x[p + 2], x[p + 3], row: t.row, column: t.column)
            let overlap = iou(predicted, t.box)
            if bestIoU > 0 || overlap > 0 {
                if overlap > bestIoU { (best, bestIoU) = (b, overlap) }
            } else {
                let px = (Float(t.column) + x[p]) / Float(gridWidth), py = (Float(t.row) + x[p + 1]) / Float(gridHeight)
                let pw = x[p + 2] * x[p + 2], ph = x[p + 3] * x[p + 3]
                let rmse = ((px - truth.x) * (px - truth.x) + (py - truth.y) * (py - truth.y) + (pw - truth.w) * (pw - truth.w) + (ph - truth.h) * (ph - truth.h)).squareRoot()
                if rmse < bestRMSE { (best, bestRMSE) = (b, rmse) }
            }
        }
        return (best, bestIoU)
    }

    public func loss(_ outputs: [Tensor], targets: any BatchTargets, crossReplica: CrossReplica) -> Tensor {
        guard let targets = targets as? YOLOv1Targets else { preconditionFailure("YOLOv1's loss takes YOLOv1Targets, not \(type(of: targets))") }
        precondition(outputs.count == 1, "YOLOv1's head reads one output, got \(outputs.count)")
        let output = outputs[0], images = output.shape[0], d = depth, foreground = classCount - 1
        precondition(output.shape == [images, gridHeight, gridWidth, d], "YOLOv1 output has shape \(output.shape), expected \([images, gridHeight, gridWidth, d])")
        precondition(targets.cells.count == images, "YOLOv1 targets for \(targets.cells.count) images, outputs for \(images)")
        let gradient = FloatStorage(count: output.count), x = output.data, g = gradient.pointer
        var total = 0.0
        for n in 0..<images {
            var held: [Int: CellTarget] = [:]
            for t in targets.cells[n] { held[t.row * gridWidth + t.column] = t }
            for c in 0..<(gridHeight * gridWidth) {
                let cell = (n * gridHeight * gridWidth + c) * d
                let t = held[c]
                let chosen = t.map { responsible(x, cell: cell, target: $0) }
                for b in 0..<boxesPerCell {
                    let p = cell + 5 * b
                    if let t, let chosen, chosen.predictor == b {
                        for (k, target) in [t.x, t.y, t.sqrtW, t.sqrtH].enumerated() {
                            let e = x[p + k] - target
                            total += Double(coordinateScale * e * e)
                            g[p + k] = 2 * coordinateScale * e
                        }
                        let e = x[p + 4] - (rescore ? chosen.iou : 1)
                        total += Double(e * e)
                        g[p + 4] = 2 * e
                    } else {
                        total += Double(noObjectScale * x[p + 4] * x[p + 4])
                        g[p + 4] = 2 * noObjectScale * x[p + 4]
                    }
                }
                if let t {
                    for k in 0..<foreground {
                        let e = x[cell + 5 * boxesPerCell + k] - (k + 1 == t.classID ? 1 : 0)
                        total += Double(e * e)
                        g[cell + 5 * boxesPerCell + k] = 2 * e
                    }
                }
            }
        }
        let normaliser = 1 / Float(max(images, 1))
        let out = Tensor.result(shape: [1], inputs: [output]) { out in
            guard output.requiresGrad else { return }
            let seed = out.grad[0] * normaliser, dx = output.grad
            for i in 0..<output.count { dx[i] += seed * g[i] }
            withExtendedLifetime(gradient) {}
        }
        out.data[0] = Float(total) * normaliser
        return out
    }

    public func decode(_ outputs: [Tensor], decoding: DetectionDecoding) -> [[DetectedBox]] {
        precondition(outputs.count == 1, "YOLOv1's head reads one output, got \(outputs.count)")
        let x = outputs[0].data, images = outputs[0].shape[0], d = depth
        let (width, height) = (Float(letterbox.inputWidth), Float(letterbox.inputHeight))
        return (0..<images).map { n in
            var perClass: [[DetectedBox]] = Array(repeating: [], count: classCount)
            for c in 0..<(gridHeight * gridWidth) {
                let cell = (n * gridHeight * gridWidth + c) * d
                for b in 0..<boxesPerCell {
                    let p = cell + 5 * b
                    var decoded: BoxCorners?
                    for k in 1..<classCount {
                        let score = x[p + 4] * x[cell + 5 * boxesPerCell + k - 1]
                        guard score > decoding.confidenceThreshold else { continue }
                        if decoded == nil {
                            var b = letterbox.toInput(box(x[p], x[p + 1], x[p + 2], x[p + 3], row: c / gridWidth, column: c % gridWidth))
                            b = BoxCorners(xmin: max(0, b.xmin), ymin: max(0, b.ymin), xmax: min(width, b.xmax), ymax: min(height, b.ymax))
                            guard b.width > 1e-3, b.height > 1e-3, b.xmin.isFinite, b.ymin.isFinite, b.xmax.isFinite, b.ymax.isFinite else { break }
                            decoded = b
                        }
                        if let decoded { perClass[k].append(DetectedBox(box: decoded, classID: k, score: score)) }
                    }
                }
            }
            return decoding.suppress(perClass)
        }
    }

    /// The ONNX graph: the raw grid, the decoded boxes of every predictor (cell by cell, predictor by predictor: the
    /// order of `decode` and of the `detections` output's box index), their class-specific confidences and per-class
    /// NMS, as `decode` computes them.
    public func onnxOutputs(_ outputs: [ONNXValue], decoding: DetectionDecoding) -> [ONNXOutput] {
        let grid = outputs[0], g = grid.graph
        let cells = gridHeight * gridWidth, p = cells * boxesPerCell, c = classCount - 1
        let rows = grid.reshaped([-1, cells, depth])
        let predictors = rows.slice(axis: 2, 0..<(5 * boxesPerCell)).reshaped([-1, p, 5])
        var corners: [Float] = [], strides: [Float] = []
        for cell in 0..<cells {
            for _ in 0..<boxesPerCell {
                corners += [Float(cell % gridWidth), Float(cell / gridWidth)]
                strides += [Float(imageWidth) / Float(gridWidth), Float(imageHeight) / Float(gridHeight)]
            }
        }
        let centre: ONNXValue = (predictors.slice(axis: 2, 0..<2) + g.constant("yolo_cells", corners, shape: [p, 2])) * g.constant("yolo_strides", strides, shape: [p, 2])
        let roots = predictors.slice(axis: 2, 2..<4)
        let size: ONNXValue = roots * roots * g.constant("image_size_wh", [Float(imageWidth), Float(imageHeight)], shape: [2])
        let half: ONNXValue = size * g.constant("half", [0.5], shape: [])
        var unclipped = ONNXValue.concat([centre - half, centre + half], axis: 2)
        if !letterbox.isIdentity {   // network pixels to input pixels, as Letterbox.toInput
            let (l, t, sx, sy) = (Float(letterbox.left), Float(letterbox.top), letterbox.scaleX, letterbox.scaleY)
            unclipped = (unclipped - g.constant("letterbox_offset", [l, t, l, t], shape: [4])) / g.constant("letterbox_scale", [sx, sy, sx, sy], shape: [4])
        }
        let (width, height) = (Float(letterbox.inputWidth), Float(letterbox.inputHeight))
        let low = g.node("Max", [unclipped.name, g.constant("zero", [0], shape: []).name], shape: unclipped.shape)
        let boxes = g.node("Min", [low.name, g.constant("image_size", [width, height, width, height], shape: [4]).name], shape: unclipped.shape)
        // Pr(class | object) of the cell [N, cells, 1, C] times each predictor's confidence [N, cells, B, 1].
        let classes = rows.slice(axis: 2, (5 * boxesPerCell)..<depth).reshaped([-1, cells, 1, c])
        let confidence = predictors.slice(axis: 2, 4..<5).reshaped([-1, cells, boxesPerCell, 1])
        let (scores, detections) = decoding.onnxSuppress(boxes: boxes, scores: (confidence * classes).reshaped([-1, p, c]))
        return [
            ONNXOutput(name: "predictions", value: grid, meaning: "raw grid [N, \(gridHeight), \(gridWidth), \(depth)]: per cell \(boxesPerCell) x (x, y, sqrt w, sqrt h, confidence), then \(c) class probabilities"),
            ONNXOutput(name: "boxes", value: boxes, meaning: "decoded boxes [N, \(p), 4], cell by cell and predictor by predictor, xmin ymin xmax ymax in input pixels (before letterboxing), clipped to the image"),
            ONNXOutput(name: "scores", value: scores, meaning: "class-specific confidences Pr(class | object) x confidence [N, \(p), \(c)] for classes 1...\(c)"),
            ONNXOutput(name: "detections", value: detections, type: .int64, batchName: "K",
                       meaning: "per-class NMS (IoU \(decoding.iouThreshold), score > \(decoding.confidenceThreshold), empty boxes dropped, at most \(decoding.topK) per class): rows (image, class id, prediction)"),
        ]
    }
}

/// YOLOv1's targets for a batch: per image, the cells that hold a box.
public struct YOLOv1Targets: BatchTargets {
    public var cells: [[YOLOv1Head.CellTarget]]
    public init(cells: [[YOLOv1Head.CellTarget]]) { self.cells = cells }
}
