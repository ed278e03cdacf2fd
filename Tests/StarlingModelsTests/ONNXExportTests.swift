import Foundation
import ONNXProto
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingDetection
@testable import StarlingData

/// Runs an ONNX model under onnxruntime after `onnx.checker` (with strict shape inference), on an input read from a
/// raw float32 file; writes each output as a raw file and prints their shapes and types as JSON.
private let onnxRunner = """
import json, sys
import numpy as np, onnx, onnxruntime as ort
model_path, input_path, shape, out_dir = sys.argv[1:5]
onnx.checker.check_model(onnx.load(model_path), full_check=True)
feed = {"images": np.fromfile(input_path, dtype=np.float32).reshape(json.loads(shape))}
if len(sys.argv) > 5:
    feed["rois"] = np.fromfile(sys.argv[5], dtype=np.float32).reshape(json.loads(sys.argv[6]))
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
meta = {}
for info, value in zip(session.get_outputs(), session.run(None, feed)):
    value = np.ascontiguousarray(value)
    value.tofile(f"{out_dir}/{info.name}.bin")
    meta[info.name] = {"shape": list(value.shape), "dtype": str(value.dtype)}
print(json.dumps(meta))
"""

/// onnxruntime's outputs by name: float32 outputs as `floats`, int64 as `ints`.
private struct RuntimeOutputs {
    var shapes: [String: [Int]] = [:]
    var floats: [String: [Float]] = [:]
    var ints: [String: [Int64]] = [:]
}

/// Whether python3 with onnx and onnxruntime is here (Launch/install-deps.sh installs them from PyPI).
private let onnxRuntimeAvailable: Bool = {
    (try? run("/usr/bin/env", ["python3", "-c", "import onnx, onnxruntime, numpy"]).status) == 0
}()

/// `rois`: a second input, the regions of a graph that takes them (fast-rcnn's).
private func runONNX(_ modelPath: String, input: Tensor, rois: Tensor? = nil, in dir: String) throws -> RuntimeOutputs {
    let inputPath = dir + "/input.bin"
    let bytes = input.toArray().withUnsafeBytes { Array($0) }
    try AtomicFile.write(bytes, to: inputPath)
    var extra: [String] = []
    if let rois {
        try AtomicFile.write(rois.toArray().withUnsafeBytes { Array($0) }, to: dir + "/rois.bin")
        extra = [dir + "/rois.bin", "\(rois.shape)"]
    }
    let result = try run("/usr/bin/env", ["python3", "-c", onnxRunner, modelPath, inputPath, "\(input.shape)", dir] + extra)
    guard result.status == 0 else { throw ConversionError(file: modelPath, message: "onnxruntime failed: \(result.error)") }
    let meta = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: [String: Any]] ?? [:]
    var out = RuntimeOutputs()
    for (name, info) in meta {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name).bin"))
        out.shapes[name] = info["shape"] as? [Int] ?? []
        if info["dtype"] as? String == "int64" {
            out.ints[name] = data.withUnsafeBytes { Array($0.bindMemory(to: Int64.self)) }
        } else {
            out.floats[name] = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
    }
    return out
}

/// Largest |a - b| relative to the scale of `b` (its largest magnitude, at least 1e-3), and where: rounding in
/// long sums (a deep network's) is relative to the terms summed, not to each result.
func worstDifference(_ a: [Float], _ b: [Float]) -> (value: Float, at: String) {
    guard a.count == b.count else { return (.infinity, "\(a.count) values for \(b.count)") }
    let scale = max(b.map(abs).max() ?? 0, 1e-3)
    let d = zip(a, b).map { abs($0 - $1) / scale }
    guard let k = d.indices.max(by: { d[$0] < d[$1] }) else { return (0, "") }
    return (d[k], "index \(k): \(a[k]) for \(b[k])")
}

/// A model with every weight random, biases and batch-norm statistics included, so a misplaced or dropped one shows.
private func randomized(_ config: ModelConfig, seed: UInt64) throws -> any Model {
    let model = try ModelRegistry.build(config, seed: seed)
    var rng = RandomGenerator(seed: seed &+ 77)
    for p in model.parameters.parameters where p.name.hasSuffix("bias") || p.name.hasSuffix("beta") || p.name.hasSuffix("gamma") {
        for i in 0..<p.count { p.value.data[i] = p.name.hasSuffix("gamma") ? rng.uniform(0.5, 1.5) : 0.1 * rng.normal() }
    }
    for p in model.buffers?.parameters ?? [] {
        for i in 0..<p.count { p.value.data[i] = p.name.hasSuffix("variance") ? rng.uniform(0.5, 2) : 0.1 * rng.normal() }
    }
    return model
}

