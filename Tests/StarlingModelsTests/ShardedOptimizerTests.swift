import Foundation
import Testing
@testable import StarlingModels

/// ZeRO stage 1 (`train --shard-optimizer`) under mpirun, against the same ranks without it: the same weights after
/// 20 steps, the same checkpoints, resumes either way, and the refusals.
@Suite(.serialized) struct ShardedOptimizerTests {
    func arguments(_ data: String, _ out: String, _ extra: [String]) -> [String] {
        ["train", "--model", "fc-ae", "--data", data, "--epochs", "2", "--steps-per-epoch", "10", "--batch-size", "96",
         "--val-split", "none", "--seed", "4", "--out", out] + extra
    }

    /// Adam with L2 weight decay, SGD with momentum and weight decay, AdamW (the trainer has no gradient clipping).
    static let optimizers: [[String]] = [
        ["--optimizer", "adam", "--weight-decay", "1e-3"],
        ["--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "1e-3"],
        ["--optimizer", "adamw", "--weight-decay", "1e-2"],
    ]

    /// The optimizer state of a checkpoint, by name.
    func optimizerState(_ path: String) throws -> [String: [Float]] { try Checkpoint.load(from: path).optimizerState }

    /// Sharded and unsharded runs on the same ranks end with the same weights and the same (gathered) optimizer state:
    /// bit for bit on 2 ranks (one addition a sum either way, and shards cut at the update loop's 64-element blocks),
    /// to the data-parallel tests' 1e-5 on 3 (MPI may add three ranks' values in another order in a reduce-scatter).
    @Test(arguments: [2, 3])
    func shardedMatchesUnsharded(ranks: Int) throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("zero\(ranks)")
        for (k, optimizer) in Self.optimizers.enumerated() {
            let plain = try mpirun(ranks, arguments(data, dir + "/plain\(k)", optimizer))
            #expect(plain.status == 0, "\(plain.output)\(plain.error)")
            let sharded = try mpirun(ranks, arguments(data, dir + "/sharded\(k)", optimizer + ["--shard-optimizer"]))
            #expect(sharded.status == 0, "\(sharded.output)\(sharded.error)")
            #expect(sharded.output.contains("optimizer state sharded over \(ranks) ranks"), "\(sharded.output)")
            let (a, b) = (try weights(dir + "/plain\(k)/fc-ae-last.h5"), try weights(dir + "/sharded\(k)/fc-ae-last.h5"))
            let (sa, sb) = (try optimizerState(dir + "/plain\(k)/fc-ae-last.h5"), try optimizerState(dir + "/sharded\(k)/fc-ae-last.h5"))
            #expect(Set(sa.keys) == Set(sb.keys) && !sa.isEmpty)
            if ranks == 2 {
                #expect(a == b, "\(optimizer)")
                #expect(sa == sb, "\(optimizer)")
            } else {
                #expect(maxRelativeDifference(a, b) < 1e-5, "\(optimizer)")
                #expect(maxRelativeDifference(sa, sb) < 1e-4, "\(optimizer)")
            }
        }
    }

    /// bfloat16 gradients reduce-scattered are the bfloat16 allreduce's on 2 ranks, bit for bit.
    @Test func shardedMatchesUnshardedWithBFloat16Gradients() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("zero-bf16")
        let bf16 = ["--gradient-precision", "bf16"]
        #expect(try mpirun(2, arguments(data, dir + "/plain", bf16)).status == 0)
        let sharded = try mpirun(2, arguments(data, dir + "/sharded", bf16 + ["--shard-optimizer"]))
        #expect(sharded.status == 0, "\(sharded.output)\(sharded.error)")
        #expect(try weights(dir + "/plain/fc-ae-last.h5") == weights(dir + "/sharded/fc-ae-last.h5"))
    }

    /// A sharded run stopped at step 13 resumes sharded to the uninterrupted sharded run's bits, and unsharded to the
    /// same bits (its checkpoint holds every parameter's state); an unsharded checkpoint resumes sharded on 3 ranks.
    @Test func shardedCheckpointsResumeEitherWay() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("zero-resume")
        let shard = ["--shard-optimizer"]
        #expect(try mpirun(2, arguments(data, dir + "/straight", shard)).status == 0)
        for (name, resumeFlags) in [("sharded", shard), ("unsharded", [])] {
            #expect(try mpirun(2, arguments(data, dir + "/" + name, shard + ["--max-steps", "13"])).status == 0)
            let resumed = try mpirun(2, arguments(data, dir + "/" + name, resumeFlags + ["--resume", dir + "/\(name)/fc-ae-last.h5"]))
            #expect(resumed.status == 0, "\(resumed.output)\(resumed.error)")
            #expect(resumed.output.contains("resumed at epoch 1, step 13"), "\(resumed.output)")
            #expect(try weights(dir + "/\(name)/fc-ae-last.h5") == weights(dir + "/straight/fc-ae-last.h5"), "resumed \(name)")
            #expect(try optimizerState(dir + "/\(name)/fc-ae-last.h5") == optimizerState(dir + "/straight/fc-ae-last.h5"), "resumed \(name)")
        }
        #expect(try mpirun(2, arguments(data, dir + "/three", ["--max-steps", "13"])).status == 0)
        let three = try mpirun(3, arguments(data, dir + "/three", shard + ["--resume", dir + "/three/fc-ae-last.h5"]))
        #expect(three.status == 0 && three.output.contains("resuming a run of 2 rank(s) on 3"), "\(three.output)\(three.error)")
        #expect(maxRelativeDifference(try weights(dir + "/three/fc-ae-last.h5"), try weights(dir + "/straight/fc-ae-last.h5")) < 1e-5)
    }

    /// fp16 gradients need the whole sum for their scale: refused in one line. A non-finite gradient in one rank's
    /// range stops every rank at the same step, named as unsharded runs name it.
    @Test func refusalsAndNonFiniteGradients() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("zero-refusals")
        let fp16 = try mpirun(2, arguments(data, dir + "/fp16", ["--shard-optimizer", "--gradient-precision", "fp16"]))
        #expect(fp16.status != 0)
        #expect((fp16.output + fp16.error).contains("--shard-optimizer cannot send gradients as fp16"), "\(fp16.output)\(fp16.error)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/fp16/fc-ae-last.h5"))
        var env = mpiEnvironment
        env["STARLING_TEST_NONFINITE"] = "1:5:gradient"
        let stopped = try run("/usr/bin/env", ["mpirun", "-np", "2", "-x", "STARLING_TEST_NONFINITE", Fixture.starling] +
                              arguments(data, dir + "/stop", ["--shard-optimizer"]), environment: env)
        let text = stopped.output + stopped.error
        #expect(stopped.status == 1, "\(text)")
        #expect(text.contains("a gradient became non-finite (inf in "), "\(text)")
        #expect(text.contains("(global step 5): training stopped on every rank"), "\(text)")
    }
}
