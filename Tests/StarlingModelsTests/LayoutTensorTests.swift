import Testing
@testable import StarlingCore
@testable import StarlingNN
@testable import StarlingModels
@testable import StarlingDetection
@testable import StarlingAutoencoders
@testable import StarlingSegmentation

/// Every convolutional family's one forward pass run on `LayoutTensor`s (the blocked layout in training, oneDNN's
/// layout with folded batch norm and fused activations in inference) against the same pass on plain Tensors (every op
/// NCHW): outputs, every parameter's gradient and the moving statistics, with batch norm's parameters and statistics
/// moved off their initial values so that folding is exercised. The census checks the fast paths actually ran.
struct LayoutTensorTests {
    /// A family at a small size, and its forward pass on either kind of value.
    struct Family: CustomTestStringConvertible, Sendable {
        let name: String
        let config: @Sendable () -> ModelConfig
        let images: [Int]
        let pixelScale: Float
        let planar: @Sendable (any Model, Tensor, Bool) -> [Tensor]
        let laidOut: @Sendable (any Model, Tensor, Bool) -> [Tensor]
        /// Convolutions (blocked, planar) of the training pass and (oneDNN's layout, planar) of the inference pass: the
        /// planar ones are those no fast path covers (SSD300's dilated fc6, and a predictor with 12 outputs on its L2-normalised conv4_3).
        let training: (blocked: Int, planar: Int), inference: (laidOut: Int, planar: Int)
        /// Gradients agree to this, relative to the largest (see `trainingPassMatchesThePlanarOne`).
        var gradientTolerance: Float = 1e-3
        /// Batch norm + leaky ReLU run with the 2x2 pooling after them as one op in the training pass, and those of them
        /// read again by something else after the pooling (`DeferredNormalization`).
        var pooledNormalizations: (fused: Int, readAgain: Int) = (0, 0)
        /// Blocked convolutions run with the ReLU after them as one op in the training pass (`DeferredConvolution`).
        var convolutionsWithReLU = 0
        /// Blocked convolutions run with their ReLU and the 2x2 pooling after it as one op (`DeferredConvolution.rectifiedPooled`).
        var pooledConvolutions = 0
        /// Deferred batch norms + leaky ReLUs run with the residual sum after them as one op.
        var residualNormalizations = 0
        /// Batch norms + leaky ReLU that gave their convolution's output back after forward (in-place activated batch
        /// norm): every darknet block but the pooled and residual ones and the convolutions without batch norm.
        var normalizationsWithoutInput = 0
        /// Plain batch norms run with the ReLU after them as one op (`DeferredNormalization.rectified`): VGG's blocks
        /// (conv1_1's output given back after forward and computed again in backward: `normalizationsWithoutInput`).
        var normalizationsWithReLU = 0
        /// Transposed convolutions of the training pass run blocked, from blocked values into a narrow planar output, planar
        /// (checked where given).
        var transposed: (blocked: Int, narrow: Int, planar: Int)? = nil
        /// Convolutions + ReLU of two inputs whose concatenation never existed (U-Net's decoder: one a level).
        var concatenatedConvolutions = 0
        var testDescription: String { name }
    }

    static let classes = ["background", "car", "pedestrian"]

