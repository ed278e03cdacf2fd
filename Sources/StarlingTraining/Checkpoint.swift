import StarlingCore
import StarlingIO
import StarlingNN

/// Starling's checkpoint: one HDF5 file, written atomically (temporary file, flush, fsync, rename), so a crash
/// mid-write leaves the previous checkpoint intact, and sealed (`HDF5Seal`: the length and CRC-32 of the HDF5 part in
/// a 512-byte user block), so a file damaged afterwards is refused before HDF5 parses it.
///
/// Layout (format version 1):
/// - root attributes: `format` = "starling-checkpoint", `format_version`, `model_config` (JSON of `ModelConfig`),
///   `step`, `epoch`, `seed`, `world_size` (with `world_kind` = "replicas" when they were `--replicas` threads, not
///   ranks), `data_cursor`, `optimizer` (JSON of `OptimizerConfig`),
///   `best_validation_loss`, `callbacks` (JSON of `CallbackState`: early stopping's count, the plateau, the base
///   learning rate and, since schedules, the learning-rate schedule; a file without the schedule resumes as constant),
///   `run_config` (the resolved run configuration as YAML, in checkpoints written by `starling train`);
/// - `/model_weights/<layer>/<weight>`: float32 datasets (float16 after `starling convert --half`) in the
///   parameter's shape (Keras-like names such as `encoder/kernel`, and the buffers such as `bn1/moving_mean`), with
///   `layer_names` on `/model_weights` and `weight_names` on each layer group;
/// - `/optimizer_state/<name>`: float32 [P] flat buffers in the parameter layout (Adam's `m`, `v`); absent, with
///   the `optimizer` attribute, in inference-only checkpoints (`starling convert --inference-only`, imports).
public enum Checkpoint {
    public static let format = "starling-checkpoint"
    public static let formatVersion = 1

    /// Progress that a resumed run continues from.
    public struct TrainingState: Codable, Equatable, Sendable {
        public var step = 0
        public var epoch = 0
        public var seed: UInt64 = 0
        public var worldSize = 1
        /// The world was `worldSize` replicas on threads of one process (`train --replicas`), not MPI ranks.
        public var worldIsReplicas = false
        /// Samples of the current epoch already consumed (global over ranks).
        public var dataCursor = 0
        public var bestValidationLoss = Double.infinity
        /// Callbacks' memory: epochs since the monitored loss last improved (early stopping), the plateau schedule
        /// and the base learning rate it set, so a resumed run continues them.
        public var epochsWithoutImprovement = 0
        public var plateau: ReduceOnPlateau?
        public var learningRate: Float?
        /// The run's learning-rate schedule in steps, fixed when it started, so a resumed run continues it exactly.
        public var learningRateSchedule = ResolvedSchedule.constant
        /// The run's resolved configuration (YAML, as `train --config` reads it), when the run was started from the
        /// command line; a resumed run records its own.
        public var runConfiguration: String?
        public init() {}
    }

    public struct OptimizerConfig: Codable, Equatable, Sendable {
        public var name: String
        public var learningRate: Float
        public var stepCount: Int
        public init(name: String, learningRate: Float, stepCount: Int) {
            self.name = name
            self.learningRate = learningRate
            self.stepCount = stepCount
        }
    }

    public static func save(to path: String, model: any Model, optimizer: (any Optimizer)?, state: TrainingState) throws {
        let config = optimizer.map { OptimizerConfig(name: optimizerName($0), learningRate: $0.learningRate, stepCount: $0.stepCount) }
        try save(to: path, model: model, optimizer: config, optimizerState: optimizer?.state ?? [], state: state)
    }

    /// Writes a checkpoint from an optimizer's recorded configuration and state buffers (what `load` returns), so
    /// converters can rewrite a checkpoint without an optimizer object. `weightType` `.float16` stores the weights
    /// and buffers in half precision (rounded to nearest, ties to even; `load` widens them back to float32); the
    /// optimizer state always stays float32.
    public static func save(to path: String, model: any Model, optimizer: OptimizerConfig?,
                            optimizerState: [(name: String, storage: FloatStorage)], state: TrainingState,
                            weightType: HDF5ElementType = .float32) throws {
        try save(to: path, model: model, optimizer: optimizer, optimizerBuffers: optimizerState.map { ($0.name, UnsafeBufferPointer($0.storage.buffer)) },
                 state: state, weightType: weightType)
    }

    /// Writes a checkpoint whose optimizer state is in arrays of every parameter's values (a sharded run's, gathered
    /// to the writing rank; see `Trainer`).
    public static func save(to path: String, model: any Model, optimizer: OptimizerConfig?,
                            optimizerValues: [(name: String, values: [Float])], state: TrainingState) throws {
        let arrays = optimizerValues
        // The pointers are needed for the whole write: each array is pinned in turn by nesting the closures.
        func pinned(_ k: Int, _ buffers: [(name: String, buffer: UnsafeBufferPointer<Float>)]) throws {
            guard k < arrays.count else {
                return try save(to: path, model: model, optimizer: optimizer, optimizerBuffers: buffers, state: state, weightType: .float32)
            }
            try arrays[k].values.withUnsafeBufferPointer { try pinned(k + 1, buffers + [(arrays[k].name, $0)]) }
        }
        try pinned(0, [])
    }

