import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingData
@testable import StarlingDetection

private func box(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float) -> BoxCorners { BoxCorners(xmin: x0, ymin: y0, xmax: x1, ymax: y1) }

/// A fast-rcnn small enough for a debug build: 1/16 of VGG16's channels, 32 hidden units.
private func smallFastRCNN(height: Int, width: Int, classNames: [String], seed: UInt64 = 1, rois: Int = 16) throws -> FastRCNN {
    var config = FastRCNN.defaultConfig(height: height, width: width, classNames: classNames, widthMultiplier: 0.0625)
    config.options["hidden"] = 32
    config.options["rois_per_image"] = Double(rois)
    return try ModelRegistry.build(config, seed: seed) as! FastRCNN
}

/// Proposals around each box (shifted by a few pixels, so some overlap it by IoU >= 0.5 and some by [0.1, 0.5)) and a
/// few elsewhere.
private func proposals(around objects: [Object], height: Int, width: Int, rng: inout RandomGenerator) -> [BoxCorners] {
    var out: [BoxCorners] = []
    for o in objects {
        for _ in 0..<12 {
            let (w, h) = (o.box.width, o.box.height)
            let dx = rng.uniform(-0.6, 0.6) * w, dy = rng.uniform(-0.6, 0.6) * h
            let b = box(max(0, o.box.xmin + dx), max(0, o.box.ymin + dy), min(Float(width), o.box.xmax + dx), min(Float(height), o.box.ymax + dy))
            if b.isValid { out.append(b) }
        }
    }
    for _ in 0..<6 {
        let x = rng.uniform(0, Float(width) - 9), y = rng.uniform(0, Float(height) - 9)
        out.append(box(x, y, x + 8, y + 8))
    }
    return out
}

/// Four real Penn-Fudan frames (FudanPed00001-4) imported at 128 x 160 with `starling data detection --format voc` (no
/// validation split) and their selective-search proposals stored with `starling proposals --store` (fast mode); nil
/// when the shared data is not here.
func pennFudanFrames(_ dir: String, count: Int = 4, storeProposals: Bool = true) throws -> String? {
    let root = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/pennfudan/PennFudanPed").path
    guard FileManager.default.fileExists(atPath: root + "/PNGImages/FudanPed00001.png") else { return nil }
    let fm = FileManager.default
    for sub in ["images", "labels"] { try fm.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true) }
    for k in 1...count {
        let name = String(format: "FudanPed%05d", k)
        try? fm.removeItem(atPath: "\(dir)/images/\(name).png")
        try? fm.removeItem(atPath: "\(dir)/labels/\(name).txt")
        try fm.createSymbolicLink(atPath: "\(dir)/images/\(name).png", withDestinationPath: "\(root)/PNGImages/\(name).png")
        try fm.createSymbolicLink(atPath: "\(dir)/labels/\(name).txt", withDestinationPath: "\(root)/Annotation/\(name).txt")
    }
    let data = dir + "/pf.h5"
    let imported = try starling("data", "detection", "--format", "voc", "--images", dir + "/images", "--labels", dir + "/labels", "--out", data,
                                "--height", "128", "--width", "160", "--val-fraction", "0")
    try #require(imported.status == 0, "\(imported.error)")
    guard storeProposals else { return data }
    let stored = try starling("proposals", "--data", data, "--split", "train", "--store")
    try #require(stored.status == 0, "\(stored.error)")
    return data
}