    static let families: [Family] = [
        Family(name: "ssd7", config: { SSD7.defaultConfig(height: 66, width: 98, classNames: classes) }, images: [2, 3, 66, 98],
               pixelScale: 255,
               planar: { m, x, t in (m as! SSD7).predictionMaps(x, training: t, crossReplicaSum: nil) },
               laidOut: { m, x, t in (m as! SSD7).predictionMaps(LayoutTensor(x), training: t, crossReplicaSum: nil).map(\.tensor) },
               training: (15, 0), inference: (15, 0)),
        Family(name: "ssd300", config: { SSD300.defaultConfig(classNames: classes, widthMultiplier: 0.125) }, images: [1, 3, 300, 300],
               pixelScale: 255,
               planar: { m, x, t in (m as! SSD300).predictionMaps(x, training: t) },
               laidOut: { m, x, t in (m as! SSD300).predictionMaps(LayoutTensor(x), training: t).map(\.tensor) },
               // Training: every convolution blocked but fc6 (dilated); the predictors on conv4_3 read its blocked L2 normalisation.
               training: (34, 1), inference: (34, 1), gradientTolerance: 1e-2, convolutionsWithReLU: 19, pooledConvolutions: 3),
        Family(name: "yolov3-tiny", config: { YOLOv3Tiny.defaultConfig(height: 96, width: 128, classNames: classes, widthMultiplier: 0.5) },
               images: [2, 3, 96, 128], pixelScale: 255,
               planar: { m, x, t in (m as! YOLOv3Tiny).outputMaps(x, training: t) },
               laidOut: { m, x, t in (m as! YOLOv3Tiny).outputMaps(LayoutTensor(x), training: t).map(\.tensor) },
               training: (13, 0), inference: (13, 0), pooledNormalizations: (5, 1), normalizationsWithoutInput: 6),
        Family(name: "yolov3", config: { YOLOv3.defaultConfig(height: 64, width: 64, classNames: classes, widthMultiplier: 0.25, depthMultiplier: 0.2) },
               images: [2, 3, 64, 64], pixelScale: 255,
               planar: { m, x, t in (m as! YOLOv3).outputMaps(x, training: t) },
               laidOut: { m, x, t in (m as! YOLOv3).outputMaps(LayoutTensor(x), training: t).map(\.tensor) },
               // 43 layers of batch norm and leaky ReLU carry the rounding of Starling's own 8-wide kernels (AVX2 CPUs)
               // against oneDNN's planar ones further than the other families: 1.0-2.2e-3 of the largest gradient on
               // Zen 3, under 1e-3 with STARLING_CONV=dnnl and on AVX-512; its fused ops equal the ops one by one to
               // the bit at either width (`residualSumReadsTheDeferredNormalization`).
               training: (43, 0), inference: (43, 0), gradientTolerance: 5e-3, residualNormalizations: 7,
               normalizationsWithoutInput: 40),
        Family(name: "yolov2", config: { YOLOv2.defaultConfig(height: 64, width: 96, classNames: classes, widthMultiplier: 0.25) },
               images: [2, 3, 64, 96], pixelScale: 255,
               planar: { m, x, t in (m as! YOLOv2).outputMaps(x, training: t) },
               laidOut: { m, x, t in (m as! YOLOv2).outputMaps(LayoutTensor(x), training: t).map(\.tensor) },
               training: (23, 0), inference: (23, 0), pooledNormalizations: (5, 1), normalizationsWithoutInput: 17),
        Family(name: "yolov1", config: { YOLOv1.defaultConfig(height: 64, width: 128, classNames: classes, widthMultiplier: 0.125) },
               images: [2, 3, 64, 128], pixelScale: 255,
               planar: { m, x, t in (m as! YOLOv1).outputMaps(x, training: t) },
               laidOut: { m, x, t in (m as! YOLOv1).outputMaps(LayoutTensor(x), training: t).map(\.tensor) },
               training: (24, 0), inference: (24, 0), pooledNormalizations: (4, 0), normalizationsWithoutInput: 20),
        Family(name: "fast-rcnn", config: { smallFastRCNNConfig(height: 64, width: 96, classNames: classes) }, images: [2, 3, 64, 96], pixelScale: 255,
               planar: { m, x, t in let (l, d) = (m as! FastRCNN).regionOutputs(x, rois: fastRCNNRoIs(), training: t); return [l, d] },
               laidOut: { m, x, t in
                   let (l, d) = (m as! FastRCNN).regionOutputs(LayoutTensor(x), rois: LayoutTensor(fastRCNNRoIs()), training: t)
                   return [l.tensor, d.tensor]
               },
               training: (13, 0), inference: (13, 0), pooledNormalizations: (4, 0), normalizationsWithoutInput: 1, normalizationsWithReLU: 13),
        // faster-rcnn's one pass over the shared map: the backbone's features and the RPN's objectness and deltas (its 1x1
        // outputs, 9 and 36 channels, train planar).
        Family(name: "faster-rcnn", config: { smallFasterRCNNConfig }, images: [2, 3, 64, 96], pixelScale: 255,
               planar: { m, x, t in let (f, rpn) = (m as! FasterRCNN).network(x, training: t); return [f, rpn[0].objectness, rpn[0].deltas] },
               laidOut: { m, x, t in
                   let (f, rpn) = (m as! FasterRCNN).network(LayoutTensor(x), training: t)
                   return [f.tensor, rpn[0].objectness.tensor, rpn[0].deltas.tensor]
               },
               training: (14, 2), inference: (16, 0), pooledNormalizations: (3, 0), convolutionsWithReLU: 1, normalizationsWithoutInput: 1,
               normalizationsWithReLU: 11),   // at width 1/16 conv1_1 and conv1_2 (4 channels) train planar
        // rcnn's CNN on warped windows (the "images" here are the windows, already scaled).
        Family(name: "rcnn", config: { ModelConfig(family: RCNN.family, inputShape: [3, 64, 96], options: ["width": 0.25, "hidden": 32, "warp": 32], classNames: classes) },
               images: [6, 3, 32, 32], pixelScale: 1,
               planar: { m, x, t in let o = (m as! RCNN).network(x); return [o.pool5, o.fc7, o.logits] },
               laidOut: { m, x, t in let o = (m as! RCNN).network(LayoutTensor(x)); return [o.pool5.tensor, o.fc7.tensor, o.logits.tensor] },
               training: (4, 0), inference: (4, 0), pooledConvolutions: 4),
        // U-Net with same padding on odd sizes (the up-convolutions padded back) and with valid padding (skips cropped).
        Family(name: "unet", config: { ModelConfig(family: UNet.family, inputShape: [3, 36, 50], options: ["width": 0.25, "levels": 3], classNames: classes) },
               images: [2, 3, 36, 50], pixelScale: 255,
               planar: { m, x, t in [(m as! UNet).logits(x)] },
               laidOut: { m, x, t in [(m as! UNet).logits(LayoutTensor(x)).tensor] },
               training: (11, 0), inference: (11, 0), concatenatedConvolutions: 2),
        Family(name: "unet-valid", config: { ModelConfig(family: UNet.family, inputShape: [3, 44, 44], options: ["width": 0.25, "levels": 3, "valid": 1], classNames: classes) },
               images: [2, 3, 44, 44], pixelScale: 255,
               planar: { m, x, t in [(m as! UNet).logits(x)] },
               laidOut: { m, x, t in [(m as! UNet).logits(LayoutTensor(x)).tensor] },
               training: (11, 0), inference: (11, 0), concatenatedConvolutions: 2),
        // An eighth of the width: the first level's 8 channels in 8-channel blocks in a 16-wide pass (oneDNN in nChw8c).
        Family(name: "unet-eighth", config: { ModelConfig(family: UNet.family, inputShape: [3, 32, 48], options: ["width": 0.125, "levels": 3], classNames: classes) },
               images: [2, 3, 32, 48], pixelScale: 255,
               planar: { m, x, t in [(m as! UNet).logits(x)] },
               laidOut: { m, x, t in [(m as! UNet).logits(LayoutTensor(x)).tensor] },
               training: (11, 0), inference: (11, 0), concatenatedConvolutions: 2),
        Family(name: "conv-ae", config: { ConvAutoencoder.defaultConfig() }, images: [4, 1, 28, 28], pixelScale: 1,
               planar: { m, x, t in [reconstruction(m as! ConvAutoencoder, x, training: t)] },
               laidOut: { m, x, t in [(m as! ConvAutoencoder).reconstructionLogits(LayoutTensor(x), training: t).tensor] },
               training: (7, 0), inference: (7, 0)),
        Family(name: "denoising-ae", config: { DenoisingAutoencoder.defaultConfig() }, images: [4, 1, 28, 28], pixelScale: 1,
               planar: { m, x, t in [reconstruction(m as! DenoisingAutoencoder, x, training: t)] },
               laidOut: { m, x, t in [(m as! DenoisingAutoencoder).reconstructionLogits(LayoutTensor(x), training: t).tensor] },
               training: (5, 0), inference: (5, 0)),
        Family(name: "conv-vae", config: { ConvVariationalAutoencoder.defaultConfig() }, images: [4, 1, 28, 28], pixelScale: 1,
               planar: { m, x, t in let (mean, v) = (m as! ConvVariationalAutoencoder).posterior(x); return [mean, v] },
               laidOut: { m, x, t in let (mean, v) = (m as! ConvVariationalAutoencoder).posterior(LayoutTensor(x)); return [mean.tensor, v.tensor] },
               training: (2, 0), inference: (2, 0), convolutionsWithReLU: 2),
        // The decoder from latents [4, 2]: the reshaped dense output blocked once, two up-convolutions with their ReLUs
        // blocked, the last into the planar image on the narrow kernels.
        Family(name: "conv-vae-decoder", config: { ConvVariationalAutoencoder.defaultConfig() }, images: [4, 2], pixelScale: 1,
               planar: { m, z, t in [(m as! ConvVariationalAutoencoder).decoderLogits(z, imageShape: [z.shape[0], 1, 28, 28])] },
               laidOut: { m, z, t in [(m as! ConvVariationalAutoencoder).decoderLogits(LayoutTensor(z), imageShape: [z.shape[0], 1, 28, 28]).tensor] },
               training: (0, 0), inference: (0, 0), transposed: (2, NarrowOutput.enabled ? 1 : 0, NarrowOutput.enabled ? 0 : 1)),
    ]

