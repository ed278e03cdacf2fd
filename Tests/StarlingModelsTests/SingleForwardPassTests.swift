import Foundation
import ONNXProto
import Testing
import StarlingCore
@testable import StarlingModels
@testable import StarlingDetection
@testable import StarlingONNX
@testable import StarlingSegmentation

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
    static func + (lhs: Recorded, rhs: Recorded) -> Recorded { lhs.record("add", lhs.base + rhs.base) }
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
    func resized(height: Int, width: Int) -> Recorded { record("resize \(height) \(width)", base.resized(height: height, width: width)) }
    func padded(top: Int, left: Int, bottom: Int, right: Int, value: Float) -> Recorded {
        record("pad \(top) \(left) \(bottom) \(right) \(value)", base.padded(top: top, left: left, bottom: bottom, right: right, value: value))
    }
    func cropped(top: Int, left: Int, height: Int, width: Int) -> Recorded {
        record("crop \(top) \(left) \(height) \(width)", base.cropped(top: top, left: left, height: height, width: width))
    }
    func spaceToDepth(blockSize: Int) -> Recorded { record("spaceToDepth \(blockSize)", base.spaceToDepth(blockSize: blockSize)) }
    func roiMaxPool(rois: Recorded, outputHeight: Int, outputWidth: Int, spatialScale: Float) -> Recorded {
        record("roiMaxPool \(outputHeight) \(outputWidth) \(spatialScale)",
               base.roiMaxPool(rois: rois.base, outputHeight: outputHeight, outputWidth: outputWidth, spatialScale: spatialScale))
    }
    func roiAlign(rois: Recorded, outputHeight: Int, outputWidth: Int, spatialScale: Float, samplingRatio: Int, aligned: Bool) -> Recorded {
        record("roiAlign \(outputHeight) \(outputWidth) \(spatialScale) \(samplingRatio) \(aligned)",
               base.roiAlign(rois: rois.base, outputHeight: outputHeight, outputWidth: outputWidth, spatialScale: spatialScale,
                             samplingRatio: samplingRatio, aligned: aligned))
    }
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

/// SSD7's NCHW pass as it was written before `SSD7.predictionMaps` replaced it (and its ONNX copy), in Tensor ops:
/// the generic pass must give its values and gradients bit for bit.
private func ssd7PlanarReference(_ model: SSD7, _ images: Tensor, training: Bool) -> [Tensor] {
    var h = images.affine(scale: 1 / 127.5, shift: -1)
    var features: [Tensor] = []
    for k in 0..<7 {
        h = model.norms[k].withELU(model.convs[k](h), training: training, crossReplicaSum: nil)
        if k >= 3 { features.append(h) }
        if k < 6 { h = h.maxPool2d(kernel: (2, 2)) }
    }
    let n = images.shape[0]
    func rows(_ t: Tensor, depth: Int) -> Tensor { t.transposed([0, 2, 3, 1]).reshaped([n, -1, depth]) }
    let classes = Tensor.concat(zip(model.classHeads, features).map { rows($0($1), depth: model.classCount) }, axis: 1)
    let boxes = Tensor.concat(zip(model.boxHeads, features).map { rows($0($1), depth: 4) }, axis: 1)
    return [classes.reshaped([-1, model.classCount]), boxes.reshaped([-1, 4])]
}

/// SSD300's `predict` as it was written before `SSD300.predictionMaps` replaced it (and its ONNX copy).
private func ssd300Reference(_ model: SSD300, _ images: Tensor) -> [Tensor] {
    let means: [Float] = [123, 117, 104]
    let (n, h, w) = (images.shape[0], images.shape[2], images.shape[3])
    let shift = Tensor(zeros: [3, h, w])
    for c in 0..<3 { for p in 0..<(h * w) { shift.data[c * h * w + p] = means[c] } }
    var x = images - shift
    var features: [Tensor] = []
    var layer = 0
    for (name, _, _, _, _, _) in SSD300.layout {
        if name == "pool5" { x = x.maxPool2d(kernel: (3, 3), stride: (1, 1), padding: .same); continue }
        if name == "pool" { x = x.maxPool2d(kernel: (2, 2), padding: .same); continue }
        x = model.base[layer].conv(x).relu()
        layer += 1
        if name == "conv4_3" { features.append(x.l2NormalizeChannels(gamma: model.conv4_3Scale.value)) }
        if name == "fc7" { features.append(x) }
    }
    for (name, conv) in model.extras {
        x = conv(x).relu()
        if name.hasSuffix("_2") { features.append(x) }
    }
    func rows(_ t: Tensor, depth: Int) -> Tensor { t.transposed([0, 2, 3, 1]).reshaped([n, -1, depth]) }
    let classes = Tensor.concat(zip(model.classHeads, features).map { rows($0($1), depth: model.classCount) }, axis: 1)
    let boxes = Tensor.concat(zip(model.boxHeads, features).map { rows($0($1), depth: 4) }, axis: 1)
    return [classes.reshaped([-1, model.classCount]), boxes.reshaped([-1, 4])]
}

