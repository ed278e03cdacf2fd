import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingSegmentation
@testable import StarlingData

private func unetConfig(height: Int, width: Int, classes: Int = 3, _ options: [String: Double]) -> ModelConfig {
    ModelConfig(family: UNet.family, inputShape: [3, height, width], options: options,
                classNames: ["background"] + (1..<classes).map { "class\($0)" })
}

private func randomImages(_ shape: [Int], seed: UInt64) -> Tensor {
    var rng = RandomGenerator(seed: seed)
    return Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in rng.uniform(0, 255) })
}

/// Central differences of a scalar function of `x` against `x.grad` after one backward pass.
private func expectGradientMatchesFiniteDifferences(_ x: Tensor, eps: Float = 1e-2, tolerance: Float = 2e-3, _ f: () -> Tensor) {
    x.clearGrad()
    f().backward()
    guard let analytic = x.gradArray else { Issue.record("no gradient"); return }
    for i in 0..<x.count {
        let saved = x.data[i]
        x.data[i] = saved + eps
        let up = GradMode.disabled { f().item }
        x.data[i] = saved - eps
        let down = GradMode.disabled { f().item }
        x.data[i] = saved
        let numeric = (up - down) / (2 * eps)
        #expect(abs(numeric - analytic[i]) <= tolerance + 0.02 * abs(numeric), "element \(i): analytic \(analytic[i]), numeric \(numeric)")
    }
}

/// U-Net (issue 19): the paper's geometry, the crop and concatenation of valid-padding skips, the loss and the weight
/// map against values worked by hand, finite differences of the loss, the augmentation, and overfitting real membranes.
@Suite struct UNetTests {
    /// The paper's figure 1: a 572 x 572 tile gives a 388 x 388 map; before the pools the contracting path's maps are
    /// 568, 280, 136 and 64 wide, and each is centre-cropped to the expanding path's 392, 200, 104 and 56.
    @Test func paperGeometryIs572To388() throws {
        var rng = RandomGenerator(seed: 1)
        let geometry = try #require(UNet.geometry(572, levels: 5, valid: true))
        #expect(geometry.skips == [568, 280, 136, 64] && geometry.output == 388)
        let model = try UNet(config: unetConfig(height: 572, width: 572, classes: 2, ["width": 1.0 / 32, "valid": 1]), rng: &rng)
        #expect(model.outputWindow == (92, 92, 388, 388))
        let logits = GradMode.disabled { model.logits(Tensor(zeros: [1, 3, 572, 572])) }
        #expect(logits.shape == [1, 2, 388, 388])
        // The paper's channels at width 1: 64 ... 1024, and 2 x 2 up-convolutions halving them.
        let full = try UNet(config: unetConfig(height: 572, width: 572, classes: 2, ["valid": 1]), rng: &rng)
        #expect(full.contracting.map { $0.1.kernel.shape[0] } == [64, 128, 256, 512, 1024])
        #expect(full.upConvolutions.map(\.kernel.shape) == [[128, 64, 2, 2], [256, 128, 2, 2], [512, 256, 2, 2], [1024, 512, 2, 2]])
        // The paper's network with two output classes has 31,030,658 weights on gray tiles; RGB input adds 2 x 64 x 9.
        #expect(full.parameters.count == 31_030_658 + 2 * 64 * 9)
    }

