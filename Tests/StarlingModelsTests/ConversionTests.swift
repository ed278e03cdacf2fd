import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingConversion

// MARK: - Helpers

/// A small SSD7 (64 x 64 inputs: feature maps 8, 4, 2, 1) with five object classes.
private func smallSSD7Config() -> ModelConfig {
    SSD7.defaultConfig(height: 64, width: 64, classNames: ["background", "car", "truck", "pedestrian", "bicyclist", "light"])
}

/// Every family, narrowed where its options allow (the layouts are the same, the tests faster in a debug build).
private func everyFamilyConfig() throws -> [ModelConfig] {
    try everyFamilyConfig { family in
        switch family {
        case SSD7.family: return smallSSD7Config()
        case YOLOv3Tiny.family: return YOLOv3Tiny.defaultConfig(height: 64, width: 96, classNames: ["background", "car", "person"], widthMultiplier: 0.125)
        case YOLOv3.family: return YOLOv3.defaultConfig(height: 64, width: 96, classNames: ["background", "car", "person"], widthMultiplier: 0.0625, depthMultiplier: 0.1)
        case YOLOv2.family: return YOLOv2.defaultConfig(height: 64, width: 96, classNames: ["background", "car", "person"], widthMultiplier: 0.0625)
        case YOLOv1.family: return YOLOv1.defaultConfig(height: 128, width: 192, classNames: ["background", "car", "person"], widthMultiplier: 0.0625)
        case FastRCNN.family: return smallFastRCNNConfig(height: 64, width: 96, classNames: ["background", "car", "person"])
        case FasterRCNN.family: return smallFasterRCNNConfig
        case RCNN.family: return ModelConfig(family: RCNN.family, inputShape: [3, 64, 96], options: ["width": 0.125, "hidden": 32, "warp": 32],
                                             classNames: ["background", "car", "person"])
        // SSD300 a sixteenth wide: every layer and name of the full network at a fraction of its 26 million weights (at full
        // width these round trips were among the suite's slowest tests in debug builds, for nothing the mapping depends on).
        case SSD300.family: return SSD300.defaultConfig(classNames: ["background", "car", "person"], widthMultiplier: 0.0625)
        default: return (try? ModelRegistry.defaultConfig(family: family)) ?? SSD300.defaultConfig()
        }
    }
}

/// A model whose every weight is random (biases too, so a mapping that misplaces them cannot pass by their being
/// zero), each weight's first value -0.0 (so any arithmetic on the way shows), buffers positive.
private func randomModel(_ config: ModelConfig, seed: UInt64) throws -> any Model {
    let model = try ModelRegistry.build(config, seed: seed)
    var rng = RandomGenerator(seed: seed &+ 1000)
    for p in model.parameters.parameters {
        for i in 0..<p.count { p.value.data[i] = rng.normal() }
        p.value.data[0] = -0.0
    }
    for p in model.buffers?.parameters ?? [] { for i in 0..<p.count { p.value.data[i] = rng.uniform(0.5, 2) } }
    return model
}

/// Every weight and buffer as bit patterns, by name.
private func bitPatterns(_ model: any Model) -> [String: [UInt32]] {
    var out: [String: [UInt32]] = [:]
    for p in model.parameters.parameters + (model.buffers?.parameters ?? []) { out[p.name] = p.value.toArray().map(\.bitPattern) }
    return out
}

/// Names of the weights and buffers that are not bit for bit the same in both models (or in only one).
private func differingWeights(_ a: any Model, _ b: any Model) -> [String] {
    let (x, y) = (bitPatterns(a), bitPatterns(b))
    return Set(x.keys).union(y.keys).filter { x[$0] != y[$0] }.sorted()
}

private func values(_ model: any Model, _ name: String) -> [Float] {
    (model.parameters[name] ?? model.buffers?[name])?.value.toArray() ?? []
}

/// Files in a folder (to see that a failed conversion left nothing, not even a temporary).
private func listing(_ dir: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() }

/// A Keras weights file written the way Keras does, layer by layer (independently of `KerasWeights.write`).
private func writeKerasFile(_ path: String, layers: [(name: String, weights: [(name: String, shape: [Int], values: [Float])])]) throws {
    try writeHDF5Atomically(to: path) { file in
        try file.root.setAttribute("layer_names", layers.map(\.name))
        try file.root.setAttribute("backend", "tensorflow")
        try file.root.setAttribute("keras_version", "2.4.0")
        for layer in layers {
            let g = try file.root.createGroup(layer.name)
            if layer.weights.isEmpty {
                try g.setAttribute("weight_names", [Int]())   // h5py stores Keras's empty list as an empty number array
            } else {
                try g.setAttribute("weight_names", layer.weights.map(\.name))
            }
            for w in layer.weights { try g.createDataset(w.name, type: .float32, shape: w.shape).write(w.values) }
        }
    }
}

// MARK: - Keras

@Suite struct KerasConversionTests {
    @Test func roundTripIsBitIdenticalForEveryFamily() throws {
        let dir = Fixture.temporaryDirectory("keras-roundtrip")
        for (k, config) in try everyFamilyConfig().enumerated() {
            let model = try randomModel(config, seed: UInt64(k))
            let path = "\(dir)/\(config.family).h5"
            try KerasWeights.write(model, to: path)
            // No configuration given: the file records it.
            let (back, matched) = try CheckpointConversion.read(path, format: .keras, config: nil)
            #expect(matched == nil)
            #expect(back.model.config == config)
            #expect(differingWeights(back.model, model) == [], "\(config.family)")
            #expect(back.optimizer == nil && back.state.step == 0)
        }
    }

