import Testing
@testable import StarlingModels

@Suite struct SegmentationMetricsTests {
    /// Eight pixels, three classes and a void label 255:
    /// truth      0 0 0 1 1 2 2 255
    /// predicted  0 0 1 1 2 2 2 0
    /// class 0: TP 2, FP 0, FN 1 -> IoU 2/3, Dice 4/5; class 1: TP 1, FP 1, FN 1 -> 1/3, 1/2;
    /// class 2: TP 2, FP 1, FN 0 -> 2/3, 4/5. Pixel accuracy 5/7 (the void pixel counts nowhere).
    @Test func workedCase() throws {
        var m = SegmentationMetrics(classCount: 3, ignoreLabel: 255)
        try m.add(truth: [0, 0, 0, 1, 1, 2, 2, 255], predicted: [0, 0, 1, 1, 2, 2, 2, 0])
        #expect(m.iou(0) == 2.0 / 3 && m.iou(1) == 1.0 / 3 && m.iou(2) == 2.0 / 3)
        #expect(m.dice(0) == 0.8 && m.dice(1) == 0.5 && m.dice(2) == 0.8)
        #expect(abs(m.meanIoU! - 5.0 / 9) < 1e-12)
        #expect(abs(m.meanDice! - 2.1 / 3) < 1e-12)
        #expect(m.pixelAccuracy == 5.0 / 7)
    }

    @Test func absentClassesAreLeftOutAndBadLabelsRefused() throws {
        var m = SegmentationMetrics(classCount: 4)
        try m.add(truth: [0, 1, 1], predicted: [0, 1, 1])
        #expect(m.iou(3) == nil && m.meanIoU == 1 && m.pixelAccuracy == 1)
        #expect(throws: DetectionEvaluationError.self) { try m.add(truth: [7], predicted: [0]) }
        #expect(throws: DetectionEvaluationError.self) { try m.add(truth: [0, 1], predicted: [0]) }
    }
}
