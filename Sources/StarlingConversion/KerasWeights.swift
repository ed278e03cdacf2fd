import StarlingCore
import StarlingIO
import StarlingNN
import StarlingAutoencoders
import StarlingTraining

/// Keras weight files: the HDF5 layout of `model.save_weights("x.h5")` in Keras 2 and tf.keras
/// (`save_weights_to_hdf5_group`), which `model.load_weights` reads by layer order or, with `by_name=True`, by
/// layer name.
///
/// Layout written:
/// - root attributes `layer_names` (fixed-length strings, the layers with weights in model order), `backend` =
///   "tensorflow", `keras_version` = "2.2.4" (the last multi-backend Keras, which ssd_keras and the autoencoder
///   tutorial ran on), and `starling_model_config` (our model configuration as JSON; Keras ignores it, and
///   `starling convert --from keras` reads it back so a round trip needs no `--model`);
/// - one group per layer with attribute `weight_names` ("conv1/kernel:0", ...), each weight a dataset at
///   `<layer>/<weight name>`, which Keras's nesting turns into `conv1/conv1/kernel:0`.
///
/// Layouts: Dense kernels [in, out] and LSTM kernels [F, 4H], recurrent kernels [H, 4H] and biases [4H] (gates
/// i, f, c, o) are Keras's already; Conv2D kernels go from our [out, in, kh, kw] to [kh, kw, in, out] and
/// Conv2DTranspose kernels from our [in, out, kh, kw] to [kh, kw, out, in] (the same axis order (2, 3, 1, 0)
/// for both); batch norm keeps gamma, beta, moving_mean, moving_variance. Dense layers that read or write a
/// flattened feature map (conv-vae's `encoder_hidden` and `decoder_hidden`) have their rows, or columns and
/// bias, reordered from our channel-major (C, H, W) flattening to Keras's channels-last (H, W, C).
///
/// Layer names: SSD7's are ssd_keras's (`conv1`..`conv7`, `bn1`..`bn7`, `classes4`..`classes7`, `boxes4`..
/// `boxes7`), so `load_weights(..., by_name=True)` works on keras_ssd7.py's model. The autoencoder tutorial leaves
/// its names to Keras, whose defaults depend on the version and on how many layers the session made before
/// (`dense_1` in Keras 2, `dense` in tf.keras); so the autoencoders keep our names (fc-ae `encoder`, `decoder`;
/// deep-ae `encoder_1`..`decoder_3`; conv-ae and denoising-ae `conv2d_1`..; seq2seq-ae `encoder_lstm`,
/// `decoder_lstm`, `output_dense`; vae `encoder_hidden`, `z_mean`, `z_log_var`, `decoder_hidden`,
/// `decoder_output`; conv-vae `conv2d_1`, `conv2d_2`, `encoder_hidden`, `z_mean`, `z_log_var`, `decoder_hidden`,
/// `conv2d_transpose_1`..). Their order is the tutorial models' layer order, so Keras's default load by order
/// takes them as they are. Reading, a file whose layer names are all different from ours (a tutorial model saved
/// by Keras) is matched by order in the same way.
public enum KerasWeights {
    public static let backend = "tensorflow"
    public static let kerasVersion = "2.2.4"
    /// The root attribute holding our model configuration.
    public static let configAttribute = "starling_model_config"

    /// How Keras lays out one of the model's weights.
    static func layout(of weight: WeightGroup.Weight, in model: any Model) -> ForeignLayout {
        let p = weight.parameter
        if let flattened = (model as? FlattensFeatureMaps)?.flattenedFeatureMaps[Checkpoint.layerName(p.name)] {
            let (c, h, w) = (flattened.map[0], flattened.map[1], flattened.map[2])
            switch (flattened.side, weight.shortName) {
            case (.input, "kernel"): return ForeignLayout(view: [c, h, w, p.shape[1]], axes: [1, 2, 0, 3], shape: p.shape)
            case (.output, "kernel"): return ForeignLayout(view: [p.shape[0], c, h, w], axes: [0, 2, 3, 1], shape: p.shape)
            case (.output, "bias"): return ForeignLayout(view: [c, h, w], axes: [1, 2, 0], shape: p.shape)
            default: break
            }
        }
        if p.shape.count == 4 {
            return ForeignLayout(view: p.shape, axes: [2, 3, 1, 0], shape: [p.shape[2], p.shape[3], p.shape[1], p.shape[0]])
        }
        return .identical(p.shape)
    }

