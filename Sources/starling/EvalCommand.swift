import ArgumentParser
import Foundation
import StarlingIO
import StarlingModels

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "eval", abstract: "Evaluate a checkpoint on a dataset.")

    @Option(help: "Checkpoint written by `starling train` (not needed with --detections).") var checkpoint: String?
    @Option(help: "Dataset in Starling's HDF5 layout.") var data: String
    @Option(help: "Split to evaluate (default: test for MNIST, val for detection and segmentation sets).") var split: String?
    @Option(help: "Images per batch (default: 256 for autoencoders, 8 for detectors, 4 for segmentation).") var batchSize: Int?
    @OptionGroup var detection: DetectionEvalOptions
    @Option(help: "Evaluate only the first N images.") var limit: Int?
    @Option(help: "Also write the figures as JSON to this file.") var json: String?
    @Option(help: "Folder for pictures (default: next to the checkpoint).") var plots: String?

    func validate() throws {
        if let b = batchSize, b <= 0 { throw ValidationError("--batch-size must be positive") }
        if checkpoint == nil && detection.detections == nil { throw ValidationError("give --checkpoint, or --detections to score a detections file") }
        if let l = limit, l <= 0 { throw ValidationError("--limit must be positive") }
    }

    func run() throws {
        try reportingErrors {
            try checkOutputFolders([("--json", json), ("--save-detections", detection.saveDetections), ("--save-gt", detection.saveGt)])
            guard let checkpoint else {
                return try detection.scoreFile(data: data, split: split ?? "val", json: json)
            }
            let loaded = try Checkpoint.load(from: checkpoint)
            if let maskRCNN = loaded.model as? MaskRCNN {
                let dataset = try SegmentationDataset(path: data, split: split ?? "val")
                let (report, truth, found) = try InstanceEvaluation.evaluate(maskRCNN, data: dataset, batchSize: batchSize ?? 2, limit: limit)
                print(InstanceEvaluation.table(report))
                if let saveDetections = detection.saveDetections {
                    try COCOJSON.writeResults(found, to: saveDetections)
                    print("detections with their masks (COCO results, segmentation as compressed RLE): \(saveDetections)")
                }
                if let saveGt = detection.saveGt {
                    let names = maskRCNN.config.classNames ?? []
                    let images = dataset.imageIDs.prefix(report.images).map {
                        DetectionGroundTruth.Image(id: Int($0), width: dataset.imageWidth, height: dataset.imageHeight)
                    }
                    let categories = (1..<maskRCNN.classCount).map { DetectionGroundTruth.Category(id: $0, name: $0 < names.count ? names[$0] : "\($0)") }
                    try COCOJSON.writeAnnotations(DetectionGroundTruth(boxes: truth, images: images, categories: categories), to: saveGt)
                    print("ground truth with its masks (COCO annotations, segmentation as compressed RLE): \(saveGt)")
                }
                if let json {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                    try AtomicFile.write(Array(try encoder.encode(report)), to: json)
                    print("figures as JSON: \(json)")
                }
                return
            }
            if let unet = loaded.model as? UNet {
                let dataset = try SegmentationDataset(path: data, split: split ?? "val")
                let report = try SegmentationEvaluation.evaluate(unet, data: dataset, batchSize: batchSize ?? 4, limit: limit)
                print(SegmentationEvaluation.table(report))
                let folder = plots ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().path
                try makeDirectory(folder)
                let picture = "\(folder)/\(URL(fileURLWithPath: checkpoint).deletingPathExtension().lastPathComponent)-segmentation.png"
                try SegmentationEvaluation.picture(unet, data: dataset, indices: Array(0..<min(4, report.images))).writePNG(path: picture)
                print("  image, truth, prediction:  \(picture)")
                if let json {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                    try AtomicFile.write(Array(try encoder.encode(report)), to: json)
                    print("  figures as JSON:           \(json)")
                }
                return
            }
            if let detector = loaded.model as? any RegionDetector {
                return try detection.evaluate(detector, checkpoint: checkpoint, data: data, split: split ?? "val", batchSize: batchSize ?? 2, limit: limit, json: json)
            }
            if let detector = loaded.model as? any Detector {
                return try detection.evaluate(detector, checkpoint: checkpoint, data: data, split: split ?? "val", batchSize: batchSize ?? 8, limit: limit, json: json)
            }
            let split = self.split ?? "test", batchSize = self.batchSize ?? 256
            let dataset = try ImageDataset(path: data, split: split)
            guard let autoencoder = loaded.model as? any Autoencoder else {
                throw CommandFailure(EvalError("\(checkpoint): model \(loaded.model.config.family) has no evaluation yet"))
            }
            guard dataset.sampleSize == autoencoder.config.inputShape.reduce(1, *) else {
                throw ModelError.inputShape(family: autoencoder.config.family, expected: autoencoder.config.inputShape, got: dataset.sampleShape, source: data)
            }
            let report = try ReconstructionEvaluation.evaluate(autoencoder, data: dataset, batchSize: batchSize, limit: limit)
            print("\(report.model) on \(report.data) [\(report.split)], \(report.images) images (checkpoint epoch \(loaded.state.epoch), step \(loaded.state.step))")
            print("  reconstruction BCE per pixel (mean):  \(String(format: "%.5f", report.bcePerPixel))")
            print("  reconstruction BCE per image (sum):   \(String(format: "%.2f", report.bcePerImage)) nats over \(report.pixelsPerImage) pixels")
            print("  reconstruction MSE per pixel:         \(String(format: "%.5f", report.msePerPixel))")
            if let size = report.codeSize, let activation = report.meanCodeActivation {
                print("  mean code value (\(size) units):".padding(toLength: 40, withPad: " ", startingAt: 0) + String(format: "%.4f", activation))
            }
            if let kl = report.klPerImage, let atMean = report.elboAtMean, let sampled = report.elboOneSample,
               let sampledBCE = report.bcePerImageOneSample {
                print("  (VAE: reconstruction above decoded at z = posterior mean)")
                print("  KL(q(z|x) || N(0, I)) per image:      \(String(format: "%.2f", kl)) nats")
                print("  ELBO per image, z = mean:             \(String(format: "%.2f", atMean)) nats (= -(BCE per image + KL))")
                print("  ELBO per image, one sample of z:      \(String(format: "%.2f", sampled)) nats (reconstruction \(String(format: "%.2f", sampledBCE)); eps from the fixed evaluation seed)")
            }
            if let factor = report.noiseFactor, let noisy = report.psnrNoisy, let denoised = report.psnrDenoised,
               let pixelBCE = report.denoisedBcePerPixel, let imageBCE = report.denoisedBcePerImage {
                print("  denoising (noise factor \(factor), fixed evaluation seed):")
                print("    PSNR noisy vs clean:                \(String(format: "%.2f", noisy)) dB")
                print("    PSNR denoised vs clean:             \(String(format: "%.2f", denoised)) dB")
                print("    BCE denoised vs clean per pixel:    \(String(format: "%.5f", pixelBCE))")
                print("    BCE denoised vs clean per image:    \(String(format: "%.2f", imageBCE)) nats")
            }
            let base = URL(fileURLWithPath: checkpoint).deletingPathExtension().lastPathComponent
            let folder = plots ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().path
            try makeDirectory(folder)
            let grid = "\(folder)/\(base)-reconstructions.png"
            try ReconstructionEvaluation.writeGrid(autoencoder, data: dataset, path: grid)
            if autoencoder is DenoisingAutoencoder {
                print("  clean over noisy over denoised:       \(grid)")
            } else {
                print("  originals over reconstructions:       \(grid)")
            }
            let figures = try AutoencoderFigures.write(autoencoder, data: dataset, limit: limit, batchSize: batchSize, checkpoint: checkpoint, folder: folder)
            for line in figures { print("  " + line) }
            if let json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try AtomicFile.write(Array(try encoder.encode(report)), to: json)
                print("  figures as JSON:                      \(json)")
            }
        }
    }
}

struct EvalError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
