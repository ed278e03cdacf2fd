import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingDetection

/// Four real Penn-Fudan frames (eight pedestrians), resized (96 x 128 by default) as `starling data detection --format voc`
/// imports them, in a batch with their dataset indices.
func pennFudanFrames(height: Int = 96, width: Int = 128) throws -> (batch: Batch, path: String)? {
    let base = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/pennfudan/PennFudanPed").path
    guard FileManager.default.fileExists(atPath: base + "/Annotation") else { return nil }   // shared data not here
    let dir = Fixture.temporaryDirectory("pennfudan-frames")
    let annotations = dir + "/Annotation"
    try FileManager.default.createDirectory(atPath: annotations, withIntermediateDirectories: true)
    for name in ["FudanPed00001", "PennPed00011", "PennPed00096", "FudanPed00012"] {
        try FileManager.default.copyItem(atPath: base + "/Annotation/\(name).txt", toPath: annotations + "/\(name).txt")
    }
    let path = dir + "/pf.h5"
    var options = DetectionImportOptions(format: .voc, images: base + "/PNGImages", labels: annotations, output: path)
    options.height = height
    options.width = width
    options.split = .fraction(0, seed: 0)
    _ = try DetectionImport.run(options)
    let dataset = try DetectionDataset(path: path, split: "train")
    let n = dataset.count
    var pixels = [UInt8](repeating: 0, count: n * height * width * 3)
    try pixels.withUnsafeMutableBufferPointer { try dataset.readImages(Array(0..<n), into: $0) }
    let images = Tensor(zeros: [n, 3, height, width])
    for i in 0..<n { for c in 0..<3 { for p in 0..<(height * width) {
        images.data[(i * 3 + c) * height * width + p] = Float(pixels[(i * height * width + p) * 3 + c])
    } } }
    var batch = Batch(images: images, indices: Array(0..<n), epoch: 0, seed: 1)
    batch.objects = (0..<n).map { dataset.objects(of: $0) }
    return (batch, path)
}

@Suite struct FasterRCNNTests {
    /// Sized to a 128 x 160 set: anchors 27, 54, 108 (128 x 128 / 600, doubled twice) over the 8 x 10 map at stride 16;
    /// proposals lie inside the image, at most the test-time 300, best first.
    @Test func configurationAnchorsAndProposals() throws {
        let names = ["background", "pedestrian"]
        let family = try ModelRegistry.family(named: FasterRCNN.family)
        var config = try family.configuration(for: DatasetDescription(path: "pf.h5", sampleShape: [3, 128, 160], classNames: names))
        #expect(config.options["anchor_size"] == 27 && config.inputShape == [3, 128, 160])
        config = try family.setting("width", to: 0.0625, in: config, flag: "--width-multiplier")
        config = try family.setting("hidden", to: 32, in: config, flag: "--option hidden")
        let model = try #require(try family.build(config, seed: 1) as? FasterRCNN)
        #expect(model.anchorGenerator.levels == [AnchorGenerator.Level(sizes: [27, 54, 108], stride: 16)])
        #expect(model.featureSize == (8, 10) && model.anchors.count == 8 * 10 * 9)
        var rng = RandomGenerator(seed: 2)
        let batch = Batch(images: Tensor(shape: [2, 3, 128, 160], values: (0..<(2 * 3 * 128 * 160)).map { _ in rng.uniform(0, 255) }))
        let (features, regions) = GradMode.disabled {
            let map = model.features(batch.images, training: false)
            return (map, model.proposals(for: batch, features: map, training: false))
        }
        #expect(features.shape == [2, model.backbone.channels, 8, 10] && regions.loss == nil)
        #expect(regions.boxes.count == 2 && regions.boxes.allSatisfy { !$0.isEmpty && $0.count <= 300 })
        #expect(regions.boxes.joined().allSatisfy { $0.xmin >= 0 && $0.ymin >= 0 && $0.xmax <= 160 && $0.ymax <= 128 && $0.isValid })
        do {
            _ = try family.setting("rpn_nms", to: 1.5, in: config, flag: "--option rpn_nms")
            Issue.record("rpn_nms 1.5 accepted")
        } catch {
            #expect("\(error)" == "--option rpn_nms must lie in [0.0, 1.0], got 1.5")
        }
        do {
            _ = try family.configuration(for: DatasetDescription(path: "tiny.h5", sampleShape: [3, 12, 160], classNames: names))
            Issue.record("12-pixel images accepted")
        } catch {
            #expect("\(error)" == "tiny.h5: images of 12x160 are too small for faster-rcnn (at least 16x16)")
        }
    }

