import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingDetection

private func box(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float) -> BoxCorners { BoxCorners(xmin: x0, ymin: y0, xmax: x1, ymax: y1) }

/// Three windows of real Udacity frames (the objects as labelled: two cars, a pedestrian, two traffic lights), 96 x
/// 128 unless said, classes background, car, truck, pedestrian, bicyclist, light.
func udacityWindows(height h: Int = 96, width w: Int = 128) throws -> Batch {
    let folder = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/udacity/images").path
    let windows: [(String, Int, Int, [(Float, Float, Float, Float, Int)])] = [
        ("1478019952686311006.jpg", 190, 100, [(237, 251, 143, 155, 1)]),
        ("1478019952686311006.jpg", 352, 100, [(437, 454, 120, 186, 3)]),
        ("1478020202688242798_jpg.rf.49c13f8414aaebf9a018f6c0fcc82a0e.jpg", 180, 180,
         [(214, 231, 238, 259, 1), (238, 246, 215, 235, 5), (267, 278, 224, 241, 5)]),
    ]
    let images = Tensor(zeros: [windows.count, 3, h, w])
    var objects: [[Object]] = []
    for (n, (file, left, top, labelled)) in windows.enumerated() {
        let frame = try ImageFile.readRGB(path: folder + "/" + file)
        // A window larger than 96 x 128 moves left and up as far as it must to stay in the frame.
        let (x0, y0) = (min(left, frame.width - w), min(top, frame.height - h))
        try #require(x0 >= 0 && y0 >= 0, "\(file) is \(frame.width)x\(frame.height)")
        try #require(labelled.allSatisfy { Int($0.0) >= x0 && Int($0.1) <= x0 + w && Int($0.2) >= y0 && Int($0.3) <= y0 + h }, "\(file): an object outside the window")
        for c in 0..<3 { for y in 0..<h { for x in 0..<w {
            images.data[((n * 3 + c) * h + y) * w + x] = Float(frame.pixels[((y0 + y) * frame.width + x0 + x) * 3 + c])
        } } }
        objects.append(labelled.map { Object(box: box($0.0 - Float(x0), $0.2 - Float(y0), $0.1 - Float(x0), $0.3 - Float(y0)), classID: $0.4) })
    }
    var batch = Batch(images: images)
    batch.objects = objects
    return batch
}

let udacityClasses = ["background", "car", "truck", "pedestrian", "bicyclist", "light"]

/// Trains `model` on the Udacity windows with Adam for `steps` steps; expects the loss to fall tenfold and then every
/// object to be found (right class, IoU >= 0.5) by the decoding in training mode (the moving averages need many more
/// steps to settle than these).
func expectOverfitsUdacityWindows(_ model: any Detector, steps: Int, learningRate: Float = 3e-3) throws {
    var batch = try udacityWindows(height: model.config.inputShape[1], width: model.config.inputShape[2])
    model.targetEncoder?.encodeTargets(into: &batch)
    let adam = Adam(parameterCount: model.parameters.count, learningRate: learningRate)
    var first: Float = 0, last: Float = 0
    for step in 0..<steps {
        model.parameters.zeroGradients()
        let loss = model.loss(batch, training: true)
        loss.backward()
        adam.step(model.parameters)
        if step == 0 { first = loss.item }
        last = loss.item
    }
    #expect(last < first / 10, "\(model.config.family): loss \(first) -> \(last)")
    let found = GradMode.disabled { model.head.decode(model.headOutputs(batch.images, training: true), decoding: .display) }
    for (n, objects) in (batch.objects ?? []).enumerated() {
        for o in objects {
            let hit = found[n].contains { $0.classID == o.classID && iou($0.box, o.box) >= 0.5 }
            #expect(hit, "\(model.config.family) window \(n): no detection of class \(o.classID) at \(o.box); found \(found[n].prefix(4))")
        }
    }
}

