import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels

@Suite struct CheckpointTests {
    @Test func roundTripIsExact() throws {
        let dir = Fixture.temporaryDirectory("ckpt")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 3)
        let adam = Adam(parameterCount: model.parameters.count)
        var rng = RandomGenerator(seed: 9)
        for i in 0..<model.parameters.count { model.parameters.gradients.pointer[i] = rng.normal() }
        adam.step(model.parameters)
        adam.step(model.parameters)
        var state = Checkpoint.TrainingState()
        state.step = 2; state.epoch = 1; state.seed = 12_345_678_901; state.dataCursor = 512; state.bestValidationLoss = 0.25
        let path = dir + "/a.h5"
        try Checkpoint.save(to: path, model: model, optimizer: adam, state: state)
        let loaded = try Checkpoint.load(from: path)
        #expect(loaded.model.config == model.config)
        #expect(loaded.model.parameters.values.toArray() == model.parameters.values.toArray())
        #expect(loaded.state == state)
        #expect(loaded.optimizer == Checkpoint.OptimizerConfig(name: "adam", learningRate: 1e-3, stepCount: 2))
        for (name, storage) in adam.state { #expect(loaded.optimizerState[name] == storage.toArray()) }
        // Keras-like layout.
        let file = try HDF5File.open(path)
        #expect(try file.root.group("model_weights").stringArrayAttribute("layer_names") == ["encoder", "decoder"])
        #expect(try file.root.dataset("model_weights/encoder/kernel").shape == [784, 32])
    }

    /// A checkpoint is sealed: any byte changed after writing, a cut or an append is refused before HDF5 parses the
    /// file (HDF5 itself can loop for ever on a damaged global heap), while files without a seal open as before.
    @Test func sealRefusesDamagedCheckpoints() throws {
        let dir = Fixture.temporaryDirectory("seal")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 3)
        let good = dir + "/good.h5"
        try Checkpoint.save(to: good, model: model, optimizer: Adam(parameterCount: model.parameters.count), state: .init())
        #expect(HDF5Seal.isSealed(good))
        #expect(try HDF5Seal.verify(good))
        #expect(try Checkpoint.load(from: good).model.parameters.values.toArray() == model.parameters.values.toArray())
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        func refused(_ name: String, _ damaged: Data, _ expected: String) throws {
            let path = dir + "/" + name
            try damaged.write(to: URL(fileURLWithPath: path))
            do { _ = try Checkpoint.load(from: path); Issue.record("\(name) loaded") } catch {
                #expect("\(error)".hasPrefix(path + ": ") && "\(error)".contains(expected) && !"\(error)".contains("\n"), "\(error)")
            }
        }
        // One bit anywhere after the block: in the superblock, in the middle (weights), in the last byte.
        for offset in [HDF5Seal.blockSize + 3, bytes.count / 2, bytes.count - 1] {
            var flipped = bytes
            flipped[offset] ^= 0x10
            try refused("flip\(offset).h5", flipped, "checksum does not match")
        }
        try refused("cut.h5", bytes.prefix(bytes.count - 100), "cut short or appended to")
        try refused("appended.h5", bytes + Data([0]), "cut short or appended to")
        var newer = bytes
        newer[16] = 9
        try refused("version.h5", newer, "format version 9")
        // The seal survives an atomic update and an edit in place through Starling (sealed again as the file closes),
        // an edit by another tool is refused until resealed, and files without a seal still open.
        try updateHDF5Atomically(good) { file in try file.root.setAttribute("note", "updated") }
        #expect(try HDF5Seal.verify(good))
        #expect(try HDF5File.open(good).root.stringAttribute("note") == "updated")
        let inPlace = try HDF5File.open(good, writable: true)
        try inPlace.root.setAttribute("note", "in place")
        inPlace.close()
        #expect(try Checkpoint.load(from: good).model.parameters.count == model.parameters.count)
        var edited = try Data(contentsOf: URL(fileURLWithPath: good))
        edited[edited.count - 1] ^= 1
        let other = dir + "/edited.h5"
        try edited.write(to: URL(fileURLWithPath: other))
        #expect(throws: (any Error).self) { try HDF5Seal.verify(other) }
        try HDF5Seal.seal(other, reportAs: other)
        #expect(try HDF5Seal.verify(other))
        let plain = dir + "/plain.h5"
        try writeHDF5Atomically(to: plain) { file in try file.root.setAttribute("x", 1) }
        #expect(!HDF5Seal.isSealed(plain))
        #expect(try HDF5File.open(plain).root.intAttribute("x") == 1)
    }

    @Test func refusesOtherFilesWithOneLineErrors() throws {
        let dir = Fixture.temporaryDirectory("bad-ckpt")
        // Not HDF5 at all.
        try "hello".write(toFile: dir + "/text.h5", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { try Checkpoint.load(from: dir + "/text.h5") }
        // HDF5, but a dataset rather than a checkpoint.
        let mnist = try Fixture.sampleHDF5()
        do { _ = try Checkpoint.load(from: mnist); Issue.record("loaded a dataset as a checkpoint") } catch {
            #expect("\(error)".contains("not a Starling checkpoint") && "\(error)".contains(mnist))
        }
        // A truncated checkpoint.
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 3)
        let good = dir + "/good.h5"
        try Checkpoint.save(to: good, model: model, optimizer: nil, state: .init())
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: dir + "/truncated.h5"))
        do { _ = try Checkpoint.load(from: dir + "/truncated.h5"); Issue.record("loaded a truncated checkpoint") } catch {
            #expect("\(error)".contains("truncated.h5") && !"\(error)".contains("\n"))
        }
        #expect(try Checkpoint.load(from: good).model.parameters.count == model.parameters.count)   // untouched
        // A weight of the wrong shape.
        try writeHDF5Atomically(to: dir + "/shape.h5") { file in
            try file.root.setAttribute("format", Checkpoint.format)
            try file.root.setAttribute("format_version", Checkpoint.formatVersion)
            try file.root.setJSONAttribute("model_config", FCAutoencoder.defaultConfig())
            try file.root.createDataset("model_weights/encoder/kernel", type: .float32, shape: [32, 784]).write([Float](repeating: 0, count: 784 * 32))
        }
        do { _ = try Checkpoint.load(from: dir + "/shape.h5"); Issue.record("loaded a wrong shape") } catch {
            #expect("\(error)".contains("encoder/kernel") && "\(error)".contains("[32, 784]"))
        }
        // Another format version.
        try writeHDF5Atomically(to: dir + "/version.h5") { file in
            try file.root.setAttribute("format", Checkpoint.format)
            try file.root.setAttribute("format_version", 99)
        }
        do { _ = try Checkpoint.load(from: dir + "/version.h5"); Issue.record("loaded format 99") } catch {
            #expect("\(error)".contains("version 99"))
        }
    }
}
