import Foundation
import Testing
import StarlingCore
@testable import StarlingModels
import StarlingDistributed

/// The in-process collective (replicas on threads) and `train --replicas N`.
@Suite struct InProcessCollectiveTests {
    /// `check-mpi`'s checks, whose results are known exactly, over replicas on threads.
    @Test(arguments: [1, 2, 3, 4])
    func collectivesAreExact(replicas: Int) throws {
        let results = InProcessGroup(size: replicas).run { try CollectiveChecks.run(on: $0, count: 10_000) }
        for (r, result) in results.enumerated() { #expect(try result.get() == [], "replica \(r)") }
    }

    /// STARLING_REPLICA_SPIN_US's values: microseconds from 0 to 1,000,000, nil (the group's default) when unset or empty.
    @Test func spinSettingValues() {
        #expect(InProcessGroup.parseSpin(nil) == .success(nil))
        #expect(InProcessGroup.parseSpin("") == .success(nil))
        #expect(InProcessGroup.parseSpin("0") == .success(0))
        #expect(InProcessGroup.parseSpin("50") == .success(50e-6))
        #expect(InProcessGroup.parseSpin("2.5") == .success(2.5e-6))
        for bad in ["-5", "fast", "1e7", "nan", "inf", " 50"] {
            #expect(InProcessGroup.parseSpin(bad) == .failure(ReplicaSpinError(value: bad)))
        }
    }

    /// Replicas poll 30 us before they sleep where they fit the processors, and sleep at once where they outnumber them.
    @Test func defaultSpinFollowsTheProcessors() {
        #expect(InProcessGroup.defaultSpinSeconds(replicas: 2, processors: 2) == 30e-6)
        #expect(InProcessGroup.defaultSpinSeconds(replicas: 1, processors: 8) == 30e-6)
        #expect(InProcessGroup.defaultSpinSeconds(replicas: 3, processors: 2) == 0)
    }

    /// The processors the rule counts are the affinity mask's, read here a second way: the kernel's own list in
    /// /proc/self/status ("0-3,6" style ranges), which `taskset -c 0` narrows to one.
    @Test func usableProcessorsAreTheAffinityMasks() throws {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") })
        let ranges = line.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces).split(separator: ",")
        let listed = try ranges.reduce(0) { total, range in
            let ends = try range.split(separator: "-").map { try #require(Int($0)) }
            return total + (ends.count == 2 ? ends[1] - ends[0] + 1 : 1)
        }
        #expect(Processors.usable == min(listed, ProcessInfo.processInfo.activeProcessorCount))
        #expect(Processors.usable >= 1)
    }

    /// STARLING_REPLICA_BIND's values: 1 or 0, nil (not bound) when unset or empty.
    @Test func bindSettingValues() {
        #expect(InProcessGroup.parseBind(nil) == .success(nil))
        #expect(InProcessGroup.parseBind("") == .success(nil))
        #expect(InProcessGroup.parseBind("1") == .success(true))
        #expect(InProcessGroup.parseBind("0") == .success(false))
        for bad in ["yes", "2", " 1", "off", "true"] {
            #expect(InProcessGroup.parseBind(bad) == .failure(ReplicaBindError(value: bad)))
        }
    }

    /// Replica r is bound to the r-th processor of the creating thread's mask, only where the mask holds at least as
    /// many processors as there are replicas (two or more), and not when turned off.
    @Test func bindingFollowsTheMask() {
        #expect(InProcessGroup.binding(replicas: 2, allowed: [0, 1], enabled: true) == [0, 1])
        #expect(InProcessGroup.binding(replicas: 2, allowed: [2, 3, 6], enabled: true) == [2, 3])   // taskset -c 2,3,6
        #expect(InProcessGroup.binding(replicas: 3, allowed: [0, 1], enabled: true) == nil)
        #expect(InProcessGroup.binding(replicas: 2, allowed: [5], enabled: true) == nil)             // mpirun --bind-to core
        #expect(InProcessGroup.binding(replicas: 1, allowed: [0, 1], enabled: true) == nil)
        #expect(InProcessGroup.binding(replicas: 2, allowed: [0, 1], enabled: false) == nil)
        #expect(InProcessGroup.binding(replicas: 2, allowed: [], enabled: true) == nil)
        // Not bound unless asked for.
        if getenv("STARLING_REPLICA_BIND") == nil { #expect(InProcessGroup(size: 2).processorBinding == nil) }
    }

    /// Replica threads carry their name where the OS shows threads (`top -H`, perf's comm), and a longer name keeps
    /// its first 15 bytes, as Linux stores it.
    @Test func threadsAreNamedForTheOS() throws {
        @Sendable func comm() -> String? {
            (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines)
        }
        guard comm() != nil else { return }   // not Linux
        let names = InProcessGroup(size: 2).run { _ in comm() }
        #expect(try names.map { try $0.get() } == ["replica-0", "replica-1"])
        let box = UncheckedName()
        let done = DispatchSemaphore(value: 0)
        Thread {
            Processors.nameCurrentThread("a-name-longer-than-fifteen")
            box.name = comm()
            done.signal()
        }.start()
        done.wait()
        #expect(box.name == "a-name-longer-t")
    }

    /// Bound replicas run on their processor: each replica thread's mask, as the kernel lists it in
    /// /proc/thread-self/status, is its one processor, and a thread it starts that leaves the binding (a prefetcher)
    /// gets the creating thread's mask back. Unbound, the replicas keep that mask.
    @Test func boundReplicasKeepToTheirProcessor() throws {
        func kernelList() -> String? {
            guard let status = try? String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8) else { return nil }
            return status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
                .map { $0.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces) }
        }
        let allowed = Processors.allowed
        let bound = InProcessGroup(size: 2, bind: true)
        guard allowed.count >= 2 else {
            #expect(bound.processorBinding == nil)
            return
        }
        #expect(bound.processorBinding == Array(allowed.prefix(2)))
        let seen = bound.run { member -> ([Int], String?, Int?, [Int]) in
            let mine = Processors.allowed
            let listed = kernelList()
            let here = Processors.current
            // A thread started here inherits the one processor until it leaves the binding.
            let box = UncheckedList()
            let done = DispatchSemaphore(value: 0)
            Thread { Processors.leaveBinding(); box.value = Processors.allowed; done.signal() }.start()
            done.wait()
            try member.barrier()
            return (mine, listed, here, box.value)
        }
        for (r, result) in seen.enumerated() {
            let (mine, listed, here, helper) = try result.get()
            #expect(mine == [allowed[r]], "replica \(r)")
            if let listed { #expect(listed == "\(allowed[r])", "replica \(r)") }
            if let here { #expect(here == allowed[r], "replica \(r)") }
            #expect(helper == allowed, "replica \(r)'s helper thread")
        }
        let free = InProcessGroup(size: 2, bind: false)
        #expect(free.processorBinding == nil)
        for result in free.run({ _ in Processors.allowed }) { #expect(try result.get() == allowed) }
    }

    /// Replicas that poll far longer than the others take to arrive (a second) leave each rendezvous once the last has
    /// arrived, not at the end of their polling, and run where they outnumber the processors (four replicas, each
    /// in turn late by 2 ms): the pollers give their cores away as they poll. 20 rounds end in well under the 20
    /// seconds that polling to the end would take (a bound far above the ~40 ms expected, for a loaded machine).
    @Test func longPollingLeavesWhenTheLastArrives() throws {
        let group = InProcessGroup(size: 4, spinSeconds: 1)
        let start = monotonicSeconds()
        let results = group.run { member -> Int in
            var sum: [Double] = [Double(member.rank)]
            for round in 0..<20 {
                if member.rank == round % 4 { usleep(2_000) }
                try member.barrier()
                try member.allreduce(&sum, .sum)
            }
            return Int(sum[0])
        }
        // 0 + 1 + 2 + 3 = 6, then x4 a round after the first.
        for result in results { #expect(try result.get() == 6 * Int(pow(4.0, 19.0))) }
        #expect(monotonicSeconds() - start < 10)
    }

    /// A sum adds in replica order whatever order the threads arrive in: 1e8 + 1 rounds to 1e8 in float32, so
    /// (1e8 + 1) - 1e8 is 0 while 1e8 - 1e8 + 1 would be 1. The replicas arrive in a different order each trial.
    @Test func sumsInReplicaOrder() throws {
        for trial in 0..<12 {
            let group = InProcessGroup(size: 3)
            let results = group.run { member -> [Float] in
                usleep(useconds_t(((member.rank + trial) % 3) * 2_000))
                var values: [Float] = [[1e8, 3, 0.5], [1, -2, 0.25], [-1e8, 7, 0.125]][member.rank]
                try values.withUnsafeMutableBufferPointer { try member.allreduce($0.baseAddress!, count: 3, .sum) }
                return values
            }
            for result in results { #expect(try result.get() == [0, 8, 0.875]) }
        }
        // Two replicas: each element is a + b, the bits MPI's sum of two ranks gives.
        let (a, b) = (CollectiveChecks.contribution(rank: 0, count: 1000), CollectiveChecks.contribution(rank: 1, count: 1000))
        let sums = InProcessGroup(size: 2).run { try CollectiveChecks.sumOfContributions(on: $0, count: 1000) }
        for result in sums { #expect(try result.get() == zip(a, b).map { $0 + $1 }) }
    }

    /// The vectorised float sum over a count no share divides evenly: each element is still replica 0's value plus
    /// replica 1's plus replica 2's, in that order (large and small values mixed so that another order would round
    /// differently), on every replica.
    @Test func floatSumsAcrossBlocksInReplicaOrder() throws {
        let count = 9_001
        // Every third element sums exactly (i + 0.5 - 2i); the others are 1e8 + small - 1e8, which is 0 in replica
        // order and `small` if replicas 0 and 2 were added first.
        func value(_ r: Int, _ i: Int) -> Float {
            if i % 3 == 0 { return [Float(i), 0.5, Float(-2 * i)][r] }
            let large: Float = i % 2 == 0 ? 1e8 : -1e8
            return [large, Float(i % 7 + 1) * 0.3, -large][r]
        }
        let inputs: [[Float]] = (0..<3).map { r in (0..<count).map { value(r, $0) } }
        let expected: [Float] = (0..<count).map { i in (inputs[0][i] + inputs[1][i]) + inputs[2][i] }
        let otherOrder: [Float] = (0..<count).map { i in (inputs[0][i] + inputs[2][i]) + inputs[1][i] }
        #expect(expected[3] == -2.5 && expected[1] == 0)
        let results = InProcessGroup(size: 3).run { member -> [Float] in
            var values = inputs[member.rank]
            try values.withUnsafeMutableBufferPointer { try member.allreduce($0.baseAddress!, count: count, .sum) }
            return values
        }
        for (r, result) in results.enumerated() { #expect(try result.get() == expected, "replica \(r)") }
        #expect(expected != otherOrder)
    }

    /// bfloat16 sums widen, add in replica order and round after each addition: 1 + (1 + 2^-7) is a tie that rounds to
    /// even (2), and with a third replica's 2^-7 the total is 2 + 2^-7 rounded again (2), not (1 + 2^-7 + 2^-7) + 1.
    @Test func halfPrecisionSums() throws {
        let inputs: [Float] = [1, 1 + 0x1p-7, 0x1p-7]
        let results = InProcessGroup(size: 3).run { member -> Float in
            var bits = [UInt16](repeating: 0, count: 1)
            var value = [inputs[member.rank]]
            value.withUnsafeBufferPointer { v in bits.withUnsafeMutableBufferPointer { GradientWire.bfloat16.encode(v.baseAddress!, scale: 1, into: $0.baseAddress!, count: 1) } }
            try bits.withUnsafeMutableBufferPointer { try member.allreduce($0.baseAddress!, count: 1, wire: .bfloat16) }
            bits.withUnsafeBufferPointer { b in value.withUnsafeMutableBufferPointer { _ = GradientWire.bfloat16.decode(b.baseAddress!, scale: 1, into: $0.baseAddress!, count: 1) } }
            return value[0]
        }
        for result in results { #expect(try result.get() == 2) }
    }

    struct Injected: Error, CustomStringConvertible { var description: String { "injected failure" } }

    /// A replica that throws, before or between collectives, ends every other replica's wait with its error; nobody
    /// waits forever, and later collectives throw at once.
    @Test(arguments: [0, 1, 2])
    func failureReachesEveryReplica(failingAfterBarriers: Int) throws {
        let group = InProcessGroup(size: 3)
        final class Outcome: @unchecked Sendable {
            let finished = NSCondition()
            var results: [Result<Int, any Error>]?
        }
        let box = Outcome()
        let runner = Thread {
            let r = group.run { member -> Int in
                for _ in 0..<failingAfterBarriers { try member.barrier() }
                if member.rank == 1 { usleep(20_000); throw Injected() }
                var values = [Double(member.rank)]
                try member.allreduce(&values, .sum)
                return 0
            }
            box.finished.lock(); box.results = r; box.finished.broadcast(); box.finished.unlock()
        }
        runner.start()
        box.finished.lock()
        let deadline = Date(timeIntervalSinceNow: 20)
        while box.results == nil && box.finished.wait(until: deadline) {}
        let outcome = box.results
        box.finished.unlock()
        let all = try #require(outcome, "a replica still waits 20 s after replica 1 failed")
        #expect(throws: Injected.self) { try all[1].get() }
        for r in [0, 2] {
            #expect { try all[r].get() } throws: { ($0 as? ReplicaFailure)?.rank == 1 && "\($0)".contains("injected failure") }
        }
        #expect(group.failed?.rank == 1)
        #expect(throws: ReplicaFailure.self) { try group.member(0).barrier() }
    }

    /// ZeRO's collectives (`--shard-optimizer` with `--replicas`) over parts of unequal lengths, the last replica's
    /// empty from three replicas on: `check-mpi`'s sharded checks, whose results are known exactly.
    @Test(arguments: [1, 2, 3, 4])
    func shardedCollectivesAreExact(replicas: Int) throws {
        let results = InProcessGroup(size: replicas).run { try CollectiveChecks.runSharded(on: $0, count: 10_007) }
        for (r, result) in results.enumerated() { #expect(try result.get() == [], "replica \(r)") }
    }

    /// Reduce-scatter, allgather and gather by hand on parts [2, 3, 0]: each replica's part is summed in replica
    /// order (1e8 + 1 - 1e8 is 0 in float32, as the allreduce gives), written into its own buffer only; bfloat16 sums
    /// round after each addition; the allgather fills the other parts, the gather only the root's buffer.
    @Test func shardedCollectivesByHand() throws {
        let counts = [2, 3, 0]
        let inputs: [[Float]] = [[1e8, 3, 0.5, 1, 10], [1, -2, 0.25, 1 + 0x1p-7, 20], [-1e8, 7, 0.125, 0x1p-7, 30]]
        let results = InProcessGroup(size: 3).run { member -> [[Float]] in
            usleep(useconds_t((2 - member.rank) * 2_000))
            let r = member.rank
            var values = inputs[r]
            try values.withUnsafeMutableBufferPointer { try member.reduceScatter($0.baseAddress!, counts: counts) }
            var bits = inputs[r].map { GradientWire.bfloat16Bits($0) }
            try bits.withUnsafeMutableBufferPointer { try member.startReduceScatter($0.baseAddress!, counts: counts, wire: .bfloat16).wait() }
            var gathered: [Float] = (0..<5).map { i in (r == 0 && i < 2) || (r == 1 && (2..<5).contains(i)) ? Float(i + 1) : -1 }
            try gathered.withUnsafeMutableBufferPointer { try member.allgather($0.baseAddress!, counts: counts) }
            var root = [Float](repeating: -1, count: 5)
            let part: [Float] = r == 0 ? [10, 20] : r == 1 ? [30, 40, 50] : []
            try part.withUnsafeBufferPointer { p in
                try root.withUnsafeMutableBufferPointer { try member.gather(p.baseAddress ?? UnsafePointer($0.baseAddress!), counts: counts, into: r == 1 ? $0.baseAddress : nil, root: 1) }
            }
            return [values, bits.map(GradientWire.bfloat16Value), gathered, root]
        }
        let (r0, r1, r2) = (try results[0].get(), try results[1].get(), try results[2].get())
        // Replica 0's part: indices 0-1, replica 1's: 2-4; outside its part a replica's buffer keeps its own values.
        #expect(r0[0] == [0, 8, 0.5, 1, 10])
        #expect(r1[0] == [1, -2, 0.875, 2 + 0x1p-6, 60])
        #expect(r2[0] == inputs[2])
        // bfloat16: 1 + (1 + 2^-7) is a tie that rounds to even (2), then 2 + 2^-7 rounds to 2 again.
        #expect(r1[1][3] == 2 && r1[1][2] == 0.875 && r1[1][4] == 60)
        for r in [r0, r1, r2] { #expect(r[2] == [1, 2, 3, 4, 5]) }
        #expect(r1[3] == [10, 20, 30, 40, 50])
        #expect(r0[3] == [Float](repeating: -1, count: 5) && r2[3] == [Float](repeating: -1, count: 5))
    }

    /// The reduce-scatter that carries a step's scalars: each replica's part summed in replica order to the plain
    /// reduce-scatter's bits (parts of unequal lengths, one empty, 1e8 + small - 1e8 mixed in so another order rounds
    /// differently, parts longer than its scratch block), every replica's posted scalars and `afterSum` values on every
    /// replica in replica order, `afterSum` seeing its own part already summed; and one collective round (two
    /// rendezvous) where the plain one, an allreduce of scalars and an allgather took six.
    @Test func reduceScatterCarriesTheStepsScalars() throws {
        let count = 10_007
        let counts = [5_000, count - 5_000, 0]
        func value(_ r: Int, _ i: Int) -> Float {
            let large: Float = i % 2 == 0 ? 1e8 : -1e8
            return i % 3 == 0 ? [Float(i), 0.5, Float(-2 * i)][r] : [large, Float(i % 7 + 1) * 0.3, -large][r]
        }
        let inputs: [[Float]] = (0..<3).map { r in (0..<count).map { value(r, $0) } }
        let group = InProcessGroup(size: 3)
        let results = group.run { member -> ([Float], [Float], [[Double]], [[Double]], Int) in
            let r = member.rank
            usleep(useconds_t((2 - r) * 2_000))
            var plain = inputs[r]
            try plain.withUnsafeMutableBufferPointer { try member.reduceScatter($0.baseAddress!, counts: counts) }
            try member.barrier()
            let before = group.rendezvousCount
            var fused = inputs[r]
            let begin = counts[..<r].reduce(0, +)
            let exchanged = try fused.withUnsafeMutableBufferPointer { p in
                try member.reduceScatter(p.baseAddress!, counts: counts, posting: [Double(r) + 0.5, Double(10 * r)]) {
                    // This replica's part is summed here: report its first value (or -1 for an empty part).
                    [Double(r), counts[r] > 0 ? Double(p[begin]) : -1]
                }
            }
            let rounds = group.rendezvousCount - before
            return (plain, fused, exchanged.posted, exchanged.afterSum, rounds)
        }
        for (r, result) in results.enumerated() {
            let (plain, fused, posted, after, rounds) = try result.get()
            #expect(fused == plain, "replica \(r)")
            let part = counts[..<r].reduce(0, +)..<counts[...r].reduce(0, +)
            #expect(Array(fused[part]) == part.map { (inputs[0][$0] + inputs[1][$0]) + inputs[2][$0] }, "replica \(r)")
            #expect(posted == [[0.5, 0], [1.5, 10], [2.5, 20]])
            let sum = { (i: Int) in Double((inputs[0][i] + inputs[1][i]) + inputs[2][i]) }
            #expect(after == [[0, sum(0)], [1, sum(5_000)], [2, -1]])
            // No rendezvous can complete without this replica, which made only this collective in between.
            #expect(rounds == 2, "replica \(r): \(rounds)")
        }
        #expect(try results[0].get().1[1] == 0, "1e8 + 0.3 - 1e8 in replica order")
    }

    /// The round that ends after the sum: when every replica posts `skipsAfterSum`, the parts are the same bits,
    /// the scalars arrive, no `afterSum` runs and the round is one rendezvous; when one replica does not, every
    /// replica runs `afterSum` and waits twice. Posted values of back-to-back early rounds do not mix (the slots), and a
    /// barrier after them still counts one. Three replicas arriving in three different orders.
    @Test func reduceScatterEndsAfterTheSumWhenEveryReplicaSkipsTheCheck() throws {
        let count = 5_003
        let counts = [2_000, 0, count - 2_000]
        let inputs: [[Float]] = (0..<3).map { r in (0..<count).map { i in [Float(i), 1e8 * Float(i % 2 * 2 - 1), 0.25 * Float(r + 1)][(i + r) % 3] } }
        for trial in 0..<3 {
            for skipping in [[true, true, true], [true, false, true]] {
                let group = InProcessGroup(size: 3)
                let results = group.run { member -> ([Float], Bool, Int, Int, Bool) in
                    let r = member.rank
                    usleep(useconds_t(((r + trial) % 3) * 1_000))
                    var plain = inputs[r]
                    try plain.withUnsafeMutableBufferPointer { try member.reduceScatter($0.baseAddress!, counts: counts) }
                    try member.barrier()
                    let before = group.rendezvousCount
                    var ranAfterSum = 0
                    var early = true, agreed = true
                    // Two rounds back to back (the second's posts may land while a slow replica still reads the
                    // first's), each replica's scalars different in each, each round a buffer of its own that lives
                    // until the barrier (another replica may read a round's buffer after this one has left it).
                    let buffers = (0..<2).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: count) }
                    defer { buffers.forEach { $0.deallocate() } }
                    for round in 0..<2 {
                        buffers[round].initialize(from: inputs[r], count: count)
                        let exchanged = try member.reduceScatter(buffers[round], counts: counts, posting: [Double(10 * round + r)], skipsAfterSum: skipping[r]) {
                            ranAfterSum += 1
                            return [Double(r)]
                        }
                        agreed = agreed && exchanged.posted == [[Double(10 * round)], [Double(10 * round + 1)], [Double(10 * round + 2)]]
                            && exchanged.afterSum == (exchanged.endedEarly ? [] : [[0], [1], [2]])
                        early = early && exchanged.endedEarly
                    }
                    try member.barrier()
                    let fused = Array(UnsafeBufferPointer(start: buffers[1], count: count))
                    agreed = agreed && Array(UnsafeBufferPointer(start: buffers[0], count: count)) == fused
                    return (fused, agreed, ranAfterSum, group.rendezvousCount - before, early)
                }
                for (r, result) in results.enumerated() {
                    let (fused, agreed, ranAfterSum, rounds, early) = try result.get()
                    #expect(agreed, "replica \(r), \(skipping): the scalars, afterSum's values and both rounds' sums")
                    let part = counts[..<r].reduce(0, +)..<counts[...r].reduce(0, +)
                    #expect(Array(fused[part]) == part.map { (inputs[0][$0] + inputs[1][$0]) + inputs[2][$0] }, "replica \(r)")
                    // Outside its part a replica's buffer keeps its own values (the others only read it).
                    #expect(Array(fused[..<part.lowerBound]) == Array(inputs[r][..<part.lowerBound]))
                    let all = skipping.allSatisfy { $0 }
                    #expect(early == all && ranAfterSum == (all ? 0 : 2), "replica \(r), \(skipping)")
                    // One rendezvous a round (two unless all skip), the barrier one; none can complete without this replica.
                    #expect(rounds == (all ? 3 : 5), "replica \(r), \(skipping): \(rounds)")
                }
                #expect(group.rendezvousCount == 3 + (skipping.allSatisfy { $0 } ? 3 : 5), "\(skipping)")
            }
        }
    }

    /// Two replicas' reduce-scatter gives each its part of a + b, the bits of the allreduce (and of MPI's sum of two
    /// ranks, which `mpirun -np 2 starling check-mpi` compares); bfloat16 likewise its rounding of a + b.
    @Test func reduceScatterIsTheAllreducesPart() throws {
        let counts = CollectiveChecks.partCounts(members: 2, count: 1000)
        let (a, b) = (CollectiveChecks.contribution(rank: 0, count: counts.reduce(0, +)), CollectiveChecks.contribution(rank: 1, count: counts.reduce(0, +)))
        for wire in [GradientWire.float32, .bfloat16] {
            let parts = InProcessGroup(size: 2).run { try CollectiveChecks.reduceScatterOfContributions(on: $0, count: 1000, wire: wire) }
            let sums = zip(a, b).map { x, y in
                wire == .float32 ? x + y : GradientWire.bfloat16Value(GradientWire.bfloat16Bits(GradientWire.bfloat16Value(GradientWire.bfloat16Bits(x)) + GradientWire.bfloat16Value(GradientWire.bfloat16Bits(y))))
            }
            #expect(try parts[0].get() == Array(sums[..<counts[0]]), "\(wire)")
            #expect(try parts[1].get() == Array(sums[counts[0]...]), "\(wire)")
        }
    }

    /// Replicas that disagree on the parts are refused on every replica (MPI would hang or read past a buffer).
    @Test func mismatchedPartsAreRefused() throws {
        let results = InProcessGroup(size: 2).run { member -> Void in
            var values = [Float](repeating: 1, count: 4)
            try values.withUnsafeMutableBufferPointer { try member.reduceScatter($0.baseAddress!, counts: member.rank == 0 ? [2, 2] : [1, 3]) }
        }
        for result in results { #expect { try result.get() } throws: { "\($0)".contains("met replicas with") } }
    }

    /// Broadcasts and gathers of texts and arrays, from a root other than 0.
    @Test func broadcastsAndGathers() throws {
        let results = InProcessGroup(size: 3).run { member -> [String] in
            let text = try member.broadcast("from \(member.rank)", root: 2)
            let texts = try member.allgatherText(String(repeating: "x", count: member.rank))
            var floats = [Float](repeating: Float(member.rank), count: 5)
            try floats.withUnsafeMutableBufferPointer { try member.broadcast($0.baseAddress!, count: 5, root: 1) }
            let gathered = try member.allgather([Double(member.rank), 0.5])
            return [text] + texts + ["\(floats)", "\(gathered)"]
        }
        for result in results {
            #expect(try result.get() == ["from 2", "", "x", "xx", "\([Float](repeating: 1, count: 5))", "\([0.0, 0.5, 1.0, 0.5, 2.0, 0.5])"])
        }
    }
}

/// `train --replicas N` against one process and against N MPI ranks.
@Suite(.serialized) struct ReplicaTrainingTests {
    func arguments(_ family: String, _ data: String, _ out: String, extra: [String] = []) -> [String] {
        ["train", "--model", family, "--data", data, "--epochs", "2", "--steps-per-epoch", "10", "--batch-size", "96",
         "--val-split", "test", "--val-limit", "200", "--seed", "4", "--out", out] + extra
    }

    /// 2 replicas in one process train the model 2 MPI ranks train, bit for bit (each replica's slice is the rank's,
    /// one thread each, and a + b = b + a), and the model one process trains at the full batch within the 2-rank
    /// tests' tolerance; checkpoints and the log are written once, with the layout in the header. conv-ae runs its
    /// convolutions on oneDNN from both replicas' threads at once.
    @Test(arguments: ["fc-ae", "sparse-ae", "deep-ae", "vae", "conv-ae"])
    func replicasMatchRanksAndOneProcess(family: String) throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-\(family)")
        let one = try run(Fixture.starling, arguments(family, data, dir + "/one", extra: ["--replicas", "1", "--blas-threads", "1"]))
        #expect(one.status == 0, "\(one.error)")
        let replicas = try run(Fixture.starling, arguments(family, data, dir + "/replicas", extra: ["--replicas", "2"]))
        #expect(replicas.status == 0, "\(replicas.output)\(replicas.error)")
        #expect(replicas.output.contains("over 2 replica(s) on threads of one process"), "\(replicas.output)")
        #expect(replicas.output.components(separatedBy: "epoch 2/2 done").count == 2, "one writer: \(replicas.output)")
        let ranks = try mpirun(2, arguments(family, data, dir + "/ranks"))
        #expect(ranks.status == 0, "\(ranks.output)\(ranks.error)")
        let (a, b, c) = (try weights(dir + "/one/\(family)-last.h5"), try weights(dir + "/replicas/\(family)-last.h5"),
                         try weights(dir + "/ranks/\(family)-last.h5"))
        #expect(b == c, "2 replicas and 2 ranks differ: \(maxRelativeDifference(b, c))")
        // One process on one thread (pinned: the thread calibration may run early steps on two, whose oneDNN weight
        // gradients sum in yet another order) sums a batch of 96 where the replicas sum two of 48: the same model to
        // rounding. oneDNN's weight gradients (conv-ae) and vae's sampled latent, through Adam's nearly sign-like steps
        // on small gradients, carry that rounding further: on Zen 3's 8-lane sums vae came to 6.4e-5 after 20 steps
        // (on Zen 4's 16-lane ones under 1e-5), so those two get the looser bound the convolutional 2-rank tests use;
        // so does deep-ae, whose 96-row products run oneDNN's sgemm and its replicas' 48-row ones OpenBLAS's on an
        // AVX-512 CPU (`GEMMSelection.denseMinimumRows`): two libraries' rounding, 1.8e-5 after 20 steps on Zen 4.
        // A wrong split of the batch or the noise errs by 1e-2 or more.
        #expect(maxRelativeDifference(a, b) < (["conv-ae", "vae", "deep-ae"].contains(family) ? 1e-4 : 1e-5))
        let logs = try [dir + "/replicas", dir + "/ranks"].map { try String(contentsOfFile: $0 + "/\(family)-log.csv", encoding: .utf8) }
        let lossColumns = logs.map { $0.split(separator: "\n").dropFirst().map { $0.split(separator: ",")[2...3].joined(separator: ",") } }
        #expect(lossColumns[0] == lossColumns[1], "training and validation losses: \(lossColumns)")
        #expect(try Checkpoint.load(from: dir + "/replicas/\(family)-last.h5").state.worldSize == 2)
    }

    /// SSD7 with --sync-bn: the forward pass's own collectives (batch-norm statistics and SSD's positive count over the
    /// global batch, `CrossReplica`) run between the replicas' threads, oneDNN's convolutions in both at once; two
    /// replicas train the weights two ranks train, bit for bit.
    @Test func ssd7ReplicasMatchRanksWithSyncBN() throws {
        let udacity = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/udacity").path
        guard FileManager.default.fileExists(atPath: udacity + "/labels.csv") else { return }   // shared data not here
        let dir = Fixture.temporaryDirectory("replicas-ssd7")
        let data = dir + "/udacity.h5"
        let convert = try starling("data", "detection", "--format", "udacity", "--images", udacity + "/images", "--labels", udacity + "/labels.csv",
                                   "--out", data, "--height", "96", "--width", "160", "--val-fraction", "0")
        #expect(convert.status == 0, "\(convert.error)")
        let args = ["train", "--model", "ssd7", "--data", data, "--epochs", "3", "--batch-size", "2", "--no-augment",
                    "--val-split", "none", "--sync-bn", "--seed", "2"]
        let replicas = try run(Fixture.starling, args + ["--replicas", "2", "--out", dir + "/replicas"])
        #expect(replicas.status == 0, "\(replicas.output)\(replicas.error)")
        let ranks = try mpirun(2, args + ["--out", dir + "/ranks"])
        #expect(ranks.status == 0, "\(ranks.output)\(ranks.error)")
        let (a, b) = (try weights(dir + "/replicas/ssd7-last.h5"), try weights(dir + "/ranks/ssd7-last.h5"))
        #expect(!a.isEmpty && a == b, "largest relative difference \(maxRelativeDifference(a, b))")
    }

    /// Without --replicas or --blas-threads, one process times both layouts on the first batches, says which it chose
    /// and why, and trains on it; with --shard-optimizer too (replicas then shard their optimizer state).
    @Test(arguments: [false, true])
    func theLayoutIsMeasuredByDefault(sharded: Bool) throws {
        guard ProcessInfo.processInfo.activeProcessorCount > 1, ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"] == nil else { return }
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-auto\(sharded ? "-sharded" : "")")
        let r = try run(Fixture.starling, arguments("fc-ae", data, dir, extra: sharded ? ["--shard-optimizer"] : []))
        #expect(r.status == 0, "\(r.error)")
        let line = try #require(r.output.split(separator: "\n").first { $0.hasPrefix("replicas: ") }, "\(r.output)")
        #expect(line.contains("the faster layout on this run's first batches") && line.contains("--replicas N fixes the count"))
        let chosen = line.hasPrefix("replicas: 1 ") ? "1 rank(s)" : "replica(s) on threads of one process"
        #expect(r.output.contains(chosen), "\(r.output)")
        if !line.hasPrefix("replicas: 1 ") {
            #expect(r.output.contains("weights and optimizer state: one copy shared by the 2 replicas"), "\(r.output)")
        }
    }

    /// The optimizer state of a checkpoint, by name.
    func optimizerState(_ path: String) throws -> [String: [Float]] { try Checkpoint.load(from: path).optimizerState }

    /// Replicas share one copy of the weights and of the optimizer state (each updating its range in place, a barrier
    /// after the update): `--replicas 2`, with or without `--shard-optimizer`, trains the weights, and ends with the
    /// optimizer state, that `mpirun -np 2` gives with and without `--shard-optimizer` (ZeRO stage 1 between
    /// processes), bit for bit: a + b = b + a in the reduce-scatter, and the ranges cut at the update loop's 64-element
    /// blocks. conv-ae runs oneDNN in both threads.
    @Test(arguments: ["fc-ae", "conv-ae"])
    func sharedReplicasMatchShardedAndPlainRanks(family: String) throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-zero-\(family)")
        let shard = ["--shard-optimizer"]
        let sharded = try run(Fixture.starling, arguments(family, data, dir + "/sharded", extra: ["--replicas", "2"] + shard))
        #expect(sharded.status == 0, "\(sharded.output)\(sharded.error)")
        #expect(sharded.output.contains("weights and optimizer state: one copy shared by the 2 replicas, each updating its range in place: replica 0 parameters 0..<"), "\(sharded.output)")
        let ranks = try mpirun(2, arguments(family, data, dir + "/ranks", extra: shard))
        #expect(ranks.status == 0, "\(ranks.output)\(ranks.error)")
        let plainRanks = try mpirun(2, arguments(family, data, dir + "/plain-ranks"))
        #expect(plainRanks.status == 0, "\(plainRanks.output)\(plainRanks.error)")
        let plain = try run(Fixture.starling, arguments(family, data, dir + "/plain", extra: ["--replicas", "2"]))
        #expect(plain.status == 0, "\(plain.output)\(plain.error)")
        let last = "/\(family)-last.h5"
        let (a, b, c, d) = (try weights(dir + "/sharded" + last), try weights(dir + "/ranks" + last), try weights(dir + "/plain" + last),
                            try weights(dir + "/plain-ranks" + last))
        #expect(!a.isEmpty && a == b, "shared replicas and sharded ranks: \(maxRelativeDifference(a, b))")
        #expect(a == c && a == d, "replicas with and without --shard-optimizer, unsharded ranks: \(maxRelativeDifference(a, c)), \(maxRelativeDifference(a, d))")
        let (sa, sb, sc, sd) = (try optimizerState(dir + "/sharded" + last), try optimizerState(dir + "/ranks" + last), try optimizerState(dir + "/plain" + last),
                                try optimizerState(dir + "/plain-ranks" + last))
        #expect(!sa.isEmpty && sa == sb && sa == sc && sa == sd)
        let logs = try [dir + "/sharded", dir + "/ranks"].map { try String(contentsOfFile: $0 + "/\(family)-log.csv", encoding: .utf8) }
        let lossColumns = logs.map { $0.split(separator: "\n").dropFirst().map { $0.split(separator: ",")[2...3].joined(separator: ",") } }
        #expect(lossColumns[0] == lossColumns[1], "training and validation losses: \(lossColumns)")
    }

    /// bfloat16 gradients reduce-scattered between replicas are those reduce-scattered between ranks, bit for bit,
    /// with SGD's momentum as the sharded state.
    @Test func shardedReplicasMatchShardedRanksWithBFloat16Gradients() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-zero-bf16")
        let flags = ["--shard-optimizer", "--gradient-precision", "bf16", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"]
        let replicas = try run(Fixture.starling, arguments("fc-ae", data, dir + "/replicas", extra: ["--replicas", "2"] + flags))
        #expect(replicas.status == 0, "\(replicas.output)\(replicas.error)")
        let ranks = try mpirun(2, arguments("fc-ae", data, dir + "/ranks", extra: flags))
        #expect(ranks.status == 0, "\(ranks.output)\(ranks.error)")
        let (a, b) = (try weights(dir + "/replicas/fc-ae-last.h5"), try weights(dir + "/ranks/fc-ae-last.h5"))
        #expect(!a.isEmpty && a == b, "\(maxRelativeDifference(a, b))")
        #expect(try optimizerState(dir + "/replicas/fc-ae-last.h5") == optimizerState(dir + "/ranks/fc-ae-last.h5"))
    }

    /// float16 gradients on replicas are allreduced whole (their scale reads the whole sum) and each replica still
    /// updates only its range of the shared weights: the weights, moments and losses of `mpirun -np 2`, bit for bit.
    @Test func sharedReplicasMatchRanksWithFloat16Gradients() throws {
        guard GradientWire.float16Available else { return }
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-fp16")
        let flags = ["--gradient-precision", "fp16"]
        let replicas = try run(Fixture.starling, arguments("fc-ae", data, dir + "/replicas", extra: ["--replicas", "2"] + flags))
        #expect(replicas.status == 0, "\(replicas.output)\(replicas.error)")
        let ranks = try mpirun(2, arguments("fc-ae", data, dir + "/ranks", extra: flags))
        #expect(ranks.status == 0, "\(ranks.output)\(ranks.error)")
        let (a, b) = (try weights(dir + "/replicas/fc-ae-last.h5"), try weights(dir + "/ranks/fc-ae-last.h5"))
        #expect(!a.isEmpty && a == b, "\(maxRelativeDifference(a, b))")
        #expect(try optimizerState(dir + "/replicas/fc-ae-last.h5") == optimizerState(dir + "/ranks/fc-ae-last.h5"))
        let logs = try [dir + "/replicas", dir + "/ranks"].map { try String(contentsOfFile: $0 + "/fc-ae-log.csv", encoding: .utf8) }
        let lossColumns = logs.map { $0.split(separator: "\n").dropFirst().map { $0.split(separator: ",")[2...3].joined(separator: ",") } }
        #expect(lossColumns[0] == lossColumns[1], "training and validation losses: \(lossColumns)")
    }

    /// A replica step is one collective round (the gradients' reduce-scatter, which also carries the loss
    /// agreement; its second wait, which hands out the non-finite check of the sum, is left out when every replica's
    /// gradients lie below the bound at which their sum cannot overflow, as here) and the barrier after the update:
    /// two rendezvous a step, where the loss allreduce, the reduce-scatter, the non-finite allgather and a two-wait
    /// barrier took eight. Counted as the difference between runs of 7 and 3 steps, so the start-up and the epoch's
    /// end cancel.
    @Test func aReplicaStepIsOneCollectiveRoundAndABarrier() throws {
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        func rendezvous(steps: Int) throws -> (count: Int, loss: Double) {
            var o = TrainingOptions()
            (o.epochs, o.batchSize, o.stepsPerEpoch, o.seed, o.writeOutputs, o.progress) = (1, 64, steps, 5, false, false)
            let models = try (0..<2).map { _ in try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 5) }
            let shards = OptimizerShards.ranges(parameterCount: models[0].parameters.count, ranks: 2)
            let group = InProcessGroup(size: 2)
            let feed = ReplicaFeed(replicas: 2)
            let results = BLAS.withThreadCount(1) {
                group.run(prepare: { BLAS.setThreadCount(1) }) { member -> [EpochRecord] in
                    let model = models[member.rank]
                    let trainer = try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count, shard: shards[member.rank]),
                                              train: data, validation: nil, options: o, world: member, log: { _ in }, feed: feed)
                    return try trainer.run()
                }
            }
            let records = try results[0].get()
            #expect(try results[1].get().map(\.loss) == records.map(\.loss), "the replicas agree on the loss")
            return (group.rendezvousCount, records.last?.loss ?? .nan)
        }
        let (short, long) = (try rendezvous(steps: 3), try rendezvous(steps: 7))
        #expect((long.count - short.count) == 4 * 2, "rendezvous: \(short.count) in 3 steps, \(long.count) in 7")
        #expect(short.loss.isFinite && long.loss.isFinite && short.loss > 0)
    }

    /// A non-finite gradient on one replica (its loss finite) is found in the sum every replica agrees on: with
    /// --skip-nonfinite 1 every replica skips that step and the run goes on; without it, every replica stops there.
    @Test func nonFiniteGradientOnOneReplicaIsAgreed() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-nan-gradient")
        let skipped = try run(Fixture.starling, arguments("fc-ae", data, dir + "/skip", extra: ["--replicas", "2", "--skip-nonfinite", "1"]),
                              environment: ["STARLING_TEST_NONFINITE": "1:3:gradient"])
        #expect(skipped.status == 0, "\(skipped.output)\(skipped.error)")
        #expect(skipped.output.contains("a gradient became non-finite (inf in ") &&
                skipped.output.contains("at epoch 1, step 4 (global step 3): step skipped without an update (1 of 1 allowed"), "\(skipped.output)")
        let stopped = try run(Fixture.starling, arguments("fc-ae", data, dir + "/stop", extra: ["--replicas", "2"]),
                              environment: ["STARLING_TEST_NONFINITE": "0:5:gradient"])
        #expect(stopped.status != 0)
        #expect((stopped.output + stopped.error).contains("a gradient became non-finite (inf in ") &&
                (stopped.output + stopped.error).contains("at epoch 1, step 6 (global step 5): training stopped on every rank"), "\(stopped.output)\(stopped.error)")
    }

    /// In one process the replicas' parameters read one buffer (replica 0's), each replica keeping its own gradients
    /// and its own range of the optimizer state, and the trained weights are those of one replica's range updates put
    /// together: the shared buffer after `ReplicaTraining.run` equals a checkpoint-free 2-rank run's weights, which the
    /// CLI tests compare; here the sharing itself is checked.
    @Test func replicasShareOneCopyOfTheWeights() throws {
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        var o = TrainingOptions()
        (o.epochs, o.batchSize, o.stepsPerEpoch, o.seed, o.writeOutputs, o.progress) = (1, 64, 3, 5, false, false)
        let config = FCAutoencoder.defaultConfig()
        let models = try (0..<2).map { _ in try ModelRegistry.build(config, seed: 5) }
        let shards = OptimizerShards.ranges(parameterCount: models[0].parameters.count, ranks: 2)
        let before = models[0].parameters.values.toArray()
        let pairs: [(model: any Model, optimizer: any Optimizer)] = models.enumerated().map { r, m in
            (m, Adam(parameterCount: m.parameters.count, shard: shards[r]))
        }
        _ = try ReplicaTraining.run(pairs, train: data, validation: nil, options: o, log: { _ in })
        #expect(models[1].parameters.values === models[0].parameters.values)
        #expect(models[1].parameters.gradients !== models[0].parameters.gradients)
        for (p, q) in zip(models[0].parameters.parameters, models[1].parameters.parameters) {
            #expect(p.value.storage.pointer == q.value.storage.pointer && p.value !== q.value)
            #expect(p.value.gradStorage?.pointer != q.value.gradStorage?.pointer)
        }
        #expect(models[0].parameters.values.toArray() != before, "the shared weights were trained")
        #expect(pairs.map { $0.optimizer.state[0].storage.count } == shards.map(\.count))
        // Whole optimizers would each update every weight of the one shared copy: refused, naming the range.
        let whole: [(model: any Model, optimizer: any Optimizer)] = try (0..<2).map { _ in
            let m = try ModelRegistry.build(config, seed: 5)
            return (m, Adam(parameterCount: m.parameters.count))
        }
        #expect { _ = try ReplicaTraining.run(whole, train: data, validation: nil, options: o, log: { _ in }) } throws: { error in
            "\(error)".contains("but replica 0 of 2 (replicas share one copy of the weights and optimizer state) owns 0..<\(shards[0].upperBound)")
        }
    }