    @Test func layoutIsKeras() throws {
        let dir = Fixture.temporaryDirectory("keras-layout")
        let model = try randomModel(smallSSD7Config(), seed: 5)
        let path = dir + "/ssd7.h5"
        try KerasWeights.write(model, to: path)
        let file = try HDF5File.open(path)
        defer { file.close() }
        let root = file.root
        let convs = (1...7).flatMap { ["conv\($0)", "bn\($0)"] }
        #expect(try root.stringArrayAttribute("layer_names") == convs + (4...7).map { "classes\($0)" } + (4...7).map { "boxes\($0)" })
        #expect(try root.stringAttribute("backend") == "tensorflow")
        #expect(try root.stringAttribute("keras_version") == "2.2.4")
        #expect(try root.group("conv1").stringArrayAttribute("weight_names") == ["conv1/kernel:0", "conv1/bias:0"])
        #expect(try root.group("bn1").stringArrayAttribute("weight_names") == ["bn1/gamma:0", "bn1/beta:0", "bn1/moving_mean:0", "bn1/moving_variance:0"])
        // Keras nests the datasets under the layer name twice: <layer>/<layer>/<weight>:0.
        let kernel = try root.dataset("conv1/conv1/kernel:0")
        #expect(kernel.shape == [5, 5, 3, 32] && kernel.elementType == .float32)
        #expect(try root.dataset("bn1/bn1/moving_variance:0").read(as: Float.self) == values(model, "bn1/moving_variance"))
        // Keras's [kh, kw, in, out] against ours [out, in, kh, kw], index by index: keras[y][x][i][o] = ours[o][i][y][x].
        let keras = try kernel.read(as: Float.self), ours = values(model, "conv1/kernel")
        for (y, x, i, o) in [(0, 0, 0, 0), (1, 2, 0, 3), (4, 3, 2, 31), (2, 4, 1, 17)] {
            #expect(keras[((y * 5 + x) * 3 + i) * 32 + o] == ours[((o * 3 + i) * 5 + y) * 5 + x])
        }
        // classes4: 4 boxes x 6 classes = 24 output channels, over conv4's 64.
        #expect(try root.dataset("classes4/classes4/kernel:0").shape == [3, 3, 64, 24])
    }

    @Test func transposedConvolutionsAndFlattenedMapsFollowKeras() throws {
        let dir = Fixture.temporaryDirectory("keras-cvae")
        let model = try randomModel(ConvVariationalAutoencoder.defaultConfig(), seed: 6)
        let path = dir + "/cvae.h5"
        try KerasWeights.write(model, to: path)
        let file = try HDF5File.open(path)
        defer { file.close() }
        // Conv2DTranspose: Keras [kh, kw, out, in] against ours [in, out, kh, kw]: keras[y][x][o][i] = ours[i][o][y][x].
        let t = try file.root.dataset("conv2d_transpose_2/conv2d_transpose_2/kernel:0")
        #expect(t.shape == [3, 3, 32, 64])
        let keras = try t.read(as: Float.self), ours = values(model, "conv2d_transpose_2/kernel")
        for (y, x, o, i) in [(0, 1, 2, 3), (2, 2, 31, 63), (1, 0, 7, 40)] {
            #expect(keras[((y * 3 + x) * 32 + o) * 64 + i] == ours[((i * 32 + o) * 3 + y) * 3 + x])
        }
        // The encoder's dense layer reads a flattened 64 x 7 x 7 map: Keras's row (h * 7 + w) * 64 + c is our row
        // c * 49 + h * 7 + w (16 units per row).
        let dense = try file.root.dataset("encoder_hidden/encoder_hidden/kernel:0").read(as: Float.self)
        let ourDense = values(model, "encoder_hidden/kernel")
        for (c, h, w, u) in [(0, 0, 1, 0), (5, 3, 2, 7), (63, 6, 6, 15)] {
            #expect(dense[((h * 7 + w) * 64 + c) * 16 + u] == ourDense[(c * 49 + h * 7 + w) * 16 + u])
        }
        // The decoder's dense layer writes one: column (h * 7 + w) * 64 + c of Keras is our column c * 49 + h * 7 + w.
        let bias = try file.root.dataset("decoder_hidden/decoder_hidden/bias:0").read(as: Float.self)
        let ourBias = values(model, "decoder_hidden/bias")
        #expect(bias[(2 * 7 + 3) * 64 + 10] == ourBias[10 * 49 + 2 * 7 + 3])
    }

    /// A tutorial model saved by tf.keras has Keras's own names: it loads by order, as Keras's `load_weights` does.
    @Test func fileWithKerasDefaultNamesMatchesByOrder() throws {
        let dir = Fixture.temporaryDirectory("keras-order")
        var config = FCAutoencoder.defaultConfig(inputShape: [6])
        config.options["code_size"] = 2
        let kernel1: [Float] = (0..<12).map { Float($0) / 10 }, bias1: [Float] = [0.5, -0.5]
        let kernel2: [Float] = (0..<12).map { -Float($0) }, bias2: [Float] = [1, 2, 3, 4, 5, 6]
        let path = dir + "/tutorial.h5"
        try writeKerasFile(path, layers: [
            ("input_1", []),
            ("dense", [("dense/kernel:0", [6, 2], kernel1), ("dense/bias:0", [2], bias1)]),
            ("dense_1", [("dense_1/kernel:0", [2, 6], kernel2), ("dense_1/bias:0", [6], bias2)]),
        ])
        let (loaded, matched) = try CheckpointConversion.read(path, format: .keras, config: config)
        #expect(matched?.map(\.file) == ["dense", "dense_1"] && matched?.map(\.model) == ["encoder", "decoder"])
        #expect(values(loaded.model, "encoder/kernel") == kernel1 && values(loaded.model, "encoder/bias") == bias1)
        #expect(values(loaded.model, "decoder/kernel") == kernel2 && values(loaded.model, "decoder/bias") == bias2)
    }