    private static func save(to path: String, model: any Model, optimizer: OptimizerConfig?,
                             optimizerBuffers optimizerState: [(name: String, buffer: UnsafeBufferPointer<Float>)], state: TrainingState,
                             weightType: HDF5ElementType) throws {
        precondition(weightType == .float32 || weightType == .float16, "checkpoint weights are float32 or float16")
        try writeHDF5Atomically(to: path, sealed: true) { file in
            let root = file.root
            try root.setAttribute("format", format)
            try root.setAttribute("format_version", formatVersion)
            try root.setJSONAttribute("model_config", model.config)
            try root.setAttribute("step", state.step)
            try root.setAttribute("epoch", state.epoch)
            try root.setAttribute("seed", String(state.seed))
            try root.setAttribute("world_size", state.worldSize)
            if state.worldIsReplicas { try root.setAttribute("world_kind", "replicas") }
            try root.setAttribute("data_cursor", state.dataCursor)
            try root.setAttribute("best_validation_loss", state.bestValidationLoss)
            if let runConfiguration = state.runConfiguration { try root.setAttribute("run_config", runConfiguration) }
            try root.setJSONAttribute("callbacks", CallbackState(epochsWithoutImprovement: state.epochsWithoutImprovement, plateau: state.plateau,
                                                                 learningRate: state.learningRate, schedule: state.learningRateSchedule))
            let weights = try root.createGroup("model_weights")
            var layers: [String] = []
            var weightNames: [String: [String]] = [:]
            for p in model.parameters.parameters + (model.buffers?.parameters ?? []) {
                let dataset = try weights.createDataset(p.name, type: weightType, shape: p.shape)
                if weightType == .float16 {
                    try HalfPrecision.write(UnsafeBufferPointer(p.value.storage.buffer), to: dataset, name: p.name, file: path)
                } else {
                    try dataset.write(UnsafeBufferPointer(p.value.storage.buffer))
                }
                let layer = layerName(p.name)
                if weightNames[layer] == nil { layers.append(layer) }
                weightNames[layer, default: []].append(p.name)
            }
            try weights.setAttribute("layer_names", layers)
            for layer in layers { try weights.group(layer).setAttribute("weight_names", weightNames[layer] ?? []) }
            if let optimizer {
                try root.setJSONAttribute("optimizer", optimizer)
                let group = try root.createGroup("optimizer_state")
                for (name, buffer) in optimizerState {
                    try group.createDataset(name, type: .float32, shape: [buffer.count]).write(buffer)
                }
            }
        }
    }

    /// The layer part of a parameter name: "encoder/kernel" -> "encoder".
    package static func layerName(_ parameter: String) -> String {
        guard let slash = parameter.lastIndex(of: "/") else { return parameter }
        return String(parameter[..<slash])
    }

    static func optimizerName(_ optimizer: any Optimizer) -> String {
        switch optimizer {
        case let adam as Adam: return adam.decoupled ? "adamw" : "adam"
        case is SGD: return "sgd"
        default: return String(describing: type(of: optimizer))
        }
    }

    /// The `callbacks` attribute. Fields added later are optional, so older files still decode.
    struct CallbackState: Codable {
        var epochsWithoutImprovement: Int
        var plateau: ReduceOnPlateau?
        var learningRate: Float?
        /// Absent in checkpoints written before schedules existed: those runs continue at a constant rate.
        var schedule: ResolvedSchedule?
    }

    /// A checkpoint read back: the rebuilt model with its weights, the training state and the optimizer's.
    public struct Loaded {
        public let model: any Model
        public let state: TrainingState
        public let optimizer: OptimizerConfig?
        public let optimizerState: [String: [Float]]
        /// The file it was read from, for refusals.
        public internal(set) var path = ""

        package init(model: any Model, state: TrainingState, optimizer: OptimizerConfig?, optimizerState: [String: [Float]]) {
            self.model = model
            self.state = state
            self.optimizer = optimizer
            self.optimizerState = optimizerState
        }
    }

