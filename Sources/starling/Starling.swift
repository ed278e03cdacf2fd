import ArgumentParser
import Foundation
import StarlingCore
import StarlingDistributed
import StarlingIO
import StarlingModels

/// The `starling` command: data conversion, training, evaluation and benchmarks.
@main
struct Starling: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "starling",
        abstract: "Data-parallel training of classic vision models: detection, segmentation, autoencoders.",
        subcommands: [DataCommand.self, TrainCommand.self, EvalCommand.self, PredictCommand.self, EvalDetectionsCommand.self,
                      AnchorsCommand.self, OutliersCommand.self, IndexCommand.self, ConvertCommand.self, InspectCommand.self,
                      ProposalsCommand.self, RCNNSVMCommand.self, BenchCommand.self, CheckMPICommand.self])

    /// Expands `train --config FILE` into flags before parsing, and starts `--ranks N` under mpirun.
    static func main() {
        let given = Array(CommandLine.arguments.dropFirst())
        let arguments: [String]
        do {
            if let error = GEMMSelection.overrideError { throw error }
            if let error = ChannelLayout.blockWidthError { throw error }
            if let error = WinogradSetting.settingError { throw error }
            if let error = WinogradCallBudget.settingError { throw error }
            if let error = KernelDispatch.overrideError { throw error }
            if let error = HDF5CallWatchdog.settingError { throw error }
            if let error = InProcessGroup.spinSettingError { throw error }
            if let error = InProcessGroup.bindSettingError { throw error }
            if let error = MemoryLedger.givesBackSettingError { throw error }
            // A rank stuck in an HDF5 call ends the whole job (the others would wait for it in a collective).
            HDF5CallWatchdog.abortJob = { Communicator.abortJobIfRunning(code: $0) }
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
    /// Every MPI rank failed with this at the same point (`AgreedRefusal`): the job can end without MPI_Abort.
    let agreedByAllRanks: Bool
    init(_ error: any Error) {
        description = String(describing: error)
        agreedByAllRanks = error is AgreedRefusal
    }
}

/// Refuses output files whose folder does not exist, before any work: found after the pictures of an evaluation
/// are written, the refusal would come with half the outputs on disk.
func checkOutputFolders(_ outputs: [(flag: String, path: String?)]) throws {
    for case let (flag, path?) in outputs {
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder), isFolder.boolValue else {
            throw CommandFailure(DataError(file: path, message: "cannot write \(flag): no folder \(folder)"))
        }
    }
}

/// Runs `body`, reporting failures as one line naming what went wrong.
func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as CommandFailure { throw error } catch { throw CommandFailure(error) }
}

/// How a command that runs on every rank ends after `error`: a refusal all ranks reached together ends cleanly, said
/// once by rank 0 (the barrier keeps every rank alive until the line is out; mpirun kills the rest when one exits
/// non-zero); any other failure of one rank ends the whole job rather than leave the others waiting in a collective.
func endRanks(_ world: Communicator, after error: any Error) throws -> Never {
    if world.size > 1, (error as? CommandFailure)?.agreedByAllRanks == true {
        if world.isRoot { FileHandle.standardError.write(Data("Error: \(error)\n".utf8)) }
        try? world.barrier()
        world.finalize()
        throw ExitCode(1)
    }
    if world.size > 1 {
        Trainer.printLine("rank \(world.rank): error: \(error)")
        world.abort(code: 1)
    }
    world.finalize()
    throw error
}