    @Test func badKerasFilesAreRefusedNamingLayerAndShapes() throws {
        let dir = Fixture.temporaryDirectory("keras-bad")
        var config = FCAutoencoder.defaultConfig(inputShape: [6])
        config.options["code_size"] = 2
        let encoder = ("encoder", [("encoder/kernel:0", [6, 2], [Float](repeating: 0.1, count: 12)), ("encoder/bias:0", [2], [Float](repeating: 0, count: 2))])
        let decoder = ("decoder", [("decoder/kernel:0", [2, 6], [Float](repeating: 0.2, count: 12)), ("decoder/bias:0", [6], [Float](repeating: 0, count: 6))])
        func refusal(_ layers: [(name: String, weights: [(name: String, shape: [Int], values: [Float])])]) throws -> String {
            let path = dir + "/bad.h5"
            try writeKerasFile(path, layers: layers)
            do {
                _ = try CheckpointConversion.read(path, format: .keras, config: config)
                return "accepted"
            } catch { return "\(error)" }
        }
        let missing = try refusal([encoder])
        #expect(missing.contains("no layer 'decoder'") && missing.contains("bad.h5"), "\(missing)")
        let extra = try refusal([encoder, decoder, ("extra_dense", [("extra_dense/kernel:0", [6, 6], [Float](repeating: 0, count: 36))])])
        #expect(extra.contains("'extra_dense'") && extra.contains("no counterpart"), "\(extra)")
        let shape = try refusal([("encoder", [("encoder/kernel:0", [2, 6], [Float](repeating: 0, count: 12)), ("encoder/bias:0", [2], [0, 0])]), decoder])
        #expect(shape.contains("'encoder'") && shape.contains("[2, 6]") && shape.contains("[6, 2]"), "\(shape)")
        let lacking = try refusal([("encoder", [("encoder/kernel:0", [6, 2], [Float](repeating: 0, count: 12))]), decoder])
        #expect(lacking.contains("lacks weight 'bias'"), "\(lacking)")
        let nan = try refusal([("encoder", [("encoder/kernel:0", [6, 2], [Float](repeating: .nan, count: 12)), ("encoder/bias:0", [2], [0, 0])]), decoder])
        #expect(nan.contains("non-finite"), "\(nan)")
        for message in [missing, extra, shape, lacking, nan] { #expect(!message.contains("\n")) }
        // A Starling checkpoint handed over as Keras.
        let checkpoint = dir + "/ckpt.h5"
        try Checkpoint.save(to: checkpoint, model: try ModelRegistry.build(config, seed: 0), optimizer: nil, state: .init())
        #expect(throws: ConversionError.self) { try CheckpointConversion.read(checkpoint, format: .keras, config: config) }
    }
}

// MARK: - safetensors

@Suite struct SafeTensorsTests {
    /// The byte layout, against bytes worked out by hand.
    @Test func bytesMatchTheFormat() throws {
        let file = SafeTensorsFile(tensors: [.init(name: "b", dtype: .f16, shape: [1], values: [1]),
                                             .init(name: "a", shape: [2], values: [1, -2])])
        let bytes = try file.encoded()
        let header = #"{"a":{"data_offsets":[0,8],"dtype":"F32","shape":[2]},"b":{"data_offsets":[8,10],"dtype":"F16","shape":[1]}}"#
        let padded = header + String(repeating: " ", count: (8 - header.utf8.count % 8) % 8)
        #expect(Array(bytes.prefix(8)) == [UInt8(padded.utf8.count), 0, 0, 0, 0, 0, 0, 0])
        #expect(String(decoding: bytes[8..<(8 + padded.utf8.count)], as: UTF8.self) == padded)
        // 1.0f = 0x3F800000, -2.0f = 0xC0000000, 1.0 in half = 0x3C00, little-endian.
        #expect(Array(bytes.suffix(10)) == [0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x3C])
        let back = try SafeTensorsFile.decode(bytes)
        #expect(back["a"]?.values == [1, -2] && back["b"]?.values == [1] && back["b"]?.dtype == .f16)
    }

