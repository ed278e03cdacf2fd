import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingEvaluation

// Worked examples for the detection evaluators. Boxes are corners in pixels; "TP/FP" sequences list the
// detections in descending score order. Unless said otherwise every match is exact (IoU 1), so the COCO
// numbers are the same at all ten thresholds.

private func box(_ x0: Double, _ y0: Double, _ x1: Double, _ y1: Double) -> BoundingBox {
    BoundingBox(xmin: x0, ymin: y0, xmax: x1, ymax: y1)
}
private func gt(_ b: BoundingBox, image: Int = 1, cls: Int = 1, difficult: Bool = false, crowd: Bool = false, area: Double? = nil) -> GroundTruthBox {
    GroundTruthBox(imageID: image, classID: cls, box: b, difficult: difficult, isCrowd: crowd, area: area)
}
private func det(_ b: BoundingBox, _ score: Double, image: Int = 1, cls: Int = 1) -> Detection {
    Detection(imageID: image, classID: cls, box: b, score: score)
}
/// A 10 x 10 box at column i (far apart from each other), and one nowhere near any of them.
private func slot(_ i: Int) -> BoundingBox { box(Double(20 * i), 0, Double(20 * i + 10), 10) }
private let nowhere = box(500, 500, 510, 510)

private func vocAP(_ g: [GroundTruthBox], _ d: [Detection], _ interpolation: VOCEvaluator.Interpolation,
                   iou: Double = 0.5) throws -> Double? {
    try VOCEvaluator(interpolation: interpolation, iouThreshold: iou).evaluate(groundTruth: g, detections: d).mAP
}
private func coco(_ g: [GroundTruthBox], _ d: [Detection], classes: [Int]? = nil) throws -> COCOResult {
    try COCOEvaluator().evaluate(groundTruth: g, detections: d, classIDs: classes)
}
private func close(_ a: Double?, _ b: Double, _ tolerance: Double = 1e-12) -> Bool {
    guard let a else { return false }
    return abs(a - b) <= tolerance
}

/// Ground truth in slots 0..<count and a detection per letter of `sequence`: T on the next unfound slot, F nowhere.
private func sequence(_ pattern: String, groundTruth count: Int) -> ([GroundTruthBox], [Detection]) {
    var next = 0
    let detections = pattern.enumerated().map { i, c -> Detection in
        let score = 1 - Double(i) * 0.1
        if c == "T" { next += 1; return det(slot(next - 1), score) }
        return det(nowhere, score)
    }
    return ((0..<count).map { gt(slot($0)) }, detections)
}

@Suite struct DetectionEvaluationTests {
    // MARK: Boxes

    @Test func iouOfHandComputedPairs() {
        #expect(iou(box(0, 0, 10, 10), box(0, 0, 10, 10)) == 1)
        #expect(iou(box(0, 0, 10, 10), box(20, 20, 30, 30)) == 0)
        #expect(iou(box(0, 0, 10, 10), box(10, 0, 20, 10)) == 0)           // touching edges share no area
        #expect(iou(box(0, 0, 10, 10), box(0, 0, 5, 10)) == 0.5)           // 50 / 100
        #expect(close(iou(box(0, 0, 2, 2), box(1, 0, 3, 2)), 1.0 / 3))     // 2 / (4 + 4 - 2)
        #expect(close(iou(box(0, 0, 4, 4), box(2, 2, 6, 6)), 4.0 / 28))    // 4 / (16 + 16 - 4)
        #expect(iou(box(2, 2, 6, 6), box(0, 0, 4, 4)) == iou(box(0, 0, 4, 4), box(2, 2, 6, 6)))
        // VOC's pixel-inclusive convention: [0, 9] is 10 pixels. 5 x 5 = 25 shared of 100 + 100 - 25 = 175.
        #expect(close(iou(box(0, 0, 9, 9), box(5, 5, 14, 14), pixelInclusive: true), 25.0 / 175))
        // The same corners as continuous coordinates: 4 x 4 = 16 of 81 + 81 - 16 = 146.
        #expect(close(iou(box(0, 0, 9, 9), box(5, 5, 14, 14)), 16.0 / 146))
        // COCO's crowd overlap divides by the detection's area: a 10 x 10 box inside a 100 x 100 crowd is 1.
        #expect(cocoOverlap(detection: box(10, 10, 20, 20), groundTruth: box(0, 0, 100, 100), crowd: true) == 1)
        #expect(cocoOverlap(detection: box(10, 10, 20, 20), groundTruth: box(0, 0, 100, 100), crowd: false) == 0.01)
        // [x, y, w, h] at the COCO boundary.
        let b = BoundingBox(cocoX: 5, y: 6, width: 10, height: 20)
        #expect(b == box(5, 6, 15, 26) && b.cocoXYWH == [5, 6, 10, 20] && b.area == 200)
    }

    // MARK: VOC

    @Test func perfectDetectionIsAPOneInEveryMode() throws {
        let g = [gt(box(10, 10, 60, 60))], d = [det(box(10, 10, 60, 60), 0.9)]
        #expect(try vocAP(g, d, .allPoint) == 1)
        #expect(try vocAP(g, d, .elevenPoint) == 1)
        let r = try coco(g, d)
        // A 50 x 50 box is medium (1024 <= 2500 <= 9216): small and large have nothing to count (-1).
        #expect(r.stats == [1, 1, 1, -1, 1, -1, 1, 1, 1, -1, 1, -1])
    }

