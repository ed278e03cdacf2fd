import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingDetection

private func box(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float) -> BoxCorners { BoxCorners(xmin: x0, ymin: y0, xmax: x1, ymax: y1) }
private func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }
private func softplus(_ x: Double) -> Double { log(1 + exp(x)) }

/// yolov3-tiny's head on a 64 x 96 image: a 2 x 3 grid (stride 32, anchors 3-5) and a 4 x 6 grid (stride 16, anchors 0-2).
private func tinyHead(classes: Int = 3) -> YOLOHead {
    YOLOHead(scales: [.init(height: 2, width: 3, anchors: [3, 4, 5]), .init(height: 4, width: 6, anchors: [0, 1, 2])],
             anchorSizes: YOLOv3Tiny.defaultAnchors.map { (Float($0[0]), Float($0[1])) }, imageHeight: 64, imageWidth: 96, classCount: classes)
}

@Suite struct YOLOHeadTests {
    /// Which scale, anchor and cell is responsible for a box, worked by hand from the rules (shape IoU over all six
    /// anchors, the cell holding the centre).
    @Test func targetAssignment() {
        let head = tinyHead()
        // 20 x 28 centred at (40, 24). Shape IoUs: (10, 14) 140/560 = 0.25; (23, 27) 540/641 = 0.842; (37, 58)
        // 560/2146 = 0.261; larger anchors less. Anchor 1 lies on the stride-16 grid (scale 1, index 1); the centre
        // (40, 24) is at (2.5, 1.5) cells: column 2, row 1, offsets 0.5.
        let a = head.assign([Object(box: box(30, 10, 50, 38), classID: 2)])
        #expect(a == [YOLOHead.Assignment(scale: 1, anchor: 1, row: 1, column: 2, x: 0.5, y: 0.5, w: logf(20 / 23), h: logf(28 / 27),
                                          weight: 2 - 560 / 6144, classID: 2)])
        // 120 x 100: (81, 82) 6642/12000 = 0.554 beats (135, 169) 12000/22815 = 0.526: anchor 3, the stride-32 grid's
        // first. Centre (48, 32) is at (1.5, 1.0) cells: a centre on a cell border belongs to the cell below it.
        let large = head.assign([Object(box: box(-12, -18, 108, 82), classID: 1)])
        #expect(large.map { [$0.scale, $0.anchor, $0.row, $0.column] } == [[0, 0, 1, 1]])
        #expect(large.first?.x == 0.5 && large.first?.y == 0)
        // A centre exactly on a vertical cell border of the fine grid, x = 32: column 2, offset 0.
        let border = head.assign([Object(box: box(22, 10, 42, 38), classID: 1)])
        #expect(border.first?.column == 2 && border.first?.x == 0)
        // Two boxes of the same shape in one cell take the same anchor: the later one keeps it. A differently shaped
        // box in that cell takes another anchor and is kept too. Difficult boxes are never targets.
        let pair = head.assign([Object(box: box(30, 10, 50, 38), classID: 1), Object(box: box(31, 11, 51, 39), classID: 2),
                                Object(box: box(35, 20, 45, 34), classID: 3), Object(box: box(0, 0, 20, 28), classID: 1, difficult: true)])
        #expect(pair.map(\.classID) == [2, 3])
        #expect(pair.map(\.anchor) == [1, 0] && pair.allSatisfy { $0.scale == 1 && $0.row == 1 && $0.column == 2 })
    }

    /// Each loss term against the formula evaluated by hand: one 1 x 1 grid, two anchors, one class.
    @Test func lossTermsByHand() {
        let head = YOLOHead(scales: [.init(height: 1, width: 1, anchors: [0, 1])], anchorSizes: [(8, 8), (32, 32)],
                            imageHeight: 32, imageWidth: 32, classCount: 2)
        // Box 8 x 8 centred at (8, 8): anchor 0, cell (0, 0), offsets 0.25, log sizes 0, weight 2 - 64 / 1024.
        var batch = Batch(images: Tensor(zeros: [1, 3, 32, 32]))
        batch.objects = [[Object(box: box(4, 4, 12, 12), classID: 1)]]
        head.encodeTargets(into: &batch)
        let anchor0: [Double] = [0.3, -0.2, 0.1, -0.1, 0.5, 1.2]
        func loss(anchor1: [Double]) -> (Float, [Float]) {
            let output = Tensor.variable(shape: [1, 12, 1, 1], values: (anchor0 + anchor1).map(Float.init))
            let l = head.loss([output], targets: batch.targets!, crossReplica: .single)
            l.backward()
            return (l.item, output.gradArray ?? [])
        }
        let weight = 2 - 64.0 / 1024
        let responsible = 0.5 * weight * (pow(sigmoid(0.3) - 0.25, 2) + pow(sigmoid(-0.2) - 0.25, 2) + 0.1 * 0.1 + 0.1 * 0.1)
            + softplus(-0.5) + (softplus(1.2) - 1.2)
        // Anchor 1 predicts the whole image (IoU 64 / 1024 with the box): its objectness counts, towards 0.
        let (value, gradient) = loss(anchor1: [0, 0, 0, 0, -0.4, 3])
        #expect(abs(Double(value) - (responsible + softplus(-0.4))) < 1e-5)
        #expect(abs(Double(gradient[10]) - sigmoid(-0.4)) < 1e-6 && gradient[11] == 0 && gradient[6] == 0)
        #expect(abs(Double(gradient[4]) - (sigmoid(0.5) - 1)) < 1e-6 && abs(Double(gradient[5]) - (sigmoid(1.2) - 1)) < 1e-6)
        // Anchor 1 predicting the box itself (centre 32 sigmoid(tx) = 8, size 32 e^tw = 8): IoU 1 > 0.7, ignored.
        let (ignored, ignoredGradient) = loss(anchor1: [log(0.25 / 0.75), log(0.25 / 0.75), log(0.25), log(0.25), -0.4, 3])
        #expect(abs(Double(ignored) - responsible) < 1e-5)
        #expect(ignoredGradient[6..<12].allSatisfy { $0 == 0 })
    }

    /// The loss's gradient against central finite differences over random outputs on both scales (boxes small and
    /// predictions far from the ignore threshold, so no difference step crosses it).
    @Test func lossFiniteDifferences() {
        var head = tinyHead(classes: 3)
        head.ignoreThreshold = 0.7
        var batch = Batch(images: Tensor(zeros: [2, 3, 64, 96]))
        batch.objects = [[Object(box: box(30, 10, 50, 38), classID: 2), Object(box: box(-12, -18, 108, 82), classID: 1)],
                         [Object(box: box(60, 30, 70, 44), classID: 1)]]
        head.encodeTargets(into: &batch)
        var rng = RandomGenerator(seed: 7)
        let outputs = [[2, 3 * head.depth, 2, 3], [2, 3 * head.depth, 4, 6]].map { shape in
            Tensor.variable(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in rng.uniform(-1, 1) })
        }
        let loss = head.loss(outputs, targets: batch.targets!, crossReplica: .single)
        loss.backward()
        func value() -> Double { Double(GradMode.disabled { head.loss(outputs, targets: batch.targets!, crossReplica: .single) }.item) }
        let eps: Float = 1e-2
        var worst = 0.0
        for output in outputs {
            let analytic = output.gradArray ?? []
            for i in 0..<output.count {
                let saved = output.data[i]
                output.data[i] = saved + eps
                let plus = value()
                output.data[i] = saved - eps
                let minus = value()
                output.data[i] = saved
                let numeric = (plus - minus) / Double(2 * eps)
                worst = max(worst, abs(numeric - Double(analytic[i])) / max(1e-2, abs(numeric)))
            }
        }
        #expect(worst < 2e-2, "worst relative gradient error \(worst)")
    }

    /// Raw values that encode a box decode back to it, with sigmoid(objectness) sigmoid(class) as its score.
    @Test func decodingInvertsTheTargets() {
        let head = tinyHead(classes: 3)
        let object = Object(box: box(30, 10, 50, 38), classID: 2)
        let t = head.assign([object])[0]
        let outputs = [Tensor(zeros: [1, 3 * head.depth, 2, 3]), Tensor(zeros: [1, 3 * head.depth, 4, 6])]
        for k in 0..<outputs[0].count { outputs[0].data[k] = -8 }     // objectness and classes far below every threshold
        for k in 0..<outputs[1].count { outputs[1].data[k] = -8 }
        let plane = 24, base = t.anchor * head.depth * plane, cell = t.row * 6 + t.column
        let logit = { (p: Float) in logf(p / (1 - p)) }
        for (channel, value) in [(0, logit(t.x)), (1, logit(t.y)), (2, t.w), (3, t.h), (4, 3), (5 + t.classID - 1, 2)] {
            outputs[1].data[base + channel * plane + cell] = value
        }
        let found = head.decode(outputs, decoding: .display)[0]
        #expect(found.count == 1)
        if let d = found.first {
            #expect(d.classID == 2 && abs(Double(d.score) - sigmoid(3) * sigmoid(2)) < 1e-6)
            #expect(iou(d.box, object.box) > 0.9999, "\(d.box)")
        }
    }
}