    @Test func malformedFilesAreRefused() throws {
        let good = try SafeTensorsFile(tensors: [.init(name: "a", shape: [2], values: [1, 2])], metadata: ["k": "v"]).encoded()
        #expect(try SafeTensorsFile.decode(good).metadata == ["k": "v"])
        func refusal(_ bytes: [UInt8]) -> String {
            do { _ = try SafeTensorsFile.decode(bytes, file: "x.safetensors"); return "accepted" } catch { return "\(error)" }
        }
        #expect(refusal(Array(good.prefix(5))).contains("shorter"))
        #expect(refusal(Array(good.dropLast())).contains("spans bytes 0..<8 of a 7-byte buffer"))
        #expect(refusal(good + [0, 0, 0, 0]).contains("belong to no tensor"))
        var huge = good
        huge[0] = 0xFF; huge[1] = 0xFF
        #expect(refusal(huge).contains("header length"))
        // A shape whose size overflows is refused, not trapped on.
        let overflowing = Array(#"{"a":{"data_offsets":[0,8],"dtype":"F32","shape":[4611686018427387904,4]}}"#.utf8)
        let header = overflowing + [UInt8](repeating: 0x20, count: (8 - overflowing.count % 8) % 8)
        #expect(refusal([UInt8(header.count), 0, 0, 0, 0, 0, 0, 0] + header + [UInt8](repeating: 0, count: 8)).contains("does not fill"))
        var json = good
        json[8] = UInt8(ascii: "[")
        #expect(refusal(json).contains("JSON"))
    }

    @Test func roundTripWithPyTorchNamesForEveryFamily() throws {
        let dir = Fixture.temporaryDirectory("safetensors")
        for (k, config) in try everyFamilyConfig().enumerated() {
            let model = try randomModel(config, seed: UInt64(k) + 50)
            let path = "\(dir)/\(config.family).safetensors"
            try CheckpointConversion.write(CheckpointConversion.fresh(model), to: path, format: .safetensors, half: false)
            let (back, _) = try CheckpointConversion.read(path, format: .safetensors, config: nil)
            #expect(differingWeights(back.model, model) == [], "\(config.family)")
        }
    }

    @Test func namesAndLayoutsArePyTorchs() throws {
        let dir = Fixture.temporaryDirectory("safetensors-names")
        // Dense: nn.Linear's weight is [out, in], our kernel transposed.
        let fc = try randomModel(FCAutoencoder.defaultConfig(), seed: 1)
        try PyTorchWeights.write(fc, to: dir + "/fc.safetensors")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/fc.safetensors")))
        let length = Int(bytes[0]) | Int(bytes[1]) << 8 | Int(bytes[2]) << 16
        #expect((8 + length) % 8 == 0)
        let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + length)])) as? [String: Any]
        #expect(Set(header?.keys.map { $0 } ?? []) == ["__metadata__", "encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"])
        let metadata = header?["__metadata__"] as? [String: String]
        #expect(metadata?["format"] == "pt" && metadata?["starling_model_config"]?.contains("fc-ae") == true)
        let file = try SafeTensorsFile.read(from: dir + "/fc.safetensors")
        #expect(file["encoder.weight"]?.shape == [32, 784] && file["encoder.weight"]?.dtype == .f32)
        let weight = file["encoder.weight"]?.values ?? [], kernel = values(fc, "encoder/kernel")
        for (o, i) in [(0, 0), (3, 700), (31, 783)] { #expect(weight[o * 784 + i] == kernel[i * 32 + o]) }

        // LSTM: weight_ih_l0 [4H, F], weight_hh_l0 [4H, H], bias_ih_l0 ours, bias_hh_l0 zero.
        let seq = try randomModel(Seq2SeqAutoencoder.defaultConfig(), seed: 2)
        try PyTorchWeights.write(seq, to: dir + "/seq.safetensors")
        let s = try SafeTensorsFile.read(from: dir + "/seq.safetensors")
        #expect(s["encoder_lstm.weight_ih_l0"]?.shape == [256, 28] && s["encoder_lstm.weight_hh_l0"]?.shape == [256, 64])
        #expect(s["encoder_lstm.bias_ih_l0"]?.values.map(\.bitPattern) == values(seq, "encoder_lstm/bias").map(\.bitPattern))
        #expect(s["encoder_lstm.bias_hh_l0"]?.values == [Float](repeating: 0, count: 256))
        #expect(s["encoder_lstm.weight_hh_l0"]?.values[5 * 64 + 7] == values(seq, "encoder_lstm/recurrent_kernel")[7 * 256 + 5])
        #expect(s["output_dense.weight"]?.shape == [28, 64])

        // Batch norm and convolutions.
        let ssd = try randomModel(smallSSD7Config(), seed: 3)
        try PyTorchWeights.write(ssd, to: dir + "/ssd.safetensors")
        let d = try SafeTensorsFile.read(from: dir + "/ssd.safetensors")
        #expect(d["conv1.weight"]?.shape == [32, 3, 5, 5] && d["conv1.weight"]?.values == values(ssd, "conv1/kernel"))
        #expect(d["bn1.weight"]?.values == values(ssd, "bn1/gamma") && d["bn1.bias"]?.values == values(ssd, "bn1/beta"))
        #expect(d["bn1.running_mean"]?.values == values(ssd, "bn1/moving_mean") && d["bn1.running_var"]?.values == values(ssd, "bn1/moving_variance"))
        #expect(d["classes7.bias"]?.shape == [24])
    }

    /// A PyTorch LSTM's two biases add up to ours.
    @Test func lstmBiasesAreSummedOnImport() throws {
        let seq = try randomModel(Seq2SeqAutoencoder.defaultConfig(), seed: 4)
        let entries = PyTorchWeights.entries(of: seq).map { e in
            SafeTensorsFile.Tensor(name: e.name, shape: e.layout.shape,
                                   values: e.isCompanion ? [Float](repeating: 0.25, count: e.weight.parameter.count) : e.layout.export(e.weight.parameter.value.toArray()))
        }
        let back = try PyTorchWeights.read(SafeTensorsFile(tensors: entries), path: "x", config: seq.config)
        let bias = values(seq, "decoder_lstm/bias")
        #expect(values(back, "decoder_lstm/bias") == bias.map { $0 + 0.25 })
        // A tensor the model lacks, or one missing, is refused.
        #expect(throws: ConversionError.self) { try PyTorchWeights.read(SafeTensorsFile(tensors: entries + [.init(name: "extra.weight", shape: [1], values: [0])]), path: "x", config: seq.config) }
        #expect(throws: ConversionError.self) { try PyTorchWeights.read(SafeTensorsFile(tensors: Array(entries.dropFirst())), path: "x", config: seq.config) }
    }
}