    @Test func tpFpTpWithTwoObjects() throws {
        let (g, d) = sequence("TFT", groundTruth: 2)
        // recall .5 .5 1, precision 1 .5 2/3. Envelope 1, 2/3, 2/3.
        // All-point: .5 x 1 + .5 x 2/3 = 0.8333.
        #expect(close(try vocAP(g, d, .allPoint), 0.5 + 0.5 * 2 / 3))
        // 11-point: t = 0 ... .5 (6 points) reach precision 1, t = .6 ... 1 (5 points) only 2/3: (6 + 5 x 2/3) / 11 = 0.8485.
        #expect(close(try vocAP(g, d, .elevenPoint), (6 + 5 * 2.0 / 3) / 11))
        // COCO: recall points 0.00 ... 0.50 (51) first reached at rank 1 (envelope 1), 0.51 ... 1.00 (50) at rank 3 (2/3).
        #expect(close(try coco(g, d).stats[0], (51 + 50 * 2.0 / 3) / 101))
    }

    @Test func sevenDetectionsFiveObjects() throws {
        let (g, d) = sequence("TTFFTFT", groundTruth: 5)
        // TP cum 1 2 2 2 3 3 4, FP cum 0 0 1 2 2 3 3 -> recall .2 .4 .4 .4 .6 .6 .8,
        // precision 1 1 2/3 1/2 3/5 1/2 4/7; envelope 1 1 2/3 3/5 3/5 4/7 4/7.
        // All-point: .2 x 1 + .2 x 1 + .2 x 3/5 + .2 x 4/7 = 0.6343.
        #expect(close(try vocAP(g, d, .allPoint), 0.2 + 0.2 + 0.2 * 0.6 + 0.2 * 4 / 7))
        // 11-point: t = 0 ... .4 -> 1 (5 points); t = .5 -> 3/5; t = .6 -> 4/7, because t = 6 x 0.1 is
        // 0.6000000000000001 in binary, just above the recall 3/5 (numpy builds t the same way; MATLAB's
        // 0:0.1:1 gives 0.6 and 0.6675); t = .7, .8 -> 4/7; t = .9, 1 -> 0. (5 + 3/5 + 3 x 4/7) / 11 = 0.6649.
        #expect(6 * 0.1 > 3.0 / 5.0)
        #expect(close(try vocAP(g, d, .elevenPoint), (5 + 0.6 + 3 * 4.0 / 7) / 11))
        let (eleven, all) = (try vocAP(g, d, .elevenPoint) ?? 0, try vocAP(g, d, .allPoint) ?? 0)
        #expect(abs(eleven - 0.6649) < 5e-5 && abs(all - 0.6343) < 5e-5)   // the figures quoted for this example
        // COCO: points 0 ... .20 (21) -> 1, .21 ... .40 (20) -> 1, .41 ... .60 (20) -> 3/5, .61 ... .80 (20) -> 4/7,
        // .81 ... 1 (20) -> 0: (41 + 20 x 3/5 + 20 x 4/7) / 101 = 0.6379.
        #expect(close(try coco(g, d).stats[0], (41 + 12 + 80.0 / 7) / 101))
    }

    @Test func averagePrecisionFromRecallAndPrecision() {
        // The devkit's two formulas on the arrays of the seven-detection example, without any matching.
        let recall = [0.2, 0.4, 0.4, 0.4, 0.6, 0.6, 0.8], precision = [1, 1, 2.0 / 3, 0.5, 0.6, 0.5, 4.0 / 7]
        #expect(close(VOCEvaluator.averagePrecision(recall: recall, precision: precision, interpolation: .allPoint), 0.2 + 0.2 + 0.12 + 0.8 / 7))
        #expect(close(VOCEvaluator.averagePrecision(recall: recall, precision: precision, interpolation: .elevenPoint), (5.6 + 12.0 / 7) / 11))
        #expect(VOCEvaluator.averagePrecision(recall: [], precision: [], interpolation: .allPoint) == 0)
        #expect(VOCEvaluator.averagePrecision(recall: [], precision: [], interpolation: .elevenPoint) == 0)
    }

    @Test func secondDetectionOfABoxIsAFalsePositive() throws {
        // Objects in slots 0 and 1; detections: slot 0 (.9), slot 0 again (.8), slot 1 (.7) = TP, FP, TP.
        let g = [gt(slot(0)), gt(slot(1))]
        let d = [det(slot(0), 0.9), det(slot(0), 0.8), det(slot(1), 0.7)]
        let r = try VOCEvaluator().evaluate(groundTruth: g, detections: d)
        #expect(r.perClass[0].truePositives == 2 && r.perClass[0].falsePositives == 1)
        #expect(r.perClass[0].precision == [1, 0.5, 2.0 / 3])
        #expect(close(r.mAP, 0.5 + 0.5 * 2 / 3))
        #expect(close(try coco(g, d).stats[0], (51 + 50 * 2.0 / 3) / 101))
    }

