import Foundation
import StarlingCore
import StarlingData
import StarlingNN
import StarlingPlots
import StarlingSegmentation

/// `starling eval` and `starling predict` for U-Net: the confusion-matrix scores of `SegmentationMetrics` over a split
/// (per-class IoU and Dice, mean IoU, pixel accuracy; for the membrane set also the ISBI-2012 pixel error, 1 - pixel
/// accuracy on the binary membrane map), and pictures of input, truth and prediction side by side.
///
/// With valid padding the network sees the whole image but predicts its centre (`UNet.outputWindow`): the scores and
/// pictures cover that window.
public enum SegmentationEvaluation {
    public struct ClassScore: Codable, Sendable {
        public let name: String
        /// nil where the class is in neither the truth nor the predictions.
        public let iou: Double?
        public let dice: Double?
        public let truthPixels: Int
    }

    public struct Report: Codable, Sendable {
        public let model: String
        public let data: String
        public let split: String
        public let images: Int
        /// The scored window of each image (all of it unless valid padding).
        public let window: [Int]
        public let classes: [ClassScore]
        public let meanIoU: Double?
        public let meanDice: Double?
        public let pixelAccuracy: Double?
        /// The membrane set (classes membrane, cell): 1 - pixel accuracy, the ISBI 2012 challenge's pixel error.
        public let isbiPixelError: Double?
        public let voidPixels: Int
    }

    /// Scores `model` on `dataset` (the first `limit` images).
    public static func evaluate(_ model: UNet, data dataset: SegmentationDataset, batchSize: Int, limit: Int?) throws -> Report {
        try checkFits(model, dataset)
        let count = min(limit ?? dataset.count, dataset.count)
        let window = model.outputWindow
        var metrics = SegmentationMetrics(classCount: model.classCount, ignoreLabel: Int(dataset.voidLabel))
        var truthCounts = [Int](repeating: 0, count: model.classCount)
        var voidPixels = 0
        for start in stride(from: 0, to: count, by: batchSize) {
            let indices = Array(start..<min(start + batchSize, count))
            let (images, maps) = try batch(dataset, indices, model)
            let predicted = model.predictClasses(images)
            let truth = cut(maps, images: indices.count, height: dataset.imageHeight, width: dataset.imageWidth, window: window)
            try metrics.add(truth: truth.map(Int32.init), predicted: predicted)
            for t in truth {
                if t == dataset.voidLabel { voidPixels += 1 } else { truthCounts[Int(t)] += 1 }
            }
        }
        let names = model.config.classNames ?? []
        let classes = (0..<model.classCount).map {
            ClassScore(name: $0 < names.count ? names[$0] : "class \($0)", iou: metrics.iou($0), dice: metrics.dice($0), truthPixels: truthCounts[$0])
        }
        let membranes = names == SegmentationImport.membraneClassNames
        return Report(model: model.config.family, data: dataset.path, split: dataset.split, images: count,
                      window: [window.top, window.left, window.height, window.width], classes: classes, meanIoU: metrics.meanIoU,
                      meanDice: metrics.meanDice, pixelAccuracy: metrics.pixelAccuracy,
                      isbiPixelError: membranes ? metrics.pixelAccuracy.map { 1 - $0 } : nil, voidPixels: voidPixels)
    }