    /// A valid-padding skip is centre-cropped before the concatenation: with two levels and an 18 x 18 input the first
    /// level's map is 14 x 14 and the up-convolution's 10 x 6 ... checked against the same network computed with
    /// explicit crops and concatenation in Tensor ops.
    @Test func validSkipsAreCentreCroppedAndConcatenated() throws {
        var rng = RandomGenerator(seed: 3)
        let model = try UNet(config: unetConfig(height: 18, width: 22, ["width": 0.0625, "levels": 2, "valid": 1]), rng: &rng)
        let images = randomImages([2, 3, 18, 22], seed: 4)
        let got = GradMode.disabled { model.logits(images) }
        let expected: Tensor = GradMode.disabled {
            let (c1, c2) = model.contracting[0], (b1, b2) = model.contracting[1]
            let skip = c2(c1(images.affine(scale: 1 / 255, shift: 0)).relu()).relu()            // 14 x 18
            #expect(skip.shape == [2, 4, 14, 18])
            let bottom = b2(b1(skip.maxPool2d(kernel: (2, 2))).relu()).relu()                  // 7 x 9 -> 3 x 5
            let up = model.upConvolutions[0](bottom)                                            // 6 x 10
            #expect(up.shape == [2, 4, 6, 10])
            let cropped = skip.slice(axis: 2, start: 4, end: 10).slice(axis: 3, start: 4, end: 14)
            let (e1, e2) = model.expanding[0]
            return model.classifier(e2(e1(Tensor.concat([cropped, up], axis: 1)).relu()).relu())
        }
        #expect(got.shape == [2, 3, 2, 6] && got.toArray() == expected.toArray())
        #expect(model.outputWindow == (8, 8, 2, 6))
    }

