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