/// A loss whose gradient differs from output to output (fixed weights), to compare two passes' backward.
func weightedSum(_ outputs: [Tensor]) -> Tensor {
    let sums = outputs.enumerated().map { k, t in
        (t * Tensor(shape: t.shape, values: (0..<t.count).map { Float(($0 * (7 + 2 * k)) % 13) / 13 - 0.5 })).sum()
    }
    return sums.dropFirst().reduce(sums[0], +)
}

/// Pixels in [0, 255], as detectors are fed.
func detectorImages(_ shape: [Int], seed: UInt64) -> Tensor {
    var rng = RandomGenerator(seed: seed)
    return Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in rng.uniform(0, 255) })
}

/// A detector's generic pass run on recorded ONNX values takes the ops `tensorOps` lists, and with the head's outputs
/// declared as `ONNXExport` declares them it builds exactly the graph `starling convert --to onnx` writes.
private func expectExportIsThePass(_ model: any ONNXDetector, tensorOps: [String],
                                   _ pass: (Recorded<ONNXValue>) -> [Recorded<ONNXValue>]) throws {
    let family = model.config.family
    let graph = ONNXGraph()
    let log = OpLog()
    let maps = pass(Recorded(base: graph.input("images", shape: [-1] + model.config.inputShape), log: log)).map(\.base)
    #expect(log.ops == tensorOps, "\(family): the Tensor and ONNX passes took different paths")
    for output in model.head.onnxOutputs(maps, decoding: .evaluation) {
        graph.output(output.value, as: output.name, type: output.type, batchName: output.batchName)
    }
    let exported = try ONNXExport.graph(of: model).graph
    func nodes(_ g: ONNXGraph) -> [String] { g.nodes.map { "\($0.opType) \($0.input) -> \($0.output)" } }
    #expect(nodes(exported) == nodes(graph), "\(family): the export is not the generic pass")
    #expect(exported.nodes == graph.nodes && exported.initializers == graph.initializers && exported.outputs == graph.outputs,
            "\(family): attributes, weights or outputs differ")
    let weights = exported.initializers.map(\.name).filter { $0.contains("/") }
    let stored = (model.parameters.parameters + (model.buffers?.parameters ?? [])).map(\.name)
    #expect(weights.sorted() == stored.sorted(), "\(family): every weight and buffer once, under its checkpoint name")
}

