import Foundation
import Testing
@testable import StarlingModels
@testable import starling

/// `starling train --config FILE`: the file's keys become flags, the command line's flags win, unknown keys and
/// wrong types are refused naming the key and the file, and the resolved configuration reproduces the run.
@Suite struct RunConfigurationTests {
    /// Parses `train` arguments as the binary does: the configuration expanded first.
    private func parse(_ arguments: [String]) throws -> TrainCommand {
        let expanded = try RunConfiguration.expand(["train"] + arguments)
        return try TrainCommand.parse(Array(expanded.dropFirst()))
    }

    private func write(_ text: String, _ name: String = "run.yaml") throws -> String {
        let path = Fixture.temporaryDirectory("run-config") + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private let sample = """
        model:
          name: unet
          width_multiplier: 0.25
          options:
            levels: 4
            border_weight: 10
        data:
          path: membrane.h5
          augment: false
          elastic: true
          photometric: true
        optimizer:
          name: sgd
          lr: 0.01
        schedule:
          epochs: 5
          batch_size: 4
          lr_schedule: cosine
          cosine_min_lr: 0.0001
        callbacks:
          early_stopping: 3
        launch:
          ranks: 2
          sync_bn: true
        """

    @Test func commandLineOverridesFileOverridesDefaults() throws {
        let file = try write(sample)
        let fromFile = try parse(["--config", file])
        #expect(fromFile.model == "unet" && fromFile.data == "membrane.h5")
        #expect(fromFile.widthMultiplier == 0.25 && fromFile.familyOptions == ["levels=4.0", "border_weight=10.0"])
        #expect(fromFile.augment == false && fromFile.elastic && fromFile.photometric && fromFile.flags.syncBn)
        #expect(fromFile.flags.optimizer == "sgd" && fromFile.flags.lr == 0.01 && fromFile.flags.epochs == 5)
        #expect(fromFile.flags.lrSchedule == "cosine" && fromFile.flags.cosineMinLr == 0.0001 && fromFile.flags.earlyStopping == 3)
        #expect(fromFile.ranks == 2 && fromFile.config == file)
        // Defaults where neither the file nor the command line says anything.
        #expect(fromFile.flags.keepCheckpoints == TrainingOptions().keepCheckpoints && fromFile.flags.seed == TrainingOptions().seed)
        #expect(fromFile.trainSplit == "train" && fromFile.flags.momentum == 0.9)

        let overridden = try parse(["--epochs", "2", "--config", file, "--lr", "0.05", "--augment", "--option", "levels=3",
                                    "--model", "ssd7", "--ranks", "1", "--seed", "7"])
        #expect(overridden.flags.epochs == 2 && overridden.flags.lr == 0.05 && overridden.augment == true)
        #expect(overridden.model == "ssd7" && overridden.ranks == 1 && overridden.flags.seed == 7)
        // The file's options come first, so a family applies the command line's value of an option last.
        #expect(overridden.familyOptions == ["levels=4.0", "border_weight=10.0", "levels=3"])
        #expect(overridden.flags.optimizer == "sgd" && overridden.flags.batchSize == 4)
        // Every true-or-false key the file sets can be undone on the command line.
        let undone = try parse(["--config", file, "--no-elastic", "--no-sync-bn"])
        #expect(!undone.elastic && !undone.flags.syncBn && undone.augment == false)
        #expect(MPILaunch.requestedRanks(try RunConfiguration.expand(["train", "--config", file, "--ranks", "3"])) == 3)
        #expect(MPILaunch.requestedRanks(try RunConfiguration.expand(["train", "--config", file])) == 2)
    }

    @Test func unknownKeysAndWrongTypesAreRefusedNamingKeyAndFile() throws {
        func refusal(_ yaml: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
            let file = try write(yaml, "bad.yaml")
            do {
                _ = try RunConfiguration.expand(["train", "--config", file])
                Issue.record("accepted: \(yaml)", sourceLocation: sourceLocation)
                return ""
            } catch {
                let message = "\(error)"
                #expect(message.hasPrefix(file + ": "), "'\(message)' does not start with the file", sourceLocation: sourceLocation)
                #expect(!message.contains("\n"), sourceLocation: sourceLocation)
                return message
            }
        }
        #expect(try refusal("schedule:\n  epoch: 3\n").contains("unknown key 'schedule.epoch'"))
        #expect(try refusal("trainer:\n  epochs: 3\n").contains("unknown key 'trainer'"))
        #expect(try refusal("schedule:\n  epochs: ten\n").contains("key 'schedule.epochs' must be an integer, not 'ten'"))
        #expect(try refusal("schedule:\n  epochs: 2.5\n").contains("key 'schedule.epochs' must be an integer"))
        #expect(try refusal("schedule:\n  epochs: '3'\n").contains("key 'schedule.epochs' must be an integer"))
        #expect(try refusal("optimizer:\n  lr: fast\n").contains("key 'optimizer.lr' must be a number"))
        #expect(try refusal("data:\n  val_split: 1\n").contains("key 'data.val_split' must be a string"))
        #expect(try refusal("data:\n  augment: maybe\n").contains("key 'data.augment' must be true or false"))
        #expect(try refusal("model:\n  options:\n    levels: four\n").contains("key 'model.options.levels' must be a number"))
        #expect(try refusal("model:\n  options: [1, 2]\n").contains("key 'model.options' must be a mapping"))
        #expect(try refusal("schedule: 3\n").contains("key 'schedule' must be a mapping"))
        #expect(try refusal("- 1\n- 2\n").contains("mapping of the sections"))
        #expect(try refusal("schedule:\n  epochs: [1\n").contains("not valid YAML"))
        #expect(try refusal("schedule:\n  epochs: 1\n  epochs: 2\n").contains("not valid YAML"))
        let missing = Fixture.temporaryDirectory("run-config") + "/absent.yaml"
        #expect(throws: RunConfiguration.Failure.self) { try RunConfiguration.expand(["train", "--config", missing]) }
    }

    /// The resolved configuration, read back as a configuration, gives the same command and the same file again.
    @Test func resolvedConfigurationReproducesTheRun() throws {
        let file = try write(sample)
        let command = try parse(["--config", file, "--epochs", "9", "--val-split", "none", "--option", "levels=3"])
        let resolved = try RunConfiguration.resolved(from: command, source: file)
        let again = try parse(["--config", try write(resolved, "resolved.yaml")])
        #expect(again.flags.epochs == 9 && again.valSplit == "none" && again.familyOptions == ["levels=3.0", "border_weight=10.0"])
        #expect(again.flags.options.schedule == command.flags.options.schedule && again.flags.syncBn && again.elastic && again.photometric)
        let body = { (text: String) in text.split(separator: "\n").filter { !$0.hasPrefix("#") } }
        #expect(body(try RunConfiguration.resolved(from: again, source: nil)) == body(resolved))
    }

    /// Every configuration the repository ships parses into a `train` command for a registered family.
    @Test func shippedConfigurationsParse() throws {
        let directory = Fixture.repository.appendingPathComponent("Launch/configs").path
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count >= 12)
        for name in files {
            let command = try parse(["--config", directory + "/" + name])
            #expect(ModelRegistry.familyNames.contains(command.model), "\(name): \(command.model)")
            try command.flags.validate()
        }
        for model in ["fc-ae", "sparse-ae", "deep-ae", "conv-ae", "denoising-ae", "seq2seq-ae", "vae", "conv-vae"] {
            #expect(files.contains(model + ".yaml"), "no configuration for \(model)")
        }
        // Every family has at least one run, whose file is named after it (yolov3-voc.yaml, not yolov3-tiny-*.yaml).
        let families = Set(try files.map { try parse(["--config", directory + "/" + $0]).model })
        for family in ModelRegistry.familyNames {
            #expect(families.contains(family), "no configuration for \(family)")
        }
        for name in files {
            let family = try parse(["--config", directory + "/" + name]).model
            #expect(name == family + ".yaml" || name.hasPrefix(family + "-"), "\(name) runs \(family)")
        }
    }