    /// Anchor sizes from `anchor_size` s, `anchor_octaves` and `anchor_scales_per_octave` m: s 2^(k / m), here 16 x 1,
    /// 1.414, 2, ..., 11.31 (8 sizes, 24 anchors a location over the 4 x 10 map of 64 x 160), through the RPN's
    /// proposals and loss; the options survive a checkpoint; a configuration without them (written before they existed)
    /// keeps s, 2s, 4s; fractions are refused, and Mask R-CNN, whose pyramid has one size a level, does not take them.
    @Test func anchorOctavesAndTheirRoundTrip() throws {
        let names = ["background", "car"]
        let family = try ModelRegistry.family(named: FasterRCNN.family)
        var config = try family.configuration(for: DatasetDescription(path: "kitti.h5", sampleShape: [3, 64, 160], classNames: names))
        #expect(config.options["anchor_size"] == 14)
        for (name, value) in [("width", 0.0625), ("hidden", 16), ("anchor_size", 16), ("anchor_octaves", 4), ("anchor_scales_per_octave", 2)] {
            config = try family.setting(name, to: value, in: config, flag: "--option \(name)")
        }
        let model = try #require(try family.build(config, seed: 1) as? FasterRCNN)
        let sizes = model.anchorGenerator.levels[0].sizes
        let expected: [Float] = [16, 22.627417, 32, 45.254834, 64, 90.509668, 128, 181.019336]
        #expect(sizes.count == 8 && zip(sizes, expected).allSatisfy { abs($0 - $1) < 1e-4 })
        #expect(model.anchorGenerator.levels[0].anchorsPerLocation == 24 && model.anchors.count == 4 * 10 * 24)
        var rng = RandomGenerator(seed: 2)
        var batch = Batch(images: Tensor(shape: [2, 3, 64, 160], values: (0..<(2 * 3 * 64 * 160)).map { _ in rng.uniform(0, 255) }),
                          indices: [0, 1], epoch: 0, seed: 1)
        batch.objects = [[Object(box: BoxCorners(xmin: 20, ymin: 20, xmax: 44, ymax: 36), classID: 1)], []]
        let regions = GradMode.disabled { model.proposals(for: batch, features: model.features(batch.images, training: false), training: false) }
        #expect(regions.boxes.count == 2 && regions.boxes.allSatisfy { !$0.isEmpty && $0.count <= 300 })
        #expect(regions.loss.map { $0.data[0].isFinite && $0.data[0] > 0 } == true)
        let path = Fixture.temporaryDirectory("faster-rcnn-octaves") + "/octaves.h5"
        try Checkpoint.save(to: path, model: model, optimizer: nil as (any Optimizer)?, state: Checkpoint.TrainingState())
        let loaded = try #require(try Checkpoint.load(from: path).model as? FasterRCNN)
        #expect(loaded.config.options["anchor_octaves"] == 4 && loaded.config.options["anchor_scales_per_octave"] == 2)
        #expect(loaded.anchorGenerator == model.anchorGenerator && loaded.anchors == model.anchors)

        var older = config
        older.options["anchor_octaves"] = nil
        older.options["anchor_scales_per_octave"] = nil
        let old = try #require(try family.build(older, seed: 1) as? FasterRCNN)
        #expect(old.anchorGenerator.levels[0].sizes == [16, 32, 64])
        #expect(FasterRCNN.anchorSizes(smallest: 41, octaves: 3, scalesPerOctave: 1) == [41, 82, 164])

        var fractional = config
        fractional.options["anchor_octaves"] = 2.5
        #expect(throws: (any Error).self) { try family.build(fractional, seed: 1) }
        do {
            _ = try ModelRegistry.family(named: MaskRCNN.family).setting("anchor_octaves", to: 4, in: MaskRCNN.configuration(for: nil), flag: "--option anchor_octaves")
            Issue.record("mask-rcnn took anchor_octaves")
        } catch {
            #expect("\(error)" == "model mask-rcnn has no option --option anchor_octaves")
        }
    }

