import ArgumentParser
import StarlingModels

/// `starling inspect`: a checkpoint's model, weights, optimizer and training state, and an integrity check.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Describe a checkpoint and check it: exits non-zero, naming the first fault, if it would not load or resume.")

    @Argument(help: "Checkpoint written by `starling train` or `starling convert`.") var checkpoint: String

    func run() throws {
        try reportingErrors {
            let report = try CheckpointInspection.inspect(checkpoint)
            print(report.text)
            if let first = report.problems.first {
                let more = report.problems.count > 1 ? " (and \(report.problems.count - 1) more)" : ""
                throw CommandFailure(ConversionError(file: checkpoint, message: "integrity check failed: \(first)\(more)"))
            }
        }
    }
}
