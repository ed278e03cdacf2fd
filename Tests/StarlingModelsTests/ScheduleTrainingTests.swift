import Foundation
import Testing
import StarlingCore
import StarlingIO
import StarlingDistributed
@testable import StarlingModels

/// Learning-rate schedules inside real runs: set every step from the global step, kept in checkpoints, resumed
/// exactly, composed with the plateau, and their flags checked.
@Suite struct ScheduleTrainingTests {
    func options(_ dir: String, epochs: Int, maxSteps: Int? = nil) -> TrainingOptions {
        var o = TrainingOptions()
        o.epochs = epochs
        o.batchSize = 64
        o.stepsPerEpoch = 3
        o.seed = 11
        o.outputDirectory = dir
        o.maxSteps = maxSteps
        return o
    }

    /// A warmup of 1.5 epochs (4.5 steps, so 5) into a step decay that halves the rate every 2 epochs.
    func warmupIntoStepDecay(_ dir: String, maxSteps: Int? = nil) -> TrainingOptions {
        var o = options(dir, epochs: 3, maxSteps: maxSteps)
        o.schedule.shape = .step
        o.schedule.warmupEpochs = 1.5
        o.schedule.stepEveryEpochs = 2
        o.schedule.stepFactor = 0.5
        return o
    }

    func trainer(_ o: TrainingOptions, resume: String? = nil, log: @escaping (String) -> Void = { _ in }) throws -> Trainer {
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: o.seed)
        let loaded = try resume.map { try Checkpoint.load(from: $0) }
        return try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count), train: data, validation: nil,
                           options: o, world: try Communicator(), resume: loaded, log: log)
    }

    func train(_ o: TrainingOptions, resume: String? = nil) throws -> [Float] {
        let t = try trainer(o, resume: resume)
        try t.run()
        return t.model.parameters.values.toArray()
    }

    /// Stopped twice inside the warmup (after steps 2 and 4 of its 5) and resumed each time, the run ends with the
    /// uninterrupted run's weights bit for bit, having crossed the warmup's end and a step decay after resuming.
    @Test func resumeInsideTheWarmupIsBitIdentical() throws {
        let straight = try train(warmupIntoStepDecay(Fixture.temporaryDirectory("warmup-straight")))
        // The schedule acted: the same run at a constant rate ends elsewhere. (Weights compared as one Bool, so that a
        // failure does not print 50,000 numbers.)
        let constantDiffers = try train(options(Fixture.temporaryDirectory("warmup-constant"), epochs: 3)) != straight
        #expect(constantDiffers)
        let dir = Fixture.temporaryDirectory("warmup-split")
        let last = dir + "/fc-ae-last.h5"
        _ = try train(warmupIntoStepDecay(dir, maxSteps: 2))
        let first = try Checkpoint.load(from: last).state
        #expect(first.step == 2 && first.epoch == 0)
        #expect(first.learningRateSchedule == ResolvedSchedule(shape: .step, warmupSteps: 5, stepEveryEpochs: 2, stepFactor: 0.5,
                                                               totalSteps: 1, cosineMinimum: 0))
        _ = try train(warmupIntoStepDecay(dir, maxSteps: 4), resume: last)
        #expect(try Checkpoint.load(from: last).state.step == 4)
        let resumedMatches = try train(warmupIntoStepDecay(dir), resume: last) == straight
        #expect(resumedMatches)
    }

    /// A plateau schedule's best loss is +inf until its first epoch ends: a checkpoint written before then (here by
    /// --max-steps) is still written, and resumes to the uninterrupted run's weights bit for bit.
    @Test func plateauCheckpointInsideTheFirstEpoch() throws {
        func plateau(_ dir: String, maxSteps: Int? = nil) -> TrainingOptions {
            var o = options(dir, epochs: 2, maxSteps: maxSteps)
            o.reduceOnPlateau = ReduceOnPlateau(factor: 0.5, patience: 1)
            return o
        }
        let straight = try train(plateau(Fixture.temporaryDirectory("plateau-straight")))
        let dir = Fixture.temporaryDirectory("plateau-split")
        _ = try train(plateau(dir, maxSteps: 1))
        #expect(try Checkpoint.load(from: dir + "/fc-ae-last.h5").state.plateau?.best == .infinity)
        let resumedMatches = try train(plateau(dir), resume: dir + "/fc-ae-last.h5") == straight
        #expect(resumedMatches)
    }

    /// Checkpoints from before schedules (no `schedule` in the callbacks attribute) load as constant and resume
    /// as constant, whatever schedule the resuming run's options ask for.
    @Test func checkpointWithoutAScheduleResumesAsConstant() throws {
        let straight = try train(options(Fixture.temporaryDirectory("old-straight"), epochs: 2))
        let dir = Fixture.temporaryDirectory("old-split")
        let last = dir + "/fc-ae-last.h5"
        _ = try train(options(dir, epochs: 2, maxSteps: 4))
        // What Starling wrote before schedules existed (the base rate the first epoch's end recorded).
        let file = try HDF5File.open(last, writable: true)
        try file.root.setAttribute("callbacks", #"{"epochsWithoutImprovement":0,"learningRate":0.001}"#)
        file.close()
        #expect(try Checkpoint.load(from: last).state.learningRateSchedule == .constant)
        var cosine = options(dir, epochs: 2)
        cosine.schedule.shape = .cosine
        cosine.schedule.warmupEpochs = 1
        var lines: [String] = []
        let resumed = try trainer(cosine, resume: last) { lines.append($0) }
        try resumed.run()
        let resumedAsConstant = resumed.model.parameters.values.toArray() == straight
        #expect(resumedAsConstant)
        #expect(lines.contains { $0.hasPrefix("continuing the checkpoint's learning-rate schedule (constant)") }, "\(lines)")
    }

    /// The plateau lowers the base rate at epoch ends, the cosine (12 steps, to 0) shapes it every step. With a huge
    /// min-delta every epoch after the first is a plateau epoch: epochs 1-2 run on 1e-3, epoch 3 on 5e-4, epoch 4
    /// on 2.5e-4. The log records the rate of each epoch's last step, 2, 5, 8 and 11: base (1 + cos(pi s / 12)) / 2.
    @Test func plateauLowersTheBaseTheCosineShapes() throws {
        let dir = Fixture.temporaryDirectory("plateau-cosine")
        var o = options(dir, epochs: 4)
        o.schedule.shape = .cosine
        o.reduceOnPlateau = ReduceOnPlateau(factor: 0.5, patience: 1, minimum: 1e-5, minDelta: 10)
        let history = try trainer(o).run()
        let expected: [Float] = [9.330127019e-4,    // 1e-3 (1 + cos(pi/6)) / 2, cos(pi/6) = 0.8660254038
                                 6.294095226e-4,    // 1e-3 (1 + cos(5 pi/12)) / 2, cos(5 pi/12) = 0.2588190451
                                 1.25e-4,           // 5e-4 (1 + cos(2 pi/3)) / 2, cos(2 pi/3) = -0.5
                                 4.259271692e-6]    // 2.5e-4 (1 + cos(11 pi/12)) / 2, cos(11 pi/12) = -0.9659258263
        #expect(history.count == 4)
        for (record, rate) in zip(history, expected) {
            #expect(abs(record.learningRate - rate) <= 1e-6 * rate, "epoch \(record.epoch): \(record.learningRate), expected \(rate)")
        }
        let saved = try Checkpoint.load(from: dir + "/fc-ae-last.h5")
        #expect(saved.state.learningRate == 1.25e-4)   // the base, lowered once more after epoch 4
        #expect(saved.state.learningRateSchedule == ResolvedSchedule(shape: .cosine, warmupSteps: 0, stepEveryEpochs: 1, stepFactor: 1,
                                                                     totalSteps: 12, cosineMinimum: 0))
    }

    /// The cosine's horizon is the run's steps, capped by --max-steps.
    @Test func cosineRunsOverTheRunsSteps() throws {
        var o = options(Fixture.temporaryDirectory("horizon"), epochs: 5)
        o.schedule.shape = .cosine
        #expect(try trainer(o).state.learningRateSchedule.totalSteps == 15)
        o.maxSteps = 7
        #expect(try trainer(o).state.learningRateSchedule.totalSteps == 7)
    }

    /// A library caller gets the flag's one-line message rather than a trap.
    @Test func trainerRefusesUnusableSettings() throws {
        var o = options(Fixture.temporaryDirectory("bad-schedule"), epochs: 1)
        o.schedule.shape = .step
        o.schedule.stepEveryEpochs = 0
        do { _ = try trainer(o); Issue.record("accepted --step-every 0") } catch {
            #expect("\(error)".hasPrefix("--step-every must be") && !"\(error)".contains("\n"), "\(error)")
        }
    }

    /// `starling train` refuses bad schedule flags before reading any data: one line naming the flag, no output.
    @Test func scheduleFlagsAreChecked() throws {
        let dir = Fixture.temporaryDirectory("schedule-flags")
        let data = try Fixture.sampleHDF5()
        let cases: [([String], String)] = [
            (["--warmup-epochs=-1"], "Error: --warmup-epochs must be a number >= 0, not -1.0"),
            (["--lr-schedule", "linear"], "Error: --lr-schedule must be constant, step or cosine, not 'linear'"),
            (["--step-every", "2"], "Error: --step-every and --step-factor apply to --lr-schedule step only"),
            (["--lr-schedule", "step", "--step-every", "0"], "Error: --step-every must be a positive number of epochs, not 0"),
            (["--lr-schedule", "cosine", "--cosine-min-lr", "0.01"], "Error: --cosine-min-lr must lie below --lr (0.001), not 0.01"),
        ]
        for (flags, message) in cases {
            let r = try run(Fixture.starling, ["train", "--model", "fc-ae", "--data", data, "--out", dir + "/out"] + flags)
            #expect(r.status != 0, "\(flags) accepted")
            #expect(r.error.split(separator: "\n").first.map(String.init) == message, "\(flags): \(r.error)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
        let ok = try run(Fixture.starling, ["train", "--model", "fc-ae", "--data", data, "--out", dir + "/ok", "--epochs", "2",
                                            "--steps-per-epoch", "2", "--batch-size", "32", "--val-split", "none",
                                            "--lr-schedule", "cosine", "--warmup-epochs", "0.5", "--cosine-min-lr", "1e-4"])
        #expect(ok.status == 0, "\(ok.error)")
        #expect(ok.output.contains("learning rate: cosine over 4 steps to 0.0001, after a linear warmup of 1 step, on the base rate 0.001"), "\(ok.output)")
    }
}
