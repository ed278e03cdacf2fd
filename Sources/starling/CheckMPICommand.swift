import ArgumentParser
import StarlingDistributed

/// `starling check-mpi`: exercises every collective Starling uses on integer-valued floats, whose sums are
/// exact, so a cluster's MPI setup can be checked before a long run (`mpirun -np N starling check-mpi`).
struct CheckMPICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-mpi", abstract: "Check the MPI collectives across the ranks of this job.")

    @Option(help: "Floats in the large allreduce (exercises MPI's chunked paths).") var count: Int = 1 << 20
    @Option(help: "Longest round of the reduce-scatter, allgather and gather (default: MPI's Int32 limit; a small value exercises the rounds).")
    var round: Int?

    func validate() throws {
        guard count >= 16 else { throw ValidationError("--count must be at least 16 (the broadcast check uses 16 floats)") }
        if let round, round <= 0 { throw ValidationError("--round must be positive") }
    }

    func run() throws {
        let world = try reportingErrors { try Communicator() }
        defer { world.finalize() }
        try reportingErrors {
            var failures = try CollectiveChecks.run(on: world, count: count)
            // The in-process sum (replicas on threads) of the ranks' contributions, computed here for all of them, must
            // equal MPI's: the same bits on 2 ranks (a + b = b + a), within rounding beyond (MPI may add in another order).
            let n = world.size, r = world.rank
            let mpiSum = try CollectiveChecks.sumOfContributions(on: world, count: 4096)
            let group = InProcessGroup(size: n)
            let threadSums = group.run { try CollectiveChecks.sumOfContributions(on: $0, count: 4096) }.map { (try? $0.get()) ?? [] }
            if threadSums.contains(where: { $0 != threadSums[0] }) { failures.append("in-process sums differ between replicas") }
            let tolerance: Float = n == 2 ? 0 : 1e-6
            if threadSums[0].count != mpiSum.count || zip(threadSums[0], mpiSum).contains(where: { abs($0 - $1) > tolerance * Swift.max(1, abs($1)) }) {
                failures.append("in-process sum differs from MPI's")
            }
            failures += try checkShardedCollectives(world)
            try world.barrier()
            let bad = try world.allreduce(failures.isEmpty ? 0 : 1)
            print("rank \(r) of \(n): \(failures.isEmpty ? "collectives ok" : "FAILED: \(failures.joined(separator: ", "))")")
            if bad > 0 { throw CheckFailure(description: "\(Int(bad)) rank(s) saw wrong collective results") }
        }
    }
}

extension CheckMPICommand {
    /// ZeRO's collectives (`--shard-optimizer`) over parts of unequal lengths (`CollectiveChecks.runSharded`), in rounds
    /// of at most `--round` values; and the in-process reduce-scatter (replicas on threads, as `train --replicas N
    /// --shard-optimizer` runs it) of the ranks' contributions, computed here for all of them, against MPI's: the same
    /// bits on 2 ranks, within rounding beyond (MPI may add in another order).
    func checkShardedCollectives(_ world: Communicator) throws -> [String] {
        let limit = world.roundLimit
        if let round { world.roundLimit = round }
        defer { world.roundLimit = limit }
        var failures = try CollectiveChecks.runSharded(on: world, count: count)
        let n = world.size, r = world.rank
        for wire in [GradientWire.float32, .bfloat16] {
            let mpiPart = try CollectiveChecks.reduceScatterOfContributions(on: world, count: 4096, wire: wire)
            let threadParts = InProcessGroup(size: n).run { try CollectiveChecks.reduceScatterOfContributions(on: $0, count: 4096, wire: wire) }
            let threadPart = (try? threadParts[r].get()) ?? []
            // bfloat16 rounds after each addition: beyond 2 ranks another order may land on a neighbouring value.
            let tolerance: Float = n == 2 ? 0 : (wire == .float32 ? 1e-6 : 1e-2)
            if threadPart.count != mpiPart.count || zip(threadPart, mpiPart).contains(where: { abs($0 - $1) > tolerance * Swift.max(1, abs($1)) }) {
                failures.append("in-process \(wire.rawValue) reduce-scatter differs from MPI's")
            }
        }
        return failures
    }
}

struct CheckFailure: Error, CustomStringConvertible { let description: String }
