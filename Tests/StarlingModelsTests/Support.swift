import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels

/// Paths and helpers shared by the model, trainer and command-line tests.
enum Fixture {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let mnistSample = repository.appendingPathComponent("Launch/data/mnist-sample").path
    /// The folder of the `starling` binary built beside the test bundle.
    static let binaryDirectory: String = {
        // swift test runs the .xctest bundle from the build folder; Swift Testing may report the bundle's inner binary.
        var url = URL(fileURLWithPath: CommandLine.arguments[0])
        while url.path != "/" {
            let candidate = url.deletingLastPathComponent().appendingPathComponent("starling")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return url.deletingLastPathComponent().path }
            url = url.deletingLastPathComponent()
        }
        return ""
    }()
    static var starling: String { binaryDirectory + "/starling" }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var converted: String?

    /// The committed MNIST sample converted to HDF5 once per test run.
    static func sampleHDF5() throws -> String {
        try lock.withLock {
            if let converted { return converted }
            let path = temporaryDirectory("sample") + "/mnist-sample.h5"
            try MNIST.convert(sourceDirectory: mnistSample, outputPath: path)
            converted = path
            return path
        }
    }

    static func temporaryDirectory(_ name: String) -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("starling-tests-\(getpid())-\(name)-\(UUID().uuidString.prefix(8))")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url.path
    }
}

/// Options that narrow each autoencoder family (same layout, faster tests in a debug build).
let narrowAutoencoderOptions: [String: [String: Double]] = [
    "fc-ae": ["code_size": 4], "sparse-ae": ["code_size": 4], "deep-ae": ["units_1": 16, "units_2": 8, "code_size": 4],
    "denoising-ae": ["filters": 4], "seq2seq-ae": ["code_size": 8, "decoder_units": 6], "vae": ["intermediate_dim": 8],
    "conv-vae": ["filters_1": 4, "filters_2": 6, "hidden": 5, "latent_dim": 3]]

/// U-Net at a size a debug build runs in a moment: valid padding (cropped skips), three levels, four channels at the
/// first; 44 x 44 images give a 4 x 4 output.
let smallUNetConfig = ModelConfig(family: UNet.family, inputShape: [3, 44, 44], options: ["width": 0.0625, "levels": 3, "valid": 1],
                                  classNames: ["background", "road", "car"])

/// fast-rcnn at 1/8 of VGG16's channels and 32 hidden units.
func smallFastRCNNConfig(height: Int, width: Int, classNames: [String]) -> ModelConfig {
    var config = FastRCNN.defaultConfig(height: height, width: width, classNames: classNames, widthMultiplier: 0.125)
    config.options["hidden"] = 32
    return config
}

/// Faster R-CNN at a size a debug build runs in a moment: 64 x 96 images (a 4 x 6 map), 4 ... 32 channels, 32 hidden units.
let smallFasterRCNNConfig: ModelConfig = {
    var config = FasterRCNN.defaultConfig(height: 64, width: 96, classNames: ["background", "car", "person"], widthMultiplier: 0.0625, anchorSize: 16)
    config.options["hidden"] = 32
    return config
}()

/// Mask R-CNN at a size a debug build runs in a moment: 64 x 96 images, 1/16 of the channels, 32 hidden units.
let smallMaskRCNNConfig: ModelConfig = {
    var config = ModelConfig(family: MaskRCNN.family, inputShape: [3, 64, 96], options: MaskRCNN.defaults, classNames: ["background", "car", "person"])
    for (name, value) in ["width": 0.0625, "hidden": 32, "mask_width": 8, "anchor_size": 16] { config.options[name] = value }
    return config
}()

/// Every family's configuration, autoencoders narrowed, detectors from `detector` (family -> configuration).
func everyFamilyConfig(detector: (String) -> ModelConfig) throws -> [ModelConfig] {
    try ModelRegistry.familyNames.map { family in
        if try [.detection, .detectionProposals].contains(ModelRegistry.family(named: family).dataKind) { return detector(family) }
        if family == UNet.family { return smallUNetConfig }
        if family == MaskRCNN.family { return smallMaskRCNNConfig }
        var config = try ModelRegistry.defaultConfig(family: family)
        config.options.merge(narrowAutoencoderOptions[family] ?? [:]) { $1 }
        return config
    }
}