    /// The autoencoders' pass on plain Tensors: from a generic context, which calls the generic pass (a Tensor argument
    /// elsewhere picks the overload that runs on LayoutTensors).
    static func reconstruction<Value: NetworkValue>(_ model: ConvAutoencoder, _ x: Value, training: Bool) -> Value {
        model.reconstructionLogits(x, training: training)
    }

    static func reconstruction<Value: NetworkValue>(_ model: DenoisingAutoencoder, _ x: Value, training: Bool) -> Value {
        model.reconstructionLogits(x, training: training)
    }

    /// Regions on both images of fast-rcnn's 64 x 96 inputs, one reaching past the border.
    static func fastRCNNRoIs() -> Tensor {
        Tensor(shape: [3, 5], values: [0, 4, 6, 50, 60, 1, 30, 2, 95, 40, 1, 60, 20, 110, 70])
    }

    /// Two models with the same weights, batch norm's moved off 1, 0, 0, 1 alike.
    static func twins(_ family: Family) throws -> [any Model] {
        let config = family.config()
        let models = try (0..<2).map { _ in try ModelRegistry.build(config, seed: 21) }
        var rng = RandomGenerator(seed: 22)
        let normalisation = models[0].parameters.parameters.filter { $0.name.contains("bn") } + (models[0].buffers?.parameters ?? [])
        for parameter in normalisation {
            let positive = parameter.name.hasSuffix("variance") || parameter.name.hasSuffix("gamma")
            let values = (0..<parameter.count).map { _ in positive ? rng.uniform(0.5, 1.5) : rng.uniform(-0.3, 0.3) }
            for model in models {
                let t = try #require(model.parameters[parameter.name] ?? model.buffers?[parameter.name]).value
                for (i, v) in values.enumerated() { t.data[i] = v }
            }
        }
        return models
    }

    static func images(_ family: Family) -> Tensor {
        var rng = RandomGenerator(seed: 23)
        return Tensor(shape: family.images, values: (0..<family.images.reduce(1, *)).map { _ in rng.uniform(0, family.pixelScale) })
    }

    /// RoI pooling and RoIAlign of blocked features read them planar: the Tensor ops' values and gradients.
    @Test func regionPoolingOfBlockedFeatures() {
        var rng = RandomGenerator(seed: 9)
        let values = (0..<(2 * 16 * 6 * 7)).map { _ in rng.uniform(-1, 1) }
        let rois = Tensor(shape: [3, 5], values: [0, 1, 1, 10, 9, 1, 0, 2, 13, 11, 1, 4.5, 3.2, 8.1, 7.7])
        func run(_ laidOut: Bool) -> (values: [Float], gradient: [Float]) {
            let x = Tensor.variable(shape: [2, 16, 6, 7], values: values)
            let features = laidOut ? LayoutTensor(.blocked(x.blocked8(), moments: nil)) : LayoutTensor(x)
            let pooled = features.roiMaxPool(rois: LayoutTensor(rois), outputHeight: 2, outputWidth: 2, spatialScale: 0.5).tensor
            let aligned = features.roiAlign(rois: LayoutTensor(rois), outputHeight: 3, outputWidth: 3, spatialScale: 0.5, samplingRatio: 0,
                                            aligned: true).tensor
            (pooled.sum() + aligned.sum()).backward()
            return (pooled.toArray() + aligned.toArray(), x.gradArray ?? [])
        }
        let (planar, blocked) = (run(false), run(true))
        #expect(planar.values == blocked.values && !planar.values.isEmpty)
        let worst = zip(planar.gradient, blocked.gradient).map { abs($0 - $1) }.max() ?? .infinity
        // The two maps' gradients meet in another order (each through its own unblocking): rounding apart.
        #expect(planar.gradient.count == blocked.gradient.count && worst < 1e-6, "gradient differs by \(worst)")
    }

