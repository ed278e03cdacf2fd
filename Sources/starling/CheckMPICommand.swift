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
    /// ZeRO's collectives (`--shard-optimizer`) over parts of unequal lengths, the last rank's empty on three ranks or
    /// more: reduce-scatter (blocking and not, float32 and 16-bit), allgather and gather, against sums worked out here.
    func checkShardedCollectives(_ world: Communicator) throws -> [String] {
        let limit = world.roundLimit
        if let round { world.roundLimit = round }
        defer { world.roundLimit = limit }
        let n = world.size, r = world.rank
        var failures: [String] = []
        let counts = (0..<n).map { q in n > 2 && q == n - 1 ? 0 : count / n + 3 * q }
        let total = counts.reduce(0, +)
        let offset = counts[..<r].reduce(0, +)
        let mine = offset..<(offset + counts[r])
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: max(total, 1))
        defer { buffer.deallocate() }
        // Rank q contributes (i mod 7) + q at every index: the sum is n (i mod 7) + n(n-1)/2.
        func expectedSum(_ i: Int) -> Float { Float(n * (i % 7) + n * (n - 1) / 2) }
        for blocking in [true, false] {
            for i in 0..<total { buffer[i] = Float(i % 7 + r) }
            if blocking { try world.reduceScatter(buffer, counts: counts) } else { try world.startReduceScatter(buffer, counts: counts).wait() }
            if mine.contains(where: { buffer[$0] != expectedSum($0) }) { failures.append("\(blocking ? "" : "non-blocking ")reduce-scatter") }
        }
        for wire in [GradientWire.bfloat16, .float16] where wire != .float16 || GradientWire.float16Available {
            let bits = UnsafeMutablePointer<UInt16>.allocate(capacity: max(total, 1))
            defer { bits.deallocate() }
            for blocking in [true, false] {
                for i in 0..<total { buffer[i] = Float(i % 7 + r) / 2 }
                wire.encode(buffer, scale: 1, into: bits, count: total)
                if blocking { try world.reduceScatter(bits, counts: counts, wire: wire) } else { try world.startReduceScatter(bits, counts: counts, wire: wire).wait() }
                if mine.contains(where: { (wire == .bfloat16 ? GradientWire.bfloat16Value(bits[$0]) : GradientWire.float16Value(bits[$0])) != expectedSum($0) / 2 }) {
                    failures.append("\(wire.rawValue) \(blocking ? "" : "non-blocking ")reduce-scatter")
                }
            }
        }
        // Allgather: each rank writes only its part, -1 elsewhere; every rank ends with i mod 1000 at every index.
        for i in 0..<total { buffer[i] = mine.contains(i) ? Float(i % 1000) : -1 }
        try world.allgather(buffer, counts: counts)
        if (0..<total).contains(where: { buffer[$0] != Float($0 % 1000) }) { failures.append("allgather of parts") }
        // Gather to the last rank: its buffer starts at -1 and ends with i mod 1000 + 1 everywhere.
        let part = (0..<counts[r]).map { Float((offset + $0) % 1000 + 1) }
        for i in 0..<total { buffer[i] = -1 }
        try part.withUnsafeBufferPointer { p in
            try world.gather(p.baseAddress ?? UnsafePointer(buffer), counts: counts, into: r == n - 1 ? buffer : nil, root: n - 1)
        }
        if r == n - 1, (0..<total).contains(where: { buffer[$0] != Float($0 % 1000 + 1) }) { failures.append("gather of parts") }
        return failures
    }
}

struct CheckFailure: Error, CustomStringConvertible { let description: String }
