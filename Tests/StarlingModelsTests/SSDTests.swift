import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingDetection

/// A 100 x 100 image with one 2 x 2 feature map of 50 x 50 anchors: centres (25, 25), (75, 25), (25, 75), (75, 75).
private func quadrantEncoder() -> SSDBoxEncoder {
    var config = AnchorConfig(imageHeight: 100, imageWidth: 100, featureMapSizes: [[2, 2]], scales: [0.5, 0.5], aspectRatios: [[1]])
    config.twoBoxesForAspectRatioOne = false
    return SSDBoxEncoder(config: config)
}

private func box(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float) -> BoxCorners { BoxCorners(xmin: x0, ymin: y0, xmax: x1, ymax: y1) }

@Suite struct AnchorTests {
    @Test func ssd7AnchorsMatchTheProject() {
        let config = SSD7.defaultConfig().anchors!
        #expect(config.featureMapSizes == [[37, 60], [18, 30], [9, 15], [4, 7]])
        #expect(config.anchorCount == 11_692)
        let a = config.anchors()
        #expect(a.count == 4 * 11_692)
        // Layer 4, cell (0, 0): centre (0.5 * 480/60, 0.5 * 300/37); size = min(300, 480) = 300.
        let cx: Float = 4 / 480, cy = Float(0.5 * 300.0 / 37) / 300
        let r = Float(0.5).squareRoot()
        let expected: [Float] = [cx, cy, 0.08 * 300 * r / 480, 0.08 * 300 / r / 300,     // ar 0.5
                                 cx, cy, 24 / 480, 24 / 300,                              // ar 1
                                 cx, cy, Float((0.08 * 0.16).squareRoot() * 300 / 480), Float((0.08 * 0.16).squareRoot() * 300 / 300),  // second ar-1 box
                                 cx, cy, 0.08 * 300 / r / 480, 0.08 * 300 * r / 300]     // ar 2
        for i in 0..<16 { #expect(abs(a[i] - expected[i]) < 1e-6, "value \(i): \(a[i]) vs \(expected[i])") }
        // Last anchor: layer 7 (4 x 7), cell (3, 6), ar 2 at scale 0.64.
        let last = Array(a.suffix(4))
        let root2 = Float(2).squareRoot()
        let lastExpected: [Float] = [Float(6.5 * 480 / 7) / 480, Float(3.5 * 300 / 4) / 300, 0.64 * 300 * root2 / 480, 0.64 * 300 / root2 / 300]
        for i in 0..<4 { #expect(abs(last[i] - lastExpected[i]) < 1e-5) }
    }

    @Test func iouByHand() {
        #expect(iou(box(0, 0, 10, 10), box(0, 0, 10, 10)) == 1)
        #expect(iou(box(0, 0, 10, 10), box(5, 0, 15, 10)) == Float(50) / 150)
        #expect(iou(box(0, 0, 10, 10), box(10, 0, 20, 10)) == 0)   // touching is not overlapping
        #expect(iou(box(0, 0, 10, 10), box(2, 2, 4, 4)) == Float(4) / 100)
    }
}

@Suite struct EncodingTests {
    @Test func matchingRules() {
        let encoder = quadrantEncoder()
        // [0, 0, 90, 50]: anchor 0 IoU 2500/4500 (bipartite), anchor 1 IoU 2000/5000 = 0.4 (neutral), others 0.
        #expect(encoder.encode([Object(box: box(0, 0, 90, 50), classID: 2)]).classes == [2, -1, 0, 0])
        // A small box still gets its best anchor through the bipartite step (IoU 400/2500 = 0.16).
        #expect(encoder.encode([Object(box: box(0, 0, 20, 20), classID: 1)]).classes == [1, 0, 0, 0])
        // Over the threshold: [0, 0, 100, 50] has IoU 0.5 with anchors 0 and 1: both positive.
        #expect(encoder.encode([Object(box: box(0, 0, 100, 50), classID: 3)]).classes == [3, 3, 0, 0])
        // A difficult box makes its anchors neutral, not positive.
        #expect(encoder.encode([Object(box: box(50, 50, 100, 100), classID: 1, difficult: true)]).classes == [0, 0, 0, -1])
        // Two boxes competing for one anchor: the bipartite step gives each its own.
        let two = encoder.encode([Object(box: box(0, 0, 50, 50), classID: 1), Object(box: box(5, 5, 55, 55), classID: 2)])
        #expect(two.classes[0] == 1 && two.classes.contains(2))
        #expect(encoder.encode([]).classes == [0, 0, 0, 0])
    }

    @Test func encodeThenDecodeRecoversGroundTruth() {
        let encoder = SSDBoxEncoder(config: SSD7.defaultConfig().anchors!)
        let objects = [Object(box: box(237, 143, 251, 155), classID: 1), Object(box: box(437, 120, 454, 186), classID: 3),
                       Object(box: box(10, 20, 300, 280), classID: 2)]
        let targets = encoder.encode(objects)
        var positives = 0
        targets.offsets.withUnsafeBufferPointer { o in
            for j in 0..<encoder.anchorCount where targets.classes[j] > 0 {
                positives += 1
                let decoded = encoder.decode(o.baseAddress! + 4 * j, anchor: j)
                let truth = objects.first { $0.classID == Int(targets.classes[j]) }!.box
                for (a, b) in [(decoded.xmin, truth.xmin), (decoded.ymin, truth.ymin), (decoded.xmax, truth.xmax), (decoded.ymax, truth.ymax)] {
                    #expect(abs(a - b) < 1e-3, "anchor \(j): \(decoded) vs \(truth)")
                }
            }
        }
        #expect(positives >= 3)
    }
}

@Suite struct NMSTests {
    @Test func greedySuppressionWorkedCase() {
        // B overlaps A by 81/119 = 0.68 > 0.45: suppressed. D equals A with the same score but comes later: suppressed.
        // E overlaps C by 25/175 = 0.14: kept.
        let boxes = [box(0, 0, 10, 10), box(1, 1, 11, 11), box(20, 20, 30, 30), box(0, 0, 10, 10), box(25, 25, 35, 35)]
        #expect(nonMaximumSuppression(boxes, scores: [0.9, 0.8, 0.7, 0.9, 0.6], iouThreshold: 0.45) == [0, 2, 4])
        #expect(nonMaximumSuppression(boxes, scores: [0.9, 0.8, 0.7, 0.9, 0.6], iouThreshold: 0.7) == [0, 1, 2, 4])
        #expect(nonMaximumSuppression([], scores: [], iouThreshold: 0.45) == [])
    }

    /// The flat-buffer NMS against the greedy rule written plainly, on 600 random overlapping boxes with tied scores.
    @Test func matchesThePlainGreedyRule() {
        var rng = RandomGenerator(seed: 21)
        let boxes = (0..<600).map { _ -> BoxCorners in
            let x = rng.uniform(0, 200), y = rng.uniform(0, 120)
            return BoxCorners(xmin: x, ymin: y, xmax: x + rng.uniform(1, 60), ymax: y + rng.uniform(1, 60))
        }
        let scores = (0..<600).map { _ in Float(Int(rng.uniform(0, 50))) / 50 }
        for threshold: Float in [0.3, 0.45, 0.7] {
            let order = scores.indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
            var plain: [Int] = []
            for i in order where !plain.contains(where: { iou(boxes[$0], boxes[i]) > threshold }) { plain.append(i) }
            #expect(nonMaximumSuppression(boxes, scores: scores, iouThreshold: threshold) == plain)
        }
    }

    @Test func decodingThresholdsPerClassAndTopK() {
        let encoder = quadrantEncoder()
        // Three classes; anchors 0 and 1 say class 1 (0.9, 0.6), anchor 2 class 2 (0.55), anchor 3 background.
        let probabilities: [Float] = [0.1, 0.9, 0, 0.4, 0.6, 0, 0.45, 0, 0.55, 1, 0, 0]
        let offsets = [Float](repeating: 0, count: 16)
        let found = probabilities.withUnsafeBufferPointer { p in offsets.withUnsafeBufferPointer { o in
            DetectionDecoding(confidenceThreshold: 0.5).decode(probabilities: p.baseAddress!, offsets: o.baseAddress!, classCount: 3, encoder: encoder)
        } }
        #expect(found.map(\.classID) == [1, 1, 2])
        #expect(found.map(\.score) == [0.9, 0.6, 0.55])
        #expect(found[0].box == box(0, 0, 50, 50))
        let top1 = probabilities.withUnsafeBufferPointer { p in offsets.withUnsafeBufferPointer { o in
            DetectionDecoding(confidenceThreshold: 0.5, topK: 1).decode(probabilities: p.baseAddress!, offsets: o.baseAddress!, classCount: 3, encoder: encoder)
        } }
        #expect(top1.count == 1 && top1[0].score == 0.9)
    }
}

@Suite struct SSDLossTests {
    /// Five anchors, three classes, one positive, negatives mined at 1:1.
    @Test func handComputedLoss() {
        // Row 2's logits favour class 1, so as a background anchor it has the largest cross-entropy:
        // log(e^0 + e^2 + e^0) - 0 = log(2 + e^2). Zero logits give log 3. Row 4 is neutral.
        let logits = Tensor.variable(shape: [5, 3], values: [0, 0, 0,  0, 0, 0,  0, 2, 0,  0, 0, 0,  5, 5, 5])
        let offsets = Tensor.variable(shape: [5, 4], values: [0.5, -2, 0, 0] + [Float](repeating: 0.3, count: 16))
        let loss = SSDLoss(negativesPerPositive: 1)
        let (value, positives) = loss(classLogits: logits, boxOffsets: offsets, targetClasses: [1, 0, 0, 0, -1],
                                      targetOffsets: [Float](repeating: 0, count: 20))
        // Smooth L1 of (0.5, -2, 0, 0): 0.5 * 0.25 + (2 - 0.5) = 1.625.
        let expected = log(3.0) + log(2 + exp(2.0)) + 1.625
        #expect(positives == 1)
        #expect(abs(Double(value.item) - expected) < 1e-5)
        // With three negatives per positive every background anchor counts: log 3 * 3 + log(2 + e^2) ... minus nothing.
        let all = SSDLoss(negativesPerPositive: 3)(classLogits: logits, boxOffsets: offsets, targetClasses: [1, 0, 0, 0, -1],
                                                   targetOffsets: [Float](repeating: 0, count: 20)).loss
        #expect(abs(Double(all.item) - (3 * log(3.0) + log(2 + exp(2.0)) + 1.625)) < 1e-5)
        // No positives: no negatives either, loss 0 (ssd_keras's n_neg_min = 0).
        let none = SSDLoss()(classLogits: logits, boxOffsets: offsets, targetClasses: [0, 0, 0, 0, -1], targetOffsets: [Float](repeating: 0, count: 20)).loss
        #expect(none.item == 0)
    }

    /// The hardest negatives by selection against the full sort they replace: random losses with many ties (a few
    /// distinct values), every count from 0 past the number of rows, rows not contiguous; and NaN (the sort's path).
    @Test func hardestNegativesMatchTheFullSort() {
        var rng = RandomGenerator(seed: 9)
        for distinct in [3, 50, 100_000] {
            let loss = (0..<400).map { _ in Float(rng.next() % UInt64(distinct)) * 0.25 }
            let rows = (0..<400).filter { $0 % 3 != 1 }
            let sorted = rows.sorted { loss[$0] > loss[$1] || (loss[$0] == loss[$1] && $0 < $1) }
            for count in [0, 1, 2, 7, 100, 265, 266, 267, 500] {
                #expect(SSDLoss.hardest(rows, by: loss, count: count) == Array(sorted.prefix(count)), "\(distinct) values, \(count) kept")
            }
        }
        var withNaN = (0..<20).map { Float($0 % 4) }
        withNaN[5] = .nan
        #expect(SSDLoss.hardest(Array(0..<20), by: withNaN, count: 3).count == 3)
        // The k-th largest alone, against sorting.
        for k in [1, 13, 200] {
            var values = (0..<200).map { _ in Float(rng.next() % 17) }
            let expected = values.sorted(by: >)[k - 1]
            #expect(values.withUnsafeMutableBufferPointer { SSDLoss.kthLargest($0, k) } == expected)
        }
    }

    @Test func lossGradient() {
        let logits = Tensor.variable(shape: [6, 4], values: (0..<24).map { Float(($0 * 7) % 11) / 5 - 1 })
        let offsets = Tensor.variable(shape: [6, 4], values: (0..<24).map { Float(($0 * 5) % 13) / 4 - 1.4 })
        let classes: [Int32] = [2, 0, 0, 3, -1, 0]
        let targets = (0..<24).map { Float(($0 * 3) % 7) / 7 - 0.4 }
        let loss = SSDLoss(negativesPerPositive: 1)
        logits.clearGrad(); offsets.clearGrad()
        loss(classLogits: logits, boxOffsets: offsets, targetClasses: classes, targetOffsets: targets).loss.backward()
        for (t, analytic) in [(logits, logits.gradArray!), (offsets, offsets.gradArray!)] {
            for i in 0..<t.count {
                let saved = t.data[i]
                t.data[i] = saved + 1e-3
                let plus = GradMode.disabled { loss(classLogits: logits, boxOffsets: offsets, targetClasses: classes, targetOffsets: targets).loss.item }
                t.data[i] = saved - 1e-3
                let minus = GradMode.disabled { loss(classLogits: logits, boxOffsets: offsets, targetClasses: classes, targetOffsets: targets).loss.item }
                t.data[i] = saved
                let numeric = (plus - minus) / 2e-3
                #expect(abs(numeric - analytic[i]) < 2e-2 * max(1, abs(numeric)), "\(t.shape) [\(i)]: \(analytic[i]) vs \(numeric)")
            }
        }
    }
}

@Suite struct SSD7Tests {
    static func smallConfig() -> ModelConfig { SSD7.defaultConfig(height: 64, width: 96, classNames: ["background", "car", "pedestrian"]) }

    @Test func namesShapesAndPredictions() throws {
        let model = try ModelRegistry.build(SSD7.defaultConfig(), seed: 1) as! SSD7
        let names = model.parameters.parameters.map(\.name)
        #expect(names.prefix(4) == ["conv1/kernel", "conv1/bias", "bn1/gamma", "bn1/beta"])
        #expect(names.contains("classes4/kernel") && names.contains("boxes7/bias"))
        #expect(model.parameters["classes4/kernel"]?.shape == [24, 64, 3, 3])
        #expect(model.parameters["boxes7/kernel"]?.shape == [16, 32, 3, 3])
        #expect(model.buffers?.parameters.map(\.name).prefix(2) == ["bn1/moving_mean", "bn1/moving_variance"])
        let small = try ModelRegistry.build(Self.smallConfig(), seed: 1) as! SSD7
        let (classes, boxes) = GradMode.disabled { small.predict(Tensor(zeros: [2, 3, 64, 96]), training: false) }
        let anchors = small.encoder.anchorCount
        #expect(anchors == 4 * (8 * 12 + 4 * 6 + 2 * 3 + 1 * 1))
        #expect(classes.shape == [2 * anchors, 3] && boxes.shape == [2 * anchors, 4])
    }

    /// Three 96 x 128 windows cut from the two real Udacity frames in ../shared/data/udacity (480 x 300 and 512 x 512
    /// JPEGs decoded by libjpeg-turbo, boxes from its labels.csv): two cars, a pedestrian and two traffic lights, at
    /// the sizes they have in the frames. SSD7 drives its loss down tenfold and then finds every object where it is.
    @Test func overfitsRealFrames() throws {
        let windows = try udacityWindows()
        let (images, objects, names) = (windows.images, windows.objects ?? [], udacityClasses)
        let (h, w) = (images.shape[2], images.shape[3])
        var config = SSD7.defaultConfig(height: h, width: w, classNames: names)
        config.options["l2_regularization"] = 0   // the detection loss alone, so "tenfold" is about fitting
        let model = try ModelRegistry.build(config, seed: 3) as! SSD7
        var batch = Batch(images: images)
        batch.anchorTargets = objects.map { model.encoder.encode($0) }
        let adam = Adam(parameterCount: model.parameters.count, learningRate: 5e-3)
        var first: Float = 0, last: Float = 0
        for step in 0..<80 {
            model.parameters.zeroGradients()
            let loss = model.loss(batch, training: true)
            loss.backward()
            adam.step(model.parameters)
            if step == 0 { first = loss.item }
            last = loss.item
        }
        #expect(last < first / 10, "loss \(first) -> \(last)")
        // Training-mode statistics: the moving averages need many more steps to settle than 80.
        let found = GradMode.disabled { () -> [[DetectedBox]] in
            let (classes, boxes) = model.predict(images, training: true)
            let p = classes.softmax(axis: -1)
            let a = model.encoder.anchorCount, c = names.count
            return (0..<objects.count).map { i in DetectionDecoding.display.decode(probabilities: p.data + i * a * c, offsets: boxes.data + i * a * 4, classCount: c, encoder: model.encoder) }
        }
        for (n, objs) in objects.enumerated() {
            for o in objs {
                let hit = found[n].contains { $0.classID == o.classID && iou($0.box, o.box) >= 0.5 }
                #expect(hit, "window \(n): no detection of class \(o.classID) at \(o.box); found \(found[n].prefix(4))")
            }
            #expect(found[n].count <= 2 * objs.count, "window \(n): \(found[n].count) detections for \(objs.count) objects")
        }
    }
}

@Suite struct SSD300Tests {
    @Test func layoutMatchesThePaper() throws {
        let config = SSD300.defaultConfig()
        #expect(config.anchors?.featureMapSizes == [[38, 38], [19, 19], [10, 10], [5, 5], [3, 3], [1, 1]])
        #expect(config.anchors?.anchorCount == 8_732)
        // First anchor: step 8, offset 0.5 -> centre (4, 4); scale 0.1 of 300, aspect ratio 1 -> 30 x 30.
        let a = config.anchors!.anchors()
        expectNear(Array(a.prefix(4)), [4.0 / 300, 4.0 / 300, 0.1, 0.1])
    }

    /// A narrow SSD300 (1/16 of the channels) runs forward, names its layers as ssd_keras, and learns.
    @Test func narrowNetworkTrains() throws {
        var config = SSD300.defaultConfig(classNames: ["background", "car", "person"], widthMultiplier: 1.0 / 16)
        config.options["l2_regularization"] = 0
        let model = try ModelRegistry.build(config, seed: 1) as! SSD300
        let names = model.parameters.parameters.map(\.name)
        #expect(names.contains("conv4_3_norm/gamma") && names.contains("fc6/kernel") && names.contains("conv9_2_mbox_loc/kernel"))
        #expect(model.parameters["fc6/kernel"]?.shape == [64, 32, 3, 3])
        let images = Tensor(zeros: [1, 3, 300, 300])
        for i in 0..<images.count { images.data[i] = Float(i % 251) }
        var batch = Batch(images: images)
        batch.anchorTargets = [model.encoder.encode([Object(box: BoxCorners(xmin: 100, ymin: 80, xmax: 180, ymax: 200), classID: 2)])]
        let (classes, boxes) = GradMode.disabled { model.predict(images, training: false) }
        #expect(classes.shape == [8_732, 3] && boxes.shape == [8_732, 4])
        let adam = Adam(parameterCount: model.parameters.count, learningRate: 1e-3)
        var losses: [Float] = []
        for _ in 0..<4 {
            model.parameters.zeroGradients()
            let loss = model.loss(batch, training: true)
            loss.backward()
            adam.step(model.parameters)
            losses.append(loss.item)
        }
        #expect(losses.allSatisfy(\.isFinite) && losses.last! < losses.first!, "\(losses)")
    }
}

private func expectNear(_ a: [Float], _ b: [Double], sourceLocation: SourceLocation = #_sourceLocation) {
    for (x, y) in zip(a, b) { #expect(abs(Double(x) - y) < 1e-6, "\(a) vs \(b)", sourceLocation: sourceLocation) }
}
