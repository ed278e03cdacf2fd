import ArgumentParser
import StarlingModels

/// `starling anchors`: anchor shapes clustered from a detection dataset's training boxes.
struct AnchorsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "anchors", abstract: "k-means over the training boxes' shapes with 1 - IoU as the distance; prints the clusters and their mean IoU.")

    @Option(help: "Detection dataset (`starling data detection`).") var data: String
    @Option(help: "Split whose boxes are clustered.") var split: String = "train"
    @Option(name: .short, help: "Number of clusters.") var k: Int = 5
    @Option(help: "Seed of the k-means++ initialisation.") var seed: UInt64 = 0

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
                func f(_ v: Float, _ digits: Int) -> String {
                    var scale: Float = 1
                    for _ in 0..<digits { scale *= 10 }
                    let text = "\(Double((v * scale).rounded() / scale))"
                    return String(repeating: " ", count: max(0, 7 - text.count)) + text
                }
                print("\(f(c.width, 1)) \(f(c.height, 1)) \(f(c.width / Float(dataset.imageWidth), 3)) \(f(c.height / Float(dataset.imageHeight), 3)) \(f(c.width / c.height, 2))  \(c.count)")
            }
            print("mean IoU of a box with its best cluster: \(Double((result.meanIoU * 10_000).rounded()) / 10_000)")
        }
    }
}