    /// A blocked training convolution read first by a ReLU runs with it as one op (`DeferredConvolution`, one buffer kept
    /// instead of two): the values and every gradient to the bit as the two ops on blocked Tensors. Read again by
    /// something else after the ReLU (here a sum), the convolution runs a second time for that reader, a node of its own,
    /// and the gradients of the two add up as the one convolution's (to rounding: they meet in another order).
    @Test(arguments: [8, 16]) func convolutionReadByAReLURunsWithIt(width: Int) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let store = ParameterStore()
        let conv = Conv2D(store, name: "conv", inputs: 16, outputs: 32)
        var rng = RandomGenerator(seed: 61)
        store.allocate(rng: &rng)
        for i in 0..<conv.bias.count { conv.bias.value.data[i] = 0.2 * rng.normal() }
        let values = (0..<(2 * 16 * 6 * 10)).map { _ in rng.uniform(-1, 1) }
        func pass(laidOut: Bool, readAgain: Bool) -> (values: [Float], gradients: [[Float]], census: LayoutCensus) {
            store.zeroGradients()
            let x = Tensor.variable(shape: [2, 16, 6, 10], values: values)
            let census = LayoutCensus()
            let output: Tensor = LayoutTensor.$census.withValue(census) {
                if laidOut {
                    let y = LayoutTensor(.blocked(x.blocked(width: width), moments: nil)).applying(conv)
                    let a = y.relu()
                    return (readAgain ? a + y : a).tensor
                }
                let y = x.blocked(width: width).conv2dBlocked(conv.kernel.value, bias: conv.bias.value, stride: (1, 1), padding: .same,
                                                             width: width)
                let a = y.relu()
                return (readAgain ? a + y : a).unblocked()
            }
            weightedSum([output]).backward()
            return (output.toArray(), [x.gradArray ?? [], conv.kernel.value.gradArray ?? [], conv.bias.value.gradArray ?? []], census)
        }
        let (fused, twoOps) = (pass(laidOut: true, readAgain: false), pass(laidOut: false, readAgain: false))
        #expect(fused.census.convolutionsWithReLU == 1 && fused.census.convolutionsReadAfterReLU == 0)
        #expect(fused.values == twoOps.values && fused.values.contains { $0 > 0 } && fused.values.contains { $0 == 0 })
        for k in 0..<3 { #expect(fused.gradients[k] == twoOps.gradients[k] && !fused.gradients[k].isEmpty, "gradient \(k)") }

        let (again, reference) = (pass(laidOut: true, readAgain: true), pass(laidOut: false, readAgain: true))
        #expect(again.census.convolutionsWithReLU == 1 && again.census.convolutionsReadAfterReLU == 1)
        #expect(again.values == reference.values)
        for k in 0..<3 {
            let worst = worstDifference(again.gradients[k], reference.gradients[k])
            #expect(worst.value < 1e-5, "gradient \(k): worst difference \(worst.value) at \(worst.at)")
        }
    }

