import StarlingCore
import StarlingNN
import StarlingDetection
import StarlingAutoencoders
import StarlingSegmentation

/// A model family as users name it (`--model NAME`) and checkpoints record it: everything the rest of Starling needs
/// to know about a family without naming its type. Each family is one entry of `ModelRegistry.families`; nothing else
/// switches over family names.
///
/// - `configure` gives the family's configuration: with a dataset, sized to its images and classes (a detector's
///   anchors follow the image size); without one, the configuration of the paper or tutorial the family follows.
///   It throws a one-line error naming the file when the dataset does not fit the family.
/// - `build` makes the model with fresh weights from a configuration (a checkpoint's, or `configure`'s).
/// - `tunables` are the configuration options a user may set from the command line (`--width-multiplier` sets
///   "width"), each with the range it accepts.
public struct ModelFamily: Sendable {
    public typealias Configure = @Sendable (_ dataset: DatasetDescription?) throws -> ModelConfig
    public typealias Build = @Sendable (_ config: ModelConfig, _ rng: inout RandomGenerator) throws -> any Model

    public let name: String
    public let dataKind: DataKind
    public let tunables: [Tunable]
    private let configure: Configure
    private let construct: Build

    /// A configuration option a user may set (`ModelConfig.options[option]`).
    public struct Tunable: Sendable {
        public let option: String
        public let range: ClosedRange<Double>
        public init(_ option: String, range: ClosedRange<Double>) {
            self.option = option
            self.range = range
        }
    }

    public init(_ name: String, trainsOn dataKind: DataKind, tunables: [Tunable] = [], configure: @escaping Configure,
                build: @escaping Build) {
        self.name = name
        self.dataKind = dataKind
        self.tunables = tunables
        self.configure = configure
        self.construct = build
    }

    /// The family's configuration for `dataset` (nil: its reference configuration).
    public func configuration(for dataset: DatasetDescription? = nil) throws -> ModelConfig {
        var config = try configure(dataset)
        config.family = name
        return config
    }

    /// A model of this family with fresh weights drawn from `seed`.
    public func build(_ config: ModelConfig, seed: UInt64) throws -> any Model {
        var rng = RandomGenerator(seed: seed)
        return try construct(config, &rng)
    }

    /// `config` with the user's value of a tunable option, refused (naming the option and its range) where the
    /// family has no such option or the value lies outside its range.
    public func setting(_ option: String, to value: Double, in config: ModelConfig, flag: String) throws -> ModelConfig {
        guard let tunable = tunables.first(where: { $0.option == option }) else {
            throw ModelError.unsupportedOption(family: name, flag: flag)
        }
        guard tunable.range.contains(value) else {
            throw ModelError.optionOutOfRange(flag: flag, value: value, range: tunable.range)
        }
        var config = config
        config.options[option] = value
        return config
    }
}

extension [ModelFamily.Tunable] {
    /// A letterboxing family's network input (`--network-size HxW`).
    static let networkSize: [ModelFamily.Tunable] = [.init("network_height", range: 32...4096), .init("network_width", range: 32...4096)]

    /// Fast R-CNN's options (`FastRCNN`): `--width-multiplier` and `--option NAME=VALUE`.
    static let fastRCNN: [ModelFamily.Tunable] = [
        .init("width", range: 0.001...1), .init("hidden", range: 1...65536), .init("rois_per_image", range: 1...4096),
        .init("foreground_fraction", range: 0...1), .init("test_proposals", range: 1...100_000),
    ]

    /// Mask R-CNN's options (`MaskRCNN`): Faster R-CNN's with the backbone's depth and the mask head's width.
    /// (Its pyramid has one size a level, so not Faster R-CNN's octaves of anchor sizes.)
    static let maskRCNN: [ModelFamily.Tunable] = fasterRCNN.filter { !["anchor_octaves", "anchor_scales_per_octave"].contains($0.option) }
        .map { $0.option == "width" ? .init("width", range: 0.001...4) : $0 }
        + [.init("depth", range: 0.001...4), .init("mask_width", range: 1...4096)]

    /// Faster R-CNN's options (`FasterRCNN`): `--width-multiplier` and `--option NAME=VALUE`.
    static let fasterRCNN: [ModelFamily.Tunable] = [
        .init("width", range: 0.001...1), .init("hidden", range: 1...65536), .init("rois_per_image", range: 1...4096),
        .init("foreground_fraction", range: 0...1), .init("anchor_size", range: 1...4096),
        .init("anchor_octaves", range: 1...8), .init("anchor_scales_per_octave", range: 1...4), .init("rpn_batch", range: 1...65536),
        .init("rpn_positive_fraction", range: 0...1), .init("rpn_nms", range: 0...1), .init("rpn_pre_nms_train", range: 1...100_000),
        .init("rpn_post_nms_train", range: 1...100_000), .init("rpn_pre_nms_test", range: 1...100_000), .init("rpn_post_nms_test", range: 1...100_000),
    ]

    /// U-Net's options (`UNet`): set with `--width-multiplier` and `--option NAME=VALUE`; class weights for up to 64
    /// classes.
    static let unet: [ModelFamily.Tunable] = [
        .init("width", range: 0.001...4), .init("levels", range: 2...7), .init("valid", range: 0...1), .init("sigmoid", range: 0...1),
        .init("border_weight", range: 0...1000), .init("border_sigma", range: 0.1...1000),
    ] + (0..<64).map { .init("class_weight_\($0)", range: 0...1e6) }
}