/// Result of running a command.
struct Run {
    var status: Int32
    var output: String
    var error: String
}

/// This process's environment without the variables MPI_Init put there (other tests in this process start a
/// singleton MPI world): a child mpirun that saw them would take itself for a rank of that world and fail.
func childEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
    var env = ProcessInfo.processInfo.environment.filter { key, _ in
        !["OMPI_", "PMIX_", "OPAL_", "ORTE_", "HYDRA_", "PMI_"].contains { key.hasPrefix($0) }
    }
    // Ranks waiting in a collective poll Open MPI's progress engine; the tests run two at a time, often four ranks on
    // two cores, and a polling rank took the core a computing one needed. Yielding while idle changes no result.
    env["OMPI_MCA_mpi_yield_when_idle"] = "1"
    for (k, v) in extra { env[k] = v }
    return env
}

/// Runs an executable with arguments (no shell) and collects its output.
func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> Run {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = childEnvironment(environment)
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Read both pipes to the end before waiting, so a chatty child cannot block on a full pipe.
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return Run(status: process.terminationStatus, output: String(decoding: outData, as: UTF8.self), error: String(decoding: errData, as: UTF8.self))
}

/// `starling ARGS...`
func starling(_ arguments: String...) throws -> Run { try run(Fixture.starling, arguments) }

/// Root is allowed to run mpirun here, as in CI.
let mpiEnvironment = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]

/// `mpirun -np N [--oversubscribe] starling ARGS...`
func mpirun(_ ranks: Int, _ arguments: [String]) throws -> Run {
    var args = ["-np", "\(ranks)"]
    if ranks > 2 { args.append("--oversubscribe") }
    return try run("/usr/bin/env", ["mpirun"] + args + [Fixture.starling] + arguments, environment: mpiEnvironment)
}

/// Parameters of a checkpoint, by name.
func weights(_ path: String) throws -> [String: [Float]] {
    let loaded = try Checkpoint.load(from: path)
    var out: [String: [Float]] = [:]
    for p in loaded.model.parameters.parameters + (loaded.model.buffers?.parameters ?? []) { out[p.name] = p.value.toArray() }
    return out
}

/// Largest |a - b| / max(|a|, |b|, 1e-3) over matching parameters.
func maxRelativeDifference(_ a: [String: [Float]], _ b: [String: [Float]]) -> Float {
    var worst: Float = 0
    for (name, x) in a {
        guard let y = b[name], y.count == x.count else { return .infinity }
        for i in x.indices { worst = max(worst, abs(x[i] - y[i]) / max(abs(x[i]), abs(y[i]), 1e-3)) }
    }
    return worst
}


/// Images `range` of a detection batch, with their indices, epoch, seed, objects and proposals: one simulated rank's
/// slice of the global batch.
func slice(_ batch: Batch, _ range: Range<Int>) -> Batch {
    let per = batch.images.count / max(batch.size, 1)
    var b = Batch(images: Tensor(shape: [range.count] + Array(batch.images.shape.dropFirst()),
                                 values: Array(batch.images.toArray()[(range.lowerBound * per)..<(range.upperBound * per)])),
                  indices: batch.indices.map { Array($0[range]) }, epoch: batch.epoch, seed: batch.seed)
    b.objects = batch.objects.map { Array($0[range]) }
    b.proposals = batch.proposals.map { Array($0[range]) }
    return b
}

/// `steps` Adam steps on one batch, its epoch advancing each step (so the per-sample draws - RoI and anchor minibatches,
/// noise - are fresh each step, as over training's epochs): the first step's loss and the last's.
func overfit(_ model: any Model, _ batch: inout Batch, steps: Int, learningRate: Float) -> (first: Float, last: Float) {
    let adam = Adam(parameterCount: model.parameters.count, learningRate: learningRate)
    var first: Float = 0, last: Float = 0
    for step in 0..<steps {
        batch.epoch = step
        model.parameters.zeroGradients()
        let loss = model.loss(batch, training: true)
        loss.backward()
        adam.step(model.parameters)
        if step == 0 { first = loss.item }
        last = loss.item
    }
    return (first, last)
}
