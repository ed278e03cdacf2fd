import Foundation
import Testing
@testable import StarlingModels
import StarlingDistributed

/// The in-process collective (replicas on threads).
@Suite struct InProcessCollectiveTests {
    /// `check-mpi`'s checks, whose results are known exactly, over replicas on threads.
    @Test(arguments: [1, 2, 3, 4])
    func collectivesAreExact(replicas: Int) throws {
        let results = InProcessGroup(size: replicas).run { try CollectiveChecks.run(on: $0, count: 10_000) }
        for (r, result) in results.enumerated() { #expect(try result.get() == [], "replica \(r)") }
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