// MARK: - Lighter checkpoints

@Suite struct LightCheckpointTests {
    /// A checkpoint with two Adam steps behind it.
    private func trainedCheckpoint(_ path: String, config: ModelConfig = FCAutoencoder.defaultConfig()) throws -> (model: any Model, adam: Adam) {
        let model = try randomModel(config, seed: 8)
        let adam = Adam(parameterCount: model.parameters.count)
        var rng = RandomGenerator(seed: 9)
        for i in 0..<model.parameters.count { model.parameters.gradients.pointer[i] = rng.normal() }
        adam.step(model.parameters)
        adam.step(model.parameters)
        var state = Checkpoint.TrainingState()
        state.step = 2
        state.epoch = 1
        try Checkpoint.save(to: path, model: model, optimizer: adam, state: state)
        return (model, adam)
    }

    @Test func halfPrecisionComesBackRoundedToFloat16() throws {
        let dir = Fixture.temporaryDirectory("half")
        let (model, adam) = try trainedCheckpoint(dir + "/full.h5", config: smallSSD7Config())
        let loaded = try Checkpoint.load(from: dir + "/full.h5")
        try CheckpointConversion.write(loaded, to: dir + "/half.h5", format: .starling, half: true)
        let file = try HDF5File.open(dir + "/half.h5")
        #expect(try file.root.dataset("model_weights/conv1/kernel").elementType == .float16)
        #expect(try file.root.dataset("model_weights/bn1/moving_mean").elementType == .float16)
        #expect(try file.root.dataset("optimizer_state/m").elementType == .float32)
        file.close()
        let half = try Checkpoint.load(from: dir + "/half.h5")
        for p in model.parameters.parameters + (model.buffers?.parameters ?? []) {
            let original = p.value.toArray(), back = values(half.model, p.name)
            // Round to nearest: within half a unit in the last place of float16's 11-bit significand (or of its
            // smallest subnormal, 2^-24), and exactly Swift's own rounding.
            let far = original.indices.filter { abs(back[$0] - original[$0]) > abs(original[$0]) * 0x1p-11 + 0x1p-25 }
            let unlike = original.indices.filter { back[$0] != Float(Float16(original[$0])) }
            #expect(far.isEmpty && unlike.isEmpty, "\(p.name): \(far.count) values off by more than float16 rounding, \(unlike.count) unlike Float16(x)")
        }
        // The optimizer comes through in full.
        #expect(half.optimizerState["m"] == adam.state[0].storage.toArray() && half.optimizer?.stepCount == 2 && half.state.step == 2)
        // Keras and safetensors files in half precision come back rounded the same way.
        for format in [WeightFormat.keras, .safetensors] {
            let path = dir + "/half-\(format)"
            try CheckpointConversion.write(loaded, to: path, format: format, half: true)
            let back = try CheckpointConversion.read(path, format: format, config: nil).checkpoint.model
            #expect(differingWeights(back, half.model) == [], "\(format)")
        }
        #expect(try SafeTensorsFile.read(from: dir + "/half-safetensors")["conv1.weight"]?.dtype == .f16)
        // Smaller on disk.
        let size = { (path: String) in (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0 }
        #expect(try size(dir + "/half.h5") < size(dir + "/full.h5"))
    }

    @Test func halfPrecisionRefusesWeightsOutOfRange() throws {
        let dir = Fixture.temporaryDirectory("half-range")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 0)
        model.parameters.parameters[1].value.data[3] = 1e6
        #expect(throws: ConversionError.self) { try CheckpointConversion.write(CheckpointConversion.fresh(model), to: dir + "/h.h5", format: .starling, half: true) }
        #expect(throws: ConversionError.self) { try CheckpointConversion.write(CheckpointConversion.fresh(model), to: dir + "/h.safetensors", format: .safetensors, half: true) }
        #expect(listing(dir).isEmpty)
    }

