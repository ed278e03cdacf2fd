import Foundation
import ONNXProto
import Testing
import StarlingCore
@testable import StarlingModels

/// The ops a forward pass ran, in order, shared by every value derived from one input.
private final class OpLog {
    var ops: [String] = []
}

/// A third `NetworkValue`: a `Tensor` or an `ONNXValue` that also writes each op it runs into a log. A model's forward
/// pass runs on it only if it is written over `NetworkValue`, and the log is the path that pass took.
private struct Recorded<Base: NetworkValue>: NetworkValue {
    let base: Base
    let log: OpLog

    private func record(_ op: String, _ result: Base) -> Recorded {
        log.ops.append(op)
        return Recorded(base: result, log: log)
    }

    var shape: [Int] { base.shape }
    func relu() -> Recorded { record("relu", base.relu()) }
    func sigmoid() -> Recorded { record("sigmoid", base.sigmoid()) }
    func elu(alpha: Float) -> Recorded { record("elu \(alpha)", base.elu(alpha: alpha)) }
    func leakyRelu(slope: Float) -> Recorded { record("leakyRelu \(slope)", base.leakyRelu(slope: slope)) }
    func affine(scale: Float, shift: Float) -> Recorded { record("affine \(scale) \(shift)", base.affine(scale: scale, shift: shift)) }
    func subtractingChannelMeans(_ means: [Float]) -> Recorded { record("subtract \(means)", base.subtractingChannelMeans(means)) }
    func softmax(axis: Int) -> Recorded { record("softmax \(axis)", base.softmax(axis: axis)) }
    func reshaped(_ newShape: [Int]) -> Recorded { record("reshape", base.reshaped(newShape)) }
    func flattened() -> Recorded { record("flatten", base.flattened()) }
    func transposed(_ permutation: [Int]) -> Recorded { record("transpose \(permutation)", base.transposed(permutation)) }
    static func concat(_ values: [Recorded], axis: Int) -> Recorded {
        values[0].record("concat \(axis)", Base.concat(values.map(\.base), axis: axis))
    }
    func lastTimestep() -> Recorded { record("lastTimestep", base.lastTimestep()) }
    func repeatedOverSteps(_ steps: Int) -> Recorded { record("repeat \(steps)", base.repeatedOverSteps(steps)) }
    func maxPool2d(kernel: (Int, Int), stride: (Int, Int)?, padding: Padding) -> Recorded {
        record("maxPool \(kernel) \(String(describing: stride)) \(padding)", base.maxPool2d(kernel: kernel, stride: stride, padding: padding))
    }
    func upsampleNearest(scale: (Int, Int)) -> Recorded { record("upsample \(scale)", base.upsampleNearest(scale: scale)) }
    func l2NormalizeChannels(gamma: Parameter, epsilon: Float) -> Recorded {
        record("l2Normalize \(gamma.name)", base.l2NormalizeChannels(gamma: gamma, epsilon: epsilon))
    }
    func applying(_ layer: Dense) -> Recorded { record("dense \(layer.kernel.name)", base.applying(layer)) }
    func applying(_ layer: Conv2D) -> Recorded { record("conv \(layer.kernel.name)", base.applying(layer)) }
    func applying(_ layer: Conv2DTranspose) -> Recorded { record("convTranspose \(layer.kernel.name)", base.applying(layer)) }
    func applying(_ layer: BatchNormalization, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Recorded {
        record("batchNorm \(layer.gamma.name) training \(training)", base.applying(layer, training: training, crossReplicaSum: crossReplicaSum))
    }
    func applyingWithELU(_ layer: BatchNormalization, alpha: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Recorded {
        record("batchNormELU \(layer.gamma.name) \(alpha) training \(training)",
               base.applyingWithELU(layer, alpha: alpha, training: training, crossReplicaSum: crossReplicaSum))
    }
    func applying(_ layer: LSTMLayer) -> Recorded { record("lstm \(layer.kernel.name)", base.applying(layer)) }
}

/// What an autoencoder's export computes (the reconstruction's logits, its sigmoid and the code, or for a VAE the
/// posterior too), on `Recorded` values of any base.
private func exportedOutputs<Base: NetworkValue>(_ model: any Model, _ images: Recorded<Base>) -> [Base] {
    switch model {
    case let vae as any ONNXVariational:
        let (mean, logVariance) = vae.posterior(images)
        return [vae.reconstructionLogits(images, training: false).sigmoid().base, mean.base, logVariance.base]
    case let ae as any ONNXAutoencoder:
        return [ae.reconstructionLogits(images, training: false).sigmoid().base, ae.code(images).base]
    default:
        Issue.record("\(model.config.family) has no forward pass written over NetworkValue")
        return []
    }
}

/// Issue 15: each network's forward pass is written once. For every autoencoder family the pass runs on a third
/// kind of value that logs its ops: on Tensors it gives, bit for bit, what training, evaluation and indexing get
/// through `Autoencoder`/`Encoding`/`VariationalModel`; on ONNXValues it takes the same path op for op and builds
/// exactly the exported graph. A change to the pass (another activation, a layer more) therefore changes the
/// trained network and its export together, and a second, ONNX-only or Tensor-only, copy of it fails here.
@Suite struct SingleForwardPassTests {
    /// Every family that trains on images (the autoencoders), narrowed.
    static func autoencoderConfigs() throws -> [ModelConfig] {
        try ModelRegistry.names(trainingOn: .images).map { family in
            var config = try ModelRegistry.defaultConfig(family: family)
            config.options.merge(narrowAutoencoderOptions[family] ?? [:]) { $1 }
            return config
        }
    }

    @Test(arguments: try autoencoderConfigs())
    func tensorPassAndExportedGraphAreTheOneGenericPass(config: ModelConfig) throws {
        let model = try ModelRegistry.build(config, seed: 21)
        guard let autoencoder = model as? any Autoencoder & Encoding else {
            Issue.record("\(config.family) is not an autoencoder")
            return
        }
        var rng = RandomGenerator(seed: 5)
        let images = Tensor(zeros: [3] + config.inputShape)
        for i in 0..<images.count { images.data[i] = rng.uniform(0, 1) }

        // Tensors: the generic pass is the one Starling's own entry points run.
        let tensorLog = OpLog()
        let recorded = GradMode.disabled { exportedOutputs(model, Recorded(base: images, log: tensorLog)) }
        try #require(recorded.count >= 2)
        let reconstruction = autoencoder.reconstruction(images), code = GradMode.disabled { autoencoder.code(images) }
        #expect(recorded[0].toArray() == reconstruction.toArray(), "\(config.family): reconstruction")
        #expect(recorded[1].toArray() == code.toArray(), "\(config.family): code")
        if let vae = model as? any VariationalModel {
            let logVariance = GradMode.disabled { vae.posterior(images).logVariance }
            #expect(recorded[2].toArray() == logVariance.toArray(), "\(config.family): log-variance")
        }
        #expect(!tensorLog.ops.isEmpty)

        // ONNXValues: the same ops in the same order, and the graph they build is the exported one.
        let graph = ONNXGraph()
        let onnxLog = OpLog()
        _ = exportedOutputs(model, Recorded(base: graph.input("images", shape: [-1] + config.inputShape), log: onnxLog))
        #expect(onnxLog.ops == tensorLog.ops, "\(config.family): the Tensor and ONNX passes took different paths")
        let exported = try ONNXExport.graph(of: model).graph
        func nodes(_ g: ONNXGraph) -> [String] {
            g.nodes.filter { $0.opType != "Identity" }.map { "\($0.opType) \($0.input) -> \($0.output)" }
        }
        #expect(nodes(exported) == nodes(graph), "\(config.family): the export is not the generic pass")
        #expect(exported.initializers.map(\.name) == graph.initializers.map(\.name))
        // Every weight once, under its checkpoint name (the shared encoder is not exported twice).
        let weights = exported.initializers.map(\.name).filter { $0.contains("/") }
        #expect(weights.sorted() == model.parameters.parameters.map(\.name).sorted(), "\(config.family)")
    }
}