    @Test func vocTakesTheBestBoxEvenWhenTakenCOCOTheBestFreeOne() throws {
        // A = [0,10], B = [3,13] (x), both 10 high. Detection 1 is A exactly; detection 2 = [1,11] overlaps
        // A by 90 / 110 = 0.818 and B by 80 / 120 = 0.667.
        let g = [gt(box(0, 0, 10, 10)), gt(box(3, 0, 13, 10))]
        let d = [det(box(0, 0, 10, 10), 0.9), det(box(1, 0, 11, 10), 0.8)]
        // VOC: detection 2's best box is A, already taken: FP. Recall .5 .5, precision 1 .5: AP = .5 x 1.
        #expect(close(try vocAP(g, d, .allPoint), 0.5))
        // COCO: at IoU .50 .55 .60 .65 detection 2 takes the free B (0.667): AP 1. At .70 ... .95 it is FP:
        // recall .5 .5, envelope 1 .5 -> points 0 ... .50 (51) at 1, the rest 0: 51/101.
        #expect(close(try coco(g, d).stats[0], (4 * 1 + 6 * 51.0 / 101) / 10))
    }

    @Test func tiesInScoreKeepInputOrder() throws {
        // One object; two detections of equal score, one a miss and one a hit. A stable sort keeps input order.
        let g = [gt(slot(0))]
        let missFirst = [det(nowhere, 0.5), det(slot(0), 0.5)]
        let hitFirst = [det(slot(0), 0.5), det(nowhere, 0.5)]
        // FP then TP: recall 0 1, precision 0 .5 -> all-point 1 x .5; 11-point: every t reaches .5.
        #expect(close(try vocAP(g, missFirst, .allPoint), 0.5))
        #expect(close(try vocAP(g, missFirst, .elevenPoint), 0.5))
        #expect(close(try coco(g, missFirst).stats[0], 0.5))
        // TP then FP: precision 1 at recall 1.
        #expect(try vocAP(g, hitFirst, .allPoint) == 1)
        #expect(try vocAP(g, hitFirst, .elevenPoint) == 1)
        #expect(try coco(g, hitFirst).stats[0] == 1)
        // Across images COCO breaks ties by ascending image id (pycocotools concatenates images in id order),
        // VOC by input order: a hit in image 2 listed before a miss in image 1 is ranked second by COCO.
        let g2 = [gt(slot(0), image: 2), gt(slot(5), image: 1)]
        let d2 = [det(slot(0), 0.5, image: 2), det(nowhere, 0.5, image: 1)]
        #expect(close(try vocAP(g2, d2, .allPoint), 0.5))   // TP, FP: recall .5, precision 1 -> .5
        // COCO: FP (image 1), TP (image 2): recall 0 .5, precision 0 .5 -> points 0 ... .5 (51) at .5: 25.5/101.
        #expect(close(try coco(g2, d2).stats[0], 25.5 / 101))
    }

    @Test func classesWithoutGroundTruthAreLeftOut() throws {
        // Class 1: found perfectly (AP 1). Class 2: an object, no detections (AP 0). Class 3: detections only.
        let g = [gt(slot(0), cls: 1), gt(slot(1), cls: 2)]
        let d = [det(slot(0), 0.9, cls: 1), det(slot(2), 0.8, cls: 3)]
        let v = try VOCEvaluator().evaluate(groundTruth: g, detections: d)
        #expect(v.perClass.map(\.classID) == [1, 2, 3])
        #expect(v.perClass.map(\.ap) == [1, 0, nil])
        #expect(v.mAP == 0.5)   // (1 + 0) / 2
        let c = try coco(g, d)
        #expect(c.classAP(0) == 1 && c.classAP(1) == 0 && c.classAP(2) == nil)
        #expect(c.stats[0] == 0.5)
        // A class listed but never seen is left out too.
        let listed = try COCOEvaluator().evaluate(groundTruth: g, detections: d, classIDs: [1, 2, 3, 4])
        #expect(listed.classAP(3) == nil && listed.stats[0] == 0.5)
        // No ground truth anywhere: no mean at all.
        #expect(try VOCEvaluator().evaluate(groundTruth: [], detections: d).mAP == nil)
        #expect(try coco([], d).stats.allSatisfy { $0 == -1 })
    }

    @Test func difficultBoxesAreIgnoredInVOC() throws {
        // A counts, D is difficult. Detections: D (.9), A (.8).
        let g = [gt(slot(0)), gt(slot(1), difficult: true)]
        let r = try VOCEvaluator().evaluate(groundTruth: g, detections: [det(slot(1), 0.9), det(slot(0), 0.8)])
        // The detection of D is neither TP nor FP; recall = 1 of 1 counted object.
        #expect(r.perClass[0].truePositives == 1 && r.perClass[0].falsePositives == 0 && r.perClass[0].ignored == 1)
        #expect(r.perClass[0].groundTruth == 1 && r.mAP == 1)
        // Missing D costs nothing; were it not difficult, recall would stop at 1/2 (AP .5).
        #expect(try vocAP(g, [det(slot(0), 0.8)], .allPoint) == 1)
        #expect(try vocAP([gt(slot(0)), gt(slot(1))], [det(slot(0), 0.8)], .allPoint) == 0.5)
        // Only difficult ground truth: the class has nothing to find and is left out.
        #expect(try vocAP([gt(slot(1), difficult: true)], [det(slot(1), 0.8)], .allPoint) == nil)
        // COCO has no difficult boxes (pycocotools overwrites `ignore` with `iscrowd`): D counts there.
        #expect(close(try coco(g, [det(slot(0), 0.8)]).stats[0], 51.0 / 101))
    }