/// Every family with an ONNX export, at sizes a debug build runs in a moment. Not exported: rcnn (a crop of the image
/// per proposal); mask-rcnn has its own test on real frames (`maskRCNNThroughConvertMatchesStarling`).
private func exportConfigs() throws -> [ModelConfig] {
    try everyFamilyConfig { family in
        switch family {
        case SSD7.family: return SSD7.defaultConfig(height: 96, width: 128)
        case YOLOv3Tiny.family:
            // Letterboxed: 50 x 90 frames resized to 53 x 96 and framed into the 64 x 96 network input (Resize and Pad).
            var config = YOLOv3Tiny.defaultConfig(height: 50, width: 90, classNames: ["background", "car", "person"], widthMultiplier: 0.125)
            config.options["network_height"] = 64
            config.options["network_width"] = 96
            return config
        case YOLOv3.family: return YOLOv3.defaultConfig(height: 64, width: 96, classNames: ["background", "car", "person"], widthMultiplier: 0.0625, depthMultiplier: 0.1)
        case YOLOv2.family: return YOLOv2.defaultConfig(height: 64, width: 96, classNames: ["background", "car", "person"], widthMultiplier: 0.0625)
        // Letterboxed: 100 x 170 frames resized to 113 x 192 and framed into the 128 x 192 network input.
        case YOLOv1.family: return YOLOv1.defaultConfig(height: 100, width: 170, classNames: ["background", "car", "person"], widthMultiplier: 0.0625)
        case FastRCNN.family: return smallFastRCNNConfig(height: 64, width: 96, classNames: ["background", "car", "person"])
        case FasterRCNN.family: return smallFasterRCNNConfig
        case RCNN.family: return ModelConfig(family: RCNN.family, inputShape: [3, 64, 96], classNames: ["background", "car", "person"])
        default: return SSD300.defaultConfig(classNames: ["background", "car", "person"], widthMultiplier: 0.0625)
        }
    }.filter { ![RCNN.family, MaskRCNN.family].contains($0.family) }
}

@Suite struct ONNXExportTests {
    @Test func graphIsOpset13WithTheWeightsOnce() throws {
        let config = try ModelRegistry.defaultConfig(family: "conv-ae")
        let model = try randomized(config, seed: 1)
        let dir = Fixture.temporaryDirectory("onnx-structure")
        try ONNXExport.write(model, to: dir + "/conv-ae.onnx")
        let proto = try Onnx_ModelProto(serializedBytes: try Data(contentsOf: URL(fileURLWithPath: dir + "/conv-ae.onnx")))
        #expect(proto.irVersion == 7 && proto.opsetImport.map(\.version) == [13])
        #expect(proto.graph.input.map(\.name) == ["images"])
        #expect(proto.graph.input[0].type.tensorType.shape.dim.map { $0.dimParam.isEmpty ? Int($0.dimValue) : -1 } == [-1, 1, 28, 28])
        #expect(proto.graph.output.map(\.name) == ["reconstruction", "code"])
        // The code and the reconstruction share the encoder: each weight is stored once, as the checkpoint has it.
        let weights = proto.graph.initializer.filter { $0.name.contains("/") }
        #expect(weights.map(\.name).sorted() == model.parameters.parameters.map(\.name).sorted())
        for t in weights {
            let stored = t.rawData.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            #expect(stored == model.parameters[t.name]?.value.toArray(), "\(t.name)")
        }
        #expect(proto.graph.node.filter { $0.opType == "Conv" }.count == 7)
        #expect(proto.metadataProps.contains { $0.key == PyTorchWeights.configKey })
    }

