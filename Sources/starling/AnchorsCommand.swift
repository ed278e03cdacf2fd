import ArgumentParser
import Foundation
import StarlingModels

/// `starling anchors`: anchor shapes clustered from a detection dataset's training boxes.
struct AnchorsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "anchors", abstract: "k-means over the training boxes' shapes with 1 - IoU as the distance; prints the clusters and their mean IoU.")

    @Option(help: "Detection dataset (`starling data detection`).") var data: String
    @Option(help: "Split whose boxes are clustered.") var split: String = "train"
    @Option(name: .short, help: "Number of clusters.") var k: Int = 5
    @Option(help: "Seed of the k-means++ initialisation.") var seed: UInt64 = 0
    @Option(help: "Write the anchors for `train --anchors-from`: one width,height a line, smallest first (the order YOLO's heads hand them out, finest grid first).") var out: String?

    func validate() throws { guard k > 0 else { throw ValidationError("-k must be positive") } }

    func run() throws {
        try reportingErrors {
            let dataset = try DetectionDataset(path: data, split: split)
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
}