@Suite struct YOLOv3Tests {
    @Test func shapesAndConfiguration() throws {
        let names = ["background", "car", "pedestrian"]
        let family = try ModelRegistry.family(named: "yolov3")
        let config = try family.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 96, 128], classNames: names))
        #expect(config.anchorSizes == YOLOv3.defaultAnchors && config.inputShape == [3, 96, 128])
        let small = try family.setting("depth", to: 0.34, in: try family.setting("width", to: 0.125, in: config, flag: "w"), flag: "d")
        let model = try ModelRegistry.build(small, seed: 1) as! YOLOv3
        // 8 x 0.34 = 2.72 rounds to 3; 1 x 0.34 rounds to 0, kept at 1.
        #expect(model.stages.map(\.residuals.count) == [1, 1, 3, 3, 1])
        let outputs = GradMode.disabled { model.headOutputs(Tensor(zeros: [2, 3, 96, 128]), training: false) }
        #expect(outputs.map(\.shape) == [[2, 21, 3, 4], [2, 21, 6, 8], [2, 21, 12, 16]])
        #expect(model.yolo.scales.map(\.anchors) == [[6, 7, 8], [3, 4, 5], [0, 1, 2]])
        // At depth 1 the convolutions carry yolov3.cfg's layer indices: 75 of them, the outputs 81, 93 and 105.
        let full = try ModelRegistry.build(YOLOv3.defaultConfig(height: 64, width: 64, classNames: names, widthMultiplier: 0.01), seed: 1) as! YOLOv3
        let kernels = full.parameters.parameters.map(\.name).filter { $0.hasSuffix("/kernel") }
        #expect(kernels.count == 75)
        #expect(full.branches.map(\.output.kernel.name) == ["conv_81/kernel", "conv_93/kernel", "conv_105/kernel"])
        #expect(full.branches.compactMap(\.lateral?.conv.kernel.name) == ["conv_84/kernel", "conv_96/kernel"])
        #expect(full.stages.map(\.down.conv.kernel.name) == ["conv_1/kernel", "conv_5/kernel", "conv_12/kernel", "conv_37/kernel", "conv_62/kernel"])
        // Other sizes are letterboxed into the next multiples of 32; a network size that is none is refused.
        let frames = try family.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 300, 480], classNames: names))
        #expect(try Letterbox.network(of: frames, multiple: 32) == Letterbox(input: (300, 480), network: (320, 480)))
        var odd = frames
        odd.options["network_height"] = 300
        do {
            _ = try ModelRegistry.build(odd, seed: 1)
            Issue.record("a 300 x 480 network accepted")
        } catch {
            #expect("\(error)" == "model yolov3: network size 300x480: its sides must be multiples of 32")
        }
    }

    /// Residual blocks add their input: with every block's last batch norm zeroed (gamma and beta 0, so each block's
    /// branch is leaky(0) = 0), only the shortcuts carry the image on, and two images still give different outputs.
    @Test func residualBlocksAddTheirInput() throws {
        let config = YOLOv3.defaultConfig(height: 64, width: 64, classNames: ["background", "car"], widthMultiplier: 0.125, depthMultiplier: 0.1)
        let model = try ModelRegistry.build(config, seed: 4) as! YOLOv3
        for block in model.stages.flatMap(\.residuals) {
            for p in [block.expand.norm.gamma, block.expand.norm.beta] { for i in 0..<p.count { p.value.data[i] = 0 } }
        }
        var rng = RandomGenerator(seed: 5)
        let images = Tensor(shape: [2, 3, 64, 64], values: (0..<(2 * 3 * 64 * 64)).map { _ in rng.uniform(0, 255) })
        let outputs = GradMode.disabled { model.headOutputs(images, training: false) }
        for output in outputs {
            let half = output.count / 2, values = output.toArray()
            let difference = zip(values[..<half], values[half...]).map { abs($0 - $1) }.max() ?? 0
            #expect(difference > 1e-3, "output \(output.shape) does not depend on the image")
        }
    }

    /// yolov3 at a quarter width and a quarter depth (blocks 1-1-2-2-1) on real frames.
    @Test func overfitsRealFrames() throws {
        let config = YOLOv3.defaultConfig(height: 96, width: 128, classNames: udacityClasses, widthMultiplier: 0.25, depthMultiplier: 0.25)
        let model = try ModelRegistry.build(config, seed: 3) as! YOLOv3
        try expectOverfitsUdacityWindows(model, steps: 120)
    }
}
