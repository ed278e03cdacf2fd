import Foundation
import Testing
import StarlingCore
@testable import StarlingModels

/// The model-family registry, the data kinds and the detection head's plumbing: what a new family relies on.
@Suite struct ModelFamilyTests {
    @Test func registryNamesEveryFamilyOnceWithItsDataKind() throws {
        let names = ModelRegistry.familyNames
        #expect(Set(names).count == names.count)
        #expect(ModelRegistry.names(trainingOn: .detection) == ["ssd7", "ssd300", "yolov3-tiny", "yolov3", "yolov2", "yolov1", "faster-rcnn"])
        #expect(ModelRegistry.names(trainingOn: .detectionProposals) == ["rcnn", "fast-rcnn"])
        #expect(ModelRegistry.names(trainingOn: .images) == ["fc-ae", "sparse-ae", "deep-ae", "conv-ae", "denoising-ae", "seq2seq-ae", "vae", "conv-vae"])
        for family in ModelRegistry.families {
            // The reference configuration names its family and builds.
            let config = try family.configuration()
            #expect(config.family == family.name)
            if family.dataKind == .images { #expect(try family.build(config, seed: 1).config == config) }
        }
        #expect(throws: ModelError.self) { try ModelRegistry.family(named: "yolov9") }
        do {
            _ = try ModelRegistry.family(named: "yolov9")
        } catch {
            #expect("\(error)" == "unknown model 'yolov9'; known models: \(names.joined(separator: ", "))")
        }
    }

    @Test func tunableOptionsAreRefusedWhereAFamilyHasNone() throws {
        let ssd7 = try ModelRegistry.family(named: "ssd7"), ssd300 = try ModelRegistry.family(named: "ssd300")
        let config = try ssd300.configuration()
        #expect(try ssd300.setting("width", to: 0.25, in: config, flag: "--width-multiplier").options["width"] == 0.25)
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        #expect(message { _ = try ssd300.setting("width", to: 1.5, in: config, flag: "--width-multiplier") }
                == "--width-multiplier must lie in [0.001, 1.0], got 1.5")
        #expect(message { _ = try ssd7.setting("width", to: 0.5, in: try ssd7.configuration(), flag: "--width-multiplier") }
                == "model ssd7 has no option --width-multiplier")
    }

    @Test func detectorsSizeThemselvesToTheDataset() throws {
        let names = ["background", "car", "pedestrian"]
        let description = DatasetDescription(path: "frames.h5", sampleShape: [3, 96, 128], classNames: names)
        let config = try ModelRegistry.family(named: "ssd7").configuration(for: description)
        #expect(config.inputShape == [3, 96, 128] && config.classNames == names)
        #expect(config.anchors?.featureMapSizes == SSD7.featureMapSizes(height: 96, width: 128))
        // MNIST-like samples are no detection set; tiny frames do not fit SSD300.
        for (shape, expected) in [([28, 28], "frames.h5: not a detection dataset (samples [28, 28], classes [\"background\", \"car\", \"pedestrian\"]); make one with `starling data detection`"),
                                  ([3, 96, 128], "frames.h5: images of 96x128 are too small for SSD300 (at least 260x260)")] {
            let bad = DatasetDescription(path: "frames.h5", sampleShape: shape, classNames: names)
            do {
                _ = try ModelRegistry.family(named: "ssd300").configuration(for: bad)
                Issue.record("\(shape) accepted")
            } catch {
                #expect("\(error)" == expected)
            }
        }
    }

    /// The data source carries boxes only; the model's head turns them into its targets, on the data thread in
    /// training, through `Model.targetEncoder` — the same targets its encoder gives by hand.
    @Test func theHeadEncodesTargetsFromTheBatchObjects() throws {
        let names = ["background", "car", "pedestrian"]
        let model = try ModelRegistry.build(SSD7.defaultConfig(height: 64, width: 96, classNames: names), seed: 1) as! SSD7
        let objects = [[Object(box: BoxCorners(xmin: 10, ymin: 12, xmax: 40, ymax: 50), classID: 1)],
                       [], [Object(box: BoxCorners(xmin: 50, ymin: 5, xmax: 90, ymax: 60), classID: 2),
                            Object(box: BoxCorners(xmin: 0, ymin: 0, xmax: 20, ymax: 20), classID: 1, difficult: true)]]
        var batch = Batch(images: Tensor(zeros: [3, 3, 64, 96]))
        batch.objects = objects
        #expect(batch.targets == nil)
        let encoder = try #require(model.targetEncoder)
        encoder.encodeTargets(into: &batch)
        let targets = try #require(batch.targets as? SSDTargets)
        let expected = objects.map { model.encoder.encode($0) }
        #expect(targets.images.map(\.classes) == expected.map(\.classes))
        #expect(targets.images.map(\.offsets) == expected.map(\.offsets))
        #expect(targets.images[0].classes.contains(1) && targets.images[2].classes.contains(2))
        // The loss reads them: finite, and the same as from targets set by hand.
        var byHand = Batch(images: batch.images)
        byHand.anchorTargets = expected
        let (a, b) = GradMode.disabled { (model.loss(batch, training: false).item, model.loss(byHand, training: false).item) }
        #expect(a.isFinite && a == b)
    }

    @Test func tightBoxesAroundMasks() {
        // Pixels (x, y) = (1, 2) and (3, 4) in a 5-wide, 6-high mask: the box covers columns 1...3 and rows 2...4.
        var mask = [UInt8](repeating: 0, count: 30)
        mask[2 * 5 + 1] = 1
        mask[4 * 5 + 3] = 7
        #expect(SegmentationDataset.tightBox(mask, height: 6, width: 5) == BoxCorners(xmin: 1, ymin: 2, xmax: 4, ymax: 5))
        #expect(SegmentationDataset.tightBox([UInt8](repeating: 0, count: 30), height: 6, width: 5) == nil)
    }

    /// A segmentation file written by `SegmentationWriter` reads back through the data kind a family names: images
    /// as NCHW floats, class maps with their void label, and for instance data each object's box and mask.
    @Test func segmentationDataRoundTrips() throws {
        let dir = Fixture.temporaryDirectory("segmentation")
        let (h, w) = (6, 5)
        let names = ["background", "cell", "membrane"]
        func sample(_ k: Int, split: Int) -> SegmentationWriter.Sample {
            let pixels = (0..<(h * w * 3)).map { UInt8(($0 * 7 + k * 13 + split) % 256) }
            var map = [UInt8](repeating: 0, count: h * w)
            var mask = [UInt8](repeating: 0, count: h * w)
            for y in 1...2 { for x in (k + 1)...(k + 2) { map[y * w + x] = 1; mask[y * w + x] = 1 } }
            map[h * w - 1] = 255   // void
            return SegmentationWriter.Sample(pixels: pixels, classMap: map, imageID: Int64(100 * split + k), instances: [(classID: 1, mask: mask)])
        }
        let path = dir + "/cells.h5"
        try SegmentationWriter.write(to: path, classNames: names, height: h, width: w, instances: true, source: "test",
                                     splits: [("train", 3, { sample($0, split: 0) }), ("val", 2, { sample($0, split: 1) })])
        // Read as stored: the mask-aware augmentation (`SegmentationAugmentation`) is tested in UNetTests.
        let (train, validation) = try TrainingData.open(.instances, path: path, trainSplit: "train", validationSplit: nil, augment: false, seed: 0)
        #expect(train.count == 3 && validation?.count == 2)
        #expect(train.datasetDescription.sampleShape == [3, h, w] && train.datasetDescription.classNames == names)
        let batch = try train.batch(indices: [2, 0], epoch: 0, training: true, config: ModelConfig(family: "test", inputShape: [3, h, w]))
        let maps = try #require(batch.segmentation)
        #expect(maps.height == h && maps.width == w && maps.voidLabel == 255)
        for (k, i) in [2, 0].enumerated() {
            let expected = sample(i, split: 0)
            #expect(Array(maps.classes[(k * h * w)..<((k + 1) * h * w)]) == expected.classMap)
            // Channel c of pixel p is byte 3 p + c of the stored image.
            for c in 0..<3 { for p in 0..<(h * w) { #expect(batch.images.data[(k * 3 + c) * h * w + p] == Float(expected.pixels[3 * p + c])) } }
            #expect(batch.objects?[k] == [Object(box: BoxCorners(xmin: Float(i + 1), ymin: 1, xmax: Float(i + 3), ymax: 3), classID: 1)])
            #expect(maps.instanceMasks?[k] == [expected.instances?[0].mask ?? []])
        }
        // Semantic files carry no instances; a family that trains on instances refuses them, naming the file.
        let semantic = dir + "/semantic.h5"
        try SegmentationWriter.write(to: semantic, classNames: names, height: h, width: w, instances: false, source: "test",
                                     splits: [("train", 1, { sample($0, split: 0) })])
        let plain = try TrainingData.open(.segmentation, path: semantic, trainSplit: "train", validationSplit: "none", augment: false, seed: 0)
        #expect(try plain.train.batch(indices: [0], epoch: 0, training: false, config: ModelConfig(family: "test", inputShape: [3, h, w])).objects == nil)
        do {
            _ = try TrainingData.open(.instances, path: semantic, trainSplit: "train", validationSplit: "none", augment: false, seed: 0)
            Issue.record("instances accepted from a semantic file")
        } catch {
            #expect("\(error)" == "\(semantic): /train has no instance masks (instance_offsets); this model trains on instance data")
        }
    }

    @Test func segmentationClassesOutsideTheListAreRefused() throws {
        let dir = Fixture.temporaryDirectory("segmentation-bad")
        let path = dir + "/bad.h5"
        try SegmentationWriter.write(to: path, classNames: ["background", "road"], height: 2, width: 2, instances: false, source: "test",
                                     splits: [("train", 1, { _ in
                                         SegmentationWriter.Sample(pixels: [UInt8](repeating: 0, count: 12), classMap: [0, 1, 2, 255], imageID: 0)
                                     })])
        let source = SegmentationSource(dataset: try SegmentationDataset(path: path, split: "train"))
        do {
            _ = try source.batch(indices: [0], epoch: 0, training: false, config: ModelConfig(family: "test", inputShape: [3, 2, 2]))
            Issue.record("class 2 accepted")
        } catch {
            #expect("\(error)" == "\(path): /train/class_maps[0] holds class 2, outside 0...1 and not the void label 255")
        }
        do {
            _ = try SegmentationDataset(path: path, split: "val")
            Issue.record("missing split accepted")
        } catch {
            #expect("\(error)" == "\(path): no split '/val'")
        }
    }
}
