import ArgumentParser
import Foundation
import StarlingModels

/// `starling anchors`: anchor shapes clustered from a detection dataset's training boxes, or (`--rpn`) how well Faster
/// R-CNN's anchors cover its boxes.
struct AnchorsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "anchors",
        abstract: "k-means over the training boxes' shapes with 1 - IoU as the distance; prints the clusters and their mean IoU. With --rpn, how faster-rcnn's anchors cover the boxes instead.")

    @Option(help: "Detection dataset (`starling data detection`).") var data: String
    @Option(help: "Split whose boxes are clustered.") var split: String = "train"
    @Option(name: .short, help: "Number of clusters.") var k: Int = 5
    @Option(help: "Seed of the k-means++ initialisation.") var seed: UInt64 = 0
    @Option(help: "Write the anchors for `train --anchors-from`: one width,height a line, smallest first (the order YOLO's heads hand them out, finest grid first).") var out: String?

    @Flag(help: "Instead of clustering: faster-rcnn's anchors for this data (with --option) against the split's boxes: each box's best IoU with any anchor, and the boxes with none at the RPN's thresholds (0.7 positive, 0.3 negative).") var rpn = false
    @Option(name: .customLong("option"), help: "With --rpn: a faster-rcnn option, NAME=VALUE, repeatable (anchor_size, anchor_octaves, anchor_scales_per_octave).") var familyOptions: [String] = []

    func validate() throws {
        guard k > 0 else { throw ValidationError("-k must be positive") }
        if !rpn && !familyOptions.isEmpty { throw ValidationError("--option goes with --rpn") }
        if rpn && out != nil { throw ValidationError("--out writes clusters: not with --rpn") }
    }

    func run() throws {
        try reportingErrors {
            let dataset = try DetectionDataset(path: data, split: split)
            if rpn { return try reportCoverage(dataset) }
            let sizes = (0..<dataset.count).flatMap { dataset.objects(of: $0) }.filter { !$0.difficult }.map { ($0.box.width, $0.box.height) }
            guard !sizes.isEmpty else { throw EvalError("\(data): /\(split) has no boxes to cluster") }
            let result = AnchorClustering(sizes: sizes, k: k, seed: seed)
            print("\(sizes.count) boxes of \(data) [\(split)], \(dataset.imageWidth)x\(dataset.imageHeight) images, k = \(k)")
            print("  width  height   w/img   h/img  aspect  boxes")
            for c in result.clusters {
                print(String(format: "%7.1f %7.1f %7.3f %7.3f %7.2f  %d", c.width, c.height, c.width / Float(dataset.imageWidth),
                             c.height / Float(dataset.imageHeight), c.width / c.height, c.count))
            }
            print(String(format: "mean IoU of a box with its best cluster: %.4f", result.meanIoU))
            if let out {
                try AnchorFile.write(result.clusters, to: out, comment: "k = \(k) anchors of \(data) [\(split)], \(dataset.imageWidth)x\(dataset.imageHeight) images, mean IoU \(result.meanIoU)")
                print("anchors: \(out) (train --anchors-from \(out))")
            }
        }
    }

    /// Faster R-CNN's anchors for `dataset`'s images against its boxes (difficult ones left out), overall and by class.
    func reportCoverage(_ dataset: DetectionDataset) throws {
        let family = try ModelRegistry.family(named: FasterRCNN.family)
        var config = try family.configuration(for: DatasetDescription(path: data, sampleShape: [3, dataset.imageHeight, dataset.imageWidth],
                                                                      classNames: dataset.classNames))
        for setting in familyOptions {
            let parts = setting.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let value = Double(parts[1]) else {
                throw ValidationError("--option takes NAME=VALUE with a number, e.g. anchor_size=16, not '\(setting)'")
            }
            config = try family.setting(parts[0], to: value, in: config, flag: "--option \(parts[0])")
        }
        guard let model = try family.build(config, seed: 0) as? FasterRCNN else { throw EvalError("faster-rcnn built no FasterRCNN") }
        let objects = (0..<dataset.count).flatMap { dataset.objects(of: $0) }.filter { !$0.difficult }
        guard !objects.isEmpty else { throw EvalError("\(data): /\(split) has no boxes") }
        let level = model.anchorGenerator.levels[0]
        print("faster-rcnn's anchors on \(dataset.imageWidth)x\(dataset.imageHeight) images: sizes "
              + level.sizes.map { String(format: "%.1f", $0) }.joined(separator: ", ")
              + " x ratios (h/w) " + level.aspectRatios.map { String(format: "%g", $0) }.joined(separator: ", ")
              + ", stride \(level.stride): \(model.anchors.count) anchors (\(level.anchorsPerLocation) a location)")
        print("\(objects.count) boxes of \(data) [\(split)] (difficult ones left out); each box's best IoU with any anchor:")
        print("class          boxes  mean IoU  median  < 0.7  < 0.5  < 0.3")
        let classes = Set(objects.map(\.classID)).sorted()
        for c in classes + [-1] {
            let chosen = c < 0 ? objects : objects.filter { $0.classID == c }
            let coverage = AnchorCoverage(boxes: chosen.map(\.box), anchors: model.anchors)
            let name = c < 0 ? "all" : (c < dataset.classNames.count ? dataset.classNames[c] : "class \(c)")
            print(name.padding(toLength: 12, withPad: " ", startingAt: 0)
                  + String(format: " %7d  %8.3f  %6.3f  %5d  %5d  %5d", chosen.count, coverage.meanBestIoU, coverage.medianBestIoU,
                           coverage.count(below: 0.7), coverage.count(below: 0.5), coverage.count(below: 0.3)))
        }
        print("(the RPN's matcher still makes each box's best anchors positive below 0.7: torchvision's and detectron2's allow_low_quality_matches)")
    }
}