/// The model families by the name users type (`--model NAME`) and checkpoints record: one line a family.
public enum ModelRegistry {
    public static let families: [ModelFamily] = [
        ModelFamily("fc-ae", trainsOn: .images, configure: { _ in FCAutoencoder.defaultConfig() }, build: FCAutoencoder.init),
        // The Keras tutorial's sparse autoencoder is the fully connected one with an L1 activity penalty of 1e-4 (the
        // tutorial's `10e-5`) on the 32-unit code.
        ModelFamily("sparse-ae", trainsOn: .images, configure: { _ in
            ModelConfig(family: "sparse-ae", inputShape: [784], options: ["code_size": 32, "l1_activity": 1e-4])
        }, build: FCAutoencoder.init),
        ModelFamily("deep-ae", trainsOn: .images, configure: { _ in DeepAutoencoder.defaultConfig() }, build: DeepAutoencoder.init),
        ModelFamily("conv-ae", trainsOn: .images, configure: { _ in ConvAutoencoder.defaultConfig() }, build: ConvAutoencoder.init),
        ModelFamily("denoising-ae", trainsOn: .images, configure: { _ in DenoisingAutoencoder.defaultConfig() },
                    build: DenoisingAutoencoder.init),
        ModelFamily("seq2seq-ae", trainsOn: .images, configure: { _ in Seq2SeqAutoencoder.defaultConfig() },
                    build: Seq2SeqAutoencoder.init),
        ModelFamily("vae", trainsOn: .images, configure: { _ in VariationalAutoencoder.defaultConfig() },
                    build: VariationalAutoencoder.init),
        ModelFamily("conv-vae", trainsOn: .images, configure: { _ in ConvVariationalAutoencoder.defaultConfig() },
                    build: ConvVariationalAutoencoder.init),
        ModelFamily("ssd7", trainsOn: .detection, configure: SSD7.configuration(for:), build: SSD7.init),
        ModelFamily("ssd300", trainsOn: .detection, tunables: [.init("width", range: 0.001...1)],
                    configure: SSD300.configuration(for:), build: SSD300.init),
        ModelFamily("yolov3-tiny", trainsOn: .detection,
                    tunables: [.init("width", range: 0.001...1)] + .networkSize,
                    configure: YOLOv3Tiny.configuration(for:), build: YOLOv3Tiny.init),
        ModelFamily("yolov3", trainsOn: .detection, tunables: [.init("width", range: 0.001...1), .init("depth", range: 0.001...1)] + .networkSize,
                    configure: YOLOv3.configuration(for:), build: YOLOv3.init),
        ModelFamily("yolov2", trainsOn: .detection, tunables: [.init("width", range: 0.001...1), .init("passthrough", range: 0...1)] + .networkSize,
                    configure: YOLOv2.configuration(for:), build: YOLOv2.init),
        ModelFamily("yolov1", trainsOn: .detection, tunables: [.init("width", range: 0.001...1)] + .networkSize,
                    configure: YOLOv1.configuration(for:), build: YOLOv1.init),
        ModelFamily("rcnn", trainsOn: .detectionProposals,
                    tunables: [.init("width", range: 0.001...4), .init("hidden", range: 1...65536), .init("warp", range: 16...1024),
                               .init("rois_per_image", range: 1...4096), .init("test_proposals", range: 1...100_000)],
                    configure: RCNN.configuration(for:), build: RCNN.init),
        ModelFamily("fast-rcnn", trainsOn: .detectionProposals, tunables: .fastRCNN, configure: FastRCNN.configuration(for:), build: FastRCNN.init),
        ModelFamily("faster-rcnn", trainsOn: .detection, tunables: .fasterRCNN, configure: FasterRCNN.configuration(for:), build: FasterRCNN.init),
        ModelFamily("mask-rcnn", trainsOn: .instances, tunables: .maskRCNN, configure: MaskRCNN.configuration(for:), build: MaskRCNN.init),
        ModelFamily("unet", trainsOn: .segmentation, tunables: .unet, configure: UNet.configuration(for:), build: UNet.init),
    ]

    /// Every family's name, in registry order.
    public static var familyNames: [String] { families.map(\.name) }

    /// The family called `name`, or a one-line error listing the known ones.
    public static func family(named name: String) throws -> ModelFamily {
        guard let family = families.first(where: { $0.name == name }) else {
            throw ModelError.unknownFamily(name, known: familyNames)
        }
        return family
    }

    /// The names of the families that train on `kind` of data.
    public static func names(trainingOn kind: DataKind) -> [String] {
        families.filter { $0.dataKind == kind }.map(\.name)
    }

    /// The reference configuration of the family called `family`.
    public static func defaultConfig(family: String) throws -> ModelConfig {
        try self.family(named: family).configuration()
    }

    /// Builds a model with freshly initialised weights drawn from `seed`.
    public static func build(_ config: ModelConfig, seed: UInt64) throws -> any Model {
        try family(named: config.family).build(config, seed: seed)
    }
}