    /// A training batch norm on blocked values read first by a ReLU runs with it as one op (`DeferredNormalization.rectified`:
    /// the normalised values not kept beside the rectified ones), and with a 2x2 pooling after that as one op: against
    /// the ops one by one on blocked Tensors, the values and the moving statistics to the bit, the gradients to 1e-5 of
    /// the largest (the fused ops take the batch statistics from the convolution's channel sums and, pooled, sum over the
    /// windows' maxima). Read again after the ReLU (here added to the rectified values), the batch norm runs alone for
    /// that reader, the moving statistics updated once.
    @Test(arguments: [false, true], [false, true]) func normalizationReadByAReLURunsWithIt(pooling: Bool, readAgain: Bool) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let (store, buffers) = (ParameterStore(), ParameterStore(trainable: false))
        let conv = Conv2D(store, name: "conv", inputs: 16, outputs: 16)
        let norm = BatchNormalization(store, buffers: buffers, name: "bn", channels: 16)
        var rng = RandomGenerator(seed: 87)
        store.allocate(rng: &rng)
        buffers.allocate(rng: &rng)
        for i in 0..<16 { norm.gamma.value.data[i] = rng.uniform(0.5, 1.5) * (i % 3 == 0 ? -1 : 1); norm.beta.value.data[i] = 0.2 * rng.normal() }
        let values = (0..<(2 * 16 * 6 * 10)).map { _ in rng.uniform(-1, 1) }
        let initialStatistics = buffers.values.toArray()
        let width = ChannelLayout.blockWidth
        func pass(laidOut: Bool) -> (values: [Float], gradients: [Float], statistics: [Float], census: LayoutCensus) {
            store.zeroGradients()
            initialStatistics.withUnsafeBufferPointer { buffers.values.pointer.update(from: $0.baseAddress!, count: $0.count) }
            let x = Tensor.variable(shape: [2, 16, 6, 10], values: values)
            let census = LayoutCensus()
            let output: Tensor = LayoutTensor.$census.withValue(census) {
                if laidOut {
                    let n = LayoutTensor(.blocked(x.blocked(width: width), moments: nil)).applying(conv).applying(norm, training: true, crossReplicaSum: nil)
                    let a = n.relu()
                    let y = pooling ? a.maxPool2d(kernel: (2, 2), stride: nil, padding: .valid) : a
                    return (readAgain && !pooling ? y + n : y).tensor
                }
                let c = x.blocked(width: width).conv2dBlocked(conv.kernel.value, bias: conv.bias.value, stride: (1, 1), padding: .same, width: width)
                let n = norm.normalizing(c, training: true, crossReplicaSum: nil, layout: .blocked)
                let a = n.relu()
                let y = pooling ? a.maxPool2x2Blocked() : a
                return (readAgain && !pooling ? y + n : y).unblocked()
            }
            weightedSum([output]).backward()
            return (output.toArray(), store.gradients.toArray() + (x.gradArray ?? []), buffers.values.toArray(), census)
        }
        let (fused, twoOps) = (pass(laidOut: true), pass(laidOut: false))
        #expect(fused.census.normalizationsWithReLU == 1 && fused.census.pooledNormalizations == (pooling ? 1 : 0))
        #expect(fused.census.normalizationsReadAfterPooling == (readAgain && !pooling ? 1 : 0))
        #expect(fused.values == twoOps.values && fused.values.contains { $0 > 0 })
        #expect(fused.statistics == twoOps.statistics && fused.statistics != initialStatistics)
        let worst = worstDifference(fused.gradients, twoOps.gradients)
        #expect(worst.value < 1e-5, "gradients: worst difference \(worst.value) at \(worst.at)")
    }

    /// A cheap convolution (3 channels in: an image's first layer, VGG's conv1_1) read by a batch norm and then a ReLU
    /// hands its output over, which the batch norm + ReLU gives back after forward and gets again in backward by running
    /// the convolution again: against the ops one by one, the values and moving statistics to the bit, the gradients to
    /// 1e-5 of the largest. Read again after the ReLU, the plain batch norm reads the convolution run a second time.
    @Test(arguments: [false, true]) func cheapConvolutionIsComputedAgainInBackward(readAgain: Bool) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let (store, buffers) = (ParameterStore(), ParameterStore(trainable: false))
        let conv = Conv2D(store, name: "conv", inputs: 3, outputs: 16)
        let norm = BatchNormalization(store, buffers: buffers, name: "bn", channels: 16)
        var rng = RandomGenerator(seed: 89)
        store.allocate(rng: &rng)
        buffers.allocate(rng: &rng)
        for i in 0..<16 { norm.gamma.value.data[i] = rng.uniform(0.5, 1.5); norm.beta.value.data[i] = 0.2 * rng.normal() }
        let values = (0..<(2 * 3 * 8 * 10)).map { _ in rng.uniform(-1, 1) }
        let initialStatistics = buffers.values.toArray()
        func pass(laidOut: Bool) -> (values: [Float], gradients: [Float], statistics: [Float], census: LayoutCensus) {
            store.zeroGradients()
            initialStatistics.withUnsafeBufferPointer { buffers.values.pointer.update(from: $0.baseAddress!, count: $0.count) }
            let x = Tensor.variable(shape: [2, 3, 8, 10], values: values)
            let census = LayoutCensus()
            let output: Tensor = LayoutTensor.$census.withValue(census) {
                if laidOut {
                    let n = LayoutTensor(x).applying(conv).applying(norm, training: true, crossReplicaSum: nil)
                    let a = n.relu()
                    return (readAgain ? a + n : a).tensor
                }
                let c = x.conv2dBlocked(conv.kernel.value, bias: conv.bias.value, stride: (1, 1), padding: .same, width: LayoutTensor.blockWidth)
                let n = norm.normalizing(c, training: true, crossReplicaSum: nil, layout: .blocked)
                let a = n.relu()
                return (readAgain ? a + n : a).unblocked()
            }
            weightedSum([output]).backward()
            return (output.toArray(), store.gradients.toArray() + (x.gradArray ?? []), buffers.values.toArray(), census)
        }
        let (fused, twoOps) = (pass(laidOut: true), pass(laidOut: false))
        #expect(fused.census.normalizationsWithReLU == 1 && fused.census.normalizationsWithoutInput == 1)
        #expect(fused.census.convolutionsReadAfterReLU == (readAgain ? 1 : 0))
        // The statistics come from the 3-channel convolution's own sums here, not batch norm's pass: equal to rounding.
        #expect(worstDifference(fused.values, twoOps.values).value < 1e-5 && fused.values.contains { $0 > 0 })
        #expect(worstDifference(fused.statistics, twoOps.statistics).value < 1e-5 && fused.statistics != initialStatistics)
        let worst = worstDifference(fused.gradients, twoOps.gradients)
        #expect(worst.value < 1e-5, "gradients: worst difference \(worst.value) at \(worst.at)")
    }

    /// A deferred batch norm + leaky ReLU read first by a sum with a blocked value (darknet's shortcut) runs with the sum
    /// as one op: values and gradients to the bit as the ops run one by one when it keeps the convolution's output
    /// (`residualKeepsInput`), to 1e-5 of the largest when it gives it back (the default: y recovered as the sum minus
    /// the residual, to the sum's rounding). Read again after the sum, it runs alone for that reader (the moving
    /// statistics updated once), and the gradients add up to rounding.
    @Test(arguments: [false, true], [false, true]) func residualSumReadsTheDeferredNormalization(readAgain: Bool, keepsInput: Bool) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let (store, buffers) = (ParameterStore(), ParameterStore(trainable: false))
        let conv = Conv2D(store, name: "conv", inputs: 16, outputs: 16)
        let norm = BatchNormalization(store, buffers: buffers, name: "bn", channels: 16)
        var rng = RandomGenerator(seed: 81)
        store.allocate(rng: &rng)
        buffers.allocate(rng: &rng)
        for i in 0..<16 { norm.gamma.value.data[i] = rng.uniform(0.5, 1.5); norm.beta.value.data[i] = 0.2 * rng.normal() }
        let values = (0..<(2 * 16 * 6 * 8)).map { _ in rng.uniform(-1, 1) }
        let initialStatistics = buffers.values.toArray()
        // The width models train in on this CPU (16 with AVX-512, 8 without): the fusion runs in that layout.
        let width = ChannelLayout.blockWidth
        func pass(laidOut: Bool) -> (values: [Float], gradients: [Float], statistics: [Float], census: LayoutCensus) {
            store.zeroGradients()
            initialStatistics.withUnsafeBufferPointer { buffers.values.pointer.update(from: $0.baseAddress!, count: $0.count) }
            let x = Tensor.variable(shape: [2, 16, 6, 8], values: values)
            let census = LayoutCensus()
            let output: Tensor = LayoutTensor.$census.withValue(census) {
                if laidOut {
                    return DeferredNormalization.$residualKeepsInput.withValue(keepsInput) {
                        let h = LayoutTensor(.blocked(x.blocked(width: width), moments: nil))
                        let d = h.applying(conv).applyingWithLeakyReLU(norm, slope: 0.1, training: true, crossReplicaSum: nil)
                        let sum = h + d
                        return (readAgain ? sum + d : sum).tensor
                    }
                }
                let h = x.blocked(width: width)
                let y = norm.withLeakyReLU(h.conv2dBlocked(conv.kernel.value, bias: conv.bias.value, stride: (1, 1), padding: .same, width: width),
                                           training: true, slope: 0.1, layout: .blocked)
                let sum = h + y
                return (readAgain ? sum + y : sum).unblocked()
            }
            weightedSum([output]).backward()
            return (output.toArray(), store.gradients.toArray() + (x.gradArray ?? []), buffers.values.toArray(), census)
        }
        let (fast, reference) = (pass(laidOut: true), pass(laidOut: false))
        #expect(fast.census.residualNormalizations == 1 && fast.census.normalizationsReadAfterPooling == (readAgain ? 1 : 0))
        #expect(fast.census.normalizationsWithoutInput == (keepsInput ? 0 : 1))
        #expect(fast.values == reference.values && fast.statistics == reference.statistics && fast.statistics != initialStatistics)
        if readAgain || !keepsInput {
            let worst = worstDifference(fast.gradients, reference.gradients)
            #expect(worst.value < 1e-5, "gradients: worst difference \(worst.value) at \(worst.at)")
        } else {
            #expect(fast.gradients == reference.gradients)
        }
    }

    /// A deferred convolution read first by batch norm + leaky ReLU hands its output to it, which gives the values back
    /// after forward (in-place activated batch norm) and recovers x - mean from its output in backward; the convolution
    /// read again afterwards runs a second time for that reader. Against the ops one by one keeping the output: the same
    /// values and moving statistics to the bit, gradients within 1e-5 of the largest (recomputed z and x - mean, so to
    /// rounding).
    @Test(arguments: [false, true]) func normalizationGivesBackTheConvolutionOutput(readAgain: Bool) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let (store, buffers) = (ParameterStore(), ParameterStore(trainable: false))
        let conv = Conv2D(store, name: "conv", inputs: 16, outputs: 16)
        let norm = BatchNormalization(store, buffers: buffers, name: "bn", channels: 16)
        var rng = RandomGenerator(seed: 83)
        store.allocate(rng: &rng)
        buffers.allocate(rng: &rng)
        for i in 0..<16 { norm.gamma.value.data[i] = rng.uniform(0.5, 1.5); norm.beta.value.data[i] = 0.2 * rng.normal() }
        let values = (0..<(2 * 16 * 6 * 8)).map { _ in rng.uniform(-1, 1) }
        let initialStatistics = buffers.values.toArray()
        let width = ChannelLayout.blockWidth
        func pass(laidOut: Bool) -> (values: [Float], gradients: [Float], statistics: [Float], census: LayoutCensus) {
            store.zeroGradients()
            initialStatistics.withUnsafeBufferPointer { buffers.values.pointer.update(from: $0.baseAddress!, count: $0.count) }
            let x = Tensor.variable(shape: [2, 16, 6, 8], values: values)
            let census = LayoutCensus()
            let outputs: [Tensor] = LayoutTensor.$census.withValue(census) {
                if laidOut {
                    let c = LayoutTensor(.blocked(x.blocked(width: width), moments: nil)).applying(conv)
                    let d = c.applyingWithLeakyReLU(norm, slope: 0.1, training: true, crossReplicaSum: nil)
                    let y = d.tensor
                    return readAgain ? [y, c.tensor] : [y]
                }
                let c = x.blocked(width: width).conv2dBlocked(conv.kernel.value, bias: conv.bias.value, stride: (1, 1), padding: .same, width: width)
                let y = norm.withLeakyReLU(c, training: true, slope: 0.1, layout: .blocked).unblocked()
                return readAgain ? [y, c.unblocked()] : [y]
            }
            weightedSum(outputs).backward()
            return (outputs.flatMap { $0.toArray() }, store.gradients.toArray() + (x.gradArray ?? []), buffers.values.toArray(), census)
        }
        let (fast, reference) = (pass(laidOut: true), pass(laidOut: false))
        #expect(fast.census.normalizationsWithoutInput == 1 && fast.census.convolutionsReadAfterReLU == (readAgain ? 1 : 0))
        #expect(fast.values == reference.values && fast.statistics == reference.statistics && fast.statistics != initialStatistics)
        let worst = worstDifference(fast.gradients, reference.gradients)
        #expect(worst.value < 1e-5, "gradients: worst difference \(worst.value) at \(worst.at)")
    }

    @Test(arguments: families) func trainingPassMatchesThePlanarOne(_ family: Family) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }   // STARLING_LAYOUT=nchw or no oneDNN: nothing to compare
        let models = try Self.twins(family)
        let x = Self.images(family)
        let census = LayoutCensus()
        let fast = LayoutTensor.$census.withValue(census) { family.laidOut(models[0], x, true) }
        let plain = family.planar(models[1], x, true)
        #expect(census.blocked == family.training.blocked && census.planar == family.training.planar,
                "\(census.blocked) convolutions ran blocked, \(census.planar) planar")
        #expect(census.pooledNormalizations == family.pooledNormalizations.fused
                    && census.normalizationsReadAfterPooling == family.pooledNormalizations.readAgain,
                "\(census.pooledNormalizations) batch norms pooled in one op, \(census.normalizationsReadAfterPooling) read again")
        #expect(census.residualNormalizations == family.residualNormalizations, "\(census.residualNormalizations) residual sums fused")
        #expect(census.normalizationsWithoutInput == family.normalizationsWithoutInput,
                "\(census.normalizationsWithoutInput) batch norms gave their input back")
        #expect(census.convolutionsWithReLU == family.convolutionsWithReLU && census.convolutionsReadAfterReLU == 0,
                "\(census.convolutionsWithReLU) convolutions run with their ReLU, \(census.convolutionsReadAfterReLU) read again")
        #expect(census.pooledConvolutions == family.pooledConvolutions && census.convolutionsReadAfterPooling == 0,
                "\(census.pooledConvolutions) convolutions run with their ReLU and pooling, \(census.convolutionsReadAfterPooling) read again")
        #expect(census.normalizationsWithReLU == family.normalizationsWithReLU, "\(census.normalizationsWithReLU) batch norms run with their ReLU")
        #expect(census.concatenatedConvolutions == family.concatenatedConvolutions,
                "\(census.concatenatedConvolutions) convolutions over a concatenation that was never made")
        if let transposed = family.transposed {
            #expect(census.transposedBlocked == transposed.blocked && census.transposedNarrow == transposed.narrow
                        && census.transposedPlanar == transposed.planar,
                    "transposed convolutions: \(census.transposedBlocked) blocked, \(census.transposedNarrow) narrow, \(census.transposedPlanar) planar")
        }
        for (k, (a, b)) in zip(fast, plain).enumerated() {
            #expect(a.shape == b.shape)
            let worst = worstDifference(a.toArray(), b.toArray())
            #expect(worst.value < 1e-4, "output \(k): worst difference \(worst.value) at \(worst.at)")
        }
        weightedSum(fast).backward()
        weightedSum(plain).backward()
        // Relative to each parameter's largest gradient, except biases in front of batch norm, whose gradients are zero
        // up to rounding (the normalisation removes the mean): relative to the whole model's largest. SSD300's ReLUs and
        // max-pooling route whole gradients by comparisons that rounding can flip (0.2-0.7 % of the largest gradient in
        // its first ten layers with Starling's kernels, under 0.1 % with `STARLING_CONV=dnnl`): a looser bound there.
        let largest = models[1].parameters.gradients.toArray().map(abs).max() ?? 1
        for parameter in models[0].parameters.parameters {
            let other = try #require(models[1].parameters[parameter.name])
            let (a, b) = (parameter.value.gradArray ?? [], other.value.gradArray ?? [])
            #expect(a.count == b.count, "\(parameter.name): a gradient on one side only")
            let worst = min(worstDifference(a, b).value, worstDifference(a + [largest], b + [largest]).value)
            #expect(worst < family.gradientTolerance, "\(parameter.name) gradient: worst relative difference \(worst) (largest \(a.map(abs).max() ?? 0) of \(largest))")
        }
        for buffer in models[0].buffers?.parameters ?? [] {
            let worst = worstDifference(buffer.value.toArray(), try #require(models[1].buffers?[buffer.name]).value.toArray())
            #expect(worst.value < 1e-4, "\(buffer.name): worst difference \(worst.value)")
        }
    }

    /// A training pass (outputs, every parameter's gradient, the moving statistics) in 8-channel blocks against the same
    /// pass in 16-channel blocks, whatever the CPU: the two widths run different kernels (Starling's own convolutions at 8,
    /// oneDNN's nChw16c ones at 16) and sum in other orders, so they agree to rounding, as each agrees with the planar pass.
    @Test(arguments: ["ssd7", "yolov3-tiny", "unet-eighth", "conv-vae-decoder"]) func blockWidthsGiveTheSameStep(_ name: String) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let family = try #require(Self.families.first { $0.name == name })
        let models = try Self.twins(family)
        let x = Self.images(family)
        var censuses: [LayoutCensus] = []
        let outputs = [8, 16].enumerated().map { k, width in
            let census = LayoutCensus()
            censuses.append(census)
            let y = LayoutTensor.$blockWidth.withValue(width) { LayoutTensor.$census.withValue(census) { family.laidOut(models[k], x, true) } }
            weightedSum(y).backward()
            return y
        }
        for census in censuses { #expect(census.blocked == family.training.blocked && census.planar == family.training.planar) }
        for (k, (a, b)) in zip(outputs[0], outputs[1]).enumerated() {
            #expect(a.shape == b.shape)
            let worst = worstDifference(a.toArray(), b.toArray())
            #expect(worst.value < 1e-4, "output \(k): worst difference \(worst.value) at \(worst.at)")
        }
        let largest = models[0].parameters.gradients.toArray().map(abs).max() ?? 1
        for parameter in models[0].parameters.parameters {
            let (a, b) = (parameter.value.gradArray ?? [], try #require(models[1].parameters[parameter.name]).value.gradArray ?? [])
            #expect(a.count == b.count && !a.isEmpty, "\(parameter.name): a gradient on one side only")
            let worst = min(worstDifference(a, b).value, worstDifference(a + [largest], b + [largest]).value)
            #expect(worst < family.gradientTolerance, "\(parameter.name) gradient: worst relative difference \(worst)")
        }
        for buffer in models[0].buffers?.parameters ?? [] {
            let worst = worstDifference(buffer.value.toArray(), try #require(models[1].buffers?[buffer.name]).value.toArray())
            #expect(worst.value < 1e-4, "\(buffer.name): worst difference \(worst.value)")
        }
    }

    @Test(arguments: families) func inferencePassMatchesThePlanarOne(_ family: Family) throws {
        guard DNNLActivation.isAvailable else { return }
        let model = try Self.twins(family)[0]
        let x = Self.images(family)
        let census = LayoutCensus()
        let fast = GradMode.disabled { LayoutTensor.$census.withValue(census) { family.laidOut(model, x, false) } }
        let plain = GradMode.disabled { family.planar(model, x, false) }
        #expect(census.pending == family.inference.laidOut && census.planar == family.inference.planar,
                "\(census.pending) convolutions ran in oneDNN's layout, \(census.planar) planar")
        for (k, (a, b)) in zip(fast, plain).enumerated() {
            #expect(a.shape == b.shape)
            let worst = worstDifference(a.toArray(), b.toArray())
            #expect(worst.value < 1e-4, "output \(k): worst difference \(worst.value) at \(worst.at)")
        }
    }

    /// conv-vae's training loss (`negativeELBO`: encoder and decoder on LayoutTensors, blocked) against the same objective
    /// on plain Tensors (every op NCHW, the transposed convolutions on the planar op): the loss, and every parameter's
    /// gradient relative to its largest, in 8- and 16-channel blocks.
    @Test(arguments: [8, 16]) func convVAELossMatchesThePlanarOne(width: Int) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let family = try #require(Self.families.first { $0.name == "conv-vae" })
        let models = try Self.twins(family)
        let (fastModel, plainModel) = (try #require(models[0] as? ConvVariationalAutoencoder), try #require(models[1] as? ConvVariationalAutoencoder))
        let x = Self.images(family)
        let batch = Batch(images: x, indices: Array(0..<x.shape[0]), epoch: 0, seed: 1)
        let census = LayoutCensus()
        let fast = LayoutTensor.$blockWidth.withValue(width) { LayoutTensor.$census.withValue(census) { fastModel.loss(batch, training: true) } }
        let (mean, logVariance) = plainModel.posterior(x)
        let z = plainModel.sampleLatent(mean: mean, logVariance: logVariance,
                                        noise: plainModel.latentNoise(batch, dimensions: mean.shape[1], training: true))
        let plain = plainModel.decoderLogits(z, imageShape: x.shape).binaryCrossEntropy(logits: x) * Float(28 * 28)
            + Tensor.klDivergenceStandardNormal(mean: mean, logVariance: logVariance, reduction: .meanOfSampleSums)
        #expect(census.blocked == 2 && census.planar == 0 && census.transposedBlocked == 2 && census.transposedPlanar == (NarrowOutput.enabled ? 0 : 1),
                "\(census.blocked) convolutions blocked, transposed: \(census.transposedBlocked) blocked, \(census.transposedPlanar) planar")
        #expect(abs(fast.item - plain.item) <= 1e-5 * abs(plain.item), "loss \(fast.item) against \(plain.item)")
        fast.backward()
        plain.backward()
        for parameter in fastModel.parameters.parameters {
            let other = try #require(plainModel.parameters[parameter.name])
            let (a, b) = (parameter.value.gradArray ?? [], other.value.gradArray ?? [])
            #expect(a.count == b.count && !a.isEmpty, "\(parameter.name): a gradient on one side only")
            let worst = worstDifference(a, b).value
            #expect(worst < 1e-3, "\(parameter.name) gradient: worst relative difference \(worst) (largest \(b.map(abs).max() ?? 0))")
        }
    }

    /// What training, evaluation and indexing call (through the protocols, as the Trainer and the evaluator do) runs
    /// on LayoutTensors: the training loss blocked, reconstructions and codes and detections in oneDNN's layout.
    @Test(arguments: ["conv-ae", "denoising-ae", "conv-vae", "ssd7", "yolov3-tiny"]) func entryPointsTakeTheFastPaths(_ name: String) throws {
        guard ChannelLayout.blockedTrainingEnabled, DNNLActivation.isAvailable else { return }
        let family = try #require(Self.families.first { $0.name == name })
        let model = try Self.twins(family)[0]
        let x = Self.images(family)
        var batch = Batch(images: x, indices: Array(0..<x.shape[0]), epoch: 0, seed: 1)
        if let encoder = model.targetEncoder {
            batch.objects = Array(repeating: [Object(box: BoxCorners(xmin: 10, ymin: 10, xmax: 40, ymax: 50), classID: 1)], count: x.shape[0])
            encoder.encodeTargets(into: &batch)
        }
        let training = LayoutCensus(), inference = LayoutCensus()
        LayoutTensor.$census.withValue(training) { model.loss(batch, training: true).backward() }
        #expect(training.blocked > 0, "\(name): the loss ran \(training.blocked) convolutions blocked, \(training.planar) planar")
        GradMode.disabled {
            LayoutTensor.$census.withValue(inference) {
                if let autoencoder = model as? any Autoencoder & Encoding {
                    _ = autoencoder.reconstruction(x)
                    _ = autoencoder.code(x)
                } else if let detector = model as? any Detector {
                    _ = detector.detect(x, decoding: .evaluation)
                }
            }
        }
        #expect(inference.pending > 0 && inference.planar == 0, "\(name): inference ran \(inference.pending) convolutions laid out, \(inference.planar) planar")
    }

}