    /// The report as the table `eval` prints.
    public static func table(_ report: Report) -> String {
        func percent(_ v: Double?) -> String { v.map { String(format: "%6.2f", 100 * $0) } ?? "     -" }
        let width = max(12, report.classes.map(\.name.count).max() ?? 0)
        var lines = ["\(report.model) on \(report.data) [\(report.split)], \(report.images) images, window \(report.window[2])x\(report.window[3]) at (\(report.window[0]), \(report.window[1]))",
                     "  " + "class".padding(toLength: width, withPad: " ", startingAt: 0) + "   IoU %  Dice %   pixels"]
        for c in report.classes {
            lines.append("  " + c.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  \(percent(c.iou))  \(percent(c.dice))  \(String(format: "%8d", c.truthPixels))")
        }
        lines.append("  mean IoU:        \(percent(report.meanIoU)) %   (over the classes present in truth or prediction)")
        lines.append("  mean Dice:       \(percent(report.meanDice)) %")
        lines.append("  pixel accuracy:  \(percent(report.pixelAccuracy)) %   (\(report.voidPixels) void pixels not counted)")
        if let error = report.isbiPixelError { lines.append("  ISBI pixel error: \(String(format: "%.4f", error))   (1 - pixel accuracy on the binary membrane map)") }
        return lines.joined(separator: "\n")
    }

    /// Input, truth and prediction side by side for each of `indices`, a row each, classes in `palette`'s colours (void
    /// black), the window's frame drawn on the input when it is not the whole image.
    public static func picture(_ model: UNet, data dataset: SegmentationDataset, indices: [Int]) throws -> PixelCanvas {
        try checkFits(model, dataset)
        let (h, w) = (dataset.imageHeight, dataset.imageWidth)
        let window = model.outputWindow
        let gap = 4, header = BitmapFont.lineHeight + 2
        var canvas = PixelCanvas(width: 3 * w + 2 * gap, height: header + indices.count * (h + gap))
        for (column, title) in ["image", "truth", "prediction"].enumerated() { canvas.text(title, x: column * (w + gap), y: 1, color: .black) }
        for (row, i) in indices.enumerated() {
            let (images, maps) = try batch(dataset, [i], model)
            let predicted = model.predictClasses(images)
            let y = header + row * (h + gap)
            let (pixels, _) = try dataset.read([i])
            canvas.image(pixels.map { Float($0) / 255 }, height: h, width: w, channels: 3, x: 0, y: y)
            if window.height != h || window.width != w {
                canvas.strokeRect(x: window.left, y: y + window.top, width: window.width, height: window.height, color: .white)
            }
            for p in 0..<(h * w) { canvas.set(x: w + gap + p % w, y: y + p / w, colour(maps[p], void: dataset.voidLabel)) }
            for p in 0..<(window.height * window.width) {
                canvas.set(x: 2 * (w + gap) + window.left + p % window.width, y: y + window.top + p / window.width,
                           colour(UInt8(predicted[p]), void: dataset.voidLabel))
            }
        }
        return canvas
    }

    /// Class c's colour: the palette's, cycling; void black.
    public static func colour(_ c: UInt8, void: UInt8) -> RGB {
        c == void ? .black : RGB.palette[Int(c) % RGB.palette.count]
    }

    static func checkFits(_ model: UNet, _ dataset: SegmentationDataset) throws {
        guard model.config.inputShape == [3, dataset.imageHeight, dataset.imageWidth], model.config.classNames == dataset.classNames else {
            throw DataError(file: dataset.path, message: "\(dataset.imageHeight)x\(dataset.imageWidth) images of classes \(dataset.classNames.joined(separator: ", ")) do not fit model \(model.config.family), which takes \(model.config.inputShape.dropFirst().map(String.init).joined(separator: "x")) and \((model.config.classNames ?? []).joined(separator: ", "))")
        }
    }

    /// Images [N, 3, H, W] in 0...255 and their class maps.
    static func batch(_ dataset: SegmentationDataset, _ indices: [Int], _ model: UNet) throws -> (Tensor, [UInt8]) {
        let b = try SegmentationSource(dataset: dataset).batch(indices: indices, epoch: 0, training: false, config: model.config)
        return (b.images, b.segmentation?.classes ?? [])
    }

    /// The window of each H x W map, row-major.
    static func cut(_ maps: [UInt8], images: Int, height: Int, width: Int, window: (top: Int, left: Int, height: Int, width: Int)) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(images * window.height * window.width)
        for n in 0..<images {
            for y in window.top..<(window.top + window.height) {
                let row = (n * height + y) * width + window.left
                out.append(contentsOf: maps[row..<(row + window.width)])
            }
        }
        return out
    }
}