    @Test func inferenceOnlyDropsOptimizerStateAndStillEvaluates() throws {
        let dir = Fixture.temporaryDirectory("inference-only")
        let run = try starling("convert", "--inference-only", dir + "/full.h5", dir + "/slim.h5")
        #expect(run.status != 0)   // no input yet: refused, nothing written
        #expect(listing(dir).isEmpty)
        _ = try trainedCheckpoint(dir + "/full.h5")
        let convert = try starling("convert", "--inference-only", dir + "/full.h5", dir + "/slim.h5")
        #expect(convert.status == 0, "\(convert.error)")
        let slim = try Checkpoint.load(from: dir + "/slim.h5"), full = try Checkpoint.load(from: dir + "/full.h5")
        #expect(slim.optimizer == nil && slim.optimizerState.isEmpty && slim.state == full.state)
        #expect(differingWeights(slim.model, full.model) == [])
        let file = try HDF5File.open(dir + "/slim.h5")
        #expect(!file.root.contains("optimizer_state") && !file.root.hasAttribute("optimizer"))
        file.close()
        let data = try Fixture.sampleHDF5()
        let dataset = try ImageDataset(path: data, split: "test")
        let a = try ReconstructionEvaluation.evaluate(try #require(slim.model as? any Autoencoder), data: dataset, limit: 200)
        let b = try ReconstructionEvaluation.evaluate(try #require(full.model as? any Autoencoder), data: dataset, limit: 200)
        #expect(a.bcePerPixel == b.bcePerPixel)
    }
}

// MARK: - Class re-sampling

@Suite struct ClassResamplingTests {
    @Test func keepsTheChosenChannelsAndPredictsTheNewClasses() throws {
        // The detector's own initialisation (keeps the logits in a sensible range), with random biases and statistics.
        let source = try ModelRegistry.build(smallSSD7Config(), seed: 11)
        var random = RandomGenerator(seed: 12)
        for p in source.parameters.parameters where p.name.hasSuffix("bias") || p.name.hasSuffix("beta") {
            for i in 0..<p.count { p.value.data[i] = random.uniform(-0.1, 0.1) }
        }
        for p in source.buffers?.parameters ?? [] { for i in 0..<p.count { p.value.data[i] = random.uniform(0.5, 1.5) } }
        let keep = [0, 2, 5]   // background, truck, light; then one new class
        let selection = ClassSelection(objectClasses: 3, keep: keep, names: ["truck", "light", "bus"], seed: 7)
        let model = try ClassResampling.resample(source, selection, file: "src.h5")
        #expect(model.config.classNames == ["background", "truck", "light", "bus"])
        #expect(model.config.anchors == source.config.anchors)
        // The fresh class comes from the detector's own initialiser with the given seed.
        let fresh = try ModelRegistry.build(model.config, seed: 7)
        for k in 4...7 {
            for part in ["kernel", "bias"] {
                let name = "classes\(k)/\(part)"
                let old = values(source, name), new = values(model, name), initial = values(fresh, name)
                let row = old.count / (4 * 6)
                #expect(new.count == 4 * 4 * row)
                for box in 0..<4 {
                    for (j, c) in keep.enumerated() {
                        #expect(Array(new[((box * 4 + j) * row)..<((box * 4 + j + 1) * row)]) == Array(old[((box * 6 + c) * row)..<((box * 6 + c + 1) * row)]), "\(name) box \(box) class \(j)")
                    }
                    #expect(Array(new[((box * 4 + 3) * row)..<((box * 4 + 4) * row)]) == Array(initial[((box * 4 + 3) * row)..<((box * 4 + 4) * row)]))
                }
            }
            if let fresh = values(model, "classes\(k)/kernel").last { #expect(fresh != 0) }
            #expect(values(model, "boxes\(k)/kernel") == values(source, "boxes\(k)/kernel"))
        }
        #expect(values(model, "bn3/moving_variance") == values(source, "bn3/moving_variance"))
        #expect(values(model, "conv5/kernel") == values(source, "conv5/kernel"))

        // Predictions: four classes per anchor, the kept ones as the source predicted them.
        let images = Tensor(zeros: [1, 3, 64, 64])
        var rng = RandomGenerator(seed: 3)
        for i in 0..<images.count { images.data[i] = rng.uniform(0, 255) }
        let (old, new) = GradMode.disabled {
            ((source as! SSD7).predict(images, training: false).classLogits, (model as! SSD7).predict(images, training: false).classLogits)
        }
        let anchors = smallSSD7Config().anchors!.anchorCount
        #expect(old.shape == [anchors, 6] && new.shape == [anchors, 4])
        // BLAS may sum a head of another width in another order: equal to float32 rounding, relative to the logits' scale.
        let scale = old.toArray().map(abs).max() ?? 1
        for a in 0..<anchors {
            for (j, c) in keep.enumerated() {
                let (x, y) = (new.data[a * 4 + j], old.data[a * 6 + c])
                #expect(abs(x - y) <= 1e-5 * scale, "anchor \(a) class \(j): \(x) vs \(y)")
            }
        }
        let detections = (model as! SSD7).detect(images, decoding: DetectionDecoding(confidenceThreshold: 0.01, iouThreshold: 0.45, topK: 200))
        #expect(detections.count == 1 && detections[0].allSatisfy { (1...3).contains($0.classID) })
    }

    @Test func refusesImpossibleSelections() throws {
        let source = try ModelRegistry.build(smallSSD7Config(), seed: 0)
        for (selection, words) in [(ClassSelection(objectClasses: 2, keep: [1, 0]), "start with 0"),
                                   (ClassSelection(objectClasses: 2, keep: [0, 9]), "class 9 does not exist"),
                                   (ClassSelection(objectClasses: 1, keep: [0, 1, 2]), "more than --num-classes"),
                                   (ClassSelection(objectClasses: 2, keep: [0, 1, 1]), "twice"),
                                   (ClassSelection(objectClasses: 2, keep: [0, 1], names: ["a", "b", "c", "d"]), "4 class names")] {
            do { _ = try ClassResampling.resample(source, selection, file: "s.h5"); Issue.record("accepted \(selection)") } catch {
                #expect("\(error)".contains(words), "\(error)")
            }
        }
        let autoencoder = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 0)
        #expect(throws: ConversionError.self) { try ClassResampling.resample(autoencoder, ClassSelection(objectClasses: 1, keep: [0]), file: "a.h5") }
    }
}

// MARK: - Inspect

@Suite struct InspectTests {
    private let config: ModelConfig = {
        var c = FCAutoencoder.defaultConfig(inputShape: [6])
        c.options["code_size"] = 2
        return c
    }()

    /// A checkpoint written field by field, so each can be broken on purpose.
    private func write(_ path: String, weights: [String: (shape: [Int], values: [Float])], optimizerState: [String: Int] = ["m": 32, "v": 32]) throws {
        try writeHDF5Atomically(to: path) { file in
            let root = file.root
            try root.setAttribute("format", Checkpoint.format)
            try root.setAttribute("format_version", Checkpoint.formatVersion)
            try root.setJSONAttribute("model_config", config)
            for key in ["step", "epoch", "world_size", "data_cursor"] { try root.setAttribute(key, 3) }
            try root.setAttribute("seed", "0")
            try root.setAttribute("best_validation_loss", 0.5)
            for (name, w) in weights { try root.createDataset("model_weights/" + name, type: .float32, shape: w.shape).write(w.values) }
            try root.setJSONAttribute("optimizer", Checkpoint.OptimizerConfig(name: "adam", learningRate: 1e-3, stepCount: 3))
            for (name, count) in optimizerState {
                try root.createDataset("optimizer_state/" + name, type: .float32, shape: [count]).write([Float](repeating: 0, count: count))
            }
        }
    }

    private var goodWeights: [String: (shape: [Int], values: [Float])] {
        ["encoder/kernel": ([6, 2], [Float](repeating: 0.5, count: 12)), "encoder/bias": ([2], [0, 0]),
         "decoder/kernel": ([2, 6], [Float](repeating: 0.5, count: 12)), "decoder/bias": ([6], [Float](repeating: 0, count: 6))]
    }

    @Test func describesASoundCheckpoint() throws {
        let dir = Fixture.temporaryDirectory("inspect")
        try write(dir + "/good.h5", weights: goodWeights)
        #expect(try Checkpoint.load(from: dir + "/good.h5").model.parameters.count == 32)
        let report = try CheckpointInspection.inspect(dir + "/good.h5")
        #expect(report.problems.isEmpty, "\(report.problems)")
        let text = report.text
        for words in ["family      fc-ae", "code_size=2", "encoder/kernel", "[6, 2]", "32 trainable parameters in 4 weights",
                      "adam, learning rate 0.001, 3 steps; state: m [32], v [32]", "step 3, epoch 3, world size 3", "integrity   ok"] {
            #expect(text.contains(words), "report lacks '\(words)':\n\(text)")
        }
        // A detector's buffers are marked, its classes and anchors shown; the command prints the same and exits 0.
        let ssd = dir + "/ssd.h5"
        try Checkpoint.save(to: ssd, model: try ModelRegistry.build(smallSSD7Config(), seed: 0), optimizer: nil, state: .init())
        let run = try starling("inspect", ssd)
        #expect(run.status == 0, "\(run.error)")
        #expect(run.output.contains("bn1/moving_mean") && run.output.contains("buffer") && run.output.contains("classes     6: background, car"))
        #expect(run.output.contains("optimizer   none"))
    }

    @Test func reportsEveryIntegrityFault() throws {
        let dir = Fixture.temporaryDirectory("inspect-bad")
        func problems(_ weights: [String: (shape: [Int], values: [Float])], optimizerState: [String: Int] = ["m": 32, "v": 32]) throws -> [String] {
            try write(dir + "/bad.h5", weights: weights, optimizerState: optimizerState)
            return try CheckpointInspection.inspect(dir + "/bad.h5").problems
        }
        var nan = goodWeights
        nan["decoder/kernel"]?.values[4] = .nan
        #expect(try problems(nan) == ["weight 'decoder/kernel' holds a non-finite value (nan) at index 4"])
        var missing = goodWeights
        missing["decoder/bias"] = nil
        #expect(try problems(missing) == ["weight 'decoder/bias' is missing (model fc-ae needs shape [6])"])
        var shape = goodWeights
        shape["encoder/kernel"] = ([2, 6], [Float](repeating: 0, count: 12))
        #expect(try problems(shape) == ["weight 'encoder/kernel' has shape [2, 6]; model fc-ae needs [6, 2]"])
        var extra = goodWeights
        extra["decoder/gamma"] = ([6], [Float](repeating: 1, count: 6))
        #expect(try problems(extra) == ["unexpected weight 'decoder/gamma' (model fc-ae has no such weight)"])
        #expect(try problems(goodWeights, optimizerState: ["m": 32, "v": 20]) == ["optimizer state 'v' has 20 values for 32 parameters"])
        #expect(try problems(goodWeights, optimizerState: ["m": 32]) == ["optimizer adam has no state 'v' (train --resume needs it)"])
        // The command: the report on stdout, one line on stderr, exit 1.
        try write(dir + "/bad.h5", weights: nan, optimizerState: ["m": 32])
        let run = try starling("inspect", dir + "/bad.h5")
        #expect(run.status != 0)
        let message = run.error.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!message.contains("\n") && message.contains("bad.h5") && message.contains("decoder/kernel") && message.contains("and 1 more"), "\(message)")
        #expect(run.output.contains("2 problem(s)"))
        // Not a checkpoint at all.
        #expect(throws: CheckpointError.self) { try CheckpointInspection.inspect(try Fixture.sampleHDF5()) }
    }
}

// MARK: - The command

@Suite struct ConvertCommandTests {
    /// Starling -> Keras -> Starling and Starling -> safetensors -> Starling through the binary; the import evaluates.
    @Test func convertsBothWaysAndTheImportEvaluates() throws {
        let dir = Fixture.temporaryDirectory("convert-cli")
        let model = try randomModel(DeepAutoencoder.defaultConfig(), seed: 21)
        for p in model.parameters.parameters { for i in 0..<p.count { p.value.data[i] *= 0.1 } }
        try Checkpoint.save(to: dir + "/a.h5", model: model, optimizer: nil, state: .init())
        for (format, file) in [("keras", "k.h5"), ("safetensors", "w.safetensors")] {
            let out = try starling("convert", "--to", format, dir + "/a.h5", dir + "/" + file)
            #expect(out.status == 0, "\(out.error)")
            let back = try starling("convert", "--from", format, dir + "/" + file, dir + "/back-\(format).h5", "--model", "deep-ae")
            #expect(back.status == 0, "\(back.error)")
            #expect(try differingWeights(Checkpoint.load(from: dir + "/back-\(format).h5").model, model) == [])
        }
        let eval = try starling("eval", "--checkpoint", dir + "/back-keras.h5", "--data", try Fixture.sampleHDF5(), "--limit", "100")
        #expect(eval.status == 0 && eval.output.contains("BCE per pixel"), "\(eval.error)")
    }