    /// End to end on four real Penn-Fudan frames: the RPN and the RoI head learn together (Adam), the loss falls
    /// fivefold over 100 steps, and then every pedestrian is detected (class 1, IoU >= 0.5, confidence 0.5) from the RPN's own
    /// test-time proposals. Batch norm in training mode, as the other families' overfitting tests: the moving averages
    /// need many more steps to settle.
    @Test func overfitsRealFrames() throws {
        guard let (frames, _) = try pennFudanFrames(height: 96, width: 128) else { return }
        var config = FasterRCNN.defaultConfig(height: 96, width: 128, classNames: ["background", "pedestrian"], widthMultiplier: 0.0625, anchorSize: 20)
        config.options["hidden"] = 64
        config.options["rois_per_image"] = 32
        let model = try #require(try ModelRegistry.build(config, seed: 1) as? FasterRCNN)
        let adam = Adam(parameterCount: model.parameters.count, learningRate: 3e-3)
        var batch = frames
        var first: Float = 0, last: Float = 0
        for step in 0..<100 {
            batch.epoch = step
            model.parameters.zeroGradients()
            let loss = model.loss(batch, training: true)
            loss.backward()
            adam.step(model.parameters)
            if step == 0 { first = loss.item }
            last = loss.item
        }
        #expect(last < first / 5, "loss \(first) -> \(last)")
        let found = GradMode.disabled {
            let map = model.features(batch.images, training: true)
            let regions = model.proposals(for: Batch(images: batch.images), features: map, training: false)
            return model.roiHeads.detect(features: map, proposals: regions.boxes, imageHeight: 96, imageWidth: 128, decoding: .display)
        }
        for (n, objects) in (batch.objects ?? []).enumerated() {
            for o in objects {
                #expect(found[n].contains { $0.classID == o.classID && iou($0.box, o.box) >= 0.5 },
                        "frame \(n): no detection of \(o.box); found \(found[n].prefix(4))")
            }
        }
    }
}

extension FasterRCNNTests {
    /// The commands end to end on a plain detection set (no stored proposals): train, eval (mAP, seconds and proposals
    /// per image: the RPN's test-time 300 at most), predict on the set and on a raw image, convert (safetensors, ONNX); bad
    /// input refused in one line.
    @Test func commandsEndToEnd() throws {
        guard let (_, data) = try pennFudanFrames() else { return }
        let dir = Fixture.temporaryDirectory("faster-rcnn-commands")
        let trained = try starling("train", "--model", "faster-rcnn", "--data", data, "--width-multiplier", "0.0625", "--option", "hidden=32",
                                   "--epochs", "2", "--batch-size", "2", "--val-split", "none", "--out", dir)
        #expect(trained.status == 0, "\(trained.error)")
        let checkpoint = dir + "/faster-rcnn-last.h5"
        let evaluated = try starling("eval", "--checkpoint", checkpoint, "--data", data, "--split", "train")
        #expect(evaluated.status == 0, "\(evaluated.error)")
        let line = evaluated.output.split(separator: "\n").first { $0.hasPrefix("proposals per image: ") }
        let perImage = line.flatMap { Double($0.dropFirst("proposals per image: ".count).split(separator: " ")[0]) }
        #expect(perImage.map { $0 > 0 && $0 <= 300 } == true && line?.contains("seconds per image: ") == true, "\(evaluated.output)")
        #expect(evaluated.output.contains("mAP"))
        let predicted = try starling("predict", "--checkpoint", checkpoint, "--data", data, "--split", "train", "--limit", "1", "--out", dir + "/p")
        #expect(predicted.status == 0 && predicted.output.contains("FudanPed00001.png"), "\(predicted.error)")
        let image = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/pennfudan/PennFudanPed/PNGImages/FudanPed00003.png").path
        let raw = try starling("predict", "--checkpoint", checkpoint, "--image", image, "--confidence", "0.01", "--out", dir + "/p")
        #expect(raw.status == 0 && FileManager.default.fileExists(atPath: dir + "/p/FudanPed00003-predictions.png"), "\(raw.error)")
        let converted = try starling("convert", checkpoint, dir + "/faster-rcnn.safetensors", "--to", "safetensors")
        #expect(converted.status == 0, "\(converted.error)")
        let onnx = try starling("convert", checkpoint, dir + "/faster-rcnn.onnx", "--to", "onnx")
        #expect(onnx.status == 0 && FileManager.default.fileExists(atPath: dir + "/faster-rcnn.onnx"), "\(onnx.error)")
        let missing = try starling("eval", "--checkpoint", checkpoint, "--data", dir + "/missing.h5")
        #expect(missing.status != 0 && missing.error.contains("missing.h5"), "\(missing.error)")
    }
}

