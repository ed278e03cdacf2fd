import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `train --ranks N` (or a configuration's `launch.ranks`) outside mpirun: the same command again under
/// `mpirun -np N`, replacing this process, so one command line starts a data-parallel run.
enum MPILaunch {
    /// True inside a job an MPI launcher started (Open MPI, PMIx or Hydra set these in every rank).
    static var underLauncher: Bool {
        let environment = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"].contains { environment[$0] != nil }
    }

    /// The last `--ranks N` of a `train` command line (the command line's own beats a configuration's).
    static func requestedRanks(_ arguments: [String]) -> Int? {
        guard arguments.first == "train" else { return nil }
        var ranks: Int?
        for (index, argument) in arguments.enumerated() {
            if argument == "--ranks", index + 1 < arguments.count { ranks = Int(arguments[index + 1]) }
            if argument.hasPrefix("--ranks=") { ranks = Int(argument.dropFirst("--ranks=".count)) }
        }
        return ranks
    }

    /// `arguments` as the user gave them: every rank expands the configuration itself.
    static func relaunchIfAsked(ranks: Int?, arguments: [String]) throws {
        guard let ranks, ranks > 1, !underLauncher else { return }
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        var mpirun = ["mpirun", "-np", String(ranks)]
        if ranks > ProcessInfo.processInfo.activeProcessorCount { mpirun.append("--oversubscribe") }
        if getuid() == 0 { mpirun.append("--allow-run-as-root") }
        // One BLAS thread per rank unless the run sets its own (the native-stack notes' measured best).
        mpirun += ["-x", "OPENBLAS_NUM_THREADS=1", executable] + arguments
        FileHandle.standardOutput.write(Data("starting \(ranks) ranks: \(mpirun.joined(separator: " "))\n".utf8))
        let argv = mpirun.map { strdup($0) } + [nil]
        execvp("mpirun", argv)
        let reason = String(cString: strerror(errno))
        throw LaunchFailure(description: "--ranks \(ranks): cannot start mpirun (\(reason)); install Open MPI or run without --ranks")
    }

    struct LaunchFailure: Error, CustomStringConvertible { let description: String }
}
