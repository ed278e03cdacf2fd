import Foundation
import Testing
import StarlingCore
import StarlingDistributed
@testable import StarlingModels

@Suite struct TrainerTests {
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

    func train(_ o: TrainingOptions, resume: String? = nil) throws -> [Float] {
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: o.seed)
        let adam = Adam(parameterCount: model.parameters.count)
        let loaded = try resume.map { try Checkpoint.load(from: $0) }
        let trainer = try Trainer(model: model, optimizer: adam, train: data, validation: nil, options: o,
                                  world: try Communicator(), resume: loaded, log: { _ in })
        try trainer.run()
        return model.parameters.values.toArray()
    }

    /// Stopping and resuming, at an epoch boundary or in the middle of one, gives the uninterrupted run bit for bit.
    @Test func resumeIsBitIdentical() throws {
        let straight = try train(options(Fixture.temporaryDirectory("straight"), epochs: 2))
        let split = Fixture.temporaryDirectory("epoch-split")
        _ = try train(options(split, epochs: 1))
        #expect(try train(options(split, epochs: 2), resume: split + "/fc-ae-last.h5") == straight)
        let mid = Fixture.temporaryDirectory("mid-epoch")
        _ = try train(options(mid, epochs: 2, maxSteps: 4))   // stops after step 1 of epoch 2
        let stopped = try Checkpoint.load(from: mid + "/fc-ae-last.h5")
        #expect(stopped.state.step == 4 && stopped.state.epoch == 1 && stopped.state.dataCursor == 64)
        #expect(try train(options(mid, epochs: 2), resume: mid + "/fc-ae-last.h5") == straight)
    }

    /// A resumed checkpoint is not held for the run: the trainer copies its weights and optimizer state and, once the
    /// caller has handed it over (`consume`, as `train` does), nothing keeps its model alive; the run still ends with
    /// the uninterrupted run's bits. (`ReplicaTraining.run` hands it to replica 0's trainer the same way; it is not run
    /// in this process here, since it sets the process's BLAS thread count while other suites run.)
    @Test func aResumedCheckpointIsReleasedOnceRestored() throws {
        let straight = try train(options(Fixture.temporaryDirectory("release-straight"), epochs: 2))
        let dir = Fixture.temporaryDirectory("release")
        _ = try train(options(dir, epochs: 2, maxSteps: 4))
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 11)
        let loaded: Checkpoint.Loaded? = try Checkpoint.load(from: dir + "/fc-ae-last.h5")
        weak var restored = loaded?.model
        #expect(restored != nil)
        let trainer = try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count), train: data, validation: nil,
                                  options: options(dir, epochs: 2), world: try Communicator(), resume: consume loaded, log: { _ in })
        #expect(restored == nil, "the trainer keeps the loaded checkpoint")
        try trainer.run()
        #expect(model.parameters.values.toArray() == straight)
    }

    @Test func sameSeedSameRunDifferentSeedDifferentRun() throws {
        let a = try train(options(Fixture.temporaryDirectory("seed-a"), epochs: 1))
        let b = try train(options(Fixture.temporaryDirectory("seed-b"), epochs: 1))
        var other = options(Fixture.temporaryDirectory("seed-c"), epochs: 1)
        other.seed = 12
        #expect(a == b)
        #expect(try train(other) != a)
    }

    @Test func writesLogAndCheckpointsAndLossFalls() throws {
        let dir = Fixture.temporaryDirectory("log")
        var o = options(dir, epochs: 3)
        o.stepsPerEpoch = 10
        o.keepCheckpoints = 2
        o.learningRate = 3e-3
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        let validation = try ImageDataset(path: try Fixture.sampleHDF5(), split: "test")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 1)
        let trainer = try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count, learningRate: 3e-3),
                                  train: data, validation: validation, options: o, world: try Communicator(), log: { _ in })
        let history = try trainer.run()
        #expect(history.count == 3)
        #expect(history[2].loss < history[0].loss && history[2].validationLoss! < history[0].validationLoss!)
        let csv = try String(contentsOfFile: dir + "/fc-ae-log.csv", encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 4 && csv[0].hasPrefix("epoch,step,loss,val_loss"))
        #expect(FileManager.default.fileExists(atPath: dir + "/fc-ae-best.h5"))
        #expect(try Checkpoint.load(from: dir + "/fc-ae-last.h5").state.step == 30)
        // Epoch files beyond the newest two are removed; last is the newest epoch's file under a second name.
        // Names carry the epoch and the losses, as ssd_keras's ModelCheckpoint writes them.
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("fc-ae-epoch") }.sorted()
        #expect(files.count == 2 && files[0].hasPrefix("fc-ae-epoch0002_loss-0.") && files[1].hasPrefix("fc-ae-epoch0003_loss-0."))
        #expect(files.allSatisfy { $0.contains("_val_loss-0.") && $0.hasSuffix(".h5") })
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/" + files[1])) == Data(contentsOf: URL(fileURLWithPath: dir + "/fc-ae-last.h5")))
    }

    @Test func refusesBadBatchSizesAndShapes() throws {
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        let model = try ModelRegistry.build(ModelConfig(family: "fc-ae", inputShape: [100], options: ["code_size": 8]), seed: 1)
        #expect(throws: ModelError.self) {
            _ = try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count), train: data, validation: nil,
                            options: options(Fixture.temporaryDirectory("x"), epochs: 1), world: try Communicator())
        }
        var o = options(Fixture.temporaryDirectory("y"), epochs: 1)
        o.batchSize = 5000
        let fc = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 1)
        #expect(throws: TrainingError.self) {
            _ = try Trainer(model: fc, optimizer: Adam(parameterCount: fc.parameters.count), train: data, validation: nil, options: o, world: try Communicator())
        }
    }

    /// Early stopping and the plateau schedule act on the monitored loss at epoch ends, and a resumed run keeps their
    /// memory. A huge min-delta makes every epoch count as "no improvement".
    @Test func earlyStoppingAndPlateau() throws {
        let dir = Fixture.temporaryDirectory("callbacks")
        var o = options(dir, epochs: 6)
        o.earlyStoppingPatience = 3
        o.minDelta = 10
        o.reduceOnPlateau = ReduceOnPlateau(factor: 0.5, patience: 1, minimum: 1e-4, minDelta: 10)
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 1)
        let trainer = try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count), train: data, validation: nil,
                                  options: o, world: try Communicator(), log: { _ in })
        let history = try trainer.run()
        // The first epoch sets the best value; epochs 2, 3 and 4 do not improve on it, so training stops after 4.
        #expect(history.count == 4)
        // Each epoch without improvement halves the rate for the next: epoch 2 still ran at 1e-3.
        #expect(history.map(\.learningRate) == [1e-3, 1e-3, 5e-4, 2.5e-4])
        let saved = try Checkpoint.load(from: dir + "/fc-ae-last.h5").state
        #expect(saved.epochsWithoutImprovement == 3 && saved.learningRate == 1.25e-4)
    }
}
