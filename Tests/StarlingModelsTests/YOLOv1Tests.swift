import Foundation
import Testing
import StarlingCore
@testable import StarlingModels
@testable import StarlingDetection

private func box(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float) -> BoxCorners { BoxCorners(xmin: x0, ymin: y0, xmax: x1, ymax: y1) }
/// IoU of two boxes given as (xmin, ymin, xmax, ymax), in Double.
private func overlap(_ a: (Double, Double, Double, Double), _ b: (Double, Double, Double, Double)) -> Double {
    let w = max(0, min(a.2, b.2) - max(a.0, b.0)), h = max(0, min(a.3, b.3) - max(a.1, b.1))
    let inter = w * h
    return inter / ((a.2 - a.0) * (a.3 - a.1) + (b.2 - b.0) * (b.3 - b.1) - inter)
}

@Suite struct YOLOv1HeadTests {
    /// A 2 x 3 grid of 64-pixel cells on a 128 x 192 image, B = 2, two classes.
    private let head = YOLOv1Head(gridHeight: 2, gridWidth: 3, boxesPerCell: 2, imageHeight: 128, imageWidth: 192, classCount: 3)

    @Test func targetAssignment() {
        // Centre (60, 40): cell (row 0, column 0), offsets 60 / 64 and 40 / 64; sqrt(40 / 192), sqrt(40 / 128).
        let a = head.assign([Object(box: box(40, 20, 80, 60), classID: 2)])
        #expect(a == [YOLOv1Head.CellTarget(row: 0, column: 0, x: 0.9375, y: 0.625, sqrtW: (40 / 192 as Float).squareRoot(),
                                            sqrtH: (40 / 128 as Float).squareRoot(), classID: 2, box: box(40, 20, 80, 60))])
        // A centre on a vertical cell border (x = 64) belongs to the cell right of it, offset 0; on a horizontal one
        // (y = 64), to the cell below.
        let vertical = head.assign([Object(box: box(44, 10, 84, 30), classID: 1)])
        #expect(vertical.map { [$0.row, $0.column] } == [[0, 1]] && vertical.first?.x == 0)
        let horizontal = head.assign([Object(box: box(100, 54, 120, 74), classID: 1)])
        #expect(horizontal.map { [$0.row, $0.column] } == [[1, 1]] && horizontal.first?.y == 0)
        // Two boxes in one cell: the later one keeps it; a box in another cell is kept too; difficult boxes never count.
        let pair = head.assign([Object(box: box(40, 20, 80, 60), classID: 2), Object(box: box(10, 10, 30, 30), classID: 1),
                                Object(box: box(150, 90, 170, 110), classID: 2), Object(box: box(70, 70, 90, 90), classID: 1, difficult: true)])
        #expect(pair.map(\.classID) == [1, 2] && pair.map { [$0.row, $0.column] } == [[0, 0], [1, 2]])
    }

    /// The responsible predictor: the higher IoU with the box; with both IoUs 0, the smaller RMSE.
    @Test func responsiblePredictor() {
        let t = head.assign([Object(box: box(40, 20, 80, 60), classID: 2)])[0]    // centre (60, 40), 40 x 40
        func choose(_ values: [Float]) -> (Int, Float) {
            let x = UnsafeMutablePointer<Float>.allocate(capacity: values.count)
            defer { x.deallocate() }
            for (i, v) in values.enumerated() { x[i] = v }
            let r = head.responsible(x, cell: 0, target: t)
            return (r.predictor, r.iou)
        }
        // Predictor 0: the box moved right by 20 (IoU 1/3); predictor 1: the box itself.
        let root = (40 / 192 as Float).squareRoot(), rootH = (40 / 128 as Float).squareRoot()
        let (best, bestIoU) = choose([1.25, 0.625, root, rootH, 0, 0.9375, 0.625, root, rootH, 0])
        #expect(best == 1 && abs(bestIoU - 1) < 1e-5)
        #expect(choose([0.9375, 0.625, root, rootH, 0, 1.25, 0.625, root, rootH, 0]).0 == 0)
        // No overlap either way: predictor 1 (centre 30 pixels off) is nearer than predictor 0 (60 off).
        let tiny: Float = 0.01
        #expect(choose([0.9375, -0.3125, tiny, tiny, 0, 0.9375, 0.15625, tiny, tiny, 0]) == (1, 0))
        #expect(choose([0.9375, 0.15625, tiny, tiny, 0, 0.9375, -0.3125, tiny, tiny, 0]) == (0, 0))
    }

    /// Each term of equation 3 against a hand computation: a 1 x 2 grid on a 64 x 128 image, the box in cell 0.
    @Test func lossTermsByHand() {
        let head = YOLOv1Head(gridHeight: 1, gridWidth: 2, boxesPerCell: 2, imageHeight: 64, imageWidth: 128, classCount: 3)
        // Box (32, 16)-(64, 48), class 2: centre (48, 32) at offsets (0.75, 0.5) of cell 0; sqrt(32 / 128) = 0.5,
        // sqrt(32 / 64).
        var batch = Batch(images: Tensor(zeros: [1, 3, 64, 128]))
        batch.objects = [[Object(box: box(32, 16, 64, 48), classID: 2)]]
        head.encodeTargets(into: &batch)
        let empty: [Double] = [0.1, 0.2, 0.3, 0.3, 0.25, 0.5, 0.5, 0.2, 0.2, -0.5, 0.9, 0.9]
        func loss(_ head: YOLOv1Head, cell0: [Double]) -> (Double, [Double]) {
            let output = Tensor.variable(shape: [1, 1, 2, 12], values: (cell0 + empty).map(Float.init))
            let l = head.loss([output], targets: batch.targets!, crossReplica: .single)
            l.backward()
            return (Double(l.item), (output.gradArray ?? []).map(Double.init))
        }
        // Predictor 0 overlaps the box, predictor 1 (centre (57.6, 6.4), 5.12 x 2.56) does not: 0 is responsible.
        let cell0: [Double] = [0.6, 0.6, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.2, 0.3, 0.2, 0.7]
        let (cx, cy, w, h) = (0.6 / 2 * 128, 0.6 * 64, 0.36 * 128, 0.49 * 64)
        let iou0 = overlap((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), (32, 16, 64, 48))
        let coordinates = 5 * (pow(0.6 - 0.75, 2) + pow(0.6 - 0.5, 2) + pow(0.6 - 0.5, 2) + pow(0.7 - 0.5.squareRoot(), 2))
        let confidence = pow(0.8 - iou0, 2)
        let noObject = 0.5 * (0.3 * 0.3 + 0.25 * 0.25 + 0.5 * 0.5)               // cell 0's predictor 1, cell 1's two
        let classes: Double = 0.2 * 0.2 + 0.3 * 0.3                                   // cell 0 only: (0.2 - 0)^2 + (0.7 - 1)^2
        let (value, g) = loss(head, cell0: cell0)
        #expect(abs(value - (coordinates + confidence + noObject + classes)) < 1e-5, "\(value) vs \(coordinates + confidence + noObject + classes)")
        #expect(abs(g[0] - 2 * 5 * (0.6 - 0.75)) < 1e-5 && abs(g[3] - 2 * 5 * (0.7 - 0.5.squareRoot())) < 1e-5)
        #expect(abs(g[4] - 2 * (0.8 - iou0)) < 1e-5 && abs(g[9] - 2 * 0.5 * 0.3) < 1e-5 && g[5..<9].allSatisfy { $0 == 0 })
        #expect(abs(g[10] - 2 * 0.2) < 1e-5 && abs(g[11] + 2 * 0.3) < 1e-5)
        #expect(abs(g[16] - 2 * 0.5 * 0.25) < 1e-5 && abs(g[21] + 2 * 0.5 * 0.5) < 1e-5 && g[22] == 0 && g[23] == 0 && g[12] == 0)
        // With rescore off the confidence target is 1.
        var plain = head
        plain.rescore = false
        #expect(abs(loss(plain, cell0: cell0).0 - (coordinates + pow(0.8 - 1, 2) + noObject + classes)) < 1e-5)
        // Predictor 1 predicting the box exactly takes over (IoU 1): predictor 0 becomes a no-object term.
        let (swapped, sg) = loss(head, cell0: [0.6, 0.6, 0.6, 0.7, 0.8, 0.75, 0.5, 0.5, 0.5.squareRoot(), 0.3, 0.2, 0.7])
        let swappedNoObject: Double = 0.5 * (0.8 * 0.8 + 0.25 * 0.25 + 0.5 * 0.5)
        let expectedSwapped: Double = 0.7 * 0.7 + swappedNoObject + classes          // (0.3 - 1)^2 and the rest
        #expect(abs(swapped - expectedSwapped) < 1e-5)
        #expect(sg[0..<4].allSatisfy { $0 == 0 } && abs(sg[4] - 2 * 0.5 * 0.8) < 1e-5)
    }

    /// The loss's gradient against central finite differences (rescore off: the IoU target is a constant of the loss,
    /// which a finite difference would not keep).
    @Test func lossFiniteDifferences() {
        var head = self.head
        head.rescore = false
        var batch = Batch(images: Tensor(zeros: [2, 3, 128, 192]))
        batch.objects = [[Object(box: box(40, 20, 80, 60), classID: 2), Object(box: box(130, 70, 180, 120), classID: 1)],
                         [Object(box: box(70, 10, 110, 50), classID: 1)]]
        head.encodeTargets(into: &batch)
        var rng = RandomGenerator(seed: 7)
        let output = Tensor.variable(shape: [2, 2, 3, head.depth], values: (0..<(2 * 6 * head.depth)).map { _ in rng.uniform(0.05, 1) })
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

    /// The targets written into a predictor decode back to the box, scored Pr(class | object) x confidence.
    @Test func decodingInvertsTheTargets() {
        let object = Object(box: box(100, 54, 130, 100), classID: 2)
        let t = head.assign([object])[0]
        let output = Tensor(zeros: [1, 2, 3, head.depth])
        let cell = (t.row * 3 + t.column) * head.depth
        for (k, v) in [t.x, t.y, t.sqrtW, t.sqrtH, 0.9].enumerated() { output.data[cell + 5 + k] = v }   // predictor 1
        output.data[cell + 10] = 0.1
        output.data[cell + 11] = 0.8
        let found = head.decode([output], decoding: .display)[0]
        #expect(found.count == 1)
        if let d = found.first {
            #expect(d.classID == 2 && abs(d.score - 0.72) < 1e-6)
            #expect(iou(d.box, object.box) > 0.9999, "\(d.box)")
        }
    }
}

