import StarlingCore

/// Model families by the name users type (`--model NAME`) and checkpoints record.
public enum ModelRegistry {
    public static let families = ["fc-ae", "sparse-ae", "deep-ae", "conv-ae", "denoising-ae", "seq2seq-ae", "vae", "conv-vae", "ssd7", "ssd300"]

    /// The sparse autoencoder of the Keras tutorial is the fully connected one with an L1 activity penalty of
    /// 1e-4 (the tutorial's `10e-5`) on the 32-unit code.
    public static let sparseFamily = "sparse-ae"

    public static func defaultConfig(family: String) throws -> ModelConfig {
        switch family {
        case FCAutoencoder.family: return FCAutoencoder.defaultConfig()
        case sparseFamily: return ModelConfig(family: sparseFamily, inputShape: [784], options: ["code_size": 32, "l1_activity": 1e-4])
        case DeepAutoencoder.family: return DeepAutoencoder.defaultConfig()
        case ConvAutoencoder.family: return ConvAutoencoder.defaultConfig()
        case SSD7.family: return SSD7.defaultConfig()
        case SSD300.family: return SSD300.defaultConfig()
        case DenoisingAutoencoder.family: return DenoisingAutoencoder.defaultConfig()
        case Seq2SeqAutoencoder.family: return Seq2SeqAutoencoder.defaultConfig()
        case VariationalAutoencoder.family: return VariationalAutoencoder.defaultConfig()
        case ConvVariationalAutoencoder.family: return ConvVariationalAutoencoder.defaultConfig()
        default: throw ModelError.unknownFamily(family, known: families)
        }
    }

    /// Builds a model with freshly initialised weights drawn from `seed`.
    public static func build(_ config: ModelConfig, seed: UInt64) throws -> any Model {
        var rng = RandomGenerator(seed: seed)
        switch config.family {
        case FCAutoencoder.family, sparseFamily: return try FCAutoencoder(config: config, rng: &rng)
        case DeepAutoencoder.family: return try DeepAutoencoder(config: config, rng: &rng)
        case ConvAutoencoder.family: return try ConvAutoencoder(config: config, rng: &rng)
        case SSD7.family: return try SSD7(config: config, rng: &rng)
        case SSD300.family: return try SSD300(config: config, rng: &rng)
        case DenoisingAutoencoder.family: return try DenoisingAutoencoder(config: config, rng: &rng)
        case Seq2SeqAutoencoder.family: return try Seq2SeqAutoencoder(config: config, rng: &rng)
        case VariationalAutoencoder.family: return try VariationalAutoencoder(config: config, rng: &rng)
        case ConvVariationalAutoencoder.family: return try ConvVariationalAutoencoder(config: config, rng: &rng)
        default: throw ModelError.unknownFamily(config.family, known: families)
        }
    }

    /// The autoencoder families (trained and evaluated on image datasets such as MNIST).
    public static var autoencoders: [String] { families.filter { !isDetector($0) } }

    /// Families trained on detection datasets (`starling data detection`).
    public static func isDetector(_ family: String) -> Bool { family == SSD7.family || family == SSD300.family }

    /// A detector's configuration for a dataset: its image size and class list.
    public static func detectorConfig(family: String, for dataset: DetectionDataset) throws -> ModelConfig {
        switch family {
        case SSD7.family:
            guard dataset.imageHeight >= 64, dataset.imageWidth >= 64 else {
                throw DataError(file: dataset.path, message: "images of \(dataset.imageHeight)x\(dataset.imageWidth) are too small for SSD7 (at least 64x64)")
            }
            return SSD7.defaultConfig(height: dataset.imageHeight, width: dataset.imageWidth, classNames: dataset.classNames)
        case SSD300.family:
            guard SSD300.featureMapSizes(height: dataset.imageHeight, width: dataset.imageWidth).allSatisfy({ $0.allSatisfy { $0 >= 1 } }) else {
                throw DataError(file: dataset.path, message: "images of \(dataset.imageHeight)x\(dataset.imageWidth) are too small for SSD300 (at least 260x260)")
            }
            return SSD300.defaultConfig(height: dataset.imageHeight, width: dataset.imageWidth, classNames: dataset.classNames)
        default: throw ModelError.unknownFamily(family, known: families.filter(isDetector))
        }
    }
}
