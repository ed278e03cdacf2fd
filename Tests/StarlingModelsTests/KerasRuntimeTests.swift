import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels

/// tf.keras 2.15 (Keras 2, the course's framework) in the venv Launch/test.sh creates: the reference runtime for the
/// Keras conversion, both ways.
private let kerasPython = Fixture.repository.appendingPathComponent(".build/keras-venv/bin/python").path

private let kerasAvailable: Bool = {
    FileManager.default.isExecutableFile(atPath: kerasPython)
        && (try? run(kerasPython, ["-c", "import tensorflow"], environment: ["TF_CPP_MIN_LOG_LEVEL": "3"]).status) == 0
}()

/// Launch/keras_reference.py: the reference models (see its header).
private let kerasScript = Fixture.repository.appendingPathComponent("Launch/keras_reference.py").path

/// Runs the script; returns its outputs by name.
private func runKeras(_ mode: String, family: String, weights: String, input: Tensor, names: [String], in dir: String) throws -> [String: [Float]] {
    let inputPath = dir + "/input.bin"
    try AtomicFile.write(input.toArray().withUnsafeBytes { Array($0) }, to: inputPath)
    let r = try run(kerasPython, [kerasScript, mode, family, weights, inputPath, "\(input.shape)", dir], environment: ["TF_CPP_MIN_LOG_LEVEL": "3"])
    guard r.status == 0 else { throw ConversionError(file: weights, message: "tf.keras failed: \(r.error.suffix(2000))") }
    var out: [String: [Float]] = [:]
    for name in names {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name).bin"))
        out[name] = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
    return out
}

private func maxDifference(_ a: [Float]?, _ b: [Float]) -> Float {
    guard let a, a.count == b.count else { return .infinity }
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

/// A model with random biases and batch-norm statistics besides its random kernels, so a misplaced one shows.
private func randomized(_ config: ModelConfig) throws -> any Model {
    let model = try ModelRegistry.build(config, seed: 4)
    var rng = RandomGenerator(seed: 44)
    for p in model.parameters.parameters where !p.name.hasSuffix("kernel") {
        for i in 0..<p.count { p.value.data[i] = p.name.hasSuffix("gamma") ? rng.uniform(0.5, 1.5) : 0.1 * rng.normal() }
    }
    for p in model.buffers?.parameters ?? [] {
        for i in 0..<p.count { p.value.data[i] = p.name.hasSuffix("variance") ? rng.uniform(0.5, 2) : 0.1 * rng.normal() }
    }
    return model
}

private func images(_ shape: [Int], scale: Float) -> Tensor {
    var rng = RandomGenerator(seed: 9)
    let t = Tensor(zeros: shape)
    for i in 0..<t.count { t.data[i] = scale * rng.uniform(0, 1) }
    return t
}

@Suite(.enabled(if: kerasAvailable, "tf.keras 2.15 in .build/keras-venv (Launch/test.sh installs it)"))
struct KerasRuntimeTests {
    /// Starling's Keras files load into the reference Keras models with load_weights(by_name=True) and compute what
    /// Starling computes.
    @Test func kerasLoadsStarlingsFilesByName() throws {
        let dir = Fixture.temporaryDirectory("keras-out")
        let fc = try randomized(FCAutoencoder.defaultConfig()) as! FCAutoencoder
        try KerasWeights.write(fc, to: dir + "/fc.h5")
        let x = images([3, 784], scale: 1)
        let keras = try runKeras("load", family: "fc-ae", weights: dir + "/fc.h5", input: x, names: ["reconstruction", "code"], in: dir)
        let (reconstruction, code) = GradMode.disabled { (fc.reconstruction(x).toArray(), fc.code(x).toArray()) }
        #expect(maxDifference(keras["reconstruction"], reconstruction) < 1e-5)
        #expect(maxDifference(keras["code"], code) < 1e-4)

        let ssd = try randomized(SSD7.defaultConfig(height: 64, width: 96)) as! SSD7
        try KerasWeights.write(ssd, to: dir + "/ssd7.h5")
        let frames = images([2, 3, 64, 96], scale: 255)
        let out = try runKeras("load", family: "ssd7", weights: dir + "/ssd7.h5", input: frames, names: ["class_probabilities", "box_offsets"], in: dir)
        let (probabilities, offsets) = GradMode.disabled { () -> ([Float], [Float]) in
            let (logits, boxes) = ssd.predict(frames, training: false)
            return (logits.softmax(axis: -1).toArray(), boxes.toArray())
        }
        #expect(maxDifference(out["class_probabilities"], probabilities) < 1e-4)
        #expect(maxDifference(out["box_offsets"], offsets) < 1e-3 * (offsets.map(abs).max() ?? 1))
    }

    /// Weights tf.keras saved itself import with `--from keras` and compute what tf.keras computes.
    @Test func starlingImportsWeightsKerasSaved() throws {
        let dir = Fixture.temporaryDirectory("keras-in")
        let config = SSD7.defaultConfig(height: 64, width: 96)
        let frames = images([2, 3, 64, 96], scale: 255)
        let keras = try runKeras("save", family: "ssd7", weights: dir + "/keras.h5", input: frames, names: ["class_probabilities", "box_offsets"], in: dir)
        let imported = try KerasWeights.read(from: dir + "/keras.h5", config: config)
        #expect(imported.matchedByOrder == nil)
        let (probabilities, offsets) = GradMode.disabled { () -> ([Float], [Float]) in
            let (logits, boxes) = (imported.model as! SSD7).predict(frames, training: false)
            return (logits.softmax(axis: -1).toArray(), boxes.toArray())
        }
        #expect(maxDifference(keras["class_probabilities"], probabilities) < 1e-4)
        #expect(maxDifference(keras["box_offsets"], offsets) < 1e-3 * (offsets.map(abs).max() ?? 1))
    }
}