@Suite struct YOLOv1Tests {
    @Test func shapesAndConfiguration() throws {
        let voc = ["background"] + (1...20).map { "class\($0)" }
        let family = try ModelRegistry.family(named: "yolov1")
        let config = try family.setting("width", to: 0.03125, in: try family.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 448, 448], classNames: voc)), flag: "w")
        let model = try ModelRegistry.build(config, seed: 1) as! YOLOv1
        // S = 7, B = 2, C = 20: 7 x 7 x 30.
        let outputs = GradMode.disabled { model.headOutputs(Tensor(zeros: [1, 3, 448, 448]), training: false) }
        #expect(outputs.map(\.shape) == [[1, 7, 7, 30]])
        let names = model.parameters.parameters.map(\.name).filter { $0.hasSuffix("/kernel") }
        #expect(names == (0..<24).map { "conv_\($0)/kernel" } + ["fc_0/kernel", "fc_1/kernel"])
        #expect(model.hidden.kernel.shape == [32 * 49, 128])
        let wide = try ModelRegistry.build(YOLOv1.defaultConfig(height: 128, width: 192, classNames: ["background", "car"], widthMultiplier: 0.0625), seed: 1)
        #expect(GradMode.disabled { (wide as! YOLOv1).headOutputs(Tensor(zeros: [2, 3, 128, 192]), training: false) }.map(\.shape) == [[2, 2, 3, 11]])
        // Other sizes are letterboxed into the next multiples of 64; a network size that is none is refused.
        let frames = try family.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 96, 128], classNames: voc))
        #expect(try Letterbox.network(of: frames, multiple: 64) == Letterbox(input: (96, 128), network: (128, 128)))
        var odd = frames
        odd.options["network_width"] = 96
        do {
            _ = try ModelRegistry.build(odd, seed: 1)
            Issue.record("a 128 x 96 network accepted")
        } catch {
            #expect("\(error)" == "model yolov1: network size 128x96: its sides must be multiples of 64")
        }
    }

    /// yolov1 at a quarter width on 128 x 192 windows of the real Udacity frames (a 2 x 3 grid; the labelled objects
    /// of each window lie in different cells).
    @Test func overfitsRealFrames() throws {
        let config = YOLOv1.defaultConfig(height: 128, width: 192, classNames: udacityClasses, widthMultiplier: 0.25)
        let model = try ModelRegistry.build(config, seed: 3) as! YOLOv1
        try expectOverfitsUdacityWindows(model, steps: 150, learningRate: 1e-3)
    }
}
