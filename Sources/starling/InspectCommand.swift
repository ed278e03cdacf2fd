import ArgumentParser
import StarlingIO
import StarlingModels

/// `starling inspect`: a checkpoint's model, weights, optimizer and training state, and an integrity check.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Describe a checkpoint and check it: exits non-zero, naming the first fault, if it would not load or resume.")

    @Argument(help: "Checkpoint written by `starling train` or `starling convert`.") var checkpoint: String
    @Flag(help: "After editing the checkpoint with another tool (h5py), seal it again over its contents as they are now (a sealed checkpoint changed after writing is otherwise refused as damaged), then check it.")
    var reseal = false

    func run() throws {
        try reportingErrors {
            if reseal {
                guard HDF5Seal.isSealed(checkpoint) else {
                    throw CommandFailure(ConversionError(file: checkpoint, message: "not a sealed checkpoint: nothing to reseal"))
                }
                try HDF5Seal.seal(checkpoint, reportAs: checkpoint)
            }
            let report = try CheckpointInspection.inspect(checkpoint)
            print(report.text)
            if let first = report.problems.first {
                let more = report.problems.count > 1 ? " (and \(report.problems.count - 1) more)" : ""
                throw CommandFailure(ConversionError(file: checkpoint, message: "integrity check failed: \(first)\(more)"))
            }
        }
    }
}
