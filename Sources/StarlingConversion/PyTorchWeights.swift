import Foundation
import StarlingCore
import StarlingNN
import StarlingTraining

/// Our weights under PyTorch's state-dict names and layouts, stored as safetensors (`starling convert --to
/// safetensors`), so `model.load_state_dict(safetensors.torch.load_file(path))` fills an equivalent PyTorch model.
///
/// Names: `<layer>.<weight>` with PyTorch's weight names. Layouts:
/// - Dense (nn.Linear): `weight` is our [in, out] kernel transposed to [out, in]; `bias`.
/// - Conv2D (nn.Conv2d) [out, in, kh, kw] and Conv2DTranspose (nn.ConvTranspose2d) [in, out, kh, kw]: as ours.
/// - Batch norm (nn.BatchNorm2d): `weight` = gamma, `bias` = beta, `running_mean`, `running_var`. Build it with
///   Keras's `eps=1e-3, momentum=0.01` to compute what ours does; PyTorch adds `num_batches_tracked` itself.
/// - LSTM (nn.LSTM, batch_first): `weight_ih_l0` [4H, F] and `weight_hh_l0` [4H, H] are our kernels transposed,
///   gates in the same order (i, f, g, o); our single bias is `bias_ih_l0`, and `bias_hh_l0` is zero. Reading,
///   the two biases are summed (kept bit for bit when `bias_hh_l0` is zero).
/// The model configuration goes in the metadata (`starling_model_config`), with `format` = "pt".
public enum PyTorchWeights {
    public static let configKey = "starling_model_config"

    /// One tensor of the state dict: the weight it holds and how, or (`zerosBesides`) a zero tensor PyTorch needs
    /// beside one of ours.
    struct Entry {
        let name: String
        let weight: WeightGroup.Weight
        let layout: ForeignLayout
        /// True for LSTM's `bias_hh_l0`: zeros on export, added to `weight` (the bias) on import.
        var isCompanion = false
    }

    static func entries(of model: any Model) -> [Entry] {
        var out: [Entry] = []
        for group in WeightGroup.of(model) {
            let prefix = group.layer.replacingOccurrences(of: "/", with: ".")
            let isLSTM = group["recurrent_kernel"] != nil
            let isBatchNorm = group["moving_mean"] != nil
            for weight in group.weights {
                let shape = weight.parameter.shape
                func entry(_ name: String, _ layout: ForeignLayout) { out.append(Entry(name: "\(prefix).\(name)", weight: weight, layout: layout)) }
                switch (weight.shortName, isLSTM, isBatchNorm) {
                case ("kernel", true, _): entry("weight_ih_l0", .transposed(shape))
                case ("recurrent_kernel", true, _): entry("weight_hh_l0", .transposed(shape))
                case ("bias", true, _):
                    entry("bias_ih_l0", .identical(shape))
                    out.append(Entry(name: "\(prefix).bias_hh_l0", weight: weight, layout: .identical(shape), isCompanion: true))
                case ("gamma", _, true): entry("weight", .identical(shape))
                case ("beta", _, true): entry("bias", .identical(shape))
                case ("moving_mean", _, true): entry("running_mean", .identical(shape))
                case ("moving_variance", _, true): entry("running_var", .identical(shape))
                case ("kernel", false, false) where shape.count == 2: entry("weight", .transposed(shape))
                case ("kernel", false, false): entry("weight", .identical(shape))
                default: entry(weight.shortName, .identical(shape))
                }
            }
        }
        return out
    }

    /// Writes the model as a safetensors file (atomically); `half` stores F16.
    public static func write(_ model: any Model, to path: String, half: Bool = false) throws {
        let tensors = entries(of: model).map { e in
            let values = e.isCompanion ? [Float](repeating: 0, count: e.weight.parameter.count) : e.layout.export(e.weight.parameter.value.toArray())
            return SafeTensorsFile.Tensor(name: e.name, dtype: half ? .f16 : .f32, shape: e.layout.shape, values: values)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let config = String(decoding: try encoder.encode(model.config), as: UTF8.self)
        try SafeTensorsFile(tensors: tensors, metadata: ["format": "pt", configKey: config]).write(to: path)
    }

    /// The model configuration a file written by Starling records, if any.
    public static func recordedConfig(in file: SafeTensorsFile, path: String) throws -> ModelConfig? {
        guard let text = file.metadata[configKey] else { return nil }
        do {
            return try JSONDecoder().decode(ModelConfig.self, from: Data(text.utf8))
        } catch {
            throw ConversionError(file: path, message: "metadata \(configKey) is not a model configuration: \(oneLineDescription(error))")
        }
    }

    /// Builds a model of `config` and fills it from a safetensors state dict: every tensor the model needs, with
    /// its shape, finite, and no tensor the model does not have.
    public static func read(_ file: SafeTensorsFile, path: String, config: ModelConfig) throws -> any Model {
        func fail(_ message: String) -> ConversionError { ConversionError(file: path, message: message) }
        let model = try ModelRegistry.build(config, seed: 0)
        let expected = entries(of: model)
        let names = Set(expected.map(\.name))
        if let extra = file.tensors.first(where: { !names.contains($0.name) }) {
            throw fail("tensor '\(extra.name)' \(extra.shape) has no counterpart in model \(config.family)")
        }
        var loaded: [String: [Float]] = [:]   // our weights by name, in our layout
        for e in expected {
            guard let tensor = file[e.name] else { throw fail("no tensor '\(e.name)', which model \(config.family) needs (shape \(e.layout.shape))") }
            guard tensor.shape == e.layout.shape else {
                throw fail("tensor '\(e.name)' has shape \(tensor.shape); model \(config.family) needs \(e.layout.shape)")
            }
            if let bad = tensor.values.firstIndex(where: { !$0.isFinite }) {
                throw fail("tensor '\(e.name)' holds a non-finite value at index \(bad)")
            }
            let name = e.weight.parameter.name
            if e.isCompanion {
                // bias_hh + bias_ih; a zero bias_hh leaves bias_ih as it is (even its -0.0s).
                if tensor.values.contains(where: { $0 != 0 }), let bias = loaded[name] {
                    loaded[name] = zip(bias, tensor.values).map { $0 + $1 }
                }
            } else {
                loaded[name] = e.layout.import(tensor.values)
            }
        }
        for e in expected where !e.isCompanion {
            if let values = loaded[e.weight.parameter.name] { e.weight.parameter.assign(values) }
        }
        return model
    }
}