    /// A split held in memory is read by each replica through a prefetcher of its own (`readsConcurrently`); a split
    /// read from the file through the one shared feed. Both hand every replica the same slices, so the trained weights
    /// are the same bits.
    @Test func ownAndSharedDataPipelinesTrainTheSameWeights() throws {
        let path = try Fixture.sampleHDF5()
        func train(residentLimit: Int) throws -> (weights: [Float], concurrent: Bool) {
            let data = try ImageDataset(path: path, split: "train", residentLimit: residentLimit)
            var o = TrainingOptions()
            (o.epochs, o.batchSize, o.stepsPerEpoch, o.seed, o.writeOutputs, o.progress) = (2, 64, 3, 7, false, false)
            let models = try (0..<2).map { _ in try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 7) }
            let shards = OptimizerShards.ranges(parameterCount: models[0].parameters.count, ranks: 2)
            let pairs: [(model: any Model, optimizer: any Optimizer)] = models.enumerated().map { r, m in
                (m, Adam(parameterCount: m.parameters.count, shard: shards[r]))
            }
            _ = try ReplicaTraining.run(pairs, train: data, validation: nil, options: o, log: { _ in })
            return (models[0].parameters.values.toArray(), data.readsConcurrently)
        }
        let (own, shared) = (try train(residentLimit: ImageDataset.residentBytes), try train(residentLimit: 0))
        #expect(own.concurrent && !shared.concurrent)
        #expect(own.weights == shared.weights)
    }

    /// Checkpoints of sharded replicas hold every parameter's state: stopped at step 13 they resume unsharded to the
    /// uninterrupted sharded run's bits, and unsharded replicas' and sharded ranks' checkpoints resume sharded on
    /// replicas to the same bits. A resume on another count or kind of world says which it was and which it is, and
    /// continues the sample order (3 ranks from 2 replicas, within the 3-rank tests' 1e-5).
    @Test func shardedReplicaCheckpointsResumeEitherWay() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-zero-resume")
        let replicas = ["--replicas", "2"], shard = ["--shard-optimizer"]
        func train(_ out: String, _ extra: [String], ranks: Int? = nil) throws -> Run {
            let args = ["train", "--model", "fc-ae", "--data", data, "--epochs", "2", "--steps-per-epoch", "10", "--batch-size", "96",
                        "--val-split", "none", "--seed", "4", "--out", dir + "/" + out] + extra
            let r = try ranks.map { try mpirun($0, args) } ?? run(Fixture.starling, args)
            #expect(r.status == 0, "\(out) \(extra): \(r.output)\(r.error)")
            return r
        }
        _ = try train("straight", replicas + shard)
        let straight = (try weights(dir + "/straight/fc-ae-last.h5"), try optimizerState(dir + "/straight/fc-ae-last.h5"))
        // (first run's flags and ranks, resumed run's flags and ranks, the resume's message)
        let cases: [(String, [String], Int?, [String], Int?, String)] = [
            ("sharded-to-plain", replicas + shard, nil, replicas, nil, "resumed at epoch 1, step 13"),
            ("plain-to-sharded", replicas, nil, replicas + shard, nil, "resumed at epoch 1, step 13"),
            ("ranks-to-replicas", shard, 2, replicas + shard, nil, "resuming a run of 2 rank(s) on 2 replica(s)"),
        ]
        for (name, first, firstRanks, second, secondRanks, message) in cases {
            _ = try train(name, first + ["--max-steps", "13"], ranks: firstRanks)
            let resumed = try train(name, second + ["--resume", dir + "/\(name)/fc-ae-last.h5"], ranks: secondRanks)
            #expect(resumed.output.contains(message) && resumed.output.contains("resumed at epoch 1, step 13"), "\(name): \(resumed.output)")
            #expect(try weights(dir + "/\(name)/fc-ae-last.h5") == straight.0, "\(name)")
            #expect(try optimizerState(dir + "/\(name)/fc-ae-last.h5") == straight.1, "\(name)")
        }
        _ = try train("three", replicas + shard + ["--max-steps", "13"])
        #expect(try Checkpoint.load(from: dir + "/three/fc-ae-last.h5").state.worldIsReplicas)
        let three = try train("three", shard + ["--resume", dir + "/three/fc-ae-last.h5"], ranks: 3)
        #expect(three.output.contains("resuming a run of 2 replica(s) on 3 rank(s)"), "\(three.output)")
        #expect(maxRelativeDifference(try weights(dir + "/three/fc-ae-last.h5"), straight.0) < 1e-5)
        _ = try train("one", replicas + ["--max-steps", "13"])
        let one = try train("one", ["--replicas", "1", "--resume", dir + "/one/fc-ae-last.h5"])
        #expect(one.output.contains("resuming a run of 2 replica(s) on 1 rank(s)"), "\(one.output)")
        #expect(maxRelativeDifference(try weights(dir + "/one/fc-ae-last.h5"), straight.0) < 1e-5)
    }

    /// A non-finite loss on replica 1 stops every replica at the same step with the agreed message, and the run
    /// ends (non-zero) instead of waiting.
    @Test func nonFiniteLossOnOneReplicaStopsAll() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-nan")
        let r = try run(Fixture.starling, arguments("fc-ae", data, dir, extra: ["--replicas", "2"]),
                        environment: ["STARLING_TEST_NONFINITE": "1:3:loss"])
        #expect(r.status != 0)
        #expect((r.output + r.error).contains("the loss became non-finite on 1 replica(s) at epoch 1, step 4"), "\(r.output)\(r.error)")
    }

    /// Bad settings are refused in one line before anything runs.
    @Test func badReplicaSettingsAreRefused() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-bad")
        let odd = try run(Fixture.starling, arguments("fc-ae", data, dir, extra: ["--replicas", "5"]))
        #expect(odd.status != 0 && odd.error.contains("does not split evenly over 5 replicas"), "\(odd.error)")
        let both = try run(Fixture.starling, arguments("fc-ae", data, dir, extra: ["--replicas", "2", "--blas-threads", "2"]))
        #expect(both.status != 0 && both.error.contains("--blas-threads 2 cannot apply"), "\(both.error)")
        let zero = try run(Fixture.starling, arguments("fc-ae", data, dir, extra: ["--replicas", "0"]))
        #expect(zero.status != 0 && zero.error.contains("--replicas must be positive"), "\(zero.error)")
    }
}

private final class UncheckedList: @unchecked Sendable { var value: [Int] = [] }
private final class UncheckedName: @unchecked Sendable { var name: String? }