@Suite struct YOLOv3TinyTests {
    @Test func shapesAndConfiguration() throws {
        let names = ["background", "car", "pedestrian"]
        let config = try ModelRegistry.family(named: "yolov3-tiny").configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 96, 128], classNames: names))
        #expect(config.anchorSizes == YOLOv3Tiny.defaultAnchors && config.inputShape == [3, 96, 128])
        let model = try ModelRegistry.build(config, seed: 1) as! YOLOv3Tiny
        let outputs = GradMode.disabled { model.headOutputs(Tensor(zeros: [2, 3, 96, 128]), training: false) }
        #expect(outputs.map(\.shape) == [[2, 21, 3, 4], [2, 21, 6, 8]])
        // Other sizes are letterboxed into the next multiples of 32.
        let frames = try ModelRegistry.family(named: "yolov3-tiny").configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 300, 480], classNames: names))
        let letterboxed = try ModelRegistry.build(frames, seed: 1) as! YOLOv3Tiny
        #expect(letterboxed.yolo.letterbox == Letterbox(input: (300, 480), network: (320, 480)))
        #expect(GradMode.disabled { letterboxed.headOutputs(Tensor(zeros: [1, 3, 300, 480]), training: false) }.map(\.shape) == [[1, 21, 10, 15], [1, 21, 20, 30]])
    }

    /// Three windows of real Udacity frames (the objects as labelled: two cars, a pedestrian, two traffic lights):
    /// yolov3-tiny at half width drives its loss down tenfold and then finds every object where it is.
    @Test func overfitsRealFrames() throws {
        let config = YOLOv3Tiny.defaultConfig(height: 96, width: 128, classNames: udacityClasses, widthMultiplier: 0.5)
        try expectOverfitsUdacityWindows(try ModelRegistry.build(config, seed: 3) as! YOLOv3Tiny, steps: 120)
    }
}

