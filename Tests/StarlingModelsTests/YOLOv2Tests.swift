import Foundation
import Testing
import StarlingCore
@testable import StarlingModels
@testable import StarlingDetection

private func box(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float) -> BoxCorners { BoxCorners(xmin: x0, ymin: y0, xmax: x1, ymax: y1) }
private func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }
/// IoU of two boxes given as (xmin, ymin, xmax, ymax), in Double.
private func overlap(_ a: (Double, Double, Double, Double), _ b: (Double, Double, Double, Double)) -> Double {
    let w = max(0, min(a.2, b.2) - max(a.0, b.0)), h = max(0, min(a.3, b.3) - max(a.1, b.1))
    let inter = w * h
    return inter / ((a.2 - a.0) * (a.3 - a.1) + (b.2 - b.0) * (b.3 - b.1) - inter)
}

/// pjreddie's darknet, blas.c: reorg_cpu(x, w, h, c, batch, stride, forward = 0, out) as forward_reorg_layer calls it
/// (w, h, c the input's sizes), transcribed line by line.
private func pjreddieReorg(_ x: [Float], w: Int, h: Int, c: Int, batch: Int, stride: Int) -> [Float] {
    var out = [Float](repeating: .nan, count: x.count)
    let outC = c / (stride * stride)
    for b in 0..<batch { for k in 0..<c { for j in 0..<h { for i in 0..<w {
        let inIndex = i + w * (j + h * (k + c * b))
        let c2 = k % outC, offset = k / outC
        let w2 = i * stride + offset % stride, h2 = j * stride + offset / stride
        let outIndex = w2 + w * stride * (h2 + h * stride * (c2 + outC * b))
        out[inIndex] = x[outIndex]
    } } } }
    return out
}

/// The v2 head's loss and decoding (`YOLOHead.regionLayer`), worked by hand as darknet's region_layer.c computes them.
@Suite struct YOLOv2HeadTests {
    /// One 1 x 1 grid on a 32 x 32 image, anchors 8 x 8 and 32 x 32, three classes; scales not darknet's defaults
    /// (coord 2, class 3) so each one shows.
    private func head() -> YOLOHead {
        YOLOHead(scales: [.init(height: 1, width: 1, anchors: [0, 1])], anchorSizes: [(8, 8), (32, 32)], imageHeight: 32, imageWidth: 32,
                 classCount: 4).regionLayer(objectScale: 5, noObjectScale: 1, coordinateScale: 2, classScale: 3)
    }