// Serialized: Foundation's readDataToEndOfFile (in `run`) traps on EINTR, which another test's child exiting can cause.
@Suite(.serialized) struct FastRCNNTests {
    @Test func configurationAndShapes() throws {
        let names = ["background", "pedestrian"]
        let family = try ModelRegistry.family(named: "fast-rcnn")
        #expect(family.dataKind == .detectionProposals)
        let config = try family.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 96, 128], classNames: names))
        #expect(config.inputShape == [3, 96, 128] && config.option("width", default: 0) == 0.25 && config.option("rois_per_image", default: 0) == 64)
        do {
            _ = try family.configuration(for: DatasetDescription(path: "tiny.h5", sampleShape: [3, 8, 128], classNames: names))
            Issue.record("8-pixel images accepted")
        } catch {
            #expect("\(error)".hasPrefix("tiny.h5: images of 8x128 are too small for fast-rcnn"))
        }
        let model = try smallFastRCNN(height: 96, width: 128, classNames: names)
        let kernels = model.parameters.parameters.map(\.name).filter { $0.hasSuffix("/kernel") }
        #expect(kernels == ["conv1_1/kernel", "conv1_2/kernel", "conv2_1/kernel", "conv2_2/kernel", "conv3_1/kernel", "conv3_2/kernel", "conv3_3/kernel",
                            "conv4_1/kernel", "conv4_2/kernel", "conv4_3/kernel", "conv5_1/kernel", "conv5_2/kernel", "conv5_3/kernel",
                            "fc6/kernel", "fc7/kernel", "cls_score/kernel", "bbox_pred/kernel"])
        let features = GradMode.disabled { model.features(Tensor(zeros: [2, 3, 96, 128]), training: false) }
        #expect(features.shape == [2, 32, 6, 8])   // stride 16, conv5_3 at 512 / 16 channels
    }

    /// The family's loss on a batch equals Fast R-CNN's multi-task loss computed here by hand (float64 softmax
    /// cross-entropy and smooth L1 over the class-specific deltas, divided by the RoIs) on RoIs sampled here with
    /// `FastRCNNTargets` from each image's own stream, pooled through the family's own features and predictor.
    /// Split over two simulated ranks (each seeing the other's RoI count through CrossReplica), the mean of the ranks'
    /// losses is the one-process loss: the normaliser is the global RoI count.
    @Test func lossIsTheMultiTaskLossOverTheGlobalRoIs() throws {
        let (h, w) = (64, 96)
        let model = try smallFastRCNN(height: h, width: w, classNames: ["background", "car", "person"], seed: 3)
        var rng = RandomGenerator(seed: 9)
        let images = Tensor(shape: [3, 3, h, w], values: (0..<(3 * 3 * h * w)).map { _ in rng.uniform(0, 255) })
        let objects: [[Object]] = [[Object(box: box(10, 8, 40, 50), classID: 1), Object(box: box(50, 20, 90, 60), classID: 2)],
                                   [Object(box: box(30, 10, 60, 40), classID: 2)],
                                   [Object(box: box(5, 5, 25, 30), classID: 1), Object(box: box(60, 30, 80, 62), classID: 1, difficult: true)]]
        var batch = Batch(images: images, indices: [4, 11, 7], epoch: 2, seed: 17)
        batch.objects = objects
        batch.proposals = objects.map { proposals(around: $0, height: h, width: w, rng: &rng) }
        let loss = GradMode.disabled { model.loss(batch, training: true).item }

        // By hand: the same draws (sample index, epoch and seed) and Fast R-CNN's loss in float64.
        let sampling = FastRCNNTargets(roisPerImage: 16)
        let samples = (0..<3).map { k -> FastRCNNTargets.Sample in
            var stream = RandomGenerator(seed: 17, stream: RoIHeads.samplingPurpose, 2, UInt64(batch.indices![k]))
            return sampling.sample(proposals: batch.proposals![k], objects: objects[k], using: &stream)
        }
        #expect(samples.allSatisfy { $0.foregroundCount > 0 && $0.foregroundCount <= 4 && $0.rois.count <= 16 })
        let count = samples.reduce(0) { $0 + $1.rois.count }
        #expect(count > 32)
        let rois = Tensor(shape: [count, 5], values: samples.enumerated().flatMap { k, s in s.rois.flatMap { [Float(k), $0.xmin, $0.ymin, $0.xmax, $0.ymax] } })
        let (logits, deltas) = GradMode.disabled { model.roiHeads.predictor(model.features(images, training: true), rois: rois) }
        let labels = samples.flatMap(\.labels), targets = samples.flatMap(\.targets)
        var expected = 0.0
        for r in 0..<count {
            let z = (0..<3).map { Double(logits.data[r * 3 + $0]) }
            let top = z.max()!
            expected += log(z.map { exp($0 - top) }.reduce(0, +)) + top - z[Int(labels[r])]
            guard labels[r] > 0 else { continue }
            for j in 0..<4 {
                let d = abs(Double(deltas.data[r * 12 + 4 * Int(labels[r]) + j]) - Double(targets[r][j]))
                expected += d < 1 ? 0.5 * d * d : d - 0.5
            }
        }
        expected /= Double(count)
        #expect(abs(Double(loss) - expected) <= 1e-5 * abs(expected), "family \(loss), by hand \(expected)")

        // Two simulated ranks: images 0-1 and image 2 (unequal RoI counts when an image has few candidates).
        let halves = [slice(batch, 0..<2), slice(batch, 2..<3)]
        let counts = halves.map { half in
            model.roiHeads.sample(proposals: half.proposals!, objects: half.objects!, batch: half, training: true).reduce(0) { $0 + $1.rois.count }
        }
        var perRank: [Float] = []
        for (k, half) in halves.enumerated() {
            let other = Double(counts[1 - k])
            model.crossReplica = CrossReplica(size: 2, sum: { $0[0] += other }, allgather: { $0 })
            perRank.append(GradMode.disabled { model.loss(half, training: true).item })
        }
        model.crossReplica = .single
        // Batch norm normalises each slice by itself here, so the features differ from the whole batch's: compare
        // with the loss of each slice's own features, scaled the same way.
        let separate = halves.map { half in GradMode.disabled { () -> Double in
            let samples = model.roiHeads.sample(proposals: half.proposals!, objects: half.objects!, batch: half, training: true)
            let rois = RoIHeads.roiTensor(samples.map(\.rois))
            let (l, d) = model.roiHeads.predictor(model.features(half.images, training: true), rois: rois)
            return Double(Tensor.fastRCNNLoss(classLogits: l, boxDeltas: d, labels: samples.flatMap(\.labels), targets: samples.flatMap(\.targets)).item)
                * Double(samples.reduce(0) { $0 + $1.rois.count })
        } }
        let global = Double(counts.reduce(0, +))
        let mean = Double(perRank.reduce(0, +)) / 2
        #expect(abs(mean - separate.reduce(0, +) / global) <= 1e-5 * mean, "ranks \(perRank), expected \(separate.map { $0 / global })")

        // A rank whose images have no boxes samples no RoIs (nothing is background without a box to measure it by):
        // its loss is 0, and its backward pass runs to zero gradients, as the gradient allreduce needs.
        var empty = slice(batch, 2..<3)
        empty.objects = [[]]
        model.parameters.zeroGradients()
        let nothing = model.loss(empty, training: true)
        nothing.backward()
        #expect(nothing.item == 0)
        let gradients = model.parameters.gradients.toArray()
        #expect(gradients.count == model.parameters.count && gradients.allSatisfy { $0 == 0 })
    }

    /// Proposals move with the image as its boxes do: a proposal equal to a box stays equal to it (clipped alike)
    /// whatever the draw; every proposal stays inside the image; and the pixels and boxes are those augmentation gives
    /// without proposals. A hand-worked flip first.
    @Test func proposalsFollowTheAugmentation() throws {
        var flip = DetectionAugmentation.none
        flip.flipProbability = 1
        var pixels = [UInt8](repeating: 0, count: 20 * 30 * 3), objects = [Object(box: box(2, 3, 10, 12), classID: 1)]
        var regions = [box(0, 0, 5, 5), box(20, 1, 30, 19)]
        var rng = RandomGenerator(seed: 1)
        flip.apply(pixels: &pixels, objects: &objects, proposals: &regions, height: 20, width: 30, rng: &rng)
        #expect(regions == [box(25, 0, 30, 5), box(0, 1, 10, 19)] && objects[0].box == box(20, 3, 28, 12))

        let (h, w) = (48, 64)
        var draw = RandomGenerator(seed: 2)
        let image = (0..<(h * w * 3)).map { _ in UInt8(draw.next() % 256) }
        let boxes = [Object(box: box(5, 6, 30, 40), classID: 1), Object(box: box(34, 10, 60, 44), classID: 2)]
        let extra = [box(0, 0, 64, 48), box(1, 1, 4, 4), box(60, 40, 64, 48), box(20, 20, 40, 30)]
        let augmentation = DetectionAugmentation()
        var moved = 0, dropped = 0
        for sample in 0..<200 {
            let plain = augmentation.apply(pixels: image, objects: boxes, height: h, width: w, seed: 5, epoch: 1, sampleIndex: sample)
            let out = augmentation.apply(pixels: image, objects: boxes, proposals: boxes.map(\.box) + extra, height: h, width: w, seed: 5, epoch: 1,
                                         sampleIndex: sample)
            #expect(out.pixels == plain.pixels && out.objects == plain.objects)
            #expect(out.proposals.allSatisfy { $0.isValid && $0.xmin >= 0 && $0.ymin >= 0 && $0.xmax <= Float(w) && $0.ymax <= Float(h) })
            for o in out.objects {
                #expect(out.proposals.contains { abs($0.xmin - o.box.xmin) < 1e-4 && abs($0.ymin - o.box.ymin) < 1e-4 && abs($0.xmax - o.box.xmax) < 1e-4
                        && abs($0.ymax - o.box.ymax) < 1e-4 }, "sample \(sample): no proposal at \(o.box) in \(out.proposals)")
            }
            if out.proposals != boxes.map(\.box) + extra { moved += 1 }
            if out.proposals.count < boxes.count + extra.count { dropped += 1 }
        }
        #expect(moved > 100 && dropped > 0, "\(moved) draws moved proposals, \(dropped) dropped some")
    }

    /// Stored proposals are read image by image (the reader's lists equal `ProposalStore.read`'s whole split), and a
    /// batch from a split with proposals carries each of its images' lists; a split without them is refused in one
    /// line naming the file and the command that stores them, by the reader, by `train` and by `eval`.
    @Test func proposalsAreReadPerImageAndRequired() throws {
        let dir = Fixture.temporaryDirectory("fast-rcnn-store")
        guard let data = try pennFudanFrames(dir, storeProposals: false) else { return }   // shared data not here
        let dataset = try DetectionDataset(path: data, split: "train")
        do {
            _ = try ProposalReader(dataset: dataset)
            Issue.record("a split without proposals was read")
        } catch {
            #expect("\(error)" == "\(data): no proposals in /train; store them with `starling proposals --data \(data) --split train --store`")
        }
        let refused = try starling("train", "--model", "fast-rcnn", "--data", data, "--epochs", "1", "--out", dir + "/out")
        #expect(refused.status != 0 && refused.error.contains("no proposals in /train") && refused.error.split(separator: "\n").count == 1, "\(refused.error)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out/fast-rcnn-last.h5"))

        var rng = RandomGenerator(seed: 4)
        let lists = (0..<dataset.count).map { i -> [BoxCorners] in
            (0..<(i % 3 == 0 ? 0 : 5 + i)).map { _ in
                let x = rng.uniform(0, Float(dataset.imageWidth) - 10), y = rng.uniform(0, Float(dataset.imageHeight) - 10)
                return box(x, y, x + rng.uniform(1, 10), y + rng.uniform(1, 10))
            }
        }
        try ProposalStore.write(lists, method: "test", split: "train", to: data)
        let reader = try ProposalReader(dataset: try DetectionDataset(path: data, split: "train"))
        let whole = try ProposalStore.read(path: data, split: "train").proposals
        #expect(whole == lists)
        for i in 0..<dataset.count { #expect(try reader.proposals(of: i) == lists[i]) }
        let source = try DetectionSource.withProposals(path: data, split: "train")
        let batch = try source.batch(indices: [2, 0, 1], epoch: 0, training: false, config: try FastRCNN.configuration(for: source.datasetDescription))
        #expect(batch.proposals == [lists[2], lists[0], lists[1]])
    }

    /// Four real Penn-Fudan frames with their selective-search proposals, through the data pipeline as `train` reads
    /// them: fast-rcnn drives its loss down to a fifth and then finds every pedestrian (IoU >= 0.5), scored above 0.5,
    /// from the stored proposals.
    @Test func overfitsRealFrames() throws {
        let dir = Fixture.temporaryDirectory("fast-rcnn-overfit")
        guard let data = try pennFudanFrames(dir) else { return }   // shared data not here
        let source = try DetectionSource.withProposals(path: data, split: "train")
        var config = try FastRCNN.configuration(for: source.datasetDescription)
        config.options["width"] = 0.0625
        config.options["hidden"] = 64
        let model = try ModelRegistry.build(config, seed: 2) as! FastRCNN
        var batch = try source.batch(indices: Array(0..<source.count), epoch: 0, training: true, config: config)
        batch.seed = 1
        let (first, last) = overfit(model, &batch, steps: 40, learningRate: 2e-3)
        #expect(last < first / 5, "loss \(first) -> \(last)")
        // Training-mode statistics, as the other families' overfitting tests: the moving averages settle later.
        let found = GradMode.disabled {
            model.roiHeads.detect(features: model.features(batch.images, training: true), proposals: batch.proposals!, imageHeight: config.inputShape[1],
                                  imageWidth: config.inputShape[2], decoding: .display)
        }
        for (n, objects) in (batch.objects ?? []).enumerated() {
            for o in objects {
                #expect(found[n].contains { $0.classID == o.classID && iou($0.box, o.box) >= 0.5 },
                        "frame \(n): no detection at \(o.box); found \(found[n].prefix(4))")
            }
        }
        // VOC AP at IoU 0.5 of the evaluation decoding (confidence 0.01), as `eval` scores: high on the frames it fitted.
        let scored = GradMode.disabled {
            model.roiHeads.detect(features: model.features(batch.images, training: true), proposals: batch.proposals!, imageHeight: config.inputShape[1],
                                  imageWidth: config.inputShape[2], decoding: .evaluation)
        }
        let truth = (batch.objects ?? []).enumerated().flatMap { n, objects in
            objects.map { GroundTruthBox(imageID: n, classID: $0.classID, box: $0.box.inDouble, difficult: $0.difficult) }
        }
        let detections = scored.enumerated().flatMap { n, boxes in
            boxes.map { Detection(imageID: n, classID: $0.classID, box: $0.box.inDouble, score: Double($0.score)) }
        }
        let ap = try VOCEvaluator().evaluate(groundTruth: truth, detections: detections).mAP ?? 0
        #expect(ap > 0.9, "AP50 \(ap) on the frames it was trained on")
    }

    /// The commands a user runs after `proposals --store`: `train`, `eval` (mAP, proposals and seconds per image),
    /// `predict` on a stored sample and on a raw image (selective search on the fly), `convert --to onnx` (images and
    /// rois inputs); `eval` on a file whose split has no proposals stops with one line naming it.
    @Test func commandsRunEndToEnd() throws {
        let dir = Fixture.temporaryDirectory("fast-rcnn-cli")
        guard let data = try pennFudanFrames(dir, count: 2) else { return }   // shared data not here
        let trained = try starling("train", "--model", "fast-rcnn", "--data", data, "--width-multiplier", "0.0625", "--option", "hidden=32",
                                   "--batch-size", "2", "--epochs", "1", "--val-split", "none", "--out", dir + "/ck")
        #expect(trained.status == 0, "\(trained.error)")
        let checkpoint = dir + "/ck/fast-rcnn-last.h5"
        let evaluated = try starling("eval", "--checkpoint", checkpoint, "--data", data, "--split", "train")
        #expect(evaluated.status == 0, "\(evaluated.error)")
        let stored = try ProposalStore.read(path: data, split: "train").proposals
        let perImage = Double(stored.map { min($0.count, 2000) }.reduce(0, +)) / 2
        #expect(evaluated.output.contains(String(format: "proposals per image: %.1f scored; seconds per image: ", perImage)), "\(evaluated.output)")
        #expect(evaluated.output.contains("mAP"))
        let predicted = try starling("predict", "--checkpoint", checkpoint, "--data", data, "--split", "train", "--limit", "1", "--out", dir + "/p")
        #expect(predicted.status == 0 && predicted.output.contains("FudanPed00001.png"), "\(predicted.error)")
        let image = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/pennfudan/PennFudanPed/PNGImages/FudanPed00003.png").path
        let raw = try starling("predict", "--checkpoint", checkpoint, "--image", image, "--confidence", "0.01", "--out", dir + "/p")
        #expect(raw.status == 0 && raw.output.contains("class") && FileManager.default.fileExists(atPath: dir + "/p/FudanPed00003-predictions.png"), "\(raw.error)")
        let converted = try starling("convert", checkpoint, dir + "/fast-rcnn.onnx", "--to", "onnx")
        #expect(converted.status == 0 && converted.output.contains("input rois: float32 [R, 5]"), "\(converted.error)")

        let bare = try starling("data", "detection", "--format", "voc", "--images", dir + "/images", "--labels", dir + "/labels", "--out", dir + "/bare.h5",
                                "--height", "128", "--width", "160", "--val-fraction", "0")
        #expect(bare.status == 0)
        let refused = try starling("eval", "--checkpoint", checkpoint, "--data", dir + "/bare.h5", "--split", "train")
        #expect(refused.status != 0 && refused.error.split(separator: "\n").count == 1
                && refused.error.contains("\(dir)/bare.h5: no proposals in /train; store them with `starling proposals"), "\(refused.error)")
    }
}