@Suite struct AnchorFileTests {
    /// What `anchors --out` writes, `train --anchors-from` reads back, smallest area first; a bad line is refused
    /// with the file and the line.
    @Test func roundTripAndRefusals() throws {
        let dir = Fixture.temporaryDirectory("anchors")
        let clusters = [AnchorClustering.Cluster(width: 30, height: 20, count: 4), AnchorClustering.Cluster(width: 10, height: 12, count: 9)]
        try AnchorFile.write(clusters, to: dir + "/a.txt", comment: "test")
        #expect(try AnchorFile.read(dir + "/a.txt") == [[10, 12], [30, 20]])
        try "# k = 2\n10,12\n30;20\n".write(toFile: dir + "/bad.txt", atomically: true, encoding: .utf8)
        do {
            _ = try AnchorFile.read(dir + "/bad.txt")
            Issue.record("a bad line accepted")
        } catch {
            #expect("\(error)" == "\(dir)/bad.txt: line 3: expected 'width,height' with two positive numbers, got '30;20'")
        }
    }
}

@Suite struct LetterboxTests {
    /// 300 x 480 frames into darknet's 416 x 416: one factor 416 / 480 on both axes gives 260 x 416, centred 78 rows
    /// down; boxes go there and back.
    @Test func geometryByHand() throws {
        let l = Letterbox(input: (300, 480), network: (416, 416))
        #expect([l.resizedHeight, l.resizedWidth, l.top, l.left] == [Int]([260, 416, 78, 0]))
        let b = box(48, 30, 96, 90)
        let inNetwork = l.toNetwork(b)
        #expect(abs(inNetwork.xmin - 41.6) < 1e-4 && abs(inNetwork.xmax - 83.2) < 1e-4)
        #expect(abs(inNetwork.ymin - (26 + 78)) < 1e-4 && abs(inNetwork.ymax - (78 + 78)) < 1e-4)
        let back = l.toInput(inNetwork)
        #expect(abs(back.xmin - 48) < 1e-4 && abs(back.ymin - 30) < 1e-4 && abs(back.xmax - 96) < 1e-4 && abs(back.ymax - 90) < 1e-4)
        // The default network size of yolov3-tiny for 300 x 480 data: 320 x 480, nothing resized, 10 grey rows above.
        let config = YOLOv3Tiny.defaultConfig(height: 300, width: 480, classNames: ["background", "car"])
        let network = try Letterbox.network(of: config, multiple: 32)
        #expect(network.networkHeight == 320 && network.networkWidth == 480)
        let padOnly = Letterbox(input: (300, 480), network: (320, 480))
        #expect([padOnly.resizedHeight, padOnly.resizedWidth, padOnly.top, padOnly.left] == [Int]([300, 480, 10, 0]))
    }

