import StarlingCore
import StarlingIO
import StarlingNN
import StarlingTraining

/// The weight formats `starling convert` reads and writes.
public enum WeightFormat: String, CaseIterable, Sendable {
    /// Starling's checkpoint (see `Checkpoint`).
    case starling
    /// A Keras 2 / tf.keras `save_weights` HDF5 file (see `KerasWeights`).
    case keras
    /// PyTorch state-dict names in a safetensors file (see `PyTorchWeights`).
    case safetensors
    /// The inference graph with its weights as an ONNX model (see `ONNXExport`); written, not read.
    case onnx
}

/// `starling convert`: any format in, optional changes, any format out. A checkpoint is the common currency
/// (`Checkpoint.Loaded`); weights read from another framework come with a fresh training state (step 0) and no
/// optimizer state, which `starling eval` and `predict` accept and `train --resume` refuses.
public enum CheckpointConversion {
    /// Reads `path` in `format`. Foreign formats need a model configuration: `config` if given, otherwise the one
    /// the file records when Starling wrote it (`recordedConfig`).
    public static func read(_ path: String, format: WeightFormat, config: ModelConfig?) throws -> (checkpoint: Checkpoint.Loaded, matchedByOrder: [(file: String, model: String)]?) {
        switch format {
        case .starling:
            return (try Checkpoint.load(from: path), nil)
        case .keras:
            guard let config = try config ?? KerasWeights.recordedConfig(in: path) else { throw missingConfig(path) }
            let imported = try KerasWeights.read(from: path, config: config)
            return (fresh(imported.model), imported.matchedByOrder)
        case .safetensors:
            let file = try SafeTensorsFile.read(from: path)
            guard let config = try config ?? PyTorchWeights.recordedConfig(in: file, path: path) else { throw missingConfig(path) }
            return (fresh(try PyTorchWeights.read(file, path: path, config: config)), nil)
        case .onnx:
            throw ConversionError(file: path, message: "ONNX is an export format: Starling writes ONNX graphs but reads weights from checkpoints, Keras or safetensors")
        }
    }

    /// The configuration a foreign file records (nil for files Starling did not write).
    public static func recordedConfig(_ path: String, format: WeightFormat) throws -> ModelConfig? {
        switch format {
        case .starling: return try Checkpoint.load(from: path).model.config
        case .keras: return try KerasWeights.recordedConfig(in: path)
        case .safetensors: return try PyTorchWeights.recordedConfig(in: SafeTensorsFile.read(from: path), path: path)
        case .onnx: return nil
        }
    }

    /// Writes `checkpoint` to `path` in `format` (atomically; nothing is left behind on failure). Foreign formats
    /// hold the weights only. `half` stores the weights as float16.
    public static func write(_ checkpoint: Checkpoint.Loaded, to path: String, format: WeightFormat, half: Bool) throws {
        switch format {
        case .starling:
            let state = checkpoint.optimizerState.keys.sorted().map { name -> (name: String, storage: FloatStorage) in
                let values = checkpoint.optimizerState[name] ?? []
                let storage = FloatStorage(count: values.count)
                for (i, x) in values.enumerated() { storage.pointer[i] = x }
                return (name, storage)
            }
            try Checkpoint.save(to: path, model: checkpoint.model, optimizer: checkpoint.optimizer,
                                optimizerState: checkpoint.optimizer == nil ? [] : state, state: checkpoint.state,
                                weightType: half ? .float16 : .float32)
        case .keras:
            try KerasWeights.write(checkpoint.model, to: path, half: half)
        case .safetensors:
            try PyTorchWeights.write(checkpoint.model, to: path, half: half)
        case .onnx:
            if half { throw ConversionError(file: path, message: "--half is for checkpoints, Keras and safetensors; ONNX graphs are written in float32") }
            try ONNXExport.write(checkpoint.model, to: path)
        }
    }

    /// The checkpoint without its optimizer (`--inference-only`): what evaluation and prediction need.
    public static func inferenceOnly(_ checkpoint: Checkpoint.Loaded) -> Checkpoint.Loaded {
        Checkpoint.Loaded(model: checkpoint.model, state: checkpoint.state, optimizer: nil, optimizerState: [:])
    }

    /// A detector checkpoint with re-sampled classes: a new model, so a fresh start (step 0, no optimizer state,
    /// whose moments belonged to the old heads).
    public static func resamplingClasses(_ checkpoint: Checkpoint.Loaded, _ selection: ClassSelection, file: String) throws -> Checkpoint.Loaded {
        fresh(try ClassResampling.resample(checkpoint.model, selection, file: file))
    }

    static func fresh(_ model: any Model) -> Checkpoint.Loaded {
        Checkpoint.Loaded(model: model, state: Checkpoint.TrainingState(), optimizer: nil, optimizerState: [:])
    }

    static func missingConfig(_ path: String) -> ConversionError {
        ConversionError(file: path, message: "the file records no Starling model configuration: give --model FAMILY (and --config-from CKPT for non-default options or classes)")
    }
}