    @Test func resamplesClassesFromTheCommandLine() throws {
        let dir = Fixture.temporaryDirectory("convert-classes")
        let model = try ModelRegistry.build(smallSSD7Config(), seed: 1)
        try Checkpoint.save(to: dir + "/ssd.h5", model: model, optimizer: Adam(parameterCount: model.parameters.count), state: .init())
        let run = try starling("convert", "--num-classes", "2", "--keep-classes", "0,3", "--class-names", "pedestrian,bus", dir + "/ssd.h5", dir + "/two.h5")
        #expect(run.status == 0, "\(run.error)")
        #expect(run.output.contains("class 1 pedestrian: from class 3 pedestrian") && run.output.contains("class 2 bus: new"))
        let loaded = try Checkpoint.load(from: dir + "/two.h5")
        #expect(loaded.model.config.classNames == ["background", "pedestrian", "bus"] && loaded.optimizer == nil)
        let inspect = try starling("inspect", dir + "/two.h5")
        #expect(inspect.status == 0 && inspect.output.contains("classes     3: background, pedestrian, bus"), "\(inspect.error)")
        #expect(try starling("convert", "--num-classes", "2", "--keep-classes", "0,x", dir + "/ssd.h5", dir + "/bad.h5").status != 0)
    }

    @Test func badInputsLeaveNoOutput() throws {
        let dir = Fixture.temporaryDirectory("convert-bad")
        var config = FCAutoencoder.defaultConfig(inputShape: [6])
        config.options["code_size"] = 2
        try Checkpoint.save(to: dir + "/a.h5", model: try ModelRegistry.build(config, seed: 0), optimizer: nil, state: .init())
        try writeKerasFile(dir + "/missing.h5", layers: [("encoder", [("encoder/kernel:0", [6, 2], [Float](repeating: 0, count: 12)), ("encoder/bias:0", [2], [0, 0])])])
        try writeKerasFile(dir + "/shape.h5", layers: [("encoder", [("encoder/kernel:0", [6, 3], [Float](repeating: 0, count: 18)), ("encoder/bias:0", [2], [0, 0])]),
                                                     ("decoder", [("decoder/kernel:0", [2, 6], [Float](repeating: 0, count: 12)), ("decoder/bias:0", [6], [Float](repeating: 0, count: 6))])])
        let before = listing(dir)
        for (arguments, words) in [(["--to", "onnx", "--half", "a.h5", "out.onnx"], ["out.onnx", "float32"]),
                                   (["--to", "tflite", "a.h5", "out.tflite"], ["tflite"]),
                                   (["--from", "keras", "missing.h5", "out.h5", "--config-from", "a.h5"], ["missing.h5", "no layer 'decoder'"]),
                                   (["--from", "keras", "shape.h5", "out.h5", "--config-from", "a.h5"], ["shape.h5", "'encoder'", "[6, 3]", "[6, 2]"]),
                                   (["--from", "keras", "a.h5", "out.h5", "--model", "fc-ae"], ["Starling checkpoint"]),
                                   (["--from", "safetensors", "a.h5", "out.h5", "--model", "fc-ae"], ["a.h5", "safetensors"]),
                                   (["--num-classes", "2", "--keep-classes", "0,1", "a.h5", "out.h5"], ["not a detector"])] {
            let run = try starling(["convert"] + arguments.map { $0.hasSuffix(".h5") || $0.hasSuffix(".onnx") || $0.hasSuffix(".tflite") ? dir + "/" + $0 : $0 })
            #expect(run.status != 0, "\(arguments) succeeded")
            let message = run.error.trimmingCharacters(in: .whitespacesAndNewlines)
            for w in words { #expect(message.contains(w), "'\(message)' lacks '\(w)'") }
            #expect(listing(dir) == before, "\(arguments) left \(listing(dir))")
        }
    }
}

/// `starling ARGS` from an array.
private func starling(_ arguments: [String]) throws -> Run { try run(Fixture.starling, arguments) }
