import Foundation
import Testing
import StarlingIO
import StarlingPlots
import StarlingCore
@testable import StarlingModels

/// `predict --frames`: every frame of a folder or a numbered sequence, detections to COCO results JSON, pictures to a
/// folder, the loop's FPS printed; for detectors, autoencoders and segmentation models.
@Suite struct PredictFramesTests {
    /// Frames of 96 x 80 with a bright square that moves, as PNG files named `names`.
    private func writeFrames(_ names: [String], in dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (k, name) in names.enumerated() {
            var canvas = PixelCanvas(width: 96, height: 80, background: RGB(30, 40, 50))
            canvas.fillRect(x: 10 + 8 * k, y: 20, width: 24, height: 30, color: RGB(240, 220, 10))
            try canvas.writePNG(path: dir + "/" + name)
        }
    }

    private func checkpoint(_ config: ModelConfig, _ path: String) throws -> String {
        let model = try ModelRegistry.build(config, seed: 3)
        try Checkpoint.save(to: path, model: model, optimizer: nil as (any Optimizer)?, state: Checkpoint.TrainingState())
        return path
    }

    @Test func framesInNaturalOrderAndNumberedSequences() throws {
        let dir = Fixture.temporaryDirectory("frames-order")
        try writeFrames(["frame10.png", "frame2.png", "frame1.png"], in: dir + "/folder")
        try "notes".write(toFile: dir + "/folder/notes.txt", atomically: true, encoding: .utf8)
        #expect(try FrameSequence.frames(dir + "/folder").map { URL(fileURLWithPath: $0).lastPathComponent } == ["frame1.png", "frame2.png", "frame10.png"])
        try writeFrames(["f001.png", "f002.png", "f003.png", "f005.png"], in: dir + "/numbered")
        #expect(try FrameSequence.frames(dir + "/numbered/f%03d.png") == [1, 2, 3].map { dir + "/numbered/f00\($0).png" })
        #expect(throws: FrameSequence.Failure.self) { try FrameSequence.frames(dir + "/numbered/g%03d.png") }
        try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: true)
        #expect(throws: FrameSequence.Failure.self) { try FrameSequence.frames(dir + "/empty") }
    }

    @Test func detectorWritesCOCOResultsAndPictures() throws {
        let dir = Fixture.temporaryDirectory("frames-detector")
        try writeFrames(["frame1.png", "frame2.png", "frame10.png"], in: dir + "/clip")
        let config = SSD7.defaultConfig(height: 64, width: 64, classNames: ["background", "car", "truck", "pedestrian"])
        let model = try checkpoint(config, dir + "/ssd7.h5")
        let run = try starling("predict", "--checkpoint", model, "--frames", dir + "/clip", "--confidence", "0.01", "--out", dir + "/out")
        #expect(run.status == 0, "\(run.error)")
        #expect(run.output.contains("FPS over the loop") && run.output.contains("3 frames"))
        let results = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/out/detections.json"))) as? [[String: Any]] ?? []
        #expect(!results.isEmpty)
        #expect(Set(results.compactMap { $0["image_id"] as? Int }).isSubset(of: [1, 2, 3]))
        for result in results {
            let box = result["bbox"] as? [Double] ?? []
            #expect(box.count == 4 && box[0] >= 0 && box[1] >= 0 && box[0] + box[2] <= 96.001 && box[1] + box[3] <= 80.001, "\(box)")
            #expect((1...3).contains(result["category_id"] as? Int ?? 0) && (result["score"] as? Double ?? 0) >= 0.01)
        }
        for name in ["frame1", "frame2", "frame10"] {
            let picture = try PNGImage.read(path: "\(dir)/out/\(name).png")
            #expect(picture.width == 96 && picture.height == 80)
        }
    }

    @Test func autoencoderAndSegmentationFrames() throws {
        let dir = Fixture.temporaryDirectory("frames-others")
        try writeFrames(["a1.png", "b.png"], in: dir + "/clip")
        let ae = try checkpoint(FCAutoencoder.defaultConfig(), dir + "/fc-ae.h5")
        let run = try starling("predict", "--checkpoint", ae, "--frames", dir + "/clip", "--out", dir + "/ae")
        #expect(run.status == 0, "\(run.error)")
        #expect(run.output.contains("FPS over the loop") && run.output.contains("reconstruction"))
        #expect(try PNGImage.read(path: dir + "/ae/a1.png").width == 2 * 28 * 4 + 4)
        let unet = try checkpoint(smallUNetConfig, dir + "/unet.h5")
        let segmented = try starling("predict", "--checkpoint", unet, "--frames", dir + "/clip", "--out", dir + "/unet")
        #expect(segmented.status == 0, "\(segmented.error)")
        #expect(try PNGImage.read(path: dir + "/unet/b.png").width == 2 * 44 + 4)
    }

    /// The COCO results file `predict --frames` wrote.
    private func results(_ path: String) throws -> [[String: Any]] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [[String: Any]] ?? []
    }

    /// A frame read and resized as `predict` does, as the model's [1, 3, H, W] input.
    private func input(_ path: String, height h: Int, width w: Int) throws -> Tensor {
        let picture = try ImageFile.readRGB(path: path)
        let resized = ImageResize.bilinear(picture.pixels, width: picture.width, height: picture.height, channels: 3, toWidth: w, toHeight: h)
        let t = Tensor(zeros: [1, 3, h, w])
        for c in 0..<3 { for p in 0..<(h * w) { t.data[c * h * w + p] = Float(resized[3 * p + c]) } }
        return t
    }

    /// rcnn and fast-rcnn (selective search on each frame) and faster-rcnn (its RPN): detections of every frame in the
    /// frame's own pixels, the selective search's share of the loop printed; faster-rcnn's equal its own detect on the
    /// resized frame, scaled back.
    @Test func regionDetectorsOverFrames() throws {
        let dir = Fixture.temporaryDirectory("frames-region")
        let frames = ["frame1.png", "frame2.png"]
        try writeFrames(frames, in: dir + "/clip")
        let names = ["background", "pedestrian"]
        var rcnn = try RCNN.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 64, 64], classNames: names))
        for (k, v) in ["width": 0.125, "hidden": 32, "warp": 32] { rcnn.options[k] = v }
        var fast = FastRCNN.defaultConfig(height: 64, width: 64, classNames: names, widthMultiplier: 0.0625)
        fast.options["hidden"] = 32
        let faster = FasterRCNN.defaultConfig(height: 64, width: 96, classNames: names, widthMultiplier: 0.0625, anchorSize: 20)
        for (family, config, searches) in [("rcnn", rcnn, true), ("fast-rcnn", fast, true), ("faster-rcnn", faster, false)] {
            let model = try checkpoint(config, "\(dir)/\(family).h5")
            let run = try starling("predict", "--checkpoint", model, "--frames", dir + "/clip", "--confidence", "0.01", "--out", "\(dir)/\(family)")
            try #require(run.status == 0, "\(family): \(run.error)")
            #expect(run.output.contains("FPS over the loop") && run.output.contains("2 frames") && run.output.contains("selective search") == searches,
                    "\(family): \(run.output)")
            let found = try results("\(dir)/\(family)/detections.json")
            #expect(!found.isEmpty, "\(family) found nothing")
            for result in found {
                let box = result["bbox"] as? [Double] ?? []
                #expect(box.count == 4 && box[0] >= 0 && box[1] >= 0 && box[0] + box[2] <= 96.001 && box[1] + box[3] <= 80.001, "\(family): \(box)")
            }
            for name in ["frame1", "frame2"] { #expect(try PNGImage.read(path: "\(dir)/\(family)/\(name).png").width == 96) }
        }
        // faster-rcnn's file against its own detect on each resized frame.
        let loaded = try Checkpoint.load(from: dir + "/faster-rcnn.h5").model as! FasterRCNN
        let found = try results(dir + "/faster-rcnn/detections.json")
        for (k, frame) in frames.enumerated() {
            let expected = loaded.detect(Batch(images: try input("\(dir)/clip/\(frame)", height: 64, width: 96)),
                                         decoding: DetectionDecoding(confidenceThreshold: 0.01, iouThreshold: 0.45, topK: 200))[0]
            let written = found.filter { $0["image_id"] as? Int == k + 1 }
            try #require(written.count == expected.count, "frame \(k + 1): \(written.count) written, \(expected.count) detected")
            for (w, d) in zip(written, expected) {
                let box = w["bbox"] as? [Double] ?? []
                let sy: Double = 80.0 / 64.0
                let scaled: [Double] = [Double(d.box.xmin), Double(d.box.ymin) * sy, Double(d.box.xmax - d.box.xmin), Double(d.box.ymax - d.box.ymin) * sy]
                #expect(zip(box, scaled).allSatisfy { abs($0 - $1) < 1e-3 } && abs((w["score"] as? Double ?? 0) - Double(d.score)) < 1e-6, "\(box) against \(scaled)")
            }
        }
    }

    /// mask-rcnn: instances of every frame drawn, and a COCO results file whose masks (compressed RLE of the frame's
    /// size) are the model's own masks on the resized frame, taken back to the frame's pixels by nearest neighbour.
    @Test func maskRCNNOverFrames() throws {
        let dir = Fixture.temporaryDirectory("frames-mask-rcnn")
        let frames = ["frame1.png", "frame2.png"]
        try writeFrames(frames, in: dir + "/clip")
        var config = try MaskRCNN.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, 64, 96], classNames: ["background", "pedestrian"]))
        for (k, v) in ["width": 0.0625, "hidden": 32, "mask_width": 8, "rpn_pre_nms_test": 300, "rpn_post_nms_test": 50] { config.options[k] = v }
        let model = try checkpoint(config, dir + "/mask-rcnn.h5")
        let run = try starling("predict", "--checkpoint", model, "--frames", dir + "/clip", "--confidence", "0.01", "--out", dir + "/out",
                               "--detections", dir + "/instances.json")
        try #require(run.status == 0, "\(run.error)")
        #expect(run.output.contains("FPS over the loop") && run.output.contains("masks to the frame's size and RLE"), "\(run.output)")
        let found = try results(dir + "/instances.json")
        #expect(!found.isEmpty)
        let loaded = try Checkpoint.load(from: model).model as! MaskRCNN
        for (k, frame) in frames.enumerated() {
            #expect(try PNGImage.read(path: "\(dir)/out/\(URL(fileURLWithPath: frame).deletingPathExtension().lastPathComponent).png").height == 80)
            let expected = loaded.detectInstances(Batch(images: try input("\(dir)/clip/\(frame)", height: 64, width: 96)),
                                                  decoding: DetectionDecoding(confidenceThreshold: 0.01, iouThreshold: 0.45, topK: 200))[0]
            let written = found.filter { $0["image_id"] as? Int == k + 1 }
            try #require(written.count == expected.count, "frame \(k + 1): \(written.count) written, \(expected.count) detected")
            for (w, instance) in zip(written, expected) {
                let segmentation = w["segmentation"] as? [String: Any] ?? [:]
                #expect(segmentation["size"] as? [Int] == [80, 96])
                let mask = RunLengthMask(compressed: segmentation["counts"] as? String ?? "", height: 80, width: 96)?.decoded()
                // Frame row y shows model row floor((y + 0.5) * 64 / 80); the widths are equal.
                var back = [UInt8](repeating: 0, count: 80 * 96)
                for y in 0..<80 {
                    let row: Int = Int((Double(y) + 0.5) * 64.0 / 80.0)
                    for x in 0..<96 { back[y * 96 + x] = instance.mask[row * 96 + x] }
                }
                #expect(mask == back, "frame \(k + 1): the written mask is not the model's")
            }
        }
    }

    /// A frame that does not decode stops the run with its name, before anything is written.
    @Test func badFrameWritesNothing() throws {
        let dir = Fixture.temporaryDirectory("frames-bad")
        try writeFrames(["frame1.png"], in: dir + "/clip")
        try "not a picture".write(toFile: dir + "/clip/frame2.jpg", atomically: true, encoding: .utf8)
        let model = try checkpoint(SSD7.defaultConfig(height: 64, width: 64, classNames: ["background", "car"]), dir + "/ssd7.h5")
        let run = try starling("predict", "--checkpoint", model, "--frames", dir + "/clip", "--out", dir + "/out")
        #expect(run.status != 0)
        #expect(run.error.contains("frame2.jpg") && !run.error.contains("Fatal error"), "\(run.error)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
        let missing = try starling("predict", "--checkpoint", model, "--frames", dir + "/nothing")
        #expect(missing.status != 0 && missing.error.contains("nothing: no such folder"), "\(missing.error)")
    }
}
