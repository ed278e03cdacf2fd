import Foundation
import Testing
@testable import StarlingCore

/// The convolution algorithm (`ConvolutionAlgorithm.swift`): STARLING_WINOGRAD's values, a rule that no batch or thread
/// count changes, Winograd's passes where oneDNN has them (direct elsewhere), and both algorithms' errors against a
/// float64 reference on layers of the models' size.
@Suite struct ConvolutionAlgorithmTests {
    @Test func settingValues() {
        #expect(WinogradSetting.parse(nil) == .success(.rule))
        #expect(WinogradSetting.parse("") == .success(.rule))
        #expect(WinogradSetting.parse("1") == .success(.always))
        #expect(WinogradSetting.parse("0") == .success(.never))
        for bad in ["yes", "2", "on", " 1", "winograd"] {
            #expect(WinogradSetting.parse(bad) == .failure(SettingValueError(variable: "STARLING_WINOGRAD", value: bad, accepted: ["0", "1"])))
            #expect(SettingValueError(variable: "STARLING_WINOGRAD", value: bad, accepted: ["0", "1"]).description
                    == "STARLING_WINOGRAD=\(bad): expected 0 or 1")
        }
    }

    static func geometry(batch: Int, _ cin: Int, _ cout: Int, _ size: Int, kernel: Int = 3, stride: Int = 1,
                         padding: Padding = .same) -> ConvGeometry {
        ConvGeometry(input: [batch, cin, size, size], weight: [cout, cin, kernel, kernel], stride: (stride, stride), padding: padding,
                     dilation: (1, 1), groups: 1)
    }

    /// Every rank of a job asks for the same algorithm whatever its share of the batch: the rule reads one image's shape.
    @Test func ruleIgnoresTheBatch() {
        for layer in ConvAlgorithmBenchmark.layers {
            let asked = [1, 2, 3, 8, 16, 128].map { batch in
                ConvolutionPass.allCases.map {
                    Self.geometry(batch: batch, layer.inChannels, layer.outChannels, layer.height).requestedAlgorithm($0, setting: .rule)
                }
            }
            #expect(Set(asked).count == 1, "\(layer.description): \(asked)")
        }
    }

    /// The pass the rule keeps direct for its scratch (BENCHMARKS.md "U-Net's Winograd scratch by shape"): the weight
    /// gradient of a layer of 256 x 256 channels or more on 2 x 2 tiles an image (copies of 9 MB of transformed weights,
    /// whatever the images); its neighbours keep Winograd. Shape only: every rank and replica asks the same
    /// (`ruleIgnoresTheBatch`).
    @Test func ruleKeepsScratchHeavyPassesDirect() {
        func asked(_ cin: Int, _ cout: Int, _ size: Int) -> [ConvolutionPass: ConvolutionAlgorithm] {
            Dictionary(uniqueKeysWithValues: ConvolutionPass.allCases.map {
                ($0, Self.geometry(batch: 4, cin, cout, size).requestedAlgorithm($0, setting: .rule, fullWidthDirect: false))
            })
        }
        // U-Net's bottleneck at width 0.25 and 0.5.
        #expect(asked(256, 256, 8) == [.forward: .winograd, .backwardData: .winograd, .backwardWeights: .direct])
        #expect(asked(512, 512, 8)[.backwardWeights] == .direct)
        // Kept: 128 -> 256 at 8 x 8 (weights a quarter as large), 256 -> 128 at 16 x 16 (4 x 4 tiles), 16 -> 16 and
        // 32 -> 32, yolov3-tiny's 512 -> 1024 and 256 -> 512 at 13 x 13.
        for (cin, cout, size) in [(128, 256, 8), (256, 128, 16), (16, 16, 128), (32, 32, 64), (512, 1024, 13), (256, 512, 13), (512, 512, 12)] {
            #expect(asked(cin, cout, size).values.allSatisfy { $0 == .winograd }, "\(cin) -> \(cout) at \(size)")
        }
    }

    /// On a CPU with full-width AVX-512 direct kernels (an Intel Xeon), the forward passes and input gradients that sum
    /// 16 channels, or fewer than 512 on maps of 8 x 8 or fewer, stay direct, as measured there; their weight gradients and every
    /// wider pass keep the rule of the other CPUs. Shape and CPU class only: every rank of a cluster of one CPU asks the same.
    @Test func fullWidthRuleKeepsNarrowAndSmallPassesDirect() {
        func asked(_ cin: Int, _ cout: Int, _ size: Int, fullWidth: Bool) -> [ConvolutionPass: ConvolutionAlgorithm] {
            Dictionary(uniqueKeysWithValues: ConvolutionPass.allCases.map {
                ($0, Self.geometry(batch: 4, cin, cout, size).requestedAlgorithm($0, setting: .rule, fullWidthDirect: fullWidth))
            })
        }
        // U-Net's 16 -> 16 at 128 x 128 (width 0.25): forward and input gradient direct, weight gradient Winograd.
        #expect(asked(16, 16, 128, fullWidth: true) == [.forward: .direct, .backwardData: .direct, .backwardWeights: .winograd])
        #expect(asked(16, 16, 128, fullWidth: false).values.allSatisfy { $0 == .winograd })
        // yolov3-tiny's 16 -> 32 on 208 x 208: its forward sums 16 channels; its input gradient sums 32.
        #expect(asked(16, 32, 208, fullWidth: true) == [.forward: .direct, .backwardData: .winograd, .backwardWeights: .winograd])
        #expect(asked(16, 32, 208, fullWidth: false)[.forward] == .winograd)
        // 32 -> 16 at 128 x 128: forward sums 32 (Winograd), the input gradient sums 16 (direct on both classes).
        #expect(asked(32, 16, 128, fullWidth: true) == [.forward: .winograd, .backwardData: .direct, .backwardWeights: .winograd])
        // U-Net's bottleneck at width 0.25 (8 x 8): forward and input gradient direct; 256 x 256's weight gradient is
        // direct on both classes (its scratch), 128 -> 256's keeps Winograd.
        #expect(asked(128, 256, 8, fullWidth: true) == [.forward: .direct, .backwardData: .direct, .backwardWeights: .winograd])
        #expect(asked(256, 256, 8, fullWidth: true) == [.forward: .direct, .backwardData: .direct, .backwardWeights: .direct])
        #expect(asked(128, 256, 8, fullWidth: false).values.allSatisfy { $0 == .winograd })
        // At width 1 the bottleneck sums 512 and 1024 channels: Winograd on both classes (its weight gradient direct).
        #expect(asked(512, 1024, 8, fullWidth: true) == [.forward: .winograd, .backwardData: .winograd, .backwardWeights: .direct])
        // Wider passes on larger maps are the same on both classes.
        for (cin, cout, size) in [(32, 32, 64), (64, 128, 52), (256, 512, 13), (48, 48, 9), (32, 32, 14)] {
            #expect(asked(cin, cout, size, fullWidth: true) == asked(cin, cout, size, fullWidth: false), "\(cin) -> \(cout) at \(size)")
        }
    }

    /// Only 3x3 kernels at stride 1 with at most one pixel of padding ask for Winograd, whatever the setting.
    @Test func shapesWinogradTakes() {
        #expect(Self.geometry(batch: 2, 64, 64, 32).winogradShape)
        #expect(Self.geometry(batch: 2, 64, 64, 32, padding: .valid).winogradShape)
        #expect(!Self.geometry(batch: 2, 64, 64, 32, kernel: 5).winogradShape)
        #expect(!Self.geometry(batch: 2, 64, 64, 32, stride: 2).winogradShape)
        #expect(!Self.geometry(batch: 2, 64, 64, 32, kernel: 1).winogradShape)
        #expect(!Self.geometry(batch: 2, 64, 64, 32, padding: .explicit(top: 2, bottom: 2, left: 2, right: 2)).winogradShape)
        for pass in ConvolutionPass.allCases {
            #expect(Self.geometry(batch: 2, 64, 64, 32, kernel: 5).requestedAlgorithm(pass, setting: .always) == .direct)
            #expect(Self.geometry(batch: 2, 64, 64, 32).requestedAlgorithm(pass, setting: .always) == .winograd)
            #expect(Self.geometry(batch: 2, 64, 64, 32).requestedAlgorithm(pass, setting: .never) == .direct)
        }
    }

    /// Asked for Winograd, oneDNN runs its `jit_wino_4x3` kernels where its CPU level is AVX-512 and refuses elsewhere,
    /// where the plan runs direct: a plan exists either way.
    @Test func winogradWhereOneDNNHasIt() throws {
        var g = Self.geometry(batch: 2, 32, 32, 16)
        g.winograd = .always
        let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: 16, destinationWidth: 16)
        let backward = try #require(DNNLConvPlans.plan(g, images: 2, variant: .backward, layouts: layouts))
        let forward = try #require(DNNLConvPlans.plan(g, images: 2, variant: .forward(bias: true, inference: nil), layouts: layouts))
        let hasWinograd = DNNLActivation.instructionSet.hasPrefix("avx512")
        let expected: ConvolutionAlgorithm = hasWinograd ? .winograd : .direct
        #expect(forward.algorithms.forward == expected)
        #expect(backward.algorithms.backwardData == expected && backward.algorithms.backwardWeights == expected)
        let names = forward.implementations.values.joined(separator: " ") + " " + backward.implementations.values.joined(separator: " ")
        #expect(names.contains("wino") == hasWinograd, "\(names)")
        // Inference runs direct (its outputs match the ONNX export's to float32 rounding), with or without a post-op.
        for activation in [FusedActivation.identity, .elu(alpha: 1), .leakyRelu(slope: 0)] {
            let inference = try #require(DNNLConvPlans.plan(g, images: 1, variant: .forward(bias: true, inference: activation), layouts: layouts))
            #expect(inference.algorithms.forward == .direct)
        }
        // A post-op oneDNN's Winograd lacks refuses it, and the plan runs direct; the ReLU it has (U-Net's blocks in training).
        var refused = DNNLConvPlan.Algorithms()
        refused.forward = .winograd
        let elu = try #require(DNNLConvPlan(g, images: 1, variant: .activatedTrainingForward(bias: true, activation: .elu(alpha: 1)),
                                            layouts: layouts, algorithms: refused))
        #expect(elu.algorithms.forward == .direct)
        let relu = try #require(DNNLConvPlans.plan(g, images: 2, variant: .activatedTrainingForward(bias: true, activation: .leakyRelu(slope: 0)),
                                                   layouts: layouts))
        #expect(relu.algorithms.forward == expected)
    }

    /// STARLING_WINOGRAD_CALL_MB's values: whole megabytes, default when unset or empty.
    @Test func callBudgetValues() {
        #expect(WinogradCallBudget.parse(nil) == .success(WinogradCallBudget.defaultMegabytes << 20))
        #expect(WinogradCallBudget.parse("") == .success(WinogradCallBudget.defaultMegabytes << 20))
        #expect(WinogradCallBudget.parse("32") == .success(32 << 20))
        for bad in ["0", "-5", "1.5", "64MB", " 64", "2000000"] {
            #expect(WinogradCallBudget.parse(bad) == .failure(WinogradCallBudgetError(value: bad)))
        }
    }

    /// A Winograd pass with the call budget forced small, so that the batch goes through in several calls, equals the
    /// same pass in one call within the Winograd tolerance, on all three passes (the weight gradient summed over the
    /// chunks); with a budget below one image's call, the passes run direct, in one call.
    @Test func chunkedWinogradEqualsOneCall() throws {
        let b = ChannelLayout.blockWidth
        let (n, cin, cout, size) = (6, 32, 48, 20)
        let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: b, destinationWidth: b)
        let forward = DNNLConvPlan.Variant.forward(bias: true, inference: nil)
        var whole = Self.geometry(batch: n, cin, cout, size)
        whole.winograd = .always
        whole.winogradCallBudget = 1 << 40
        // Per plan (forward; both gradients), the budget is what its call takes for two images.
        var chunkedGeometries: [ConvGeometry] = []
        for variant in [forward, .backward] {
            var g = whole
            g.winogradCallBudget = try #require(DNNLConvPlans.plan(whole, images: 2, variant: variant, layouts: layouts)).callBytes.values.max() ?? 0
            chunkedGeometries.append(g)
        }
        var tiny = whole
        tiny.winogradCallBudget = 4096
        let winograd = DNNLActivation.instructionSet.hasPrefix("avx512")
        for (variant, chunked) in zip([forward, .backward], chunkedGeometries) {
            #expect(whole.dnnlChunk(variant, layouts: layouts) == n)
            let chunk = chunked.dnnlChunk(variant, layouts: layouts)
            // Chunked only where a pass runs Winograd (oneDNN 2.x has none below AVX-512).
            #expect(winograd ? chunk < n : chunk == n, "\(variant): \(chunk) images a call")
            let plan = try #require(DNNLConvPlans.plan(chunked, images: chunk, variant: variant, layouts: layouts))
            #expect(plan.runsWinograd == winograd)
            #expect((plan.callBytes.values.max() ?? 0) <= chunked.winogradCallBudget || !winograd)
            #expect(tiny.dnnlChunk(variant, layouts: layouts) == n)
            let small = try #require(DNNLConvPlans.plan(tiny, images: n, variant: variant, layouts: layouts))
            #expect(!small.runsWinograd)
        }

        var rng = RandomGenerator(seed: 23)
        func random(_ count: Int, _ scale: Float) -> FloatStorage { uniformStorage(count, scale, &rng) }
        let x = random(n * cin * size * size, 1), weight = random(cout * cin * 9, 0.08), bias = random(cout, 0.1)
        let dy = random(n * cout * size * size, 1)
        func passes(_ g: ConvGeometry) -> [ConvolutionPass: FloatStorage] {
            let y = FloatStorage(uninitializedCount: dy.count), dx = FloatStorage(uninitializedCount: x.count)
            let dw = FloatStorage(count: weight.count)
            let ran = g.dnnlConvolve(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, beta: 0, layouts: layouts)
                && g.dnnlAccumulateInputGradient(outputGrad: dy.pointer, weight: weight.pointer, into: dx.pointer, layouts: layouts,
                                                 accumulate: false)
                && g.dnnlAccumulateWeightGradient(input: x.pointer, outputGrad: dy.pointer, into: dw.pointer, layouts: layouts)
            #expect(ran)
            return [.forward: y, .backwardData: dx, .backwardWeights: dw]
        }
        let (one, forwardChunked, backwardChunked, direct) = (passes(whole), passes(chunkedGeometries[0]), passes(chunkedGeometries[1]),
                                                             passes(tiny))
        for pass in ConvolutionPass.allCases {
            let several = pass == .forward ? forwardChunked : backwardChunked
            let (a, c, d) = (one[pass]!, several[pass]!, direct[pass]!)
            let scale = (0..<a.count).reduce(Float(0)) { Swift.max($0, abs(a.pointer[$1])) }
            let chunkError = (0..<a.count).reduce(Float(0)) { Swift.max($0, abs(a.pointer[$1] - c.pointer[$1])) } / scale
            let directError = (0..<a.count).reduce(Float(0)) { Swift.max($0, abs(a.pointer[$1] - d.pointer[$1])) } / scale
            #expect(scale > 1)
            #expect(Double(chunkError) < ConvolutionAccuracy.winogradBound, "\(pass): chunked against one call \(chunkError)")
            // Winograd against direct, within the same bound: the tiny budget's passes are a second computation.
            #expect(Double(directError) < ConvolutionAccuracy.winogradBound, "\(pass): direct against Winograd \(directError)")
        }
    }

    /// Both algorithms against float64 at sampled points, on layers of the models' channel counts and maps (fewer
    /// images): direct within 1e-6 of the result's scale, Winograd within `winogradBound` (README, "Winograd for the 3x3
    /// convolutions"), a bound a wrong transform (a wrong tap, tile or sign) misses by orders of magnitude.
    @Test(arguments: [
        ConvAlgorithmBenchmark.Layer(model: "unet-w1", name: "down1_conv2", batch: 2, inChannels: 128, outChannels: 128, height: 32, width: 32),
        ConvAlgorithmBenchmark.Layer(model: "unet-w0.25", name: "up0_conv1", batch: 2, inChannels: 32, outChannels: 16, height: 40, width: 40),
        ConvAlgorithmBenchmark.Layer(model: "ssd7", name: "conv4", batch: 2, inChannels: 64, outChannels: 64, height: 37, width: 60),
        ConvAlgorithmBenchmark.Layer(model: "yolov3-tiny", name: "conv_21", batch: 1, inChannels: 384, outChannels: 256, height: 13, width: 13),
        ConvAlgorithmBenchmark.Layer(model: "odd", name: "24 channels", batch: 2, inChannels: 24, outChannels: 40, height: 11, width: 9),
    ])
    func errorsAgainstFloat64(_ layer: ConvAlgorithmBenchmark.Layer) {
        let direct = ConvolutionAccuracy.measure(layer, setting: .never, samples: 300)
        let winograd = ConvolutionAccuracy.measure(layer, setting: .always, samples: 300)
        for pass in ConvolutionPass.allCases {
            let d = direct.relative[pass] ?? .infinity, w = winograd.relative[pass] ?? .infinity
            #expect(direct.algorithms[pass] == .direct)
            #expect(d < 1e-6, "\(layer.description) \(pass) direct: \(d)")
            if layer.model != "odd" {
                #expect(winograd.algorithms[pass] == (DNNLActivation.instructionSet.hasPrefix("avx512") ? .winograd : .direct))
            }
            #expect(w < ConvolutionAccuracy.winogradBound, "\(layer.description) \(pass) \(winograd.algorithms[pass]?.rawValue ?? "?"): \(w)")
        }
    }

    /// Plans whose one-image Winograd call passes the budget only for its transformed weights run in slices of the
    /// output channels (`DNNLConvPlans.algorithms`): with the budget lowered to twice what a one-image call of k slices
    /// takes, the smallest such k is chosen whatever the batch, and each pass (forward with bias, adding or not; input gradient
    /// overwriting and adding; weight gradient adding) equals the unsliced Winograd call within the Winograd tolerance,
    /// in NCHW and in blocks, over several chunks of images.
    @Test(arguments: [(4, false), (8, false), (4, true), (8, true)])
    func slicedWinogradEqualsUnsliced(_ slices: Int, _ blocked: Bool) throws {
        let b = ChannelLayout.blockWidth
        // Weights large next to oneDNN's fixed ~6 MB of Winograd scratch (per-thread tile buffers), as at yolov2's.
        let (n, cin, cout, size) = (5, 256, 512, 12)
        let layouts = blocked ? DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: b, destinationWidth: b)
                              : .planar
        let forward = DNNLConvPlan.Variant.forward(bias: true, inference: nil)
        var whole = Self.geometry(batch: n, cin, cout, size)
        whole.winograd = .always
        whole.winogradCallBudget = 1 << 40
        whole.winogradSlicingThreads = .max
        // Two images a call by the copies' budget (2, 2, 1: the tail plan too), sliced and not.
        whole.dnnlChunkBudget = 2 * (cin + cout) * size * size
        let winograd = DNNLActivation.instructionSet.hasPrefix("avx512")
        var sliced: [ConvGeometry] = []
        for variant in [forward, .backward] {
            #expect(DNNLConvPlans.algorithms(whole, variant: variant, layouts: layouts).slices == 1)
            var asked = DNNLConvPlans.algorithms(whole, variant: variant, layouts: layouts)
            asked.slices = slices
            let one = try #require(DNNLConvPlan(whole, images: 1, variant: variant, layouts: layouts, algorithms: asked))
            #expect(one.sliceChannels == cout / slices && one.algorithms.slices == slices)
            var g = whole
            g.winogradCallBudget = 2 * (one.callBytes.values.max() ?? 0)
            let chosen = DNNLConvPlans.algorithms(g, variant: variant, layouts: layouts)
            #expect(chosen.slices == (winograd ? slices : 1), "\(variant): \(chosen)")
            // More threads than slice (by default two): those passes direct, unsliced, as before.
            var unsliced = g
            unsliced.winogradSlicingThreads = 0
            let plain = DNNLConvPlans.algorithms(unsliced, variant: variant, layouts: layouts)
            let overBudget = ConvolutionPass.allCases.filter { chosen[$0] == .winograd && plain[$0] == .direct }
            #expect(plain.slices == 1 && (!winograd || !overBudget.isEmpty), "\(variant): \(plain)")
            // The rule reads one image: another batch gets the same slices.
            var other = Self.geometry(batch: 7, cin, cout, size)
            (other.winograd, other.winogradCallBudget, other.dnnlChunkBudget) = (g.winograd, g.winogradCallBudget, g.dnnlChunkBudget)
            other.winogradSlicingThreads = .max
            #expect(DNNLConvPlans.algorithms(other, variant: variant, layouts: layouts) == chosen)
            if winograd {
                #expect(g.dnnlChunk(variant, layouts: layouts) == 2)
                let plan = try #require(DNNLConvPlans.plan(g, images: g.dnnlChunk(variant, layouts: layouts), variant: variant, layouts: layouts))
                #expect(plan.algorithms.slices == slices && plan.runsWinograd)
                #expect((plan.callBytes.values.max() ?? 0) <= g.winogradCallBudget)
                #expect(ConvolutionCalls.largest(100).contains { $0.contains("in \(slices) slices of \(cout / slices) output channels") })
            }
            sliced.append(g)
        }

        var rng = RandomGenerator(seed: 29)
        func random(_ count: Int, _ scale: Float) -> FloatStorage { uniformStorage(count, scale, &rng) }
        let x = random(n * cin * size * size, 1), weight = random(cout * cin * 9, 0.08), bias = random(cout, 0.1)
        let dy = random(n * cout * size * size, 1)
        let y0 = random(dy.count, 1), dx0 = random(x.count, 1), dw0 = random(weight.count, 1)
        func copy(_ s: FloatStorage) -> FloatStorage {
            let c = FloatStorage(uninitializedCount: s.count)
            c.pointer.update(from: s.pointer, count: s.count)
            return c
        }
        // Forward overwriting and adding, input gradient overwriting and adding, weight gradient adding.
        func passes(_ forwardGeometry: ConvGeometry, _ backwardGeometry: ConvGeometry) -> [FloatStorage] {
            let y = FloatStorage(uninitializedCount: dy.count), yAdded = copy(y0)
            let dx = FloatStorage(uninitializedCount: x.count), dxAdded = copy(dx0), dw = copy(dw0)
            let (f, g) = (forwardGeometry, backwardGeometry)
            let ran = f.dnnlConvolve(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, beta: 0, layouts: layouts)
                && f.dnnlConvolve(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: yAdded.pointer, beta: 1, layouts: layouts)
                && g.dnnlAccumulateInputGradient(outputGrad: dy.pointer, weight: weight.pointer, into: dx.pointer, layouts: layouts,
                                                 accumulate: false)
                && g.dnnlAccumulateInputGradient(outputGrad: dy.pointer, weight: weight.pointer, into: dxAdded.pointer, layouts: layouts)
                && g.dnnlAccumulateWeightGradient(input: x.pointer, outputGrad: dy.pointer, into: dw.pointer, layouts: layouts)
            #expect(ran)
            return [y, yAdded, dx, dxAdded, dw]
        }
        let reference = passes(whole, whole), result = passes(sliced[0], sliced[1])
        for (name, (a, c)) in zip(["forward", "forward adding", "input gradient", "input gradient adding", "weight gradient adding"],
                                  zip(reference, result)) {
            let scale = (0..<a.count).reduce(Float(0)) { Swift.max($0, abs(a.pointer[$1])) }
            let error = (0..<a.count).reduce(Float(0)) { Swift.max($0, abs(a.pointer[$1] - c.pointer[$1])) } / scale
            #expect(scale > 1)
            #expect(Double(error) < ConvolutionAccuracy.winogradBound, "\(name), \(slices) slices, blocked \(blocked): \(error)")
        }
    }

    /// The sliced passes' gradients against finite differences of the sliced forward pass: L = sum(r * conv(x, W) + b),
    /// linear in x and in W, so that a central difference of any step is exact but for rounding (a slice lost or
    /// added twice moves a gradient by a quarter of itself).
    @Test func slicedWinogradGradientsAgainstFiniteDifferences() throws {
        let (n, cin, cout, size, slices) = (2, 256, 512, 8, 4)
        var g = Self.geometry(batch: n, cin, cout, size)
        (g.winograd, g.winogradSlicingThreads) = (.always, .max)
        var asked = DNNLConvPlans.algorithms(g, variant: .backward, layouts: .planar)
        asked.slices = slices
        let one = try #require(DNNLConvPlan(g, images: 1, variant: .backward, layouts: .planar, algorithms: asked))
        g.winogradCallBudget = 2 * (one.callBytes.values.max() ?? 0)
        let winograd = DNNLActivation.instructionSet.hasPrefix("avx512")
        #expect((DNNLConvPlans.algorithms(g, variant: .backward, layouts: .planar).slices > 1) == winograd)

        var rng = RandomGenerator(seed: 31)
        func random(_ count: Int, _ scale: Float) -> FloatStorage { uniformStorage(count, scale, &rng) }
        let x = random(n * cin * size * size, 1), weight = random(cout * cin * 9, 0.05), bias = random(cout, 0.1)
        let r = random(n * cout * size * size, 1)
        let y = FloatStorage(uninitializedCount: r.count)
        func loss() -> Double {
            #expect(g.dnnlConvolve(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, beta: 0))
            return (0..<r.count).reduce(0.0) { $0 + Double(r.pointer[$1]) * Double(y.pointer[$1]) }
        }
        let dx = FloatStorage(uninitializedCount: x.count), dw = FloatStorage(count: weight.count)
        #expect(g.dnnlAccumulateInputGradient(outputGrad: r.pointer, weight: weight.pointer, into: dx.pointer, accumulate: false))
        #expect(g.dnnlAccumulateWeightGradient(input: x.pointer, outputGrad: r.pointer, into: dw.pointer))
        let step: Float = 2
        func check(_ values: FloatStorage, _ gradient: FloatStorage, _ name: String) {
            for _ in 0..<12 {
                let i = Int(rng.next() % UInt64(values.count))
                let saved = values.pointer[i]
                values.pointer[i] = saved + step
                let up = loss()
                values.pointer[i] = saved - step
                let down = loss()
                values.pointer[i] = saved
                let numeric = (up - down) / Double(2 * step)
                #expect(abs(numeric - Double(gradient.pointer[i])) < 5e-3 * Swift.max(1, abs(numeric)), "\(name)[\(i)]: \(numeric) against \(gradient.pointer[i])")
            }
        }
        check(x, dx, "dx")
        check(weight, dw, "dw")
    }
}

/// `count` values uniform in [-scale, scale) from `rng`.
private func uniformStorage(_ count: Int, _ scale: Float, _ rng: inout RandomGenerator) -> FloatStorage {
    let s = FloatStorage(uninitializedCount: count)
    for i in 0..<count { s.pointer[i] = rng.uniform(-scale, scale) }
    return s
}
