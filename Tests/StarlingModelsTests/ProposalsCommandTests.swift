import Foundation
import Testing
import StarlingCore
import StarlingIO
import StarlingNN
import StarlingDetection
@testable import StarlingModels

@Suite struct ProposalsCommandTests {
    static let udacity = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/udacity").path

    /// Two real frames: the recall table, `--store` into the file (readable back, equal to the search run here, and
    /// replaced by a second store), and one-line refusals naming the file.
    @Test func recallTableStoreAndRefusals() throws {
        guard FileManager.default.fileExists(atPath: Self.udacity + "/labels.csv") else { return }   // shared data not here
        let dir = Fixture.temporaryDirectory("proposals-cli")
        let data = dir + "/udacity.h5"
        #expect(try starling("data", "detection", "--format", "udacity", "--images", Self.udacity + "/images", "--labels",
                             Self.udacity + "/labels.csv", "--out", data, "--height", "96", "--width", "160", "--val-fraction", "0").status == 0)
        let report = try starling("proposals", "--data", data, "--mode", "single", "--keep", "300", "--seed", "4")
        #expect(report.status == 0, "\(report.error)")
        #expect(report.output.contains("recall@0.5") && report.output.contains("seconds per image"))
        #expect(report.output.split(separator: "\n").contains { $0.hasPrefix("      100") })

        // Two images searched side by side store what one thread finds (checked against the search run here below).
        let store = try starling("proposals", "--data", data, "--mode", "single", "--keep", "300", "--seed", "4", "--store", "--threads", "2")
        #expect(store.status == 0, "\(store.error)")
        let (stored, method) = try ProposalStore.read(path: data, split: "train")
        #expect(method.contains("single") && method.contains("seed 4"))
        let dataset = try DetectionDataset(path: data, split: "train")
        #expect(stored.count == dataset.count && dataset.count == 2)
        var pixels = [UInt8](repeating: 0, count: dataset.imageHeight * dataset.imageWidth * 3)
        for i in 0..<dataset.count {
            try pixels.withUnsafeMutableBufferPointer { try dataset.readImages([i], into: $0) }
            let expected = pixels.withUnsafeBufferPointer {
                SelectiveSearch(mode: .single).proposals(pixels: $0, height: dataset.imageHeight, width: dataset.imageWidth,
                                                         seed: SelectiveSearch.imageSeed(4, index: i))
            }
            #expect(stored[i] == Array(expected.prefix(300)) && !stored[i].isEmpty)
        }
        // Stored again with other settings: replaced, the file still a valid dataset.
        #expect(try starling("proposals", "--data", data, "--mode", "single", "--keep", "5", "--store").status == 0)
        #expect(try ProposalStore.read(path: data, split: "train").proposals.allSatisfy { $0.count == 5 })
        #expect(!FileManager.default.fileExists(atPath: AtomicFile.temporaryPath(for: data)))

        for (arguments, needle) in [(["--data", dir + "/missing.h5"], dir + "/missing.h5"), (["--data", data, "--split", "val"], data),
                                    (["--data", data, "--store", "--limit", "1"], "--limit")] {
            let refused = try run(Fixture.starling, ["proposals"] + arguments)
            #expect(refused.status != 0)
            let lines = refused.error.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Usage") && !$0.contains("--help") }
            #expect(lines.count == 1 && refused.error.contains(needle), "\(refused.error)")
        }
        #expect(throws: (any Error).self) { try ProposalStore.read(path: data, split: "val") }
    }

    /// `proposals --checkpoint` on a faster-rcnn checkpoint (random weights) over two real frames: the recall of its
    /// RPN's proposals against a brute-force count over the same proposals, and the RoI minibatch line; `anchors --rpn`
    /// against `AnchorCoverage` on the model's anchors; one-line refusals.
    @Test func regionProposalNetworkMeasures() throws {
        guard FileManager.default.fileExists(atPath: Self.udacity + "/labels.csv") else { return }   // shared data not here
        let dir = Fixture.temporaryDirectory("proposals-rpn-cli")
        let data = dir + "/udacity.h5"
        #expect(try starling("data", "detection", "--format", "udacity", "--images", Self.udacity + "/images", "--labels",
                             Self.udacity + "/labels.csv", "--out", data, "--height", "96", "--width", "160", "--val-fraction", "0").status == 0)
        let dataset = try DetectionDataset(path: data, split: "train")
        let family = try ModelRegistry.family(named: FasterRCNN.family)
        var config = try family.configuration(for: DetectionSource(dataset: dataset).datasetDescription)
        for (name, value) in [("width", 0.0625), ("hidden", 16), ("anchor_size", 12), ("anchor_octaves", 3), ("anchor_scales_per_octave", 2)] {
            config = try family.setting(name, to: value, in: config, flag: name)
        }
        let model = try #require(try family.build(config, seed: 5) as? FasterRCNN)
        let checkpoint = dir + "/faster.h5"
        try Checkpoint.save(to: checkpoint, model: model, optimizer: nil as (any Optimizer)?, state: Checkpoint.TrainingState())

        let report = try starling("proposals", "--data", data, "--checkpoint", checkpoint, "--keep", "50")
        #expect(report.status == 0, "\(report.error)")
        #expect(report.output.contains("\(model.anchors.count) anchors") && report.output.contains("RoI head's training minibatch"))
        // Brute force: a box is recalled at 0.5 when any of its image's proposals overlaps it by IoU >= 0.5.
        let batch = try DetectionSource(dataset: dataset).batch(indices: [0, 1], epoch: 0, training: false, config: config)
        let features = GradMode.disabled { model.features(batch.images, training: false) }
        let found = model.proposals(features: features, layer: ProposalLayer(preNMSTopN: 1000, postNMSTopN: 50),
                                    imageHeight: dataset.imageHeight, imageWidth: dataset.imageWidth)
        var (boxes, recalled) = (0, 0)
        for k in 0..<2 {
            for truth in (batch.objects?[k] ?? []).filter({ !$0.difficult }) {
                boxes += 1
                if found[k].contains(where: { iou($0.box, truth.box) >= 0.5 }) { recalled += 1 }
            }
        }
        let all = report.output.split(separator: "\n").first { $0.hasPrefix("      all") }.map { $0.split(separator: " ").map(String.init) }
        #expect(boxes > 0 && all.flatMap { Double($0[1]) }.map { abs($0 - Double(recalled) / Double(boxes)) < 1e-4 } == true,
                "\(String(describing: all)) against \(recalled) of \(boxes)")

        let coverage = try starling("anchors", "--data", data, "--rpn", "--option", "anchor_size=12", "--option", "anchor_octaves=3",
                                    "--option", "anchor_scales_per_octave=2")
        #expect(coverage.status == 0, "\(coverage.error)")
        let expected = AnchorCoverage(boxes: (0..<dataset.count).flatMap { dataset.objects(of: $0) }.filter { !$0.difficult }.map(\.box),
                                      anchors: model.anchors)
        let row = coverage.output.split(separator: "\n").first { $0.hasPrefix("all ") }.map { $0.split(separator: " ").map(String.init) }
        #expect(row.map { [$0[1], $0[4], $0[5], $0[6]] } == ["\(expected.bestIoU.count)", "\(expected.count(below: 0.7))",
                                                             "\(expected.count(below: 0.5))", "\(expected.count(below: 0.3))"],
                "\(coverage.output)")

        for (arguments, needle) in [(["proposals", "--data", data, "--checkpoint", checkpoint, "--store"], "--store"),
                                    (["proposals", "--data", data, "--checkpoint", data], data),
                                    (["anchors", "--data", data, "--option", "anchor_size=12"], "--rpn"),
                                    (["anchors", "--data", data, "--rpn", "--option", "anchor_octaves=2.5"], "anchor_octaves")] {
            let refused = try run(Fixture.starling, arguments)
            #expect(refused.status != 0)
            let lines = refused.error.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Usage") && !$0.contains("--help") }
            #expect(lines.count == 1 && refused.error.contains(needle), "\(refused.error)")
        }
    }
}
