import ArgumentParser
import Foundation
import StarlingModels

/// The `starling` command: data conversion, training, evaluation and benchmarks.
@main
struct Starling: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "starling",
        abstract: "Data-parallel training of classic vision models: detection, segmentation, autoencoders.",
        subcommands: [DataCommand.self, TrainCommand.self, EvalCommand.self, PredictCommand.self, EvalDetectionsCommand.self,
                      AnchorsCommand.self, OutliersCommand.self, IndexCommand.self, ConvertCommand.self, InspectCommand.self,
                      ProposalsCommand.self, BenchCommand.self, CheckMPICommand.self])

    /// Expands `train --config FILE` into flags before parsing, and starts `--ranks N` under mpirun.
    static func main() {
        let given = Array(CommandLine.arguments.dropFirst())
        let arguments: [String]
        do {
            arguments = try RunConfiguration.expand(given)
            try MPILaunch.relaunchIfAsked(ranks: MPILaunch.requestedRanks(arguments), arguments: given)
        } catch {
            exit(withError: CommandFailure(error))
        }
        main(arguments)
    }
}

/// Turns any error into the one-line message ArgumentParser prints before exiting non-zero.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ error: any Error) { description = String(describing: error) }
}

/// Runs `body`, reporting failures as one line naming what went wrong.
func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as CommandFailure { throw error } catch { throw CommandFailure(error) }
}