    /// Same padding keeps any size: odd maps are floored by the pools and the up-convolution padded back.
    @Test func samePaddingKeepsTheInputSize() throws {
        var rng = RandomGenerator(seed: 2)
        let model = try UNet(config: unetConfig(height: 45, width: 38, ["width": 0.0625, "levels": 4]), rng: &rng)
        #expect(GradMode.disabled { model.logits(randomImages([2, 3, 45, 38], seed: 1)) }.shape == [2, 3, 45, 38])
        #expect(model.outputWindow == (0, 0, 45, 38))
        // Valid padding on a size that does not fit is refused, naming sizes that do.
        #expect { try UNet(config: unetConfig(height: 512, width: 512, ["valid": 1]), rng: &rng) } throws: { error in
            "\(error)".contains("valid padding with 5 levels does not fit 512x512") && "\(error)".contains("508")
        }
        #expect(throws: ModelError.self) { try UNet(config: unetConfig(height: 64, width: 64, classes: 3, ["sigmoid": 1]), rng: &rng) }
        #expect(throws: ModelError.self) { try UNet(config: unetConfig(height: 64, width: 64, classes: 3, ["class_weight_3": 2]), rng: &rng) }
    }

    /// Softmax cross-entropy per pixel with class weights and a void pixel, by hand: logits (z0, z1) per pixel,
    /// CE = log(e^z0 + e^z1) - z_label; the void pixel weighs 0 but counts in the divisor.
    @Test func lossByHand() {
        let logits = Tensor(shape: [1, 2, 1, 3], values: [0.5, -1, 2,   1.5, 0, -0.5])
        let targets = UNetTargets(labels: [0, 1, 0], weights: [1, 3, 0])
        func ce(_ z0: Double, _ z1: Double, _ label: Int) -> Double { log(exp(z0) + exp(z1)) - (label == 0 ? z0 : z1) }
        let expected = (1 * ce(0.5, 1.5, 0) + 3 * ce(-1, 0, 1)) / 3
        #expect(abs(Double(UNet.pixelLoss(logits: logits, targets: targets).item) - expected) < 1e-6)
        // Sigmoid: one channel, class 1's logit z; binary cross-entropy -log sigmoid(z) or -log(1 - sigmoid(z)).
        let z = Tensor(shape: [1, 1, 1, 2], values: [0.3, -1.2])
        let bce = (-log(1 / (1 + exp(-0.3))) - log(1 - 1 / (1 + exp(1.2)))) / 2
        #expect(abs(Double(UNet.pixelLoss(logits: z, targets: UNetTargets(labels: [1, 0], weights: [1, 1])).item) - bce) < 1e-6)
    }

    @Test func lossGradientMatchesFiniteDifferences() {
        let logits = Tensor.variable(shape: [2, 3, 2, 3], values: (0..<36).map { Float(($0 * 7) % 11) / 5 - 1 })
        let targets = UNetTargets(labels: (0..<12).map { Int32(($0 * 5) % 3) }, weights: (0..<12).map { $0 == 4 ? 0 : 1 + Float($0 % 4) })
        expectGradientMatchesFiniteDifferences(logits) { UNet.pixelLoss(logits: logits, targets: targets) }
        let single = Tensor.variable(shape: [2, 1, 2, 3], values: (0..<12).map { Float($0) / 4 - 1.5 })
        let binary = UNetTargets(labels: (0..<12).map { Int32($0 % 2) }, weights: (0..<12).map { 1 + Float($0 % 3) })
        expectGradientMatchesFiniteDifferences(single) { UNet.pixelLoss(logits: single, targets: binary) }
    }

    /// Equation 2 by hand. A row: two cells (class 1) with a three-pixel gap; at the gap's pixels d1 + d2 = 4 (1 + 3,
    /// 2 + 2, 3 + 1), so w = w_c + 10 exp(-16 / 50). Cells keep their class weight; a void pixel weighs 0.
    @Test func borderWeightMapByHand() {
        let map: [UInt8] = [1, 1, 0, 0, 0, 1, 255]
        let weights = PixelWeights(classWeights: [1, 2], borderWeight: 10, sigma: 5)
        let w = weights.weights(classMap: map, height: 1, width: 7)
        let gap = Float(1 + 10 * exp(-16.0 / 50))
        let expected: [Float] = [2, 2, gap, gap, gap, 2, 0]
        #expect(zip(w, expected).allSatisfy { abs($0 - $1) < 1e-5 }, "\(w)")
        // Two one-pixel objects at opposite corners of a 5 x 5 map: the centre is sqrt(8) from each.
        var square = [UInt8](repeating: 0, count: 25)
        (square[0], square[24]) = (1, 1)
        let centre = PixelWeights(classWeights: [1, 1], borderWeight: 10, sigma: 5).weights(classMap: square, height: 5, width: 5)[12]
        #expect(abs(centre - Float(1 + 10 * exp(-32.0 / 50))) < 1e-5)
        // Instance masks, where given, are the objects: one object alone has no second nearest, no border term.
        let one = PixelWeights(classWeights: [1, 1], borderWeight: 10, sigma: 5).weights(classMap: square, height: 5, width: 5, instances: [square])
        #expect(one == [Float](repeating: 1, count: 25))
        // Without w0 the map is the class weights.
        #expect(PixelWeights(classWeights: [1, 2]).weights(classMap: map, height: 1, width: 7) == [2, 2, 1, 1, 1, 2, 0])
    }

    /// The distance transform against brute force on a scattered mask.
    @Test func distanceTransformIsExact() {
        let (h, w) = (9, 13)
        let points: [(Int, Int)] = [(1, 2), (7, 11), (4, 6), (8, 0)]
        var f = [Float](repeating: .infinity, count: h * w)
        for (y, x) in points { f[y * w + x] = 0 }
        DistanceTransform.squaredEuclidean(&f, height: h, width: w)
        for y in 0..<h {
            for x in 0..<w {
                let squares: [Int] = points.map { (py: Int, px: Int) -> Int in (py - y) * (py - y) + (px - x) * (px - x) }
                let brute = Float(squares.min() ?? 0)
                #expect(f[y * w + x] == brute, "(\(y), \(x))")
            }
        }
    }

    /// The augmentation moves the class map with the image (a labelled square stays under its bright square), is the
    /// same for the same (seed, epoch, sample) and differs between epochs.
    @Test func augmentationMovesLabelsWithTheImage() {
        let (h, w) = (40, 48)
        var pixels = [UInt8](repeating: 20, count: h * w * 3), map = [UInt8](repeating: 0, count: h * w)
        for y in 12..<28 { for x in 10..<30 { map[y * w + x] = 2; for c in 0..<3 { pixels[(y * w + x) * 3 + c] = 230 } } }
        var augmentation = SegmentationAugmentation(elastic: true)
        augmentation.sigma = 3
        let a = augmentation.apply(pixels: pixels, classMap: map, instances: [map.map { $0 == 2 ? 1 : 0 }], height: h, width: w, voidLabel: 255,
                                   seed: 7, epoch: 1, sampleIndex: 5)
        let again = augmentation.apply(pixels: pixels, classMap: map, instances: nil, height: h, width: w, voidLabel: 255, seed: 7, epoch: 1, sampleIndex: 5)
        let other = augmentation.apply(pixels: pixels, classMap: map, instances: nil, height: h, width: w, voidLabel: 255, seed: 7, epoch: 2, sampleIndex: 5)
        #expect(a.pixels == again.pixels && a.classMap == again.classMap)
        #expect(a.classMap != other.classMap)
        // Away from the square's edge (where interpolation blends), label 2 sits on bright pixels and label 0 on dark.
        var checked = 0
        for p in 0..<(h * w) where a.classMap[p] != 255 {
            let v = a.pixels[3 * p]
            if v > 200 { #expect(a.classMap[p] == 2); checked += 1 }
            if v < 40 { #expect(a.classMap[p] == 0); checked += 1 }
        }
        #expect(checked > h * w / 2)
        #expect(a.instances?[0] == a.classMap.map { $0 == 2 ? 1 : 0 })
        #expect(Set(a.classMap).isSubset(of: [0, 2, 255]))
    }

    /// The photometric option changes only the image's values: the class map, the instance masks and every geometric draw
    /// are those of the same sample without it, equal colours stay equal (each step is a function of a pixel's value),
    /// the same (seed, epoch, sample) gives the same image, and some samples come out changed.
    @Test func photometricAugmentationLeavesTheLabelsAndTheGeometry() {
        let (h, w) = (24, 32)
        var pixels = [UInt8](repeating: 0, count: h * w * 3), map = [UInt8](repeating: 0, count: h * w)
        for p in 0..<(h * w) {
            let stripe = (p % w) / 8
            map[p] = UInt8(stripe)
            for c in 0..<3 { pixels[3 * p + c] = UInt8(40 + 50 * stripe + 20 * c) }
        }
        var geometric = SegmentationAugmentation()
        geometric.scales = 1...1
        geometric.flip = false
        var coloured = geometric
        coloured.photometric = true
        var changed = 0
        for sample in 0..<8 {
            let a = geometric.apply(pixels: pixels, classMap: map, instances: [map.map { $0 == 1 ? 1 : 0 }], height: h, width: w, voidLabel: 255,
                                    seed: 3, epoch: 1, sampleIndex: sample)
            let b = coloured.apply(pixels: pixels, classMap: map, instances: [map.map { $0 == 1 ? 1 : 0 }], height: h, width: w, voidLabel: 255,
                                   seed: 3, epoch: 1, sampleIndex: sample)
            let again = coloured.apply(pixels: pixels, classMap: map, instances: nil, height: h, width: w, voidLabel: 255,
                                       seed: 3, epoch: 1, sampleIndex: sample)
            #expect(a.classMap == map && b.classMap == a.classMap && b.instances == a.instances)
            #expect(a.pixels == pixels)
            #expect(b.pixels == again.pixels)
            var colourOf: [[UInt8]: [UInt8]] = [:]
            for p in 0..<(h * w) {
                let input = Array(pixels[(3 * p)..<(3 * p + 3)]), output = Array(b.pixels[(3 * p)..<(3 * p + 3)])
                if let seen = colourOf[input] { #expect(seen == output) } else { colourOf[input] = output }
            }
            if b.pixels != a.pixels { changed += 1 }
        }
        #expect(changed >= 4, "the photometric steps changed \(changed) of 8 samples (each happens with probability 1/2)")
    }

    /// Instance data through the training source with augmentation on: each moved mask lies on its class in the moved
    /// class map, each object's box is its moved mask's tight box, and a second read gives the same batch.
    @Test func augmentedInstancesStayWithTheirMasks() throws {
        let dir = Fixture.temporaryDirectory("unet-instances")
        let (h, w) = (30, 40)
        func sample(_ k: Int) -> SegmentationWriter.Sample {
            var map = [UInt8](repeating: 0, count: h * w)
            var masks: [[UInt8]] = []
            for (x0, y0) in [(5 + k, 6), (24, 12 + k)] {
                var mask = [UInt8](repeating: 0, count: h * w)
                for y in y0..<(y0 + 10) { for x in x0..<(x0 + 8) { mask[y * w + x] = 1; map[y * w + x] = 1 } }
                masks.append(mask)
            }
            return .init(pixels: (0..<(h * w * 3)).map { UInt8(($0 * 5 + k) % 256) }, classMap: map, imageID: Int64(k),
                         instances: masks.map { (classID: 1, mask: $0) })
        }
        let path = dir + "/people.h5"
        try SegmentationWriter.write(to: path, classNames: ["background", "person"], height: h, width: w, instances: true, source: "test",
                                     splits: [("train", 3, { sample($0) })])
        let (train, _) = try TrainingData.open(.segmentation, path: path, trainSplit: "train", validationSplit: "none", augment: true, seed: 9)
        let config = ModelConfig(family: UNet.family, inputShape: [3, h, w], classNames: ["background", "person"])
        let batch = try train.batch(indices: [0, 1, 2], epoch: 4, training: true, config: config)
        let again = try train.batch(indices: [0, 1, 2], epoch: 4, training: true, config: config)
        #expect(batch.images.toArray() == again.images.toArray() && batch.segmentation?.classes == again.segmentation?.classes)
        let maps = try #require(batch.segmentation), masks = try #require(maps.instanceMasks), objects = try #require(batch.objects)
        var moved = 0
        for k in 0..<3 {
            let map = Array(maps.classes[(k * h * w)..<((k + 1) * h * w)])
            #expect(masks[k].count == objects[k].count)
            for (object, mask) in zip(objects[k], masks[k]) {
                #expect((0..<(h * w)).allSatisfy { mask[$0] == 0 || map[$0] == 1 })
                #expect(object.box == SegmentationDataset.tightBox(mask, height: h, width: w))
            }
            if map != sample(k).classMap { moved += 1 }
        }
        #expect(moved > 0, "the augmentation left every image as stored")
    }

    /// Real membranes: four 64 x 64 crops of two training images, learned to over 95% pixel accuracy (the cells
    /// and membranes of these crops, not held-out ones) with Adam in 120 steps.
    @Test(.enabled(if: SegmentationImportTests.has("membrane/train/label/0.png")))
    func overfitsRealMembranes() throws {
        let (side, count) = (64, 4)
        let images = Tensor(zeros: [count, 3, side, side])
        var classes: [UInt8] = []
        for k in 0..<count {
            func file(_ folder: String) -> String { "\(SegmentationImportTests.shared)/membrane/train/\(folder)/\(k / 2).png" }
            let image = try PNGImage.read(path: file("image"), channels: 1), label = try PNGImage.read(path: file("label"))
            let (x0, y0) = (100 + 200 * (k % 2), 150)
            for y in 0..<side {
                for x in 0..<side {
                    let v = Float(image.pixels[(y0 + y) * 512 + x0 + x])
                    for c in 0..<3 { images.data[((k * 3 + c) * side + y) * side + x] = v }
                    classes.append(label.pixels[(y0 + y) * 512 + x0 + x] == 0 ? 0 : 1)
                }
            }
        }
        var rng = RandomGenerator(seed: 5)
        let model = try UNet(config: ModelConfig(family: UNet.family, inputShape: [3, side, side], options: ["width": 0.25, "levels": 3],
                                                  classNames: ["membrane", "cell"]), rng: &rng)
        var batch = Batch(images: images)
        batch.segmentation = SegmentationMaps(classes: classes, height: side, width: side)
        model.targetEncoder?.encodeTargets(into: &batch)
        let adam = Adam(parameterCount: model.parameters.count, learningRate: 3e-3)
        var first: Float = 0, last: Float = 0
        for step in 0..<120 {
            model.parameters.zeroGradients()
            let loss = model.loss(batch, training: true)
            loss.backward()
            adam.step(model.parameters)
            if step == 0 { first = loss.item }
            last = loss.item
        }
        var metrics = SegmentationMetrics(classCount: 2)
        try metrics.add(truth: classes.map(Int32.init), predicted: model.predictClasses(images))
        let accuracy = try #require(metrics.pixelAccuracy)
        #expect(accuracy > 0.95 && last < first / 4, "pixel accuracy \(accuracy), loss \(first) -> \(last)")
        #expect((metrics.meanIoU ?? 0) > 0.85)
    }
}
