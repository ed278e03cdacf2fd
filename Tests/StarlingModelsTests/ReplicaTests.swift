import Foundation
import Testing
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

    /// The float sum runs in blocks of a stack buffer: across several blocks, with a share that ends mid-block, each
    /// element is still replica 0's value plus replica 1's plus replica 2's, in that order (large and small values mixed
    /// so that another order would round differently), on every replica.
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
        let one = try run(Fixture.starling, arguments(family, data, dir + "/one", extra: ["--replicas", "1"]))
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
        // oneDNN's weight gradients sum a batch of 48 in another order than one of 96: conv-ae to the looser bound
        // the convolutional 2-rank tests use.
        #expect(maxRelativeDifference(a, b) < (family == "conv-ae" ? 1e-4 : 1e-5))
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

    /// Without --replicas or --blas-threads, one process times both layouts on the first batch, says which it chose
    /// and why, and trains on it.
    @Test func theLayoutIsMeasuredByDefault() throws {
        guard ProcessInfo.processInfo.activeProcessorCount > 1, ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"] == nil else { return }
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-auto")
        let r = try run(Fixture.starling, arguments("fc-ae", data, dir))
        #expect(r.status == 0, "\(r.error)")
        let line = try #require(r.output.split(separator: "\n").first { $0.hasPrefix("replicas: ") }, "\(r.output)")
        #expect(line.contains("the faster layout on this run's first batch") && line.contains("--replicas N fixes the count"))
        let chosen = line.hasPrefix("replicas: 1 ") ? "1 rank(s)" : "replica(s) on threads of one process"
        #expect(r.output.contains(chosen), "\(r.output)")
    }

    /// A non-finite loss on replica 1 stops every replica at the same step with the agreed message, and the run
    /// ends (non-zero) instead of waiting.
    @Test func nonFiniteLossOnOneReplicaStopsAll() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("replicas-nan")
        let r = try run(Fixture.starling, arguments("fc-ae", data, dir, extra: ["--replicas", "2"]),
                        environment: ["STARLING_TEST_NONFINITE": "1:3:loss"])
        #expect(r.status != 0)
        #expect((r.output + r.error).contains("the loss became non-finite on 1 rank(s) at epoch 1, step 4"), "\(r.output)\(r.error)")
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