    // MARK: - Writing

    /// Writes the model's weights as a Keras weights file (atomically); `half` stores them as float16.
    public static func write(_ model: any Model, to path: String, half: Bool = false) throws {
        let groups = WeightGroup.of(model)
        try writeHDF5Atomically(to: path) { file in
            let root = file.root
            try root.setAttribute("layer_names", groups.map(\.layer))
            try root.setAttribute("backend", backend)
            try root.setAttribute("keras_version", kerasVersion)
            try root.setJSONAttribute(configAttribute, model.config)
            for group in groups {
                let g = try root.createGroup(group.layer)
                let names = group.weights.map { "\(group.layer)/\($0.shortName):0" }
                try g.setAttribute("weight_names", names)
                for (weight, name) in zip(group.weights, names) {
                    let layout = layout(of: weight, in: model)
                    let values = layout.export(weight.parameter.value.toArray())
                    let dataset = try g.createDataset(name, type: half ? .float16 : .float32, shape: layout.shape)
                    if half {
                        try values.withUnsafeBufferPointer { try HalfPrecision.write($0, to: dataset, name: weight.parameter.name, file: path) }
                    } else {
                        try dataset.write(values)
                    }
                }
            }
        }
    }

    // MARK: - Reading

    /// A Keras file read into a model.
    public struct Imported {
        public let model: any Model
        /// When the file's layer names differ from ours: (file layer, our layer) pairs, matched by order.
        public let matchedByOrder: [(file: String, model: String)]?
    }

    /// The model configuration a file written by Starling records, if any.
    public static func recordedConfig(in path: String) throws -> ModelConfig? {
        let file = try HDF5File.open(path)
        defer { file.close() }
        guard file.root.hasAttribute(configAttribute) else { return nil }
        return try file.root.jsonAttribute(configAttribute, as: ModelConfig.self)
    }

