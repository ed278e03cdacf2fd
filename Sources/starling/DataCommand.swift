import ArgumentParser
import StarlingIO

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data", abstract: "Convert datasets into Starling's HDF5 layout.", subcommands: [MNISTCommand.self])
}

struct MNISTCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mnist",
        abstract: "Convert the four MNIST IDX files (raw or .gz) into one HDF5 file with /train and /test.")

    @Option(help: "Folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz].")
    var source: String

    @Option(help: "The HDF5 file to write (written atomically).")
    var out: String

    @Option(help: "Keep only the first N training images.")
    var limitTrain: Int?

    @Option(help: "Keep only the first N test images.")
    var limitTest: Int?

    func validate() throws {
        if let n = limitTrain, n <= 0 { throw ValidationError("--limit-train must be positive") }
        if let n = limitTest, n <= 0 { throw ValidationError("--limit-test must be positive") }
    }

    func run() throws {
        let summary = try reportingErrors { try MNIST.convert(sourceDirectory: source, outputPath: out, limitTrain: limitTrain, limitTest: limitTest) }
        print("wrote \(summary)")
    }
}