    @Test func crowdRegionsInCOCO() throws {
        // A: an object [0,10]^2. C: a crowd region [50,150]^2. Detections: inside C (.9), A (.8), inside C again (.7),
        // and one poking out of C (.6): [140,160]^2 has 10 x 10 of its 400 pixels inside, overlap .25.
        let g = [gt(box(0, 0, 10, 10)), gt(box(50, 50, 150, 150), crowd: true)]
        let d = [det(box(60, 60, 70, 70), 0.9), det(box(0, 0, 10, 10), 0.8), det(box(100, 100, 120, 120), 0.7),
                 det(box(140, 140, 160, 160), 0.6)]
        // Both detections inside C are ignored (C may be matched any number of times); the last is a FP:
        // TP, FP over 1 object: recall 1 at precision 1 -> AP 1.
        let r = try coco(g, d)
        #expect(r.stats[0] == 1 && r.stats[8] == 1)
        #expect(r.groundTruthCounts == [1])
        // Were C an ordinary box: FP, TP, FP, FP over 2 objects -> recall 0 .5 .5 .5, precision 0 .5 1/3 1/4;
        // points 0 ... .5 (51) read the envelope .5: 25.5/101.
        let plain = try coco([gt(box(0, 0, 10, 10)), gt(box(50, 50, 150, 150))], d)
        #expect(close(plain.stats[0], 25.5 / 101))
        // The VOC modes treat a crowd box as difficult but measure plain IoU: the small boxes inside C overlap it
        // by .01 and .04, so they are misses like [140,160]^2: FP, TP, FP, FP over 1 object -> recall 1 at
        // precision .5 -> AP .5. A detection covering C (IoU >= .5) would be ignored.
        #expect(try vocAP(g, d, .allPoint) == 0.5)
        #expect(try vocAP(g, [det(box(0, 0, 10, 10), 0.8), det(box(50, 50, 150, 150), 0.9)], .allPoint) == 1)
    }

    @Test func areaRangesUseTheAnnotationArea() throws {
        // s: 20 x 20 (400, small); L: 100 x 100 (10000, large). Detections: a small miss (.9), L (.8), s (.7).
        let s = box(0, 0, 20, 20), L = box(100, 100, 200, 200)
        let d = [det(box(300, 300, 320, 320), 0.9), det(L, 0.8), det(s, 0.7)]
        let r = try coco([gt(s), gt(L)], d)
        // all: FP TP TP over 2 -> precision 0 .5 2/3, envelope 2/3 everywhere: 2/3.
        #expect(close(r.stats[0], 2.0 / 3))
        // small: L is ignored, so is the detection matched to it; the small miss counts: FP TP over 1 -> .5.
        #expect(close(r.stats[3], 0.5))
        // medium: nothing to count.
        #expect(r.stats[4] == -1)
        // large: s is ignored and so is its detection; the miss is ignored too (its area, 400, is not large).
        #expect(r.stats[5] == 1)
        // The annotation's area, not the box's, decides: s annotated as 2000 pixels is medium. Then small has
        // nothing; medium counts s, ignores the miss (400 is not medium) and L's detection: AP 1.
        let r2 = try coco([gt(s, area: 2000), gt(L)], d)
        #expect(r2.stats[3] == -1 && r2.stats[4] == 1 && r2.stats[9] == -1 && r2.stats[10] == 1)
        // Bounds are inclusive on both sides (as pycocotools): an area of exactly 32^2 is small and medium.
        let edge = try coco([gt(box(0, 0, 32, 32))], [det(box(0, 0, 32, 32), 0.9)])
        #expect(edge.stats[3] == 1 && edge.stats[4] == 1 && edge.stats[5] == -1)
    }

    @Test func maxDetsTruncation() throws {
        // Two objects; detections a miss (.9), then both objects (.8, .7).
        let (g, d) = sequence("FTT", groundTruth: 2)
        let r = try coco(g, d)
        // AR1 keeps only the miss: recall 0. AR10 and AR100: recall 1.
        #expect(r.stats[6] == 0 && r.stats[7] == 1 && r.stats[8] == 1)
        // AP (maxDets 100): precision 0 .5 2/3, envelope 2/3 everywhere.
        #expect(close(r.stats[0], 2.0 / 3))
        // maxDets counts per image *and class*: two classes, one perfect detection each -> AR1 = 1.
        let two = try coco([gt(slot(0), cls: 1), gt(slot(1), cls: 2)], [det(slot(0), 0.9, cls: 1), det(slot(1), 0.8, cls: 2)])
        #expect(two.stats[6] == 1)
        // Only the 100 best detections per image and class are scored: 100 misses above the only hit hide it.
        // VOC keeps every detection: the hit comes at rank 101 -> recall 1 at precision 1/101.
        let misses = (0..<100).map { det(box(300 + Double($0), 300, 310 + Double($0), 310), 0.9) }
        let buried = misses + [det(slot(0), 0.1)]
        let c = try coco([gt(slot(0))], buried)
        #expect(c.stats[0] == 0 && c.stats[8] == 0)
        #expect(close(try vocAP([gt(slot(0))], buried, .allPoint), 1.0 / 101))
    }

