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

/// Builds the Keras tutorial's fc-ae or ssd_keras's SSD7 (up to its predictions) with their layer names; then either
/// loads a weights file by name ("load") or gives its batch norms random statistics and saves its weights ("save");
/// runs it on a raw float32 input (NCHW for SSD7, transposed to Keras's NHWC) and writes each output as raw floats.
private let kerasScript = """
import json, sys
import numpy as np
from tensorflow import keras
L = keras.layers
mode, family, weights, input_path, shape, out_dir = sys.argv[1:7]
shape = json.loads(shape)
if family == 'fc-ae':
    inp = keras.Input(shape=(shape[1],))
    code = L.Dense(32, activation='relu', name='encoder')(inp)
    model = keras.Model(inp, [L.Dense(shape[1], activation='sigmoid', name='decoder')(code), code])
    names = ['reconstruction', 'code']
else:
    n_classes, boxes = 6, 4
    inp = keras.Input(shape=(shape[2], shape[3], 3))
    h = L.Lambda(lambda z: (z - 127.5) / 127.5)(inp)
    feats = []
    for k, f in enumerate([32, 48, 64, 64, 48, 48, 32], start=1):
        h = L.Conv2D(f, (5, 5) if k == 1 else (3, 3), padding='same', name=f'conv{k}')(h)
        h = L.ELU(name=f'elu{k}')(L.BatchNormalization(axis=3, momentum=0.99, name=f'bn{k}')(h))
        if k >= 4: feats.append(h)
        if k <= 6: h = L.MaxPooling2D(pool_size=(2, 2), name=f'pool{k}')(h)
    classes = [L.Reshape((-1, n_classes))(L.Conv2D(boxes * n_classes, (3, 3), padding='same', name=f'classes{k}')(t)) for k, t in zip(range(4, 8), feats)]
    offsets = [L.Reshape((-1, 4))(L.Conv2D(boxes * 4, (3, 3), padding='same', name=f'boxes{k}')(t)) for k, t in zip(range(4, 8), feats)]
    model = keras.Model(inp, [L.Activation('softmax')(L.Concatenate(axis=1)(classes)), L.Concatenate(axis=1)(offsets)])
    names = ['class_probabilities', 'box_offsets']
if mode == 'load':
    model.load_weights(weights, by_name=True)
else:
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape), rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 2, v.shape)])
    model.save_weights(weights)
x = np.fromfile(input_path, dtype=np.float32).reshape(shape)
if family != 'fc-ae': x = x.transpose(0, 2, 3, 1)
for name, value in zip(names, model.predict(x, verbose=0)):
    np.ascontiguousarray(value, dtype=np.float32).tofile(f'{out_dir}/{name}.bin')
"""

/// Runs the script; returns its outputs by name.
private func runKeras(_ mode: String, family: String, weights: String, input: Tensor, names: [String], in dir: String) throws -> [String: [Float]] {
    let inputPath = dir + "/input.bin"
    try AtomicFile.write(input.toArray().withUnsafeBytes { Array($0) }, to: inputPath)
    let r = try run(kerasPython, ["-c", kerasScript, mode, family, weights, inputPath, "\(input.shape)", dir], environment: ["TF_CPP_MIN_LOG_LEVEL": "3"])
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
