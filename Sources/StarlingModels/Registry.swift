import StarlingCore

/// Model families by the name users type (`--model NAME`) and checkpoints record.
public enum ModelRegistry {
    public static let families = ["fc-ae", "conv-ae", "ssd7"]

    public static func defaultConfig(family: String) throws -> ModelConfig {
        switch family {
        case FCAutoencoder.family: return FCAutoencoder.defaultConfig()
        case ConvAutoencoder.family: return ConvAutoencoder.defaultConfig()
        case SSD7.family: return SSD7.defaultConfig()
        default: throw ModelError.unknownFamily(family, known: families)
        }
    }

    /// Builds a model with freshly initialised weights drawn from `seed`.
    public static func build(_ config: ModelConfig, seed: UInt64) throws -> any Model {
        var rng = RandomGenerator(seed: seed)
        switch config.family {
        case FCAutoencoder.family: return try FCAutoencoder(config: config, rng: &rng)
        case ConvAutoencoder.family: return try ConvAutoencoder(config: config, rng: &rng)
        case SSD7.family: return try SSD7(config: config, rng: &rng)
        default: throw ModelError.unknownFamily(config.family, known: families)
        }
    }

    /// Families trained on detection datasets (`starling data detection`).
    public static func isDetector(_ family: String) -> Bool { family == SSD7.family }

    /// A detector's configuration for a dataset: its image size and class list.
    public static func detectorConfig(family: String, for dataset: DetectionDataset) throws -> ModelConfig {
        switch family {
        case SSD7.family:
            guard dataset.imageHeight >= 64, dataset.imageWidth >= 64 else {
                throw DataError(file: dataset.path, message: "images of \(dataset.imageHeight)x\(dataset.imageWidth) are too small for SSD7 (at least 64x64)")
            }
            return SSD7.defaultConfig(height: dataset.imageHeight, width: dataset.imageWidth, classNames: dataset.classNames)
        default: throw ModelError.unknownFamily(family, known: families.filter(isDetector))
        }
    }
}