    @Test func thresholdsAreTheReferenceValues() throws {
        #expect(COCOEvaluator.iouThresholds.count == 10 && COCOEvaluator.iouThresholds[0] == 0.5 && COCOEvaluator.iouThresholds[5] == 0.75)
        #expect(COCOEvaluator.iouThresholds[8] == 0.8999999999999999 && COCOEvaluator.iouThresholds[9] == 0.95)
        #expect(COCOEvaluator.recallThresholds.count == 101 && COCOEvaluator.recallThresholds[57] == 0.5700000000000001)
        // An IoU exactly at the threshold matches (>=): [0,10] vs [0,5] x [0,10] is exactly .5.
        #expect(try vocAP([gt(box(0, 0, 10, 10))], [det(box(0, 0, 5, 10), 0.9)], .allPoint) == 1)
        #expect(try vocAP([gt(box(0, 0, 10, 10))], [det(box(0, 0, 5, 10), 0.9)], .allPoint, iou: 0.51) == 0)
    }

    @Test func pixelInclusiveChangesWhatMatches() throws {
        // [0,9]^2 vs [5,14]^2: continuous IoU 16/146 = .11, inclusive 25/175 = .14. With threshold .12 only the
        // inclusive measure matches.
        let g = [gt(box(0, 0, 9, 9))], d = [det(box(5, 5, 14, 14), 0.9)]
        #expect(try VOCEvaluator(iouThreshold: 0.12).evaluate(groundTruth: g, detections: d).mAP == 0)
        #expect(try VOCEvaluator(iouThreshold: 0.12, pixelInclusive: true).evaluate(groundTruth: g, detections: d).mAP == 1)
    }

    @Test func nonFiniteInputIsAnErrorNotACrash() {
        let g = [gt(slot(0))]
        #expect(throws: DetectionEvaluationError.self) { try VOCEvaluator().evaluate(groundTruth: g, detections: [det(slot(0), .nan)]) }
        #expect(throws: DetectionEvaluationError.self) { try COCOEvaluator().evaluate(groundTruth: g, detections: [det(box(0, 0, .infinity, 1), 1)]) }
        #expect(throws: DetectionEvaluationError.self) { try COCOEvaluator().evaluate(groundTruth: [gt(box(5, 5, 5, 9))], detections: []) }
    }

    // MARK: Against the plain re-implementations