    /// A 2 x 3 image in a 4 x 3 network input: no resize, one grey row above and one below.
    @Test func imagesArePaddedWithGrey() {
        let x = Tensor.variable(shape: [1, 1, 2, 3], values: [1, 2, 3, 4, 5, 6])
        let y = x.letterboxed(Letterbox(input: (2, 3), network: (4, 3)))
        let g = Letterbox.fill
        let expected: [Float] = [g, g, g, 1, 2, 3, 4, 5, 6, g, g, g]
        #expect(y.shape == [1, 1, 4, 3])
        #expect(y.toArray() == expected)
        #expect(x.letterboxed(Letterbox(input: (2, 3), network: (2, 3))).toArray() == x.toArray())
    }

    /// With a letterbox, targets are assigned in network pixels and detections come back in input pixels.
    @Test func headMapsBoxesBothWays() {
        let letterbox = Letterbox(input: (50, 90), network: (64, 96))
        let head = YOLOHead(scales: [.init(height: 2, width: 3, anchors: [3, 4, 5]), .init(height: 4, width: 6, anchors: [0, 1, 2])],
                            anchorSizes: YOLOv3Tiny.defaultAnchors.map { (Float($0[0]), Float($0[1])) }, imageHeight: 64, imageWidth: 96,
                            classCount: 3, letterbox: letterbox)
        let object = Object(box: box(28, 9, 47, 35), classID: 2)
        var batch = Batch(images: Tensor(zeros: [1, 3, 50, 90]))
        batch.objects = [[object]]
        head.encodeTargets(into: &batch)
        let t = (batch.targets as! YOLOTargets).assignments[0][0]
        #expect(t == head.assign([Object(box: letterbox.toNetwork(object.box), classID: 2)])[0])
        let outputs = [Tensor(zeros: [1, 3 * head.depth, 2, 3]), Tensor(zeros: [1, 3 * head.depth, 4, 6])]
        for o in outputs { for k in 0..<o.count { o.data[k] = -8 } }
        let scale = outputs[t.scale], (gh, gw) = (head.scales[t.scale].height, head.scales[t.scale].width)
        let plane = gh * gw, base = t.anchor * head.depth * plane, cell = t.row * gw + t.column
        let logit = { (p: Float) in logf(p / (1 - p)) }
        for (channel, value) in [(0, logit(t.x)), (1, logit(t.y)), (2, t.w), (3, t.h), (4, 3), (5 + t.classID - 1, 2)] {
            scale.data[base + channel * plane + cell] = value
        }
        let found = head.decode(outputs, decoding: .display)[0]
        #expect(found.count == 1 && (found.first.map { iou($0.box, object.box) > 0.9999 } ?? false), "\(found)")
    }
}