    /// Reads a checkpoint, refusing other files, other format versions and weights that do not fit the model.
    public static func load(from path: String) throws -> Loaded {
        let file = try HDF5File.open(path)
        defer { file.close() }
        let root = file.root
        guard root.hasAttribute("format"), try root.stringAttribute("format") == format else {
            throw CheckpointError(file: path, message: "not a Starling checkpoint (no format attribute '\(format)')")
        }
        let version = try root.intAttribute("format_version")
        guard version == formatVersion else {
            throw CheckpointError(file: path, message: "checkpoint format version \(version); this build reads version \(formatVersion)")
        }
        let config = try root.jsonAttribute("model_config", as: ModelConfig.self)
        // The registry's refusal (an unknown family, an impossible option) does not know which file it came from.
        let model: any Model
        do { model = try ModelRegistry.build(config, seed: 0) } catch { throw CheckpointError(file: path, message: "model_config: \(error)") }
        guard root.contains("model_weights") else { throw CheckpointError(file: path, message: "no /model_weights group") }
        let weights = try root.group("model_weights")
        for p in model.parameters.parameters + (model.buffers?.parameters ?? []) {
            guard weights.contains(p.name) else {
                throw CheckpointError(file: path, message: "model \(config.family) needs weight '\(p.name)', which the file lacks")
            }
            let dataset = try weights.dataset(p.name)
            guard dataset.shape == p.shape else {
                throw CheckpointError(file: path, message: "weight '\(p.name)' has shape \(dataset.shape); model \(config.family) needs \(p.shape)")
            }
            try dataset.read(into: p.value.storage.buffer)
            for i in 0..<p.count where !p.value.data[i].isFinite {
                throw CheckpointError(file: path, message: "weight '\(p.name)' holds a non-finite value at index \(i)")
            }
        }
        var state = TrainingState()
        state.step = try root.intAttribute("step")
        state.epoch = try root.intAttribute("epoch")
        state.seed = UInt64(try root.stringAttribute("seed")) ?? 0
        state.worldSize = try root.intAttribute("world_size")
        if root.hasAttribute("world_kind") { state.worldIsReplicas = try root.stringAttribute("world_kind") == "replicas" }
        state.dataCursor = try root.intAttribute("data_cursor")
        state.bestValidationLoss = try root.doubleAttribute("best_validation_loss")
        if root.hasAttribute("run_config") { state.runConfiguration = try root.stringAttribute("run_config") }
        if root.hasAttribute("callbacks") {
            let callbacks = try root.jsonAttribute("callbacks", as: CallbackState.self)
            (state.epochsWithoutImprovement, state.plateau, state.learningRate) = (callbacks.epochsWithoutImprovement, callbacks.plateau, callbacks.learningRate)
            if let schedule = callbacks.schedule {
                if let problem = schedule.problem { throw CheckpointError(file: path, message: "unusable learning-rate schedule in the callbacks attribute: \(problem)") }
                state.learningRateSchedule = schedule
            }
        }
        var optimizer: OptimizerConfig?
        var optimizerState: [String: [Float]] = [:]
        if root.hasAttribute("optimizer") {
            optimizer = try root.jsonAttribute("optimizer", as: OptimizerConfig.self)
            if root.contains("optimizer_state") {
                let group = try root.group("optimizer_state")
                for name in try group.childNames() {
                    let values = try group.dataset(name).read(as: Float.self)
                    guard values.count == model.parameters.count else {
                        throw CheckpointError(file: path, message: "optimizer state '\(name)' has \(values.count) values for \(model.parameters.count) parameters")
                    }
                    optimizerState[name] = values
                }
            }
        }
        if let problem = counterProblems(step: state.step, epoch: state.epoch, worldSize: state.worldSize, dataCursor: state.dataCursor,
                                         optimizerSteps: optimizer?.stepCount, bestValidationLoss: state.bestValidationLoss).first {
            throw CheckpointError(file: path, message: problem)
        }
        var loaded = Loaded(model: model, state: state, optimizer: optimizer, optimizerState: optimizerState)
        loaded.path = path
        return loaded
    }

    /// What makes a checkpoint's training counters impossible (a file edited by hand, or corrupted where no checksum
    /// looks): a run resumed from them would count from a negative step or divide by zero ranks.
    public static func counterProblems(step: Int, epoch: Int, worldSize: Int, dataCursor: Int, optimizerSteps: Int?,
                                       bestValidationLoss: Double) -> [String] {
        var problems: [String] = []
        if step < 0 { problems.append("impossible step \(step) (negative)") }
        if epoch < 0 { problems.append("impossible epoch \(epoch) (negative)") }
        if step >= 0 && epoch > step { problems.append("impossible epoch \(epoch) after step \(step) (every epoch takes at least one step)") }
        if worldSize < 1 { problems.append("impossible world size \(worldSize) (at least 1 rank)") }
        if dataCursor < 0 { problems.append("impossible data cursor \(dataCursor) (negative)") }
        if let optimizerSteps, optimizerSteps < 0 { problems.append("impossible optimizer step count \(optimizerSteps) (negative)") }
        if bestValidationLoss.isNaN || bestValidationLoss == -.infinity { problems.append("impossible best validation loss \(bestValidationLoss)") }
        return problems
    }
}

public struct CheckpointError: Error, CustomStringConvertible {
    public let file: String
    public let message: String
    package init(file: String, message: String) {
        self.file = file
        self.message = message
    }
    public var description: String { "\(file): \(message)" }
}