    /// Random small test sets: 20 images, 3 classes, integer boxes (so IoUs land exactly on thresholds and tie),
    /// crowd boxes, annotation areas unlike the box area, quantised scores (ties), up to 14 detections per image
    /// and class (so maxDets 10 cuts).
    static func randomCase(seed: UInt64) -> (groundTruth: [GroundTruthBox], detections: [Detection]) {
        var rng = RandomGenerator(seed: seed)
        func int(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        func randomBox() -> BoundingBox {
            let w = Double(4 + int(120)), h = Double(4 + int(120))
            let x = Double(int(200)), y = Double(int(200))
            return box(x, y, x + w, y + h)
        }
        var g: [GroundTruthBox] = [], d: [Detection] = []
        let images = (0..<20).map { 7 * $0 + 3 }.shuffled(using: &rng)
        for image in images {
            for cls in [1, 2, 5] {
                for _ in 0..<int(4) {
                    let b = randomBox()
                    let area = int(3) == 0 ? b.area * (0.5 + Double(int(100)) / 100) : b.area
                    g.append(GroundTruthBox(imageID: image, classID: cls, box: b, isCrowd: int(10) == 0, area: area))
                    for _ in 0..<int(3) {
                        func j() -> Double { Double(int(13) - 6) }
                        let (x0, y0) = (b.xmin + j(), b.ymin + j())
                        let near = box(x0, y0, max(x0 + 1, b.xmax + j()), max(y0 + 1, b.ymax + j()))
                        d.append(Detection(imageID: image, classID: int(5) == 0 ? [1, 2, 5][int(3)] : cls, box: near,
                                           score: Double(1 + int(9)) / 10))
                    }
                }
                for _ in 0..<(int(4) == 0 ? 10 + int(5) : int(4)) {
                    d.append(Detection(imageID: image, classID: cls, box: randomBox(), score: int(2) == 0 ? Double(1 + int(9)) / 10 : Double(rng.uniform())))
                }
            }
        }
        // Shuffle so that input order is not image order.
        return (g.shuffled(using: &rng), d.shuffled(using: &rng))
    }

    @Test func cocoMatchesThePlainImplementation() throws {
        for seed in 1...6 as ClosedRange<UInt64> {
            let (g, d) = Self.randomCase(seed: seed)
            let fast = try COCOEvaluator().evaluate(groundTruth: g, detections: d)
            let reference = ReferenceEvaluation.cocoStats(groundTruth: g, detections: d, classIDs: [1, 2, 5])
            #expect(fast.classIDs == [1, 2, 5])
            for (i, (a, b)) in zip(fast.stats, reference.stats).enumerated() {
                #expect(abs(a - b) < 1e-12, "seed \(seed) stat \(i): \(a) vs reference \(b)")
            }
            for k in 0..<3 {
                #expect(abs((fast.classAP(k) ?? -1) - reference.classAP[k]) < 1e-12, "seed \(seed) class \(k)")
            }
            // Every precision entry of the (class 0, all areas, all maxDets, all thresholds) cells.
            for t in [0, 4, 9] {
                for a in 0..<4 {
                    for m in 0..<3 {
                        let cell = ReferenceEvaluation.cocoCell(classID: 1, area: ReferenceEvaluation.areas[a], maxDet: [1, 10, 100][m],
                                                                threshold: COCOEvaluator.iouThresholds[t], groundTruth: g, detections: d)
                        let mine = (0..<101).map { fast.precision(t: t, r: $0, k: 0, a: a, m: m) }
                        #expect(zip(mine, cell.precision).allSatisfy { abs($0 - $1) < 1e-12 }, "seed \(seed) t \(t) a \(a) m \(m)")
                        #expect(abs(fast.recall(t: t, k: 0, a: a, m: m) - cell.recall) < 1e-12)
                    }
                }
            }
        }
    }

    @Test func idsOfAnySizeGiveTheSameResult() throws {
        // Image ids spread over the whole Int range take the dictionary path of the dense numbering; renumbering
        // images in the same order changes nothing.
        let (g, d) = Self.randomCase(seed: 3)
        func spread(_ id: Int) -> Int { id == 3 ? Int.min : (id - 70) * 40_000_000_000_000_000 }   // 3 is the smallest id
        let g2 = g.map { var x = $0; x.imageID = spread(x.imageID); return x }
        let d2 = d.map { var x = $0; x.imageID = spread(x.imageID); return x }
        #expect(try coco(g, d).stats == coco(g2, d2).stats)
        #expect(try VOCEvaluator().evaluate(groundTruth: g, detections: d).perClass.map(\.ap)
                == VOCEvaluator().evaluate(groundTruth: g2, detections: d2).perClass.map(\.ap))
        let index = DenseIndex([Int.max, 5, Int.min, 5])
        #expect(index.ids == [Int.min, 5, Int.max] && index.index(of: Int.max) == 2 && index.index(of: 6) == nil)
        let small = DenseIndex([12, 10, 12])
        #expect(small.ids == [10, 12] && small.index(of: 12) == 1 && small.index(of: 11) == nil && small.index(of: Int.min) == nil)
    }

    @Test func vocMatchesThePlainImplementation() throws {
        for seed in 11...16 as ClosedRange<UInt64> {
            var (g, d) = Self.randomCase(seed: seed)
            for i in g.indices where i % 7 == 0 { g[i].difficult = true }
            for interpolation in [VOCEvaluator.Interpolation.allPoint, .elevenPoint] {
                for threshold in [0.5, 0.75] {
                    let fast = try VOCEvaluator(interpolation: interpolation, iouThreshold: threshold).evaluate(groundTruth: g, detections: d)
                    for c in fast.perClass {
                        let reference = ReferenceEvaluation.vocAP(groundTruth: g, detections: d, classID: c.classID, threshold: threshold,
                                                                  elevenPoint: interpolation == .elevenPoint)
                        #expect(c.ap == reference || abs((c.ap ?? -9) - (reference ?? -8)) < 1e-12, "seed \(seed) class \(c.classID)")
                    }
                }
            }
        }
    }

    // MARK: Files and reports

    static let annotationsJSON = """
    {"images": [{"id": 1, "width": 640, "height": 480}, {"id": 2}],
     "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}],
     "annotations": [
       {"id": 0, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
       {"id": 1, "image_id": 2, "category_id": 7, "bbox": [0, 0, 50, 40], "area": 1800, "iscrowd": 0},
       {"id": 2, "image_id": 2, "category_id": 7, "bbox": [100, 100, 100, 100], "area": 9000, "iscrowd": 1}]}
    """

