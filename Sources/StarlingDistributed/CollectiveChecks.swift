/// The checks `starling check-mpi` runs, on any `Collective`: every collective Starling uses, on values whose results
/// are known exactly (integer-valued floats, halves of small integers in 16 bits). The same list runs over MPI ranks
/// (`mpirun -np N starling check-mpi`) and over replicas on threads (`InProcessCollectiveTests`).
public enum CollectiveChecks {
    /// The names of the checks that failed on this member (empty: all passed). Every member must call it.
    public static func run(on world: any Collective, count: Int) throws -> [String] {
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
        return failures
    }

    /// ZeRO's collectives (`--shard-optimizer`) over parts of unequal lengths, the last member's empty on three members
    /// or more: reduce-scatter (blocking and not, float32 and 16-bit), allgather and gather, against sums worked out
    /// here. The names of the checks that failed on this member; every member must call it.
    public static func runSharded(on world: any ShardingCollective, count: Int) throws -> [String] {
        let n = world.size, r = world.rank
        var failures: [String] = []
        let counts = partCounts(members: n, count: count)
        let total = counts.reduce(0, +)
        let offset = counts[..<r].reduce(0, +)
        let mine = offset..<(offset + counts[r])
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: max(total, 1))
        defer { buffer.deallocate() }
        // Member q contributes (i mod 7) + q at every index: the sum is n (i mod 7) + n(n-1)/2.
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
        // Allgather: each member writes only its part, -1 elsewhere; every member ends with i mod 1000 at every index.
        for i in 0..<total { buffer[i] = mine.contains(i) ? Float(i % 1000) : -1 }
        try world.allgather(buffer, counts: counts)
        if (0..<total).contains(where: { buffer[$0] != Float($0 % 1000) }) { failures.append("allgather of parts") }
        // Gather to the last member: its buffer starts at -1 and ends with i mod 1000 + 1 everywhere.
        let part = (0..<counts[r]).map { Float((offset + $0) % 1000 + 1) }
        for i in 0..<total { buffer[i] = -1 }
        try part.withUnsafeBufferPointer { p in
            try world.gather(p.baseAddress ?? UnsafePointer(buffer), counts: counts, into: r == n - 1 ? buffer : nil, root: n - 1)
        }
        if r == n - 1, (0..<total).contains(where: { buffer[$0] != Float($0 % 1000 + 1) }) { failures.append("gather of parts") }
        return failures
    }

    /// The parts `runSharded` and `reduceScatterOfContributions` split a buffer of about `count` values into: of
    /// unequal lengths, the last member's empty on three members or more.
    public static func partCounts(members n: Int, count: Int) -> [Int] {
        (0..<n).map { q in n > 2 && q == n - 1 ? 0 : count / n + 3 * q }
    }

    /// This member's part of the reduce-scatter of every member's `contribution` over `partCounts(members:count:)`,
    /// as float32 or (`wire` bf16) as bfloat16 bits widened back: what the MPI path and the in-process path must agree on.
    public static func reduceScatterOfContributions(on world: any ShardingCollective, count: Int, wire: GradientWire = .float32) throws -> [Float] {
        let counts = partCounts(members: world.size, count: count)
        let total = counts.reduce(0, +)
        let offset = counts[..<world.rank].reduce(0, +)
        var values = contribution(rank: world.rank, count: total)
        if wire == .float32 {
            try values.withUnsafeMutableBufferPointer { try world.reduceScatter($0.baseAddress!, counts: counts) }
        } else {
            var bits = [UInt16](repeating: 0, count: total)
            values.withUnsafeBufferPointer { v in bits.withUnsafeMutableBufferPointer { wire.encode(v.baseAddress!, scale: 1, into: $0.baseAddress!, count: total) } }
            try bits.withUnsafeMutableBufferPointer { try world.reduceScatter($0.baseAddress!, counts: counts, wire: wire) }
            bits.withUnsafeBufferPointer { b in values.withUnsafeMutableBufferPointer { _ = wire.decode(b.baseAddress!, scale: 1, into: $0.baseAddress!, count: total) } }
        }
        return Array(values[offset..<(offset + counts[world.rank])])
    }

    /// Sums of `count` pseudo-random floats (each member's drawn from its rank, as `contribution(rank:count:)` gives
    /// them) through `world`: what the MPI path and the in-process path must agree on.
    public static func sumOfContributions(on world: any Collective, count: Int) throws -> [Float] {
        var values = contribution(rank: world.rank, count: count)
        try values.withUnsafeMutableBufferPointer { try world.allreduce($0.baseAddress!, count: count, .sum) }
        return values
    }

    /// Member `rank`'s values for `sumOfContributions`: in (-1, 1) with varied exponents, so the order of the additions
    /// shows in the last bits.
    public static func contribution(rank: Int, count: Int) -> [Float] {
        var state = UInt64(0x9E37_79B9_7F4A_7C15) &* UInt64(rank + 1)
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let unit = Float(state >> 40) / Float(1 << 24) * 2 - 1
            return unit * Float(sign: .plus, exponent: -Int((state >> 20) % 12), significand: 1)
        }
    }
}
