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
            let n = world.size, r = world.rank
            var failures: [String] = []
            // Sum: rank r contributes (i mod 7) + r, so the sum is n (i mod 7) + n(n-1)/2.
            let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
            defer { buffer.deallocate() }
            for i in 0..<count { buffer[i] = Float(i % 7 + r) }
            try world.allreduce(buffer, count: count)
            if (0..<count).contains(where: { buffer[$0] != Float(n * ($0 % 7) + n * (n - 1) / 2) }) { failures.append("allreduce sum") }
            // Non-blocking, then average: rank r contributes 2r, the average is n - 1.
            for i in 0..<count { buffer[i] = Float(2 * r) }
            let request = try world.startAllreduce(buffer, count: count)
            try request.wait()
            for i in 0..<count { buffer[i] /= Float(n) }
            if (0..<count).contains(where: { buffer[$0] != Float(n - 1) }) { failures.append("non-blocking allreduce") }
            // Broadcast from the last rank.
            for i in 0..<16 { buffer[i] = r == n - 1 ? Float(i * 3) : -1 }
            try world.broadcast(buffer, count: 16, root: n - 1)
            if (0..<16).contains(where: { buffer[$0] != Float($0 * 3) }) { failures.append("broadcast") }
            if try world.broadcast("rank \(r) says hello", root: 0) != "rank 0 says hello" { failures.append("string broadcast") }
            if try world.allgather(Int64(r * 10)) != (0..<n).map({ Int64($0 * 10) }) { failures.append("allgather") }
            if try world.allreduce(Double(r), .max) != Double(n - 1) { failures.append("allreduce max") }
            // 16-bit gradients (--gradient-precision): halves of small integers sum exactly in both formats, blocking and
            // not; on two ranks 1 + (1 + 2^-7) is a tie between bfloat16's neighbours 2 and 2 + 2^-6, and rounds to
            // even (2); binary16 holds 2 + 2^-7 exactly. Every rank must hold the same bits.
            for wire in [GradientWire.bfloat16, .float16] where wire != .float16 || GradientWire.float16Available {
                let bits = UnsafeMutablePointer<UInt16>.allocate(capacity: count)
                defer { bits.deallocate() }
                let values = UnsafeMutablePointer<Float>.allocate(capacity: count)
                defer { values.deallocate() }
                for i in 0..<count { values[i] = Float(i % 7 + r) / 2 }
                wire.encode(values, scale: 1, into: bits, count: count)
                try world.allreduce(bits, count: count, wire: wire)
                wire.decode(bits, scale: 1, into: values, count: count)
                if (0..<count).contains(where: { values[$0] != Float(n * ($0 % 7) + n * (n - 1) / 2) / 2 }) { failures.append("\(wire.rawValue) allreduce") }
                for i in 0..<count { values[i] = Float(r) }
                wire.encode(values, scale: 1, into: bits, count: count)
                try world.startAllreduce(bits, count: count, wire: wire).wait()
                wire.decode(bits, scale: 1, into: values, count: count)
                if (0..<count).contains(where: { values[$0] != Float(n * (n - 1) / 2) }) { failures.append("\(wire.rawValue) non-blocking allreduce") }
                if n == 2 {
                    values[0] = r == 0 ? 1 : 1 + 0x1p-7
                    wire.encode(values, scale: 1, into: bits, count: 1)
                    try world.allreduce(bits, count: 1, wire: wire)
                    wire.decode(bits, scale: 1, into: values, count: 1)
                    if values[0] != (wire == .bfloat16 ? 2 : 2 + 0x1p-7) { failures.append("\(wire.rawValue) rounding (\(values[0]))") }
                }
                var checksum: Int64 = 0
                for i in 0..<count { checksum = checksum &* 31 &+ Int64(bits[i]) }
                if Set(try world.allgather(checksum)).count != 1 { failures.append("\(wire.rawValue) results differ between ranks") }
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
