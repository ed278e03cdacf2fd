import Foundation
import Testing
@testable import StarlingModels

/// The `tensorboard` package's own reader (pip, test-only; Launch/test.sh installs it) reads `train --tensorboard`'s
/// event files: every record's masked CRC-32C, the scalars against the CSV log, the validation pictures as PNGs.
private let tensorBoardAvailable: Bool = {
    (try? run("/usr/bin/env", ["python3", "-c", "import tensorboard"]).status) == 0
}()

private let reader = """
import json, struct, sys, glob
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
files = glob.glob(sys.argv[1] + "/events.out.tfevents.*")
records = 0
for name in files:
    data = open(name, "rb").read()
    at = 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        body = data[at + 12:at + 12 + length]
        (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        assert header_crc == masked_crc32c(header) and body_crc == masked_crc32c(body), "bad CRC in record %d" % records
        at += 16 + length
        records += 1
ea = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={event_accumulator.IMAGES: 0, event_accumulator.SCALARS: 0})
ea.Reload()
tags = ea.Tags()
out = {"files": len(files), "records": records,
       "scalars": {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]},
       "images": {t: [[e.step, e.width, e.height, e.encoded_image_string[:8].hex()] for e in ea.Images(t)] for t in tags["images"]}}
print(json.dumps(out))
"""

