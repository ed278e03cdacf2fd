import Foundation
import Testing
@testable import StarlingModels

/// SSD7 through the binary: import the real Udacity frames, train a few steps, evaluate, save and re-score the
/// detections, predict.
@Suite struct DetectorCommandTests {
    static let udacity = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/udacity").path

    @Test func trainEvaluateAndRescore() throws {
        guard FileManager.default.fileExists(atPath: Self.udacity + "/labels.csv") else { return }   // shared data not here
        let dir = Fixture.temporaryDirectory("ssd7-cli")
        let data = dir + "/udacity.h5"
        #expect(try starling("data", "detection", "--format", "udacity", "--images", Self.udacity + "/images", "--labels",
                             Self.udacity + "/labels.csv", "--out", data, "--height", "96", "--width", "160", "--val-fraction", "0").status == 0)
        let train = try starling("train", "--model", "ssd7", "--data", data, "--epochs", "2", "--batch-size", "2",
                                 "--val-split", "none", "--out", dir)
        #expect(train.status == 0, "\(train.error)")
        let eval = try starling("eval", "--checkpoint", dir + "/ssd7-last.h5", "--data", data, "--split", "train",
                                "--save-detections", dir + "/dets.json", "--save-gt", dir + "/gt.json", "--json", dir + "/summary.json")
        #expect(eval.status == 0, "\(eval.error)")
        #expect(eval.output.contains("car (1)") && eval.output.contains("protocol: VOC2010+ all-point AP, IoU >= 0.50"))
        #expect(eval.output.contains("confidence threshold 0.01, NMS IoU 0.45, top k 200"))
        // The saved files score the same through the model-free path.
        let rescored = try starling("eval", "--data", data, "--split", "train", "--detections", dir + "/dets.json", "--json", dir + "/again.json")
        #expect(rescored.status == 0, "\(rescored.error)")
        func mAP(_ path: String) throws -> Double? {
            (try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])?["mAP"] as? Double
        }
        #expect(try mAP(dir + "/summary.json") == mAP(dir + "/again.json"))
        let annotations = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/gt.json"))) as? [String: Any]
        #expect((annotations?["annotations"] as? [Any])?.count == 5)
        // predict: the course's table and a picture per image, for dataset images and for an image file.
        let predict = try starling("predict", "--checkpoint", dir + "/ssd7-last.h5", "--data", data, "--split", "train",
                                   "--limit", "2", "--confidence", "0.01", "--top-k", "3", "--out", dir + "/pictures")
        #expect(predict.status == 0, "\(predict.error)")
        #expect(predict.output.contains("class        conf    xmin    ymin    xmax    ymax"))
        #expect(FileManager.default.fileExists(atPath: dir + "/pictures/train-1-predictions.png"))
        let file = try starling("predict", "--checkpoint", dir + "/ssd7-last.h5", "--image", Self.udacity + "/images/1478019952686311006.jpg",
                                "--out", dir + "/pictures")
        #expect(file.status == 0 && FileManager.default.fileExists(atPath: dir + "/pictures/1478019952686311006-predictions.png"))
        // A checkpoint evaluated on data with other classes is refused by name.
        let mnist = try starling("eval", "--checkpoint", dir + "/ssd7-last.h5", "--data", try Fixture.sampleHDF5())
        #expect(mnist.status != 0 && mnist.error.contains("not a Starling detection dataset"))
    }
}