    @Test func annotationIDZeroWorks() throws {
        // pycocotools stores the matched annotation's id and reads 0 as "no match", so this perfect detection of
        // annotation 0 would score 0 there. Here ids play no part in matching.
        let truth = try COCOJSON.decodeAnnotations(Data(Self.annotationsJSON.utf8), source: "gt.json")
        #expect(truth.boxes[0].id == 0)
        let found = try COCOJSON.decodeResults(Data(#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}]"#.utf8),
                                               source: "dt.json", groundTruth: truth)
        let r = try COCOEvaluator().evaluate(groundTruth: truth.boxes, detections: found, classIDs: [1])
        #expect(r.stats[0] == 1)
    }

    @Test func jsonRoundTrip() throws {
        let dir = Fixture.temporaryDirectory("detections-json")
        let truth = try COCOJSON.decodeAnnotations(Data(Self.annotationsJSON.utf8), source: "gt.json")
        #expect(truth.boxes.map(\.isCrowd) == [false, false, true] && truth.boxes[1].area == 1800)
        #expect(truth.boxes[1].box == box(0, 0, 50, 40))
        #expect(truth.categories.map(\.name) == ["cat", "dog"] && truth.images[0].width == 640)
        var withDifficult = truth
        withDifficult.boxes[0].difficult = true
        withDifficult.boxes.append(GroundTruthBox(imageID: 1, classID: 7, box: box(1, 2, 3.5, 4.25)))   // no id: gets 3
        try COCOJSON.writeAnnotations(withDifficult, to: dir + "/gt.json")
        let back = try COCOJSON.readAnnotations(path: dir + "/gt.json")
        #expect(back.boxes.count == 4 && back.boxes[3].id == 3 && back.boxes[3].area == 2.5 * 2.25)
        back.boxes.indices.dropLast().forEach { #expect(back.boxes[$0] == withDifficult.boxes[$0]) }
        #expect(back.images == truth.images && back.categories == truth.categories)
        let detections = [Detection(imageID: 2, classID: 7, box: box(0.5, 1, 40, 30.25), score: 0.123456789)]
        try COCOJSON.writeResults(detections, to: dir + "/dt.json")
        #expect(try COCOJSON.readResults(path: dir + "/dt.json", groundTruth: back) == detections)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp") }
        #expect(leftovers.isEmpty)
    }

    @Test func badFilesGiveOneLineNamingTheEntry() throws {
        let truth = try COCOJSON.decodeAnnotations(Data(Self.annotationsJSON.utf8), source: "gt.json")
        func resultsError(_ text: String) -> String {
            do {
                _ = try COCOJSON.decodeResults(Data(text.utf8), source: "dt.json", groundTruth: truth)
                return "no error"
            } catch { return "\(error)" }
        }
        let ok = #"{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}"#
        func second(_ entry: String) -> String { resultsError("[\(ok), \(entry)]") }
        let cases: [(String, [String])] = [
            (second(#"{"image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}"#), ["detection 1", "image_id 9", "image_id is not"]),
            (second(#"{"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.5}"#), ["detection 1", "category_id 3", "category_id is not"]),
            (second(#"{"image_id": 1, "category_id": 1, "bbox": [1, 1, -5, 5], "score": 0.5}"#), ["detection 1", "negative"]),
            (second(#"{"image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5], "score": 0.5}"#), ["detection 1", "empty"]),
            (second(#"{"image_id": 1, "category_id": 1, "bbox": [1, NaN, 5, 5], "score": 0.5}"#), ["detection 1", "non-finite"]),
            (second(#"{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": NaN}"#), ["detection 1", "score is nan"]),
            (second(#"{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5], "score": 0.5}"#), ["detection 1", "3 numbers"]),
            (second(#"{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}"#), ["[1]", "score"]),
            (second(#"{"image_id": "a", "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}"#), ["[1].image_id", "integer"]),
            (resultsError("[\(ok), {"), ["not valid JSON"]),
            (resultsError(#"{"annotations": []}"#), ["top level"]),
        ]
        for (message, words) in cases {
            #expect(message.hasPrefix("dt.json: ") && !message.contains("\n"), "\(message)")
            for w in words { #expect(message.contains(w), "'\(message)' lacks '\(w)'") }
        }
        func annotationsError(_ text: String) -> String {
            do { _ = try COCOJSON.decodeAnnotations(Data(text.utf8), source: "gt.json"); return "no error" } catch { return "\(error)" }
        }
        let head = #"{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": ["#
        #expect(annotationsError(head + #"{"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}"#).contains("annotations[0] (id 5, image_id 2, category_id 1): image_id"))
        #expect(annotationsError(head + #"{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}"#).contains("annotations[1] (id 5, image_id 1, category_id 1): duplicate"))
        #expect(annotationsError(head + #"{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": -3}]}"#).contains("area -3"))
        #expect(annotationsError(#"{"images": [{"id": 1}, {"id": 1}], "categories": [], "annotations": []}"#).contains("images[1]: duplicate image id 1"))
        #expect(annotationsError(#"{"images": [], "annotations": []}"#).contains("missing key 'categories'"))
        #expect(throws: DataError.self) { try COCOJSON.readAnnotations(path: "/nonexistent/gt.json") }
    }

    @Test func reportTableJSONAndCurves() throws {
        let dir = Fixture.temporaryDirectory("detections-report")
        let truth = try COCOJSON.decodeAnnotations(Data(Self.annotationsJSON.utf8), source: "gt.json")
        let found = [Detection(imageID: 1, classID: 1, box: box(10, 10, 30, 30), score: 0.9),
                     Detection(imageID: 2, classID: 7, box: box(300, 300, 320, 320), score: 0.8),
                     Detection(imageID: 2, classID: 7, box: box(0, 0, 50, 40), score: 0.7)]
        for mode in APMode.allCases {
            let report = try DetectionEvaluationReport.evaluate(groundTruth: truth, detections: found, mode: mode,
                                                                detector: DetectorSettings(confidenceThreshold: 0.01, nmsIoU: 0.45, topK: 200))
            // cat: TP -> 1. dog: FP, TP over 1 object (the crowd box does not count) -> VOC all-point .5,
            // VOC07 .5 (every t reaches precision .5), COCO .5 at each threshold. Mean .75.
            #expect(report.summary.perClass.map(\.ap) == [1, 0.5])
            #expect(report.summary.mAP == 0.75 && report.summary.ap50 == 0.75 && report.summary.ap75 == 0.75)
            let table = report.table()
            #expect(table.contains("cat (1)") && table.contains("dog (7)") && table.contains("0.7500"))
            #expect(table.contains("confidence threshold 0.01") && table.contains("NMS IoU 0.45") && table.contains("top k 200"))
            try report.writeJSON(path: "\(dir)/\(mode).json")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(mode).json"))) as? [String: Any]
            #expect(json?["mAP"] as? Double == 0.75 && json?["AP50"] as? Double == 0.75 && json?["AP75"] as? Double == 0.75)
            let proto = json?["protocol"] as? [String: Any]
            #expect(proto?["apMode"] as? String == mode.rawValue && (proto?["description"] as? String)?.isEmpty == false)
            #expect((json?["perClass"] as? [[String: Any]])?.count == 2)
            let written = try report.writeCurves(directory: "\(dir)/\(mode)-curves")
            #expect(written.count == 4)
            let csv = try String(contentsOfFile: written[0], encoding: .utf8)
            #expect(csv.hasPrefix("class_id,class_name,recall,precision\n"))
            // VOC: a point per detection (1 + 2); COCO: 101 points per class.
            #expect(csv.split(separator: "\n").count == 1 + (mode == .coco ? 202 : 3))
            let png = try PNGImage.read(path: written[1])
            #expect(png.width == 760 && png.height == 480)
        }
        #expect(try DetectionEvaluationReport.evaluate(groundTruth: truth, detections: found, mode: .coco).summary.coco?.AP == 0.75)
    }

    @Test func canvasDrawsLinesAndText() {
        var canvas = PixelCanvas(width: 40, height: 20)
        canvas.line(from: (x: 0, y: 0), to: (x: 9, y: 0), color: .black)
        #expect((0...9).allSatisfy { canvas.pixel(x: $0, y: 0) == .black } && canvas.pixel(x: 10, y: 0) == .white)
        canvas.line(from: (x: 0, y: 19), to: (x: 19, y: 0), color: .black)   // a diagonal: one pixel per column
        #expect((0...19).allSatisfy { canvas.pixel(x: $0, y: 19 - $0) == .black })
        var text = PixelCanvas(width: 20, height: 10)
        text.text("1", x: 2, y: 1, color: .black)
        // "1" has 10 ink pixels: ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
        let ink = (0..<10).flatMap { y in (0..<20).map { x in text.pixel(x: x, y: y) == .black ? 1 : 0 } }.reduce(0, +)
        #expect(ink == 10 && text.pixel(x: 4, y: 1) == .black)
        canvas.text("x", x: -100, y: -100, color: .black)   // clipped, not a crash
        #expect(BitmapFont.glyph("a") == BitmapFont.glyph("A") && BitmapFont.glyph("ß").count == 35)
    }

    @Test func benchmarkRunsOnASmallWorkload() throws {
        var w = DetectionEvaluationBenchmark.Workload()
        w.images = 20
        for mode in APMode.allCases { #expect(try DetectionEvaluationBenchmark.run(mode: mode, workload: w) >= 0) }
    }

    // MARK: Command line

    @Test func evalDetectionsCommand() throws {
        let dir = Fixture.temporaryDirectory("eval-detections")
        try Self.annotationsJSON.write(toFile: dir + "/gt.json", atomically: true, encoding: .utf8)
        try #"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}, {"image_id": 2, "category_id": 7, "bbox": [0, 0, 50, 40], "score": 0.7}]"#
            .write(toFile: dir + "/dt.json", atomically: true, encoding: .utf8)
        let run = try starling("eval-detections", "--gt", dir + "/gt.json", "--detections", dir + "/dt.json", "--ap-mode", "voc07",
                               "--json", dir + "/summary.json", "--curves", dir + "/curves")
        #expect(run.status == 0, "\(run.error)")
        #expect(run.output.contains("mAP 1.0000") && run.output.contains("VOC2007 11-point"))
        #expect(FileManager.default.fileExists(atPath: dir + "/summary.json") && FileManager.default.fileExists(atPath: dir + "/curves/pr-curves.png"))
        let coco = try starling("eval-detections", "--gt", dir + "/gt.json", "--detections", dir + "/dt.json", "--ap-mode", "coco")
        #expect(coco.status == 0 && coco.output.contains("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"))

        try #"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}, {"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.7}]"#
            .write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        let bad = try starling("eval-detections", "--gt", dir + "/gt.json", "--detections", dir + "/bad.json", "--ap-mode", "voc",
                               "--json", dir + "/bad-summary.json")
        let message = bad.error.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(bad.status != 0 && message.contains("bad.json") && message.contains("detection 1 (image_id 3, category_id 1)"))
        #expect(!message.contains("\n") && !message.contains("Fatal error"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad-summary.json"))
        let wrongFlag = try starling("eval-detections", "--gt", dir + "/gt.json", "--detections", dir + "/dt.json", "--ap-mode", "coco", "--iou", "0.6")
        #expect(wrongFlag.status != 0 && wrongFlag.error.contains("--iou"))
    }
}