    /// Builds a model of `config` and fills it from the Keras weights file at `path` (a `save_weights` file, or a
    /// whole-model `save` file, whose weights are under `/model_weights`). Layers match by name, or by order when
    /// none of the file's names are ours; every layer, weight and shape must correspond, and values be finite.
    public static func read(from path: String, config: ModelConfig) throws -> Imported {
        func fail(_ message: String) -> ConversionError { ConversionError(file: path, message: message) }
        let file = try HDF5File.open(path)
        defer { file.close() }
        if file.root.hasAttribute("format"), (try? file.root.stringAttribute("format")) == Checkpoint.format {
            throw fail("this is a Starling checkpoint, not a Keras weights file (convert it with --from starling)")
        }
        func listsLayers(_ group: HDF5Group) -> Bool { group.hasAttribute("layer_names") || group.hasAttribute("layer_names0") }
        var top = file.root
        if !listsLayers(top) {
            guard file.root.contains("model_weights"), case let weights = try file.root.group("model_weights"), listsLayers(weights) else {
                throw fail("not a Keras weights file (no layer_names attribute at the root or on /model_weights)")
            }
            top = weights
        }
        // The file's layers that hold weights, in its order, with their weight names.
        var fileLayers: [(name: String, weights: [String])] = []
        for name in try stringList(top, "layer_names") ?? [] {
            guard top.contains(name) else { throw fail("layer_names lists '\(name)', which has no group") }
            // Keras stores an empty list of weight names as an empty float array: no weights.
            let weights = try? stringList(try top.group(name), "weight_names")
            if let weights, !weights.isEmpty { fileLayers.append((name, weights)) }
        }
        let model = try ModelRegistry.build(config, seed: 0)
        let groups = WeightGroup.of(model)
        let family = config.family
        let fileNames = Set(fileLayers.map(\.name))
        let pairs: [(file: (name: String, weights: [String]), group: WeightGroup)]
        var byOrder: [(file: String, model: String)]?
        if groups.allSatisfy({ fileNames.contains($0.layer) }) {
            let ours = Set(groups.map(\.layer))
            if let extra = fileLayers.first(where: { !ours.contains($0.name) }) {
                throw fail("layer '\(extra.name)' (\(extra.weights.count) weights) has no counterpart in model \(family), whose layers are \(groups.map(\.layer).joined(separator: ", "))")
            }
            let byName = Dictionary(fileLayers.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            pairs = try groups.map { group in
                guard let layer = byName[group.layer] else { throw fail("layer '\(group.layer)' holds no weights, which model \(family) needs") }
                return (layer, group)
            }
        } else if groups.allSatisfy({ !fileNames.contains($0.layer) }) {
            guard fileLayers.count == groups.count else {
                throw fail("the file's \(fileLayers.count) layers with weights (\(fileLayers.map(\.name).joined(separator: ", "))) neither carry model \(family)'s names nor match its \(groups.count) layers by order")
            }
            pairs = Array(zip(fileLayers, groups))
            byOrder = pairs.map { ($0.file.name, $0.group.layer) }
        } else {
            let missing = groups.first { !fileNames.contains($0.layer) }?.layer ?? "?"
            throw fail("no layer '\(missing)', which model \(family) needs (the file's layers with weights: \(fileLayers.map(\.name).joined(separator: ", ")))")
        }
        for (fileLayer, group) in pairs {
            let g = try top.group(fileLayer.name)
            var byShort: [String: String] = [:]
            for name in fileLayer.weights { byShort[kerasShortName(name)] = name }
            let described = fileLayer.name == group.layer ? "layer '\(group.layer)'" : "layer '\(fileLayer.name)' (model layer '\(group.layer)')"
            if let extra = fileLayer.weights.first(where: { group[kerasShortName($0)] == nil }) {
                throw fail("\(described) holds weight '\(extra)', which model \(family)'s layer lacks (it has \(group.weights.map(\.shortName).joined(separator: ", ")))")
            }
            for weight in group.weights {
                guard let name = byShort[weight.shortName] else {
                    throw fail("\(described) lacks weight '\(weight.shortName)', which model \(family) needs")
                }
                let layout = layout(of: weight, in: model)
                guard g.contains(name) else { throw fail("\(described) lists weight '\(name)' but holds no such dataset") }
                let dataset = try g.dataset(name)
                guard dataset.shape == layout.shape else {
                    throw fail("\(described) weight '\(weight.shortName)' has shape \(dataset.shape); model \(family) needs \(layout.shape) (Keras layout)")
                }
                let values = try dataset.read(as: Float.self)
                if let bad = values.firstIndex(where: { !$0.isFinite }) {
                    throw fail("\(described) weight '\(weight.shortName)' holds a non-finite value at index \(bad)")
                }
                weight.parameter.assign(layout.import(values))
            }
        }
        return Imported(model: model, matchedByOrder: byOrder)
    }

    /// "conv1/kernel:0", "lstm/lstm_cell/kernel:0" -> "kernel": the last path component without TensorFlow's
    /// output index.
    static func kerasShortName(_ name: String) -> String {
        var short = WeightGroup.shortName(name)
        if let colon = short.lastIndex(of: ":"), short[short.index(after: colon)...].allSatisfy(\.isNumber) {
            short = String(short[..<colon])
        }
        return short
    }

    /// A string-list attribute as Keras stores it: whole, or split into `name0`, `name1`, ... when it would pass
    /// HDF5's 64 KiB object-header limit. Nil when absent.
    static func stringList(_ object: HDF5Group, _ name: String) throws -> [String]? {
        if object.hasAttribute(name) { return try object.stringArrayAttribute(name) }
        var values: [String] = []
        var chunk = 0
        while object.hasAttribute("\(name)\(chunk)") {
            values += try object.stringArrayAttribute("\(name)\(chunk)")
            chunk += 1
        }
        return chunk > 0 ? values : nil
    }
}

/// Models with dense layers that read or write a flattened feature map: by layer, the map's [C, H, W] and on which
/// side of the layer it is. Keras flattens channels-last feature maps, we flatten channel-major ones.
protocol FlattensFeatureMaps {
    var flattenedFeatureMaps: [String: (map: [Int], side: FlattenSide)] { get }
}

enum FlattenSide { case input, output }

extension ConvVariationalAutoencoder: FlattensFeatureMaps {
    /// The encoder flattens conv2d_2's output (the same [filters_2, H / 4, W / 4] as the decoder's first map).
    var flattenedFeatureMaps: [String: (map: [Int], side: FlattenSide)] {
        ["encoder_hidden": (bottleneck, .input), "decoder_hidden": (bottleneck, .output)]
    }
}
