import ArgumentParser
import Foundation
import StarlingIO
import StarlingModels

struct OutliersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outliers",
        abstract: "Score every image of a split by an autoencoder's reconstruction error; report ROC AUC for a label marked as outlier.",
        discussion: """
            Writes <checkpoint>-outliers.csv (index,label,score,mse: score is the binary cross-entropy summed over \
            the pixels, in nats; mse the mean squared error per pixel) and <checkpoint>-outliers-top<K>.png (the K \
            highest scores, image over reconstruction). With --outlier-label L, images labelled L are the outliers \
            and the ROC AUC of both errors is printed. Example: `starling data mnist --exclude-train-label 9`, train, \
            then `starling outliers --outlier-label 9`.
            """)

    @Option(help: "Autoencoder checkpoint written by `starling train`.") var checkpoint: String
    @Option(help: "Dataset in Starling's HDF5 layout.") var data: String
    @Option(help: "Split to score.") var split: String = "test"
    @Option(help: "Images shown in the picture of the highest scores.") var top: Int = 20
    @Option(help: "Folder for the CSV and the picture (default: next to the checkpoint).") var out: String?
    @Option(help: "Images with this label are the outliers: report the ROC AUC (needs labels).") var outlierLabel: Int?
    @Option(help: "Images per batch.") var batchSize: Int = 256
    @Option(help: "Score only the first N images.") var limit: Int?

    func validate() throws {
        guard top >= 0 else { throw ValidationError("--top cannot be negative") }
        guard batchSize > 0 else { throw ValidationError("--batch-size must be positive") }
        if let l = limit, l <= 0 { throw ValidationError("--limit must be positive") }
    }

    func run() throws {
        try reportingErrors {
            // Every check that can fail comes before the first file is written.
            let loaded = try Checkpoint.load(from: checkpoint)
            guard let model = loaded.model as? any Autoencoder else {
                throw DataError(file: checkpoint, message: "model \(loaded.model.config.family) does not reconstruct images; outlier scores need an autoencoder")
            }
            let dataset = try ImageDataset(path: data, split: split)
            try DatasetEncoder.checkFits(model, dataset)
            if outlierLabel != nil && !dataset.hasLabels {
                throw DataError(file: data, message: "dataset has no labels in /\(split): --outlier-label needs them")
            }
            let scores = try OutlierScores.compute(model, data: dataset, limit: limit, batchSize: batchSize)
            var aucs: (bce: Double, mse: Double)?
            if let label = outlierLabel, let labels = scores.labels {
                let positives = labels.map { $0 == Int32(label) }
                let outliers = positives.filter { $0 }.count
                guard let bce = ROCAUC.auc(scores: scores.bce, positives: positives),
                      let mse = ROCAUC.auc(scores: scores.mse, positives: positives) else {
                    throw DataError(file: data, message: outliers == 0
                        ? "no image of /\(split) has label \(label): no outliers to find"
                        : "every image of /\(split) has label \(label): no inliers to compare with")
                }
                aucs = (bce, mse)
            }

            let folder = out ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().path
            try makeDirectory(folder)
            let base = folder + "/" + URL(fileURLWithPath: checkpoint).deletingPathExtension().lastPathComponent
            let highest = OutlierScores.top(top, of: scores.bce)
            let csvPath = base + "-outliers.csv", sheetPath = base + "-outliers-top\(highest.count).png"
            try AtomicFile.write(Array(scores.csv().utf8), to: csvPath)
            if !highest.isEmpty { try scores.sheet(model, data: dataset, indices: highest).writePNG(path: sheetPath) }

            print("\(model.config.family) on \(data) [\(split)]: \(scores.count) images scored by reconstruction error")
            let mean = scores.bce.reduce(0, +) / Double(max(scores.count, 1))
            print("  BCE per image: mean \(String(format: "%.2f", mean)), max \(String(format: "%.2f", highest.first.map { scores.bce[$0] } ?? 0)) nats")
            if let label = outlierLabel, let aucs, let labels = scores.labels {
                let outliers = labels.filter { $0 == Int32(label) }.count
                print("  outliers: label \(label), \(outliers) of \(scores.count) images")
                print("  ROC AUC, BCE score:  \(String(format: "%.4f", aucs.bce))")
                print("  ROC AUC, MSE score:  \(String(format: "%.4f", aucs.mse))")
                let hits = highest.filter { labels[$0] == Int32(label) }.count
                print("  label \(label) among the top \(highest.count): \(hits)")
            }
            print("  scores: \(csvPath)")
            if !highest.isEmpty { print("  top \(highest.count), image over reconstruction: \(sheetPath)") }
        }
    }
}
