import ArgumentParser
import StarlingDistributed
import StarlingModels

/// `starling rcnn-svm`: R-CNN's second stage, the per-class SVMs (hard negative mining) and box regressors on a
/// fine-tuned `rcnn` checkpoint's features (`RCNNSVMTraining`). Runs under mpirun too: the ranks share the images.
struct RCNNSVMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rcnn-svm",
        abstract: "Train R-CNN's SVMs and box regressors on a fine-tuned rcnn checkpoint; writes a checkpoint that detects with them.")

    @Option(help: "An rcnn checkpoint written by `starling train --model rcnn`.") var checkpoint: String
    @Option(help: "The detection dataset it was trained on, with stored proposals (`starling proposals --store`).") var data: String
    @Option(help: "Split whose images and proposals train the SVMs.") var split = "train"
    @Option(help: "The checkpoint to write (written atomically, by rank 0).") var out: String
    @Option(help: "SVM regularisation C (R-CNN: 0.001).") var c: Float = 0.001
    @Option(help: "The SVMs are solved again once more than this many negatives have joined the cache since the last solve (R-CNN: 2,000).")
    var retrainLimit = 2000
    @Option(help: "Images whose features a rank computes before they are mined, one by one (the SVMs do not depend on it).")
    var imagesPerRound = 16

    func validate() throws {
        guard c > 0 else { throw ValidationError("--c must be positive") }
        guard retrainLimit > 0, imagesPerRound > 0 else { throw ValidationError("--retrain-limit and --images-per-round must be positive") }
    }

    func run() throws {
        let world = try reportingErrors { try Communicator() }
        do {
            try reportingErrors {
                let loaded = try Checkpoint.load(from: checkpoint)
                guard let model = loaded.model as? RCNN else {
                    throw CommandFailure(DataError(file: checkpoint, message: "holds model \(loaded.model.config.family), not rcnn"))
                }
                let source = try DetectionSource.withProposals(path: data, split: split)
                try source.checkCompatible(with: model.config)
                var settings = RCNNSVMTraining.Settings()
                settings.solver.c = c
                settings.retrainLimit = retrainLimit
                settings.imagesPerRound = imagesPerRound
                model.crossReplica = CrossReplica(world)
                let report = try RCNNSVMTraining.train(model, source: source, settings: settings, crossReplica: model.crossReplica, rank: world.rank) { line in
                    if world.isRoot { Trainer.printLine(line) }
                }
                if world.isRoot {
                    let names = model.config.classNames ?? []
                    for c in 0..<report.positives.count {
                        Trainer.printLine("\(names.count > c + 1 ? names[c + 1] : "class \(c + 1)"): \(report.positives[c]) positives, \(report.cachedNegatives[c]) hard negatives cached, \(report.solves[c]) solves, \(report.regressionSamples[c]) regression samples")
                    }
                    Trainer.printLine("\(report.images) images in \(String(format: "%.1f", report.seconds)) s on \(world.size) rank(s); fc7 scaled by \(report.featureScale)")
                    // The loaded checkpoint's model is `model`, now with its SVMs: the rest (optimizer state, progress) as read.
                    try CheckpointConversion.write(loaded, to: out, format: .starling, half: false)
                    Trainer.printLine("checkpoint with SVMs and box regressors: \(out)")
                }
            }
        } catch {
            try endRanks(world, after: error)
        }
        world.finalize()
    }
}