    @Test func lossTermsByHand() {
        // Box 8 x 8 centred at (8, 8), class 1: anchor 0, cell (0, 0), offsets 0.25, log sizes 0, weight 2 - 64 / 1024.
        var batch = Batch(images: Tensor(zeros: [1, 3, 32, 32]))
        batch.objects = [[Object(box: box(4, 4, 12, 12), classID: 1)]]
        let anchor0: [Double] = [0.3, -0.2, 0.1, -0.1, 0.5, 1.2, -0.3, 0.4]
        func loss(_ head: YOLOHead, anchor1: [Double]) -> (Double, [Double]) {
            var batch = batch
            head.encodeTargets(into: &batch)
            let output = Tensor.variable(shape: [1, 16, 1, 1], values: (anchor0 + anchor1).map(Float.init))
            let l = head.loss([output], targets: batch.targets!, crossReplica: .single)
            l.backward()
            return (Double(l.item), (output.gradArray ?? []).map(Double.init))
        }
        let weight = 2 - 64.0 / 1024
        let coordinates = 2 * weight * 0.5 * (pow(sigmoid(0.3) - 0.25, 2) + pow(sigmoid(-0.2) - 0.25, 2) + 0.1 * 0.1 + 0.1 * 0.1)
        // rescore: the objectness target is the IoU of anchor 0's decoded box with the ground truth.
        let (cx, cy, w, h) = (32 * sigmoid(0.3), 32 * sigmoid(-0.2), 8 * exp(0.1), 8 * exp(-0.1))
        let rescored = overlap((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), (4, 4, 12, 12))
        let p = sigmoid(0.5)
        let objectness = 5 * 0.5 * pow(p - rescored, 2)
        let logits = [1.2, -0.3, 0.4], sum = logits.map(exp).reduce(0, +)
        let softmax = logits.map { exp($0) / sum }
        let classes = 3 * (log(sum) - 1.2)
        let responsible = coordinates + objectness + classes
        // Anchor 1 predicts the whole image (IoU 64 / 1024 with the box): no object, 1/2 sigmoid(-0.4)^2.
        let q = sigmoid(-0.4)
        let (value, g) = loss(head(), anchor1: [0, 0, 0, 0, -0.4, 3, 0, 0])
        #expect(abs(value - (responsible + 0.5 * q * q)) < 1e-5, "\(value) vs \(responsible + 0.5 * q * q)")
        #expect(abs(g[0] - 2 * weight * (sigmoid(0.3) - 0.25) * sigmoid(0.3) * (1 - sigmoid(0.3))) < 1e-6)
        #expect(abs(g[2] - 2 * weight * 0.1) < 1e-6 && abs(g[3] + 2 * weight * 0.1) < 1e-6)
        #expect(abs(g[4] - 5 * (p - rescored) * p * (1 - p)) < 1e-6, "objectness gradient \(g[4])")
        for k in 0..<3 { #expect(abs(g[5 + k] - 3 * (softmax[k] - (k == 0 ? 1 : 0))) < 1e-6, "class \(k + 1) gradient \(g[5 + k])") }
        #expect(abs(g[12] - q * q * (1 - q)) < 1e-6 && g[8..<12].allSatisfy { $0 == 0 } && g[13..<16].allSatisfy { $0 == 0 })
        // Without rescore the target is 1.
        var plain = head()
        plain.rescore = false
        let (unrescored, _) = loss(plain, anchor1: [0, 0, 0, 0, -0.4, 3, 0, 0])
        #expect(abs(unrescored - (coordinates + 5 * 0.5 * pow(p - 1, 2) + classes + 0.5 * q * q)) < 1e-5)
        // Anchor 1 predicting a 10 x 10 box centred on the object's: IoU 64 / 100 = 0.64 > 0.6, so its objectness is
        // ignored; with v3's threshold 0.7 it counts.
        let near: [Double] = [log(0.25 / 0.75), log(0.25 / 0.75), log(10.0 / 32), log(10.0 / 32), -0.4, 3, 0, 0]
        let (ignored, ignoredGradient) = loss(head(), anchor1: near)
        #expect(abs(ignored - responsible) < 1e-5 && ignoredGradient[8..<16].allSatisfy { $0 == 0 })
        var strict = head()
        strict.ignoreThreshold = 0.7
        #expect(abs(loss(strict, anchor1: near).0 - (responsible + 0.5 * q * q)) < 1e-5)
    }

    /// The loss's gradient against central finite differences over random outputs on a 2 x 3 grid with five anchors,
    /// rescore off: darknet treats the IoU target as a constant, which a finite difference would not.
    @Test func lossFiniteDifferences() {
        var head = YOLOHead(scales: [.init(height: 2, width: 3, anchors: [0, 1, 2, 3, 4])], anchorSizes: YOLOv2.defaultAnchors.map { (Float($0[0]), Float($0[1])) },
                            imageHeight: 64, imageWidth: 96, classCount: 4).regionLayer(coordinateScale: 1.5, classScale: 2)
        head.rescore = false
        var batch = Batch(images: Tensor(zeros: [2, 3, 64, 96]))
        batch.objects = [[Object(box: box(30, 10, 50, 38), classID: 2), Object(box: box(60, 20, 95, 60), classID: 3)],
                         [Object(box: box(5, 30, 15, 44), classID: 1)]]
        head.encodeTargets(into: &batch)
        var rng = RandomGenerator(seed: 7)
        let output = Tensor.variable(shape: [2, 5 * head.depth, 2, 3], values: (0..<(2 * 5 * head.depth * 6)).map { _ in rng.uniform(-1, 1) })
        head.loss([output], targets: batch.targets!, crossReplica: .single).backward()
        func value() -> Double { Double(GradMode.disabled { head.loss([output], targets: batch.targets!, crossReplica: .single) }.item) }
        let eps: Float = 1e-2, analytic = output.gradArray ?? []
        var worst = 0.0
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
        #expect(worst < 2e-2, "worst relative gradient error \(worst)")
    }

    /// Raw values that encode a box decode back to it, scored sigmoid(objectness) times the class's softmax, in Swift
    /// and in the same rows ONNX reads.
    @Test func decodingInvertsTheTargets() {
        let head = YOLOHead(scales: [.init(height: 2, width: 3, anchors: [0, 1, 2, 3, 4])], anchorSizes: YOLOv2.defaultAnchors.map { (Float($0[0]), Float($0[1])) },
                            imageHeight: 64, imageWidth: 96, classCount: 4).regionLayer()
        let object = Object(box: box(30, 10, 72, 60), classID: 2)
        let t = head.assign([object])[0]
        let output = Tensor(zeros: [1, 5 * head.depth, 2, 3])
        for k in 0..<output.count { output.data[k] = -8 }
        let plane = 6, base = t.anchor * head.depth * plane, cell = t.row * 3 + t.column
        let logit = { (p: Float) in logf(p / (1 - p)) }
        for (channel, value) in [(0, logit(t.x)), (1, logit(t.y)), (2, t.w), (3, t.h), (4, 3), (5, 0.5), (6, 2), (7, -1)] as [(Int, Float)] {
            output.data[base + channel * plane + cell] = value
        }
        let found = head.decode([output], decoding: .display)[0]
        let softmax = exp(2.0) / (exp(0.5) + exp(2.0) + exp(-1.0))
        #expect(found.count >= 1)
        if let d = found.max(by: { $0.score < $1.score }) {
            #expect(d.classID == 2 && abs(Double(d.score) - sigmoid(3) * softmax) < 1e-6, "\(d)")
            #expect(iou(d.box, object.box) > 0.9999, "\(d.box)")
        }
    }
}

@Suite struct YOLOv2Tests {
    @Test func shapesAndConfiguration() throws {
        let names = ["background", "car", "pedestrian"]
        let family = try ModelRegistry.family(named: "yolov2")
        let config = try family.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 96, 128], classNames: names))
        #expect(config.inputShape == [3, 96, 128] && config.anchorSizes?.count == 5)
        // yolov2-voc.cfg's first anchor, 1.3221 x 1.73145 cells of 32 pixels.
        #expect(abs((config.anchorSizes?[0][0] ?? 0) - 42.3072) < 1e-9 && abs((config.anchorSizes?[0][1] ?? 0) - 55.4064) < 1e-9)
        let small = try family.setting("width", to: 0.125, in: config, flag: "--width-multiplier")
        let model = try ModelRegistry.build(small, seed: 1) as! YOLOv2
        let outputs = GradMode.disabled { model.headOutputs(Tensor(zeros: [2, 3, 96, 128]), training: false) }
        #expect(outputs.map(\.shape) == [[2, 35, 3, 4]])
        #expect(model.yolo.classScores == .softmax && model.yolo.rescore && model.yolo.ignoreThreshold == 0.6)
        // The cfg's convolutions by layer index: 0-22 (18), 23, 24, 26, 29 and the output 30.
        let kernels = model.parameters.parameters.map(\.name).filter { $0.hasSuffix("/kernel") }
        #expect(kernels == ([0, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 23, 24, 26, 29, 30].map { "conv_\($0)/kernel" }))
        // Layer 29 reads the reorganised 4 x 8 channels of layer 26 and the 128 of layer 24.
        #expect(model.merge.conv.kernel.shape[1] == 32 + 128)
        // `train --no-passthrough` sets the option through the registry, which refuses it for other families.
        let plain = try family.setting("passthrough", to: 0, in: small, flag: "--no-passthrough")
        #expect(throws: ModelError.self) { try ModelRegistry.family(named: "yolov3").setting("passthrough", to: 0, in: small, flag: "--no-passthrough") }
        let without = try ModelRegistry.build(plain, seed: 1) as! YOLOv2
        #expect(without.passthrough == nil && without.merge.conv.kernel.shape[1] == 128)
        #expect(GradMode.disabled { without.headOutputs(Tensor(zeros: [1, 3, 96, 128]), training: false) }.map(\.shape) == [[1, 35, 3, 4]])
        // Other sizes are letterboxed into the next multiples of 32; a network size that is none is refused.
        let frames = try family.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 300, 480], classNames: names))
        #expect(try Letterbox.network(of: frames, multiple: 32) == Letterbox(input: (300, 480), network: (320, 480)))
        var odd = frames
        odd.options["network_height"] = 300
        do {
            _ = try ModelRegistry.build(odd, seed: 1)
            Issue.record("a 300 x 480 network accepted")
        } catch {
            #expect("\(error)" == "model yolov2: network size 300x480: its sides must be multiples of 32")
        }
    }

    /// The passthrough's reorg is pjreddie's reorg_cpu, value for value, and not the plain space-to-depth.
    @Test func reorgIsDarknets() {
        let (n, c, h, w) = (2, 8, 4, 6)
        let values = (0..<(n * c * h * w)).map(Float.init)
        let x = Tensor(shape: [n, c, h, w], values: values)
        let reorganised = YOLOv2.darknetReorg(x)
        #expect(reorganised.shape == [n, 4 * c, h / 2, w / 2])
        #expect(reorganised.toArray() == pjreddieReorg(values, w: w, h: h, c: c, batch: n, stride: 2))
        #expect(reorganised.toArray() != x.spaceToDepth(blockSize: 2).toArray())
    }

    /// yolov2 at half width (with the passthrough) on the real Udacity windows.
    @Test func overfitsRealFrames() throws {
        let config = YOLOv2.defaultConfig(height: 96, width: 128, classNames: udacityClasses, widthMultiplier: 0.5)
        let model = try ModelRegistry.build(config, seed: 3) as! YOLOv2
        try expectOverfitsUdacityWindows(model, steps: 120)
    }
}
