import StarlingNN

/// Semantic segmentation scores from a confusion matrix accumulated over images: per-class IoU and Dice, mean IoU,
/// pixel accuracy - as the CamVid and Cityscapes benchmarks (and torchmetrics) define them.
///
/// IoU_c = TP / (TP + FP + FN), Dice_c = 2 TP / (2 TP + FP + FN); a class absent from both the truth and the
/// predictions has no score and is left out of the means; pixels labelled `ignoreLabel` (CamVid's "void") count nowhere.
public struct SegmentationMetrics: Codable, Sendable, Equatable {
    public let classCount: Int
    public let ignoreLabel: Int?
    /// confusion[truth * classCount + predicted]
    public private(set) var confusion: [Int]

    public init(classCount: Int, ignoreLabel: Int? = nil) {
        precondition(classCount > 0, "segmentation needs at least one class")
        self.classCount = classCount
        self.ignoreLabel = ignoreLabel
        confusion = [Int](repeating: 0, count: classCount * classCount)
    }

    /// Adds one image (or batch) of label maps; labels outside 0..<classCount other than the ignore label are an error.
    public mutating func add(truth: [Int32], predicted: [Int32]) throws {
        guard truth.count == predicted.count else {
            throw DetectionEvaluationError("segmentation maps of \(truth.count) and \(predicted.count) pixels")
        }
        for i in truth.indices {
            let t = Int(truth[i]), p = Int(predicted[i])
            if let ignoreLabel, t == ignoreLabel { continue }
            guard t >= 0, t < classCount, p >= 0, p < classCount else {
                throw DetectionEvaluationError("pixel \(i): label \(t) or prediction \(p) outside 0..<\(classCount)")
            }
            confusion[t * classCount + p] += 1
        }
    }

    private func counts(_ c: Int) -> (tp: Int, fp: Int, fn: Int) {
        let tp = confusion[c * classCount + c]
        let truth = (0..<classCount).reduce(0) { $0 + confusion[c * classCount + $1] }
        let predicted = (0..<classCount).reduce(0) { $0 + confusion[$1 * classCount + c] }
        return (tp, predicted - tp, truth - tp)
    }

    /// nil for a class that appears in neither the truth nor the predictions.
    public func iou(_ c: Int) -> Double? {
        let (tp, fp, fn) = counts(c)
        return tp + fp + fn == 0 ? nil : Double(tp) / Double(tp + fp + fn)
    }

    public func dice(_ c: Int) -> Double? {
        let (tp, fp, fn) = counts(c)
        return tp + fp + fn == 0 ? nil : 2 * Double(tp) / Double(2 * tp + fp + fn)
    }

    public var meanIoU: Double? { mean((0..<classCount).compactMap(iou)) }
    public var meanDice: Double? { mean((0..<classCount).compactMap(dice)) }

    public var pixelAccuracy: Double? {
        let total = confusion.reduce(0, +)
        let correct = (0..<classCount).reduce(0) { $0 + confusion[$1 * classCount + $1] }
        return total == 0 ? nil : Double(correct) / Double(total)
    }

    private func mean(_ values: [Double]) -> Double? { values.isEmpty ? nil : values.reduce(0, +) / Double(values.count) }
}