/// Issue 15: each network's forward pass is written once. For every autoencoder family, and for SSD7 and SSD300, the
/// pass runs on a third kind of value that logs its ops: on Tensors it gives what training, evaluation and indexing
/// get through `Autoencoder`/`Encoding`/`VariationalModel`, bit for bit but for the inference kernels' rounding in
/// reconstructions (the detectors: what their Tensor pass gave
/// before it became the generic one, gradients included); on ONNXValues it takes the same path op for op and builds
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
        // The entry point runs the pass on LayoutTensors, whose inference kernels (conv-ae's last layer on the narrow-output
        // kernel) sum in another order than the Tensor ops: the same pass to float rounding (LayoutTensorTests holds the
        // two together too); the codes, from the encoder, stay bit for bit.
        let worst = zip(recorded[0].toArray(), reconstruction.toArray()).map { abs($0 - $1) }.max() ?? .infinity
        #expect(recorded[0].shape == reconstruction.shape && worst <= 1e-5, "\(config.family): reconstruction, worst difference \(worst)")
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

    /// SSD7 at 96 x 128 (feature maps 12 x 16 down to 1 x 2). Its generic pass on Tensors is the NCHW pass it replaced,
    /// bit for bit in outputs, gradients and the moving statistics training updates, in both modes, with batch norm
    /// moved off its initial values so that evaluation reads statistics that matter. (`predict` runs the same pass on
    /// LayoutTensors, which `LayoutTensorTests` holds to this one within rounding.)
    @Test func ssd7PassIsTheNCHWPassAndTheExport() throws {
        let config = SSD7.defaultConfig(height: 96, width: 128, classNames: ["background", "car", "pedestrian"])
        let models = try (0..<2).map { _ in try ModelRegistry.build(config, seed: 8) as! SSD7 }
        var rng = RandomGenerator(seed: 12)
        for parameter in models[0].parameters.parameters.filter({ $0.name.hasPrefix("bn") }) + models[0].buffersStore.parameters {
            let positive = parameter.name.hasSuffix("variance") || parameter.name.hasSuffix("gamma")
            let values = (0..<parameter.count).map { _ in positive ? rng.uniform(0.3, 2) : rng.uniform(-0.5, 0.5) }
            for model in models {
                let t = try #require(model.parameters[parameter.name] ?? model.buffersStore[parameter.name]).value
                for (i, v) in values.enumerated() { t.data[i] = v }
            }
        }
        let images = detectorImages([2] + config.inputShape, seed: 13)
        let anchors = models[0].encoder.anchorCount
        var evaluationOps: [String] = []
        for training in [true, false] {
            let log = OpLog()
            let maps = models[0].predictionMaps(Recorded(base: images, log: log), training: training, crossReplicaSum: nil).map(\.base)
            #expect(maps.map(\.shape) == [[2, anchors, 3], [2, anchors, 4]])
            let outputs = [maps[0].reshaped([-1, 3]), maps[1].reshaped([-1, 4])]
            let reference = ssd7PlanarReference(models[1], images, training: training)
            #expect(outputs[0].toArray() == reference[0].toArray(), "class logits, training \(training)")
            #expect(outputs[1].toArray() == reference[1].toArray(), "box offsets, training \(training)")
            if training {
                weightedSum(outputs).backward()
                weightedSum(reference).backward()
                for parameter in models[0].parameters.parameters {
                    let gradient = try #require(models[1].parameters[parameter.name]).value.gradArray
                    #expect(parameter.value.gradArray != nil && parameter.value.gradArray == gradient, "\(parameter.name) gradient")
                }
                for buffer in models[0].buffersStore.parameters {
                    #expect(buffer.value.toArray() == (try #require(models[1].buffersStore[buffer.name])).value.toArray(), "\(buffer.name)")
                }
            } else {
                evaluationOps = log.ops
                let planar = GradMode.disabled { models[0].predictionMaps(images, training: false, crossReplicaSum: nil) }
                #expect(planar[0].toArray() == reference[0].toArray() && planar[1].toArray() == reference[1].toArray())
                let predicted = GradMode.disabled { models[0].predict(images, training: false) }   // on LayoutTensors
                #expect(worstDifference(predicted.classLogits.toArray(), reference[0].toArray()).value < 1e-4)
                #expect(worstDifference(predicted.boxOffsets.toArray(), reference[1].toArray()).value < 1e-4)
            }
        }
        #expect(evaluationOps.filter { $0.hasPrefix("batchNormELU") }.count == 7)
        try expectExportIsThePass(models[0], tensorOps: evaluationOps) { models[0].predictionMaps($0, training: false, crossReplicaSum: nil) }
    }

    /// SSD300 at 1/16 of its channels on 300 x 300 images: the generic pass on Tensors is the `predict` it replaced,
    /// bit for bit in outputs and gradients, and `predict` returns it.
    @Test func ssd300PassIsPredictAndTheExport() throws {
        let config = SSD300.defaultConfig(classNames: ["background", "car", "person"], widthMultiplier: 0.0625)
        let models = try (0..<2).map { _ in try ModelRegistry.build(config, seed: 9) as! SSD300 }
        let images = detectorImages([2] + config.inputShape, seed: 14)
        let anchors = models[0].encoder.anchorCount
        let log = OpLog()
        let maps = models[0].predictionMaps(Recorded(base: images, log: log), training: true).map(\.base)
        #expect(maps.map(\.shape) == [[2, anchors, 3], [2, anchors, 4]])
        let outputs = [maps[0].reshaped([-1, 3]), maps[1].reshaped([-1, 4])]
        let reference = ssd300Reference(models[1], images)
        #expect(outputs[0].toArray() == reference[0].toArray(), "class logits")
        #expect(outputs[1].toArray() == reference[1].toArray(), "box offsets")
        weightedSum(outputs).backward()
        weightedSum(reference).backward()
        for parameter in models[0].parameters.parameters {
            let gradient = try #require(models[1].parameters[parameter.name]).value.gradArray
            #expect(parameter.value.gradArray != nil && parameter.value.gradArray == gradient, "\(parameter.name) gradient")
        }
        let planar = GradMode.disabled { models[0].predictionMaps(images, training: false) }
        #expect(planar[0].toArray() == reference[0].toArray() && planar[1].toArray() == reference[1].toArray())
        let predicted = GradMode.disabled { models[0].predict(images, training: false) }   // on LayoutTensors
        #expect(worstDifference(predicted.classLogits.toArray(), reference[0].toArray()).value < 1e-4)
        #expect(worstDifference(predicted.boxOffsets.toArray(), reference[1].toArray()).value < 1e-4)
        #expect(log.ops.first == "subtract [123.0, 117.0, 104.0]")
        try expectExportIsThePass(models[0], tensorOps: log.ops) { models[0].predictionMaps($0, training: false) }
    }

    /// U-Net (valid padding: the skips cropped; and same padding on odd sizes: the up-convolutions padded): the pass
    /// on logging Tensors is `logits` bit for bit, the pass on logging ONNX values takes the same ops, and it builds
    /// exactly the exported graph with every weight once under its checkpoint name.
    @Test(arguments: [smallUNetConfig, ModelConfig(family: UNet.family, inputShape: [3, 21, 30], options: ["width": 0.0625, "levels": 3],
                                                   classNames: ["membrane", "cell"])])
    func unetPassIsLogitsAndTheExport(config: ModelConfig) throws {
        let model = try #require(try ModelRegistry.build(config, seed: 4) as? UNet)
        let images = detectorImages([2] + config.inputShape, seed: 6)
        let tensorLog = OpLog(), onnxLog = OpLog()
        let recorded = GradMode.disabled { model.logits(Recorded(base: images, log: tensorLog)).base }
        #expect(recorded.toArray() == GradMode.disabled { model.logits(images) }.toArray())
        let graph = ONNXGraph()
        let logits = model.logits(Recorded(base: graph.input("images", shape: [-1] + config.inputShape), log: onnxLog)).base
        #expect(tensorLog.ops == onnxLog.ops && tensorLog.ops.contains { $0.hasPrefix(config.options["valid"] == 1 ? "crop" : "pad") })
        let exported = try ONNXExport.graph(of: model).graph
        #expect(Array(exported.nodes.prefix(graph.nodes.count)) == graph.nodes, "the export's logits are not the generic pass")
        #expect(exported.nodes.contains { $0.output == [logits.name] })
        let weights = exported.initializers.map(\.name).filter { $0.contains("/") }
        #expect(weights.sorted() == model.parameters.parameters.map(\.name).sorted())
    }

    /// The YOLO families, small: each one's pass on Tensors gives what `headOutputs` gives (which runs it on
    /// LayoutTensors: within rounding), and on ONNX values it takes the same ops and builds exactly the exported graph
    /// (yolov3-tiny and yolov1 letterbox frames of another size inside the graph).
    @Test(arguments: [YOLOv3Tiny.defaultConfig(height: 100, width: 170, classNames: ["background", "car", "person"], widthMultiplier: 0.25),
                      YOLOv3.defaultConfig(height: 64, width: 64, classNames: ["background", "car", "person"], widthMultiplier: 0.125, depthMultiplier: 0.2),
                      YOLOv2.defaultConfig(height: 64, width: 96, classNames: ["background", "car", "person"], widthMultiplier: 0.125),
                      YOLOv1.defaultConfig(height: 100, width: 170, classNames: ["background", "car", "person"], widthMultiplier: 0.0625)])
    func yoloPassIsHeadOutputsAndTheExport(config: ModelConfig) throws {
        let model = try #require(try ModelRegistry.build(config, seed: 3) as? any Detector & ONNXDetector)
        let images = detectorImages([2] + config.inputShape, seed: 15)
        let log = OpLog()
        let maps = GradMode.disabled { yoloPass(model, Recorded(base: images, log: log)) }.map(\.base)
        let outputs = GradMode.disabled { model.headOutputs(images, training: false) }
        #expect(maps.map(\.shape) == outputs.map(\.shape))
        for (a, b) in zip(maps, outputs) {
            let worst = worstDifference(b.toArray(), a.toArray())
            #expect(worst.value < 1e-4, "\(config.family): worst difference \(worst.value) at \(worst.at)")
        }
        try expectExportIsThePass(model, tensorOps: log.ops) { yoloPass(model, $0) }
    }

}

/// A YOLO family's one forward pass, in inference mode, on any kind of value.
private func yoloPass<Value: NetworkValue>(_ model: any Detector, _ x: Value) -> [Value] {
    switch model {
    case let m as YOLOv3Tiny: m.outputMaps(x, training: false)
    case let m as YOLOv3: m.outputMaps(x, training: false)
    case let m as YOLOv2: m.outputMaps(x, training: false)
    case let m as YOLOv1: m.outputMaps(x, training: false)
    default: preconditionFailure("\(model.config.family) is not a YOLO")
    }
}