@Suite struct TensorBoardTests {
    @Test(.enabled(if: tensorBoardAvailable, "python3 with the tensorboard package (pip install tensorboard)"))
    func tensorBoardReadsTheEventFiles() throws {
        let dir = Fixture.temporaryDirectory("tensorboard")
        let train = try starling("train", "--model", "fc-ae", "--data", try Fixture.sampleHDF5(), "--epochs", "2", "--steps-per-epoch", "5",
                                 "--batch-size", "64", "--val-limit", "128", "--out", dir + "/out", "--tensorboard", dir + "/board")
        #expect(train.status == 0, "\(train.error)")
        try reader.write(toFile: dir + "/read.py", atomically: true, encoding: .utf8)
        let read = try run("/usr/bin/env", ["python3", dir + "/read.py", dir + "/board"])
        #expect(read.status == 0, "\(read.error)")
        let json = try JSONSerialization.jsonObject(with: Data(read.output.utf8)) as? [String: Any] ?? [:]
        #expect(json["files"] as? Int == 1)
        let scalars = json["scalars"] as? [String: [[Double]]] ?? [:]
        #expect(Set(scalars.keys) == ["train/loss", "train/learning_rate", "train/images_per_second", "epoch/loss", "epoch/val_loss",
                                       "epoch/learning_rate", "epoch/images_per_second", "epoch/data_wait_seconds"])
        #expect(scalars["train/loss"]?.map { Int($0[0]) } == Array(1...10))
        #expect(json["records"] as? Int == 1 + 10 * 3 + 2 * 5 + 2)   // file version, steps, epochs, pictures
        // The epoch figures are the CSV log's, as float32.
        let rows = try String(contentsOfFile: dir + "/out/fc-ae-log.csv", encoding: .utf8).split(separator: "\n").dropFirst()
            .map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        #expect(rows.count == 2)
        for (k, row) in rows.enumerated() {
            let (step, loss, validation, rate) = (Double(row[1]) ?? -1, Double(row[2]) ?? -1, Double(row[3]) ?? -1, Double(row[4]) ?? -1)
            // Equal as float32 (the JSON between Python and Foundation may move a double's last digit).
            for (tag, value) in [("epoch/loss", loss), ("epoch/val_loss", validation), ("epoch/learning_rate", rate)] {
                let logged = scalars[tag]?[k] ?? []
                #expect(logged.count == 2 && logged[0] == step && Float(logged[1]) == Float(value), "\(tag): \(logged) against \(step), \(value)")
            }
        }
        // Originals over reconstructions of 8 validation digits, at each validation, as PNG (its signature).
        let images = json["images"] as? [String: [[Any]]] ?? [:]
        let pictures = images["validation/reconstructions"] ?? []
        #expect(pictures.map { $0[0] as? Int } == [5, 10])
        for picture in pictures {
            #expect(picture[1] as? Int == 8 * 28 && picture[2] as? Int == 2 * 28 && picture[3] as? String == "89504e470d0a1a0a")
        }
    }

    /// A detector's events: the validation mAP (eval's VOC protocol) and the drawn detections at each validation.
    @Test(.enabled(if: tensorBoardAvailable, "python3 with the tensorboard package (pip install tensorboard)"))
    func detectorEventsHoldMAPAndDetections() throws {
        let udacity = DetectorCommandTests.udacity
        guard FileManager.default.fileExists(atPath: udacity + "/labels.csv") else { return }   // shared data not here
        let dir = Fixture.temporaryDirectory("tensorboard-ssd7")
        let data = dir + "/udacity.h5"
        #expect(try starling("data", "detection", "--format", "udacity", "--images", udacity + "/images", "--labels", udacity + "/labels.csv",
                             "--out", data, "--height", "64", "--width", "96", "--val-fraction", "0").status == 0)
        let train = try starling("train", "--model", "ssd7", "--data", data, "--batch-size", "2", "--epochs", "1", "--val-split", "train",
                                 "--out", dir + "/out", "--tensorboard", dir + "/board")
        #expect(train.status == 0, "\(train.error)")
        try reader.write(toFile: dir + "/read.py", atomically: true, encoding: .utf8)
        let read = try run("/usr/bin/env", ["python3", dir + "/read.py", dir + "/board"])
        #expect(read.status == 0, "\(read.error)")
        let json = try JSONSerialization.jsonObject(with: Data(read.output.utf8)) as? [String: Any] ?? [:]
        let mAP = (json["scalars"] as? [String: [[Double]]])?["validation/mAP_voc_iou0.5"] ?? []
        #expect(mAP.count == 1 && mAP[0][0] == 1 && (0...1).contains(mAP[0][1]), "\(mAP)")
        let images = json["images"] as? [String: [[Any]]] ?? [:]
        for tag in ["validation/detections_0", "validation/detections_1"] {
            let picture = images[tag]?.first ?? []
            #expect(picture.count == 4 && picture[1] as? Int == 96 && picture[2] as? Int == 64 && picture[3] as? String == "89504e470d0a1a0a", "\(tag): \(picture)")
        }
    }

    /// U-Net's events: at each validation `eval`'s mean IoU, mean Dice, pixel accuracy and ISBI pixel error (equal, as
    /// float32, to `eval --json` of the checkpoint written at that epoch) and the image | truth | prediction picture.
    @Test(.enabled(if: tensorBoardAvailable, "python3 with the tensorboard package (pip install tensorboard)"))
    func segmentationEventsHoldEvalFiguresAndPictures() throws {
        let dir = Fixture.temporaryDirectory("tensorboard-unet")
        let data = dir + "/discs.h5"
        try tinySegmentationSet(data)
        let train = try starling("train", "--model", "unet", "--data", data, "--width-multiplier", "0.0625", "--option", "levels=3",
                                 "--batch-size", "2", "--epochs", "1", "--out", dir + "/out", "--tensorboard", dir + "/board")
        try #require(train.status == 0, "\(train.error)")
        let eval = try starling("eval", "--checkpoint", dir + "/out/unet-last.h5", "--data", data, "--json", dir + "/eval.json", "--plots", dir)
        try #require(eval.status == 0, "\(eval.error)")
        let report = try JSONDecoder().decode(SegmentationEvaluation.Report.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/eval.json")))
        try reader.write(toFile: dir + "/read.py", atomically: true, encoding: .utf8)
        let read = try run("/usr/bin/env", ["python3", dir + "/read.py", dir + "/board"])
        try #require(read.status == 0, "\(read.error)")
        let json = try JSONSerialization.jsonObject(with: Data(read.output.utf8)) as? [String: Any] ?? [:]
        let scalars = json["scalars"] as? [String: [[Double]]] ?? [:]
        for (tag, value) in [("mean_iou", report.meanIoU), ("mean_dice", report.meanDice), ("pixel_accuracy", report.pixelAccuracy),
                             ("isbi_pixel_error", report.isbiPixelError)] {
            let logged = scalars["validation/" + tag] ?? []
            #expect(logged.count == 1 && logged[0][0] == 2 && Float(logged[0][1]) == Float(value ?? -1), "\(tag): \(logged) against \(String(describing: value))")
        }
        let picture = (json["images"] as? [String: [[Any]]])?["validation/segmentation"]?.first ?? []
        #expect(picture.count == 4 && picture[3] as? String == "89504e470d0a1a0a", "\(picture)")
    }

    /// Mask R-CNN's events: box and mask AP (and AP50) equal to `eval --json` of the epoch's checkpoint, and two
    /// validation images with their instances drawn.
    @Test(.enabled(if: tensorBoardAvailable, "python3 with the tensorboard package (pip install tensorboard)"))
    func maskRCNNEventsHoldAPAndInstances() throws {
        let dir = Fixture.temporaryDirectory("tensorboard-mask-rcnn")
        guard let data = try pennFudanInstances(dir) else { return }   // shared data not here
        let train = try starling("train", "--model", "mask-rcnn", "--data", data, "--width-multiplier", "0.0625", "--option", "hidden=32",
                                 "--option", "mask_width=8", "--option", "rois_per_image=16", "--option", "rpn_post_nms_train=100",
                                 "--epochs", "1", "--batch-size", "2", "--val-split", "train", "--out", dir + "/out", "--tensorboard", dir + "/board")
        try #require(train.status == 0, "\(train.error)")
        let eval = try starling("eval", "--checkpoint", dir + "/out/mask-rcnn-last.h5", "--data", data, "--split", "train", "--json", dir + "/eval.json")
        try #require(eval.status == 0, "\(eval.error)")
        let report = try JSONDecoder().decode(InstanceEvaluation.Report.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/eval.json")))
        try reader.write(toFile: dir + "/read.py", atomically: true, encoding: .utf8)
        let read = try run("/usr/bin/env", ["python3", dir + "/read.py", dir + "/board"])
        try #require(read.status == 0, "\(read.error)")
        let json = try JSONSerialization.jsonObject(with: Data(read.output.utf8)) as? [String: Any] ?? [:]
        let scalars = json["scalars"] as? [String: [[Double]]] ?? [:]
        for (tag, value) in [("box_AP", report.boxStats[0]), ("box_AP50", report.boxStats[1]), ("mask_AP", report.maskStats[0]), ("mask_AP50", report.maskStats[1])] {
            let logged = scalars["validation/" + tag] ?? []
            #expect(logged.count == 1 && logged[0][0] == 2 && Float(logged[0][1]) == Float(value), "\(tag): \(logged) against \(value)")
        }
        let images = json["images"] as? [String: [[Any]]] ?? [:]
        for tag in ["validation/instances_0", "validation/instances_1"] {
            let picture = images[tag]?.first ?? []
            #expect(picture.count == 4 && picture[1] as? Int == 128 && picture[2] as? Int == 96 && picture[3] as? String == "89504e470d0a1a0a", "\(tag): \(picture)")
        }
    }
}