    /// Through the binary: the resolved file beside the checkpoints and inside them; a bad file writes nothing.
    @Test func trainingRecordsItsConfiguration() throws {
        let dir = Fixture.temporaryDirectory("run-config-train")
        let data = try Fixture.sampleHDF5()
        let file = try write("""
            model:
              name: fc-ae
            data:
              path: \(data)
              val_limit: 128
            schedule:
              epochs: 3
              batch_size: 64
              steps_per_epoch: 2
            checkpoints:
              out: \(dir)/out
            """)
        let run = try starling("train", "--config", file, "--epochs", "1")
        #expect(run.status == 0, "\(run.error)")
        let written = try String(contentsOfFile: dir + "/out/fc-ae-config.yaml", encoding: .utf8)
        #expect(written.contains("epochs: 1") && written.contains("batch_size: 64") && written.contains("path: \(data)"))
        let checkpoint = try Checkpoint.load(from: dir + "/out/fc-ae-last.h5")
        #expect(checkpoint.state.runConfiguration == written)

        let bad = try write("schedule:\n  epochs: 1\n  batch: 64\ncheckpoints:\n  out: \(dir)/bad\n", "bad.yaml")
        let refused = try starling("train", "--config", bad)
        #expect(refused.status != 0)
        #expect(refused.error.contains("bad.yaml: unknown key 'schedule.batch'"), "\(refused.error)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad"))
    }

    /// `launch.ranks` outside mpirun: train starts itself again under mpirun on that many ranks.
    @Test func launchRanksStartsMPIRun() throws {
        let dir = Fixture.temporaryDirectory("run-config-ranks")
        let file = try write("""
            model:
              name: fc-ae
            data:
              path: \(try Fixture.sampleHDF5())
              val_split: none
            schedule:
              epochs: 1
              batch_size: 64
              steps_per_epoch: 2
            checkpoints:
              out: \(dir)/out
            launch:
              ranks: 2
            """, "ranks.yaml")
        let run = try run(Fixture.starling, ["train", "--config", file], environment: mpiEnvironment)
        #expect(run.status == 0, "\(run.error)")
        #expect(run.output.contains("starting 2 ranks: mpirun -np 2") && run.output.contains("over 2 rank(s)"), "\(run.output)")
        #expect(try String(contentsOfFile: dir + "/out/fc-ae-config.yaml", encoding: .utf8).contains("ranks: 2"))
    }
}
