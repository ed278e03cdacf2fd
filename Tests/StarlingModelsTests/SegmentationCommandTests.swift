import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingSegmentation

/// A small membrane-like set (classes membrane, cell) of 44 x 44 images: cells are discs of bright pixels, the rest
/// dark membrane, a corner of every map void. /train 4 images, /val 3.
func tinySegmentationSet(_ path: String) throws {
    let side = 44
    func sample(_ k: Int) -> SegmentationWriter.Sample {
        var rng = RandomGenerator(seed: UInt64(100 + k))
        let centres = (0..<5).map { _ in (rng.uniform(4, 40), rng.uniform(4, 40), rng.uniform(4, 9)) }
        var pixels = [UInt8](repeating: 0, count: side * side * 3), map = [UInt8](repeating: 0, count: side * side)
        for y in 0..<side {
            for x in 0..<side {
                let inside = centres.contains { (Float(x) - $0.0) * (Float(x) - $0.0) + (Float(y) - $0.1) * (Float(y) - $0.1) < $0.2 * $0.2 }
                let p = y * side + x
                map[p] = x < 3 && y < 3 ? 255 : (inside ? 1 : 0)
                let v = UInt8(max(0, min(255, (inside ? 190 : 60) + rng.uniform(-40, 40))))
                for c in 0..<3 { pixels[3 * p + c] = v }
            }
        }
        return .init(pixels: pixels, classMap: map, imageID: Int64(k))
    }
    try SegmentationWriter.write(to: path, classNames: SegmentationImport.membraneClassNames, height: side, width: side, instances: false,
                                 source: "test discs", splits: [("train", 4, { sample($0) }), ("val", 3, { sample(10 + $0) })])
}

/// U-Net through the command line as a user runs it: `train` (with the paper's weight map, elastic deformation and
/// valid padding), `--resume`, `eval` (table, JSON and picture) and `predict`.
@Suite struct SegmentationCommandTests {
    @Test func trainResumeEvalAndPredict() throws {
        let dir = Fixture.temporaryDirectory("unet-cli")
        let data = dir + "/discs.h5"
        try tinySegmentationSet(data)
        let train = ["train", "--model", "unet", "--data", data, "--width-multiplier", "0.0625", "--option", "levels=3", "--option", "valid=1",
                     "--option", "border_weight=10", "--option", "class_weight_0=2", "--elastic", "--batch-size", "2", "--steps-per-epoch", "2",
                     "--lr", "0.003", "--seed", "3", "--out", dir + "/ckpt"]
        let first = try run(Fixture.starling, train + ["--epochs", "1"])
        #expect(first.status == 0, "\(first.output)\(first.error)")
        let resumed = try run(Fixture.starling, train + ["--epochs", "2", "--resume", dir + "/ckpt/unet-last.h5"])
        #expect(resumed.status == 0, "\(resumed.output)\(resumed.error)")
        let checkpoint = dir + "/ckpt/unet-last.h5"
        let loaded = try Checkpoint.load(from: checkpoint)
        #expect(loaded.state.epoch == 2 && loaded.state.step == 4)
        #expect(loaded.model.config.options["border_weight"] == 10 && loaded.model.config.options["class_weight_0"] == 2)
        let model = try #require(loaded.model as? UNet)
        #expect(model.outputWindow == (20, 20, 4, 4))

        // A bad option is refused with one line.
        let bad = try run(Fixture.starling, train + ["--epochs", "1", "--option", "levels=9"])
        #expect(bad.status != 0 && bad.error.contains("levels") && bad.error.contains("[2.0, 7.0]"), "\(bad.error)")

        let eval = try run(Fixture.starling, ["eval", "--checkpoint", checkpoint, "--data", data, "--json", dir + "/eval.json", "--plots", dir])
        #expect(eval.status == 0, "\(eval.output)\(eval.error)")
        #expect(eval.output.contains("mean IoU") && eval.output.contains("ISBI pixel error") && eval.output.contains("membrane"))
        let report = try JSONDecoder().decode(SegmentationEvaluation.Report.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/eval.json")))
        // The figures, recomputed here from the model's predictions on the 4 x 4 windows of the three /val images.
        let val = try SegmentationDataset(path: data, split: "val")
        let source = SegmentationSource(dataset: val)
        let batch = try source.batch(indices: [0, 1, 2], epoch: 0, training: false, config: model.config)
        let predicted = model.predictClasses(batch.images)
        var correct = 0, counted = 0, membraneTruth = 0
        for n in 0..<3 {
            for y in 20..<24 {
                for x in 20..<24 {
                    let truth = batch.segmentation?.classes[(n * 44 + y) * 44 + x] ?? 255
                    guard truth != 255 else { continue }
                    counted += 1
                    if truth == 0 { membraneTruth += 1 }
                    if Int32(truth) == predicted[(n * 4 + y - 20) * 4 + x - 20] { correct += 1 }
                }
            }
        }
        #expect(report.images == 3 && report.window == [20, 20, 4, 4] && counted == 48)
        #expect(report.pixelAccuracy == Double(correct) / Double(counted))
        #expect(report.isbiPixelError == 1 - Double(correct) / Double(counted))
        #expect(report.classes.map(\.name) == ["membrane", "cell"] && report.classes[0].truthPixels == membraneTruth)

        // The picture: image, truth and prediction side by side, a row an image; the truth in the class palette.
        let picture = try PNGImage.read(path: dir + "/unet-last-segmentation.png", channels: 3)
        #expect(picture.width == 3 * 44 + 8 && picture.height == BitmapFont.lineHeight + 2 + 3 * (44 + 4))
        let y0 = BitmapFont.lineHeight + 2
        for (x, y) in [(10, 30), (40, 5), (1, 1)] {
            let truth = batch.segmentation?.classes[y * 44 + x] ?? 0
            let colour = SegmentationEvaluation.colour(truth, void: 255), i = 3 * ((y0 + y) * picture.width + 48 + x)
            #expect(RGB(picture.pixels[i], picture.pixels[i + 1], picture.pixels[i + 2]) == colour)
        }

        // predict on an image file and on the dataset.
        var rgb = [UInt8](repeating: 0, count: 30 * 50 * 3)
        for i in rgb.indices { rgb[i] = UInt8((i * 37) % 256) }
        try PNGImage.write(path: dir + "/frame.png", width: 50, height: 30, channels: 3, pixels: rgb)
        let predict = try run(Fixture.starling, ["predict", "--checkpoint", checkpoint, "--image", dir + "/frame.png", "--out", dir])
        #expect(predict.status == 0 && predict.output.contains("membrane") && predict.output.contains("%"), "\(predict.output)\(predict.error)")
        #expect(try PNGImage.read(path: dir + "/frame-segmentation.png").width == 2 * 44 + 4)
        let onData = try run(Fixture.starling, ["predict", "--checkpoint", checkpoint, "--data", data, "--limit", "2", "--out", dir])
        #expect(onData.status == 0 && FileManager.default.fileExists(atPath: dir + "/val-segmentation.png"), "\(onData.error)")
        // A set of other classes is refused, naming the file.
        let other = dir + "/other.h5"
        try SegmentationWriter.write(to: other, classNames: ["background", "road"], height: 44, width: 44, instances: false, source: "t",
                                     splits: [("val", 1, { _ in .init(pixels: [UInt8](repeating: 0, count: 44 * 44 * 3), classMap: [UInt8](repeating: 0, count: 44 * 44), imageID: 0) })])
        let refused = try run(Fixture.starling, ["eval", "--checkpoint", checkpoint, "--data", other])
        #expect(refused.status != 0 && refused.error.contains(other), "\(refused.error)")
    }
}