extension DistributedTests {
    /// faster-rcnn on the four Penn-Fudan frames at global batch 4: two ranks with --sync-bn train the model one process
    /// trains. Each image's 256 anchors and its RoIs are drawn from its own (seed, epoch, index) stream, and both losses
    /// are divided by the sampled anchors and RoIs of the global batch (summed over ranks), so the averaged gradient is
    /// one process's; the proposals of an image depend on its own outputs only. Minibatches larger than the candidates
    /// (432 anchors, at most 432 proposals plus the boxes) take every labelled anchor and RoI, so the images, and the
    /// ranks, sample different counts, as a per-rank normaliser would get wrong. Three SGD steps.
    @Test func fasterRCNNRanksMatchOneProcessWithSyncBN() throws {
        guard let (_, data) = try pennFudanFrames() else { return }
        let dir = Fixture.temporaryDirectory("dp-faster-rcnn")
        let args = ["train", "--model", "faster-rcnn", "--data", data, "--epochs", "3", "--batch-size", "4", "--no-augment", "--val-split", "none",
                    "--sync-bn", "--seed", "2", "--optimizer", "sgd", "--lr", "0.001", "--width-multiplier", "0.0625",
                    "--option", "hidden=32", "--option", "rpn_batch=1000", "--option", "rois_per_image=1000"]
        // --replicas 1: the reference is one replica at the full batch (two replicas would train what two ranks do).
        let one = try run(Fixture.starling, args + ["--out", dir + "/one", "--replicas", "1"])
        #expect(one.status == 0, "\(one.error)")
        let two = try mpirun(2, args + ["--out", dir + "/two"])
        #expect(two.status == 0, "\(two.output)\(two.error)")
        try expectSameRun(dir + "/one", dir + "/two", family: "faster-rcnn", epochs: 3)
    }
}

extension DistributedTests {
    /// faster-rcnn's validation loss on ranks whose shares of the split differ in batches (5 images over 2 ranks at
    /// batch 2), as fast-rcnn's test: neither the RPN's anchor count nor the RoI count is allreduced outside training, so
    /// the run ends instead of one rank waiting in a collective the other never calls.
    @Test func fasterRCNNValidatesOnUnequalShares() throws {
        let dir = Fixture.temporaryDirectory("dp-faster-rcnn-val")
        guard let data = try pennFudanFrames(dir, count: 6) else { return }   // shared data not here
        let args = ["train", "--model", "faster-rcnn", "--data", data, "--width-multiplier", "0.0625", "--option", "hidden=32", "--epochs", "1",
                    "--steps-per-epoch", "1", "--batch-size", "2", "--val-split", "train", "--val-limit", "5", "--seed", "2"]
        let two = try run("/usr/bin/env", ["timeout", "-k", "5", "60", "mpirun", "-np", "2", Fixture.starling] + args + ["--out", dir + "/two"],
                          environment: mpiEnvironment)
        #expect(two.status == 0, "\(two.output)\(two.error)")
        let log = try String(contentsOfFile: dir + "/two/faster-rcnn-log.csv", encoding: .utf8).split(separator: "\n")
        let validation = log.dropFirst().compactMap { Double($0.split(separator: ",")[3]) }
        #expect(validation.count == 1 && validation.allSatisfy(\.isFinite), "\(log)")
    }
}