    /// RoI max pooling and RoIAlign (both modes, fixed and adaptive sampling) as ONNX's MaxRoiPool and RoiAlign, run by
    /// onnxruntime (after the checker) on the Tensor ops' input: the same values. The graph needs opset 16 (RoiAlign's
    /// coordinate_transformation_mode) and says so; the regions include rounding halves, borders, a sample outside the
    /// map and a region narrower than a cell.
    @Test(.enabled(if: onnxRuntimeAvailable, "python3 with onnx and onnxruntime (pip install onnx onnxruntime)"))
    func regionPoolingMatchesOnnxRuntime() throws {
        let shape = [2, 3, 9, 11]
        var rng = RandomGenerator(seed: 21)
        let features = Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in rng.uniform(-1, 1) })
        let rows: [[Float]] = [[0, 0, 0, 21, 17], [1, 3, 5, 15, 11], [1, 6, 6, 10, 7], [0, -3, -2, 25, 20], [1, 13, 3, 13.5, 3.2],
                               [0, 4.6, 2.2, 19.8, 16.4], [1, 20, 16, 23, 19]]
        let rois = Tensor(shape: [rows.count, 5], values: rows.flatMap { $0 })
        let scale: Float = 0.5
        let aligns: [(ratio: Int, aligned: Bool)] = [(2, true), (0, true), (2, false), (0, false)]
        let g = ONNXGraph()
        let x = g.input("images", shape: [-1] + shape.dropFirst())
        let r = g.constant("rois", rois.toArray(), shape: rois.shape)
        g.output(x.roiMaxPool(rois: r, outputHeight: 3, outputWidth: 4, spatialScale: scale), as: "pooled")
        for (k, a) in aligns.enumerated() {
            g.output(x.roiAlign(rois: r, outputHeight: 3, outputWidth: 4, spatialScale: scale, samplingRatio: a.ratio, aligned: a.aligned),
                     as: "aligned\(k)")
        }
        let proto = g.model(producerVersion: "test", docString: "RoI pooling")
        #expect(proto.opsetImport.map(\.version) == [16] && proto.irVersion == 8)
        let dir = Fixture.temporaryDirectory("onnx-roi")
        try AtomicFile.write(try proto.serializedBytes() as [UInt8], to: dir + "/roi.onnx")
        let onnx = try runONNX(dir + "/roi.onnx", input: features, in: dir)
        let pooled = features.roiMaxPool(rois: rois, outputHeight: 3, outputWidth: 4, spatialScale: scale)
        #expect(onnx.shapes["pooled"] == pooled.shape)
        #expect(onnx.floats["pooled"] == pooled.toArray())
        for (k, a) in aligns.enumerated() {
            let expected = features.roiAlign(rois: rois, outputHeight: 3, outputWidth: 4, spatialScale: scale,
                                             samplingRatio: a.ratio, aligned: a.aligned)
            #expect(onnx.shapes["aligned\(k)"] == expected.shape)
            let worst = worstDifference(onnx.floats["aligned\(k)"] ?? [], expected.toArray())
            #expect(worst.value < 1e-5, "RoiAlign ratio \(a.ratio) aligned \(a.aligned): worst difference \(worst.value) at \(worst.at)")
        }
        // The families' graphs stay at opset 13.
        #expect(ONNXGraph().model(producerVersion: "test", docString: "").opsetImport.map(\.version) == [13])
    }

    /// Fast R-CNN's RoI head, written once over NetworkValue, exported (MaxRoiPool, fully connected layers) and run by
    /// onnxruntime on the feature map: the Tensor pass's logits and deltas.
    @Test(.enabled(if: onnxRuntimeAvailable, "python3 with onnx and onnxruntime (pip install onnx onnxruntime)"))
    func fastRCNNPredictorMatchesOnnxRuntime() throws {
        let store = ParameterStore()
        let predictor = FastRCNNPredictor(store, channels: 6, hidden: 10, classCount: 4, spatialScale: 0.25)
        var rng = RandomGenerator(seed: 31)
        store.allocate(rng: &rng)
        for p in store.parameters where p.name.hasSuffix("bias") { for i in 0..<p.count { p.value.data[i] = rng.uniform(-0.5, 0.5) } }
        let features = Tensor(shape: [2, 6, 10, 12], values: (0..<1440).map { _ in rng.uniform(-1, 1) })
        let rois = Tensor(shape: [3, 5], values: [0, 0, 0, 47, 39, 1, 8.6, 4.2, 30, 22, 1, 20, 12, 26, 18])
        let g = ONNXGraph()
        let (logits, deltas) = predictor(g.input("images", shape: [-1, 6, 10, 12]), rois: g.constant("rois", rois.toArray(), shape: [3, 5]))
        g.output(logits, as: "class_logits")
        g.output(deltas, as: "box_deltas")
        let dir = Fixture.temporaryDirectory("onnx-fast-rcnn-head")
        try AtomicFile.write(try g.model(producerVersion: "test", docString: "Fast R-CNN head").serializedBytes() as [UInt8], to: dir + "/head.onnx")
        let onnx = try runONNX(dir + "/head.onnx", input: features, in: dir)
        let expected = GradMode.disabled { predictor(features, rois: rois) }
        for (name, value) in [("class_logits", expected.classLogits), ("box_deltas", expected.boxDeltas)] {
            #expect(onnx.shapes[name] == value.shape)
            let worst = worstDifference(onnx.floats[name] ?? [], value.toArray())
            #expect(worst.value < 1e-5, "\(name): worst difference \(worst.value) at \(worst.at)")
        }
    }

    /// Every family's exported graph, run by onnxruntime, gives Starling's outputs on the same input.
    @Test(.enabled(if: onnxRuntimeAvailable, "python3 with onnx and onnxruntime (pip install onnx onnxruntime)"),
          arguments: try exportConfigs())
    func onnxRuntimeReproducesStarling(config: ModelConfig) throws {
        let model = try randomized(config, seed: 3)
        let dir = Fixture.temporaryDirectory("onnx-\(config.family)")
        let path = dir + "/model.onnx"
        try ONNXExport.write(model, to: path)
        let batch = 3
        var rng = RandomGenerator(seed: 11)
        let images = Tensor(zeros: [batch] + config.inputShape)
        let scale: Float = model is any Detector || model is UNet || model is any TwoStageDetector ? 255 : 1
        for i in 0..<images.count { images.data[i] = scale * rng.uniform(0, 1) }
        // fast-rcnn's graph also takes the regions: some on each image, one reaching past the border, one tiny.
        let rois = Tensor(shape: [5, 5], values: [0, 4, 6, 50, 60, 1, 30, 2, 95, 40, 2, 60, 20, 110, 70, 0, 0, 0, 96, 64, 2, 10, 10, 12, 13])
        let onnx = try runONNX(path, input: images, rois: model is FastRCNN ? rois : nil, in: dir)

        func expectClose(_ name: String, _ expected: Tensor, tolerance: Float = 1e-4) {
            #expect(onnx.shapes[name]?.reduce(1, *) == expected.count, "\(config.family) \(name) shape \(onnx.shapes[name] ?? [])")
            let worst = worstDifference(onnx.floats[name] ?? [], expected.toArray())
            #expect(worst.value < tolerance, "\(config.family) \(name): worst difference \(worst.value) at \(worst.at)")
        }
        try GradMode.disabled {
            switch model {
            case let vae as any VariationalModel:
                let (mean, logVariance) = vae.posterior(images)
                expectClose("z_mean", mean)
                expectClose("z_log_var", logVariance)
                expectClose("reconstruction", vae.reconstruction(images))
            case let ae as any Autoencoder & Encoding:
                expectClose("reconstruction", ae.reconstruction(images))
                expectClose("code", ae.code(images))
                #expect(onnx.shapes["reconstruction"] == [batch] + config.inputShape)
            case let unet as UNet:
                expectClose("logits", unet.logits(images))
                expectClose("probabilities", unet.probabilities(images))
                #expect(onnx.shapes["logits"] == [batch, 3, 4, 4])
            case let fast as FastRCNN:
                let (logits, deltas) = fast.regionOutputs(LayoutTensor(images), rois: LayoutTensor(rois), training: false)
                expectClose("class_logits", logits.tensor)
                expectClose("class_probabilities", logits.tensor.softmax(axis: 1))
                expectClose("box_deltas", deltas.tensor)
                #expect(onnx.shapes["box_deltas"] == [5, 12])
            case let faster as FasterRCNN:
                // The RPN's test-time proposals (TopK, NonMaxSuppression), then the RoI head on them.
                let map = faster.features(images, training: false)
                let rois = RoIHeads.roiTensor(faster.proposals(for: Batch(images: images), features: map, training: false).boxes)
                #expect(rois.shape[0] > batch && onnx.shapes["rois"] == rois.shape, "rois \(onnx.shapes["rois"] ?? []) vs \(rois.shape)")
                expectClose("rois", rois, tolerance: 1e-3)
                let (logits, deltas) = faster.roiHeads.predictor(map, rois: rois)
                expectClose("class_probabilities", logits.softmax(axis: 1))
                expectClose("box_deltas", deltas)
            case let detector as any Detector where detector.head is YOLOHead:
                try expectSameYOLODetections(detector, images: images, onnx: onnx)
            case let detector as any Detector where detector.head is YOLOv1Head:
                try expectSameYOLOv1Detections(detector, images: images, onnx: onnx)
            case let detector as any Detector:
                try expectSameDetections(detector, images: images, onnx: onnx, expectClose: expectClose)
            default:
                Issue.record("\(config.family) is neither an autoencoder nor a detector")
            }
        }
    }

    /// Raw predictions, decoded boxes, and the per-class NMS against `DetectionDecoding.decode`.
    private func expectSameDetections(_ detector: any Detector, images: Tensor, onnx: RuntimeOutputs,
                                      expectClose: (String, Tensor, Float) -> Void) throws {
        let outputs = detector.headOutputs(images, training: false)
        let (logits, offsets) = (outputs[0], outputs[1])
        let encoder = try #require(detector.head as? SSDHead).encoder
        let c = detector.classCount, a = encoder.anchorCount, n = images.shape[0]
        let probabilities = logits.softmax(axis: -1)
        // SSD300's base is 13 convolutions deep with random weights: oneDNN and onnxruntime sum in different orders
        // and their rounding grows to ~1.5e-4 of the largest output (SSD7 and the autoencoders stay under 1e-4).
        let tolerance: Float = detector is SSD300 ? 3e-4 : 1e-4
        expectClose("class_probabilities", probabilities, tolerance)
        expectClose("box_offsets", offsets, tolerance)
        // Boxes as DetectionDecoding decodes them (clipped to the image).
        let config = encoder.config
        let (width, height) = (Float(config.imageWidth), Float(config.imageHeight))
        let decoded = Tensor(zeros: [n, a, 4])
        for j in 0..<(n * a) {
            let b = encoder.decode(offsets.data + 4 * j, anchor: j % a)
            // Every coordinate inside the image (DetectionDecoding clips only the outer side, then drops what is empty).
            let clipped = [min(max(0, b.xmin), width), min(max(0, b.ymin), height), min(max(0, b.xmax), width), min(max(0, b.ymax), height)]
            for k in 0..<4 { decoded.data[4 * j + k] = clipped[k] }
        }
        expectClose("boxes", decoded, tolerance)

        // NMS: the same (image, class, box, score) detections per image; neither side is cut by a global top k here.
        let rows = onnx.ints["detections"] ?? []
        #expect(rows.count % 3 == 0 && !rows.isEmpty)
        var fromONNX: [Int: [DetectedBox]] = [:]
        let boxes = onnx.floats["boxes"] ?? [], scores = onnx.floats["class_probabilities"] ?? []
        for r in stride(from: 0, to: rows.count, by: 3) {
            let (image, cls, anchor) = (Int(rows[r]), Int(rows[r + 1]), Int(rows[r + 2]))
            #expect(cls >= 1 && cls < c, "class id \(cls)")
            let o = 4 * (image * a + anchor)
            let box = BoxCorners(xmin: boxes[o], ymin: boxes[o + 1], xmax: boxes[o + 2], ymax: boxes[o + 3])
            fromONNX[image, default: []].append(DetectedBox(box: box, classID: cls, score: scores[(image * a + anchor) * c + cls]))
        }
        var decoding = DetectionDecoding.evaluation
        decoding.topK = .max
        // Boxes agree as the decoded ones do: to 1e-4 of the image's size.
        let slack = 1e-4 * max(width, height)
        func close(_ x: DetectedBox, _ y: DetectedBox) -> Bool {
            x.classID == y.classID && abs(x.score - y.score) < 1e-4 && abs(x.box.xmin - y.box.xmin) < slack && abs(x.box.ymin - y.box.ymin) < slack
                && abs(x.box.xmax - y.box.xmax) < slack && abs(x.box.ymax - y.box.ymax) < slack
        }
        for i in 0..<n {
            var perClass: [Int: [DetectedBox]] = [:]
            for d in decoding.decode(probabilities: probabilities.data + i * a * c, offsets: offsets.data + i * a * 4,
                                     classCount: c, encoder: encoder) { perClass[d.classID, default: []].append(d) }
            // ONNX keeps at most topK boxes a class.
            let expected = perClass.values.flatMap { $0.sorted { $0.score > $1.score }.prefix(DetectionDecoding.evaluation.topK) }
            var unmatched = fromONNX[i, default: []]
            #expect(!expected.isEmpty && unmatched.count == expected.count, "image \(i): ONNX \(unmatched.count) detections, Starling \(expected.count)")
            var missing: [DetectedBox] = []
            for d in expected {
                if let k = unmatched.firstIndex(where: { close($0, d) }) { unmatched.remove(at: k) } else { missing.append(d) }
            }
            #expect(missing.isEmpty && unmatched.isEmpty, "image \(i): Starling's \(missing) not in ONNX's; ONNX's \(unmatched) not in Starling's")
        }
    }

    /// YOLO: the raw predictions laid out scale by scale, anchor by anchor, cell by cell, and the per-class NMS
    /// against `YOLOHead.decode`.
    private func expectSameYOLODetections(_ detector: any Detector, images: Tensor, onnx: RuntimeOutputs) throws {
        let head = try #require(detector.head as? YOLOHead)
        let maps = detector.headOutputs(images, training: false)
        let (n, d) = (images.shape[0], head.depth)
        var rows: [Float] = []
        var predictions = 0
        for i in 0..<n {
            for (scale, map) in zip(head.scales, maps) {
                let plane = scale.height * scale.width
                for a in 0..<scale.anchors.count {
                    for cell in 0..<plane {
                        rows += (0..<d).map { map.data[((i * scale.anchors.count + a) * d + $0) * plane + cell] }
                    }
                }
                if i == 0 { predictions += scale.anchors.count * plane }
            }
        }
        #expect(onnx.shapes["predictions"] == [n, predictions, d])
        let worst = worstDifference(onnx.floats["predictions"] ?? [], rows)
        #expect(worst.value < 1e-4, "predictions: worst difference \(worst.value) at \(worst.at)")
        expectSameSuppression(head, maps: maps, onnx: onnx, predictions: predictions, imageSide: max(head.imageWidth, head.imageHeight))
    }

    /// YOLOv1's raw grid as Starling computes it, and the same detections after per-class NMS.
    private func expectSameYOLOv1Detections(_ detector: any Detector, images: Tensor, onnx: RuntimeOutputs) throws {
        let head = try #require(detector.head as? YOLOv1Head)
        let maps = detector.headOutputs(images, training: false)
        #expect(onnx.shapes["predictions"] == maps[0].shape)
        let worst = worstDifference(onnx.floats["predictions"] ?? [], maps[0].toArray())
        #expect(worst.value < 1e-4, "predictions: worst difference \(worst.value) at \(worst.at)")
        expectSameSuppression(head, maps: maps, onnx: onnx, predictions: head.gridHeight * head.gridWidth * head.boxesPerCell,
                              imageSide: max(head.imageWidth, head.imageHeight))
    }

    /// `head.decode` with every box kept against the ONNX graph's `detections` rows, their `boxes` and `scores`
    /// (`predictions` boxes an image).
    private func expectSameSuppression(_ head: any DetectionHead, maps: [Tensor], onnx: RuntimeOutputs, predictions: Int, imageSide: Int) {
        let n = maps[0].shape[0]
        var decoding = DetectionDecoding.evaluation
        decoding.topK = .max
        let found = head.decode(maps, decoding: decoding)
        let detections = onnx.ints["detections"] ?? [], boxes = onnx.floats["boxes"] ?? [], scores = onnx.floats["scores"] ?? []
        let c = head.classCount - 1
        var fromONNX: [Int: [DetectedBox]] = [:]
        for r in stride(from: 0, to: detections.count, by: 3) {
            let (image, cls, p) = (Int(detections[r]), Int(detections[r + 1]), Int(detections[r + 2]))
            let o = 4 * (image * predictions + p)
            fromONNX[image, default: []].append(DetectedBox(box: BoxCorners(xmin: boxes[o], ymin: boxes[o + 1], xmax: boxes[o + 2], ymax: boxes[o + 3]),
                                                            classID: cls, score: scores[(image * predictions + p) * c + cls - 1]))
        }
        let slack = 1e-4 * Float(imageSide)
        func close(_ x: DetectedBox, _ y: DetectedBox) -> Bool {
            x.classID == y.classID && abs(x.score - y.score) < 1e-4 && abs(x.box.xmin - y.box.xmin) < slack && abs(x.box.ymin - y.box.ymin) < slack
                && abs(x.box.xmax - y.box.xmax) < slack && abs(x.box.ymax - y.box.ymax) < slack
        }
        for i in 0..<n {
            // ONNX keeps at most topK boxes a class.
            let expected = Dictionary(grouping: found[i], by: \.classID).values.flatMap { $0.prefix(DetectionDecoding.evaluation.topK) }
            var unmatched = fromONNX[i, default: []]
            #expect(!expected.isEmpty && unmatched.count == expected.count, "image \(i): ONNX \(unmatched.count) detections, Starling \(expected.count)")
            var missing: [DetectedBox] = []
            for e in expected {
                if let k = unmatched.firstIndex(where: { close($0, e) }) { unmatched.remove(at: k) } else { missing.append(e) }
            }
            #expect(missing.isEmpty && unmatched.isEmpty, "image \(i): Starling's \(missing) not in ONNX's; ONNX's \(unmatched) not in Starling's")
        }
    }

    /// FPN's pooling in ONNX (`MultiScaleRoIAlign.onnx`: every level's RoiAlign, each row from its RoI's level) against
    /// the Tensor pooling of the same RoIs sorted by level and restored: RoIs on every level P2-P5 of a 256-pixel
    /// image, the pyramid a map and its subsamplings.
    @Test(.enabled(if: onnxRuntimeAvailable, "python3 with onnx and onnxruntime (pip install onnx onnxruntime)"))
    func multiScaleRoIAlignMatchesOnnxRuntime() throws {
        let shape = [2, 3, 64, 64]
        var rng = RandomGenerator(seed: 23)
        let features = Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in rng.uniform(-1, 1) })
        let rows: [(image: Int, box: BoxCorners)] = [(0, BoxCorners(xmin: 10, ymin: 10, xmax: 30, ymax: 34)), (1, BoxCorners(xmin: 20, ymin: 30, xmax: 140, ymax: 150)),
                                                     (0, BoxCorners(xmin: 0, ymin: 0, xmax: 250, ymax: 250)), (1, BoxCorners(xmin: -100, ymin: -100, xmax: 400, ymax: 400)),
                                                     (0, BoxCorners(xmin: 50, ymin: 60, xmax: 200, ymax: 180)), (1, BoxCorners(xmin: 3, ymin: 40, xmax: 9, ymax: 60))]
        #expect(Set(rows.map { MultiScaleRoIAlign.level(of: $0.box) }) == [2, 3, 4, 5])
        let pool = MultiScaleRoIAlign(outputSize: 7)
        let g = ONNXGraph()
        let x = g.input("images", shape: [-1] + shape.dropFirst())
        let rois = g.constant("rois", rows.flatMap { [Float($0.image), $0.box.xmin, $0.box.ymin, $0.box.xmax, $0.box.ymax] }, shape: [rows.count, 5])
        var levels = [x]
        for _ in 0..<3 { levels.append(levels.last!.maxPool2d(kernel: (1, 1), stride: (2, 2), padding: .valid)) }
        g.output(pool.onnx(levels, rois: rois), as: "pooled")
        let dir = Fixture.temporaryDirectory("onnx-multiscale")
        try AtomicFile.write(try g.model(producerVersion: "test", docString: "multi-scale RoIAlign").serializedBytes() as [UInt8], to: dir + "/pool.onnx")
        let onnx = try runONNX(dir + "/pool.onnx", input: features, in: dir)
        var pyramid = [LayoutTensor(features)]
        for _ in 0..<3 { pyramid.append(pyramid.last!.maxPool2d(kernel: (1, 1), stride: (2, 2), padding: .valid)) }
        let order = MultiScaleRoIAlign.order(rows)
        let pooled = pool(pyramid.map(\.tensor), rois: order.map { rows[$0] })
        let plane = pooled.count / rows.count
        let expected = MultiScaleRoIAlign.restore((0..<rows.count).map { Array(UnsafeBufferPointer(start: pooled.data + $0 * plane, count: plane)) }, order: order)
        #expect(onnx.shapes["pooled"] == [rows.count, 3, 7, 7])
        let worst = worstDifference(onnx.floats["pooled"] ?? [], expected.flatMap { $0 })
        #expect(worst.value < 1e-5, "worst difference \(worst.value) at \(worst.at)")
    }

    /// Mask R-CNN as a user exports it: a small model after a few steps on four real Penn-Fudan frames, saved,
    /// `starling convert --to onnx`, run by onnxruntime on those frames: the same detections (image, class, score,
    /// box) and 28 x 28 mask probabilities as `detectionsAndMasks` with the graph's decoding (127 detections). At
    /// 96 x 128 every RoI reads P2; `multiScaleRoIAlignMatchesOnnxRuntime` checks the other levels. Tolerances: oneDNN
    /// and onnxruntime sum the convolutions in different orders; the worst differences measured were 3.1e-4 pixel in a
    /// box, 5.2e-6 in a score and 5.7e-5 in a mask probability, under 2e-3 pixel, 1e-4 and 5e-4, which would still
    /// catch a wrong class, weight, clamp or clip.
    @Test(.enabled(if: onnxRuntimeAvailable, "python3 with onnx and onnxruntime (pip install onnx onnxruntime)"))
    func maskRCNNThroughConvertMatchesStarling() throws {
        let dir = Fixture.temporaryDirectory("onnx-mask-rcnn")
        guard let data = try pennFudanInstances(dir) else { return }   // shared data not here
        let source = SegmentationSource(dataset: try SegmentationDataset(path: data, split: "train"))
        var config = try MaskRCNN.configuration(for: source.datasetDescription)
        for (name, value) in ["width": 0.0625, "hidden": 32, "mask_width": 8, "rois_per_image": 32, "rpn_pre_nms_train": 300,
                              "rpn_post_nms_train": 300, "rpn_pre_nms_test": 300, "rpn_post_nms_test": 100, "anchor_size": 16] {
            config.options[name] = value
        }
        let model = try #require(try ModelRegistry.build(config, seed: 3) as? MaskRCNN)
        var batch = try source.batch(indices: Array(0..<source.count), epoch: 0, training: true, config: config)
        batch.seed = 1
        _ = overfit(model, &batch, steps: 5, learningRate: 2e-3)
        let checkpoint = dir + "/mask-rcnn.h5", path = dir + "/mask-rcnn.onnx"
        try Checkpoint.save(to: checkpoint, model: model, optimizer: nil, optimizerState: [], state: Checkpoint.TrainingState())
        let converted = try starling("convert", "--to", "onnx", checkpoint, path)
        try #require(converted.status == 0, "\(converted.error)")
        #expect(converted.output.contains("opset 16") && converted.output.contains("output masks: [D, 28, 28]"), "\(converted.output)")

        let frames = try source.batch(indices: Array(0..<source.count), epoch: 0, training: false, config: config)
        let onnx = try runONNX(path, input: frames.images, in: dir)
        let expected = model.detectionsAndMasks(frames, decoding: MaskRCNN.onnxDecoding)
        let images = onnx.ints["images_of_detections"] ?? [], labels = onnx.ints["labels"] ?? []
        let boxes = onnx.floats["boxes"] ?? [], scores = onnx.floats["scores"] ?? [], masks = onnx.floats["masks"] ?? []
        let plane = MaskHead.maskSize * MaskHead.maskSize
        try #require(labels.count == images.count && scores.count == images.count && boxes.count == 4 * images.count && masks.count == plane * images.count,
                     "output sizes \(onnx.shapes)")
        #expect(images.count == expected.map(\.count).reduce(0, +) && expected.allSatisfy { !$0.isEmpty },
                "ONNX \(images.count) detections, Starling \(expected.map(\.count))")
        var worstBox: Float = 0, worstScore: Float = 0, worstMask: Float = 0
        for (n, list) in expected.enumerated() {
            var unmatched = images.indices.filter { images[$0] == n }
            for (d, mask) in list {
                // The ONNX detection of the same class whose box is nearest.
                let offsets = unmatched.map { r in
                    (r, [d.box.xmin, d.box.ymin, d.box.xmax, d.box.ymax].enumerated().map { abs(boxes[4 * r + $0] - $1) }.max() ?? .infinity)
                }.filter { labels[$0.0] == Int64(d.classID) }
                guard let (r, offset) = offsets.min(by: { $0.1 < $1.1 }) else {
                    Issue.record("image \(n): Starling's \(d) has no ONNX detection of its class")
                    continue
                }
                unmatched.removeAll { $0 == r }
                worstBox = max(worstBox, offset)
                worstScore = max(worstScore, abs(scores[r] - d.score))
                worstMask = max(worstMask, zip(masks[(r * plane)..<((r + 1) * plane)], mask).map { abs($0 - $1) }.max() ?? 0)
            }
            #expect(unmatched.isEmpty, "image \(n): ONNX detections \(unmatched) not in Starling's")
            // Each image's detections come best first.
            let mine = images.indices.filter { images[$0] == n }.map { scores[$0] }
            #expect(mine == mine.sorted(by: >))
        }
        #expect(worstBox < 2e-3 && worstScore < 1e-4 && worstMask < 5e-4, "worst differences: box \(worstBox) px, score \(worstScore), mask \(worstMask)")
    }

    @Test func convertCommandWritesONNXAndRefusesWhatItCannot() throws {
        let dir = Fixture.temporaryDirectory("onnx-command")
        let model = try randomized(try ModelRegistry.defaultConfig(family: "vae"), seed: 5)
        let checkpoint = dir + "/vae.h5"
        try Checkpoint.save(to: checkpoint, model: model, optimizer: nil, optimizerState: [], state: Checkpoint.TrainingState())
        let ok = try starling("convert", "--to", "onnx", checkpoint, dir + "/vae.onnx")
        #expect(ok.status == 0, "\(ok.error)")
        #expect(ok.output.contains("output z_mean"))
        #expect(FileManager.default.fileExists(atPath: dir + "/vae.onnx"))
        let half = try starling("convert", "--to", "onnx", "--half", checkpoint, dir + "/half.onnx")
        #expect(half.status != 0 && half.error.contains("float32"))
        let back = try starling("convert", "--from", "onnx", "--model", "vae", dir + "/vae.onnx", dir + "/back.h5")
        #expect(back.status != 0 && back.error.contains("export format"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/half.onnx") && !FileManager.default.fileExists(atPath: dir + "/back.h5"))
        // A family without an export: one line naming the checkpoint, nothing written.
        let rcnn = try ModelRegistry.build(ModelConfig(family: RCNN.family, inputShape: [3, 64, 96], classNames: ["background", "car"]), seed: 1)
        try Checkpoint.save(to: dir + "/rcnn.h5", model: rcnn, optimizer: nil, optimizerState: [], state: Checkpoint.TrainingState())
        let refused = try starling("convert", "--to", "onnx", dir + "/rcnn.h5", dir + "/rcnn.onnx")
        #expect(refused.status != 0 && refused.error.contains("rcnn.h5: model rcnn has no ONNX export"), "\(refused.error)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/rcnn.onnx"))
    }
}
