#if canImport(Glibc)
import Glibc
#endif

/// `bench --only conv-algorithms`: every 3x3 stride-1 convolution of the suite's conv models, each training pass timed
/// with oneDNN's direct kernels and with Winograd's F(4x4, 3x3), interleaved (direct, Winograd, direct, ...), through
/// the calls training makes (`ConvGeometry`'s oneDNN passes in the blocked layout of this CPU, chunks and reorders
/// included). The evidence behind `ConvGeometry.winogradPays`.
public enum ConvAlgorithmBenchmark {
    /// One 3x3 layer: a model's name for it, its image shape and the batch its model trains at in the suite.
    public struct Layer: Sendable {
        public let model: String, name: String
        public let batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int
        /// The layer reads the image (NCHW, no input gradient).
        public var readsImage: Bool { inChannels < 8 }
        public var description: String { "\(model) \(name) \(inChannels)->\(outChannels) \(height)x\(width) batch \(batch)" }
    }

    /// U-Net at widths 1 and 0.25 (128 x 128, batch 8: the suite's unet-128 and unet-128-w0.25), yolov3-tiny's 3x3
    /// layers (416 x 416, batch 8), SSD7's conv2-conv6 (300 x 480, batch 16) and denoising-ae's (28 x 28, batch 128).
    public static let layers: [Layer] = {
        var list: [Layer] = []
        for (model, base) in [("unet-w1", 64), ("unet-w0.25", 16)] {
            var inputs = 3
            for level in 0..<5 {
                let c = base << level, size = 128 >> level
                list.append(Layer(model: model, name: "down\(level)_conv1", batch: 8, inChannels: inputs, outChannels: c, height: size, width: size))
                list.append(Layer(model: model, name: "down\(level)_conv2", batch: 8, inChannels: c, outChannels: c, height: size, width: size))
                inputs = c
            }
            for level in (0..<4).reversed() {
                let c = base << level, size = 128 >> level
                list.append(Layer(model: model, name: "up\(level)_conv1", batch: 8, inChannels: 2 * c, outChannels: c, height: size, width: size))
                list.append(Layer(model: model, name: "up\(level)_conv2", batch: 8, inChannels: c, outChannels: c, height: size, width: size))
            }
        }
        var inputs = 3
        for (index, filters) in [16, 32, 64, 128, 256, 512, 1024].enumerated() {
            let size = index == 6 ? 13 : 416 >> index
            list.append(Layer(model: "yolov3-tiny", name: "conv_\(2 * index)", batch: 8, inChannels: inputs, outChannels: filters, height: size, width: size))
            inputs = filters
        }
        list.append(Layer(model: "yolov3-tiny", name: "conv_14", batch: 8, inChannels: 256, outChannels: 512, height: 13, width: 13))
        list.append(Layer(model: "yolov3-tiny", name: "conv_21", batch: 8, inChannels: 384, outChannels: 256, height: 26, width: 26))
        for (index, shape) in [(32, 48, 150, 240), (48, 64, 75, 120), (64, 64, 37, 60), (64, 48, 18, 30), (48, 48, 9, 15)].enumerated() {
            list.append(Layer(model: "ssd7", name: "conv\(index + 2)", batch: 16, inChannels: shape.0, outChannels: shape.1, height: shape.2, width: shape.3))
        }
        for (name, size) in [("conv2d_2", 14), ("conv2d_3", 7), ("conv2d_4", 14)] {
            list.append(Layer(model: "denoising-ae", name: name, batch: 128, inChannels: 32, outChannels: 32, height: size, width: size))
        }
        return list
    }()

    /// The seconds of one pass by each algorithm in every round, and what oneDNN ran.
    public struct Pass: Sendable {
        public let pass: ConvolutionPass
        public let direct: [Double], winograd: [Double]
        public let flops: Double
        /// oneDNN's implementation names (`jit:avx512_core`, `jit_wino_4x3:avx512_core`).
        public let directImplementation: String, winogradImplementation: String
        /// The algorithm the rule (STARLING_WINOGRAD unset) asks for.
        public let rule: ConvolutionAlgorithm

        /// Median time of direct over Winograd's, and the lowest and highest ratio of a round.
        public var speedup: (median: Double, low: Double, high: Double) {
            let ratios = zip(direct, winograd).map { $0 / $1 }
            return (median(direct) / median(winograd), ratios.min() ?? 0, ratios.max() ?? 0)
        }
    }

    public static func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.isEmpty ? 0 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
    }

    /// Which clock times a pass: the wall's, or the process's CPU time (all its threads), which a loaded machine
    /// disturbs far less on one thread: time-slicing stretches the wall time, not the work.
    public enum Clock: String, Sendable { case wall, cpu }

    static func seconds(_ clock: Clock) -> Double {
        guard clock == .cpu else { return monotonicSeconds() }
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Times `layer`'s three passes (two for a layer that reads the image), `rounds` rounds after a warm-up; nil
    /// where oneDNN has no Winograd for the layer on this CPU.
    public static func run(_ layer: Layer, rounds: Int = 3, clock: Clock = .wall) -> [Pass]? {
        let b = ChannelLayout.blockWidth
        let (n, cin, cout, h, w) = (layer.batch, layer.inChannels, layer.outChannels, layer.height, layer.width)
        var rng = RandomGenerator(seed: 5)
        func random(_ count: Int, _ scale: Float) -> FloatStorage {
            let s = FloatStorage(uninitializedCount: count)
            for i in 0..<count { s.pointer[i] = rng.uniform(-scale, scale) }
            return s
        }
        let x = random(n * cin * h * w, 1), weight = random(cout * cin * 9, 0.05), bias = random(cout, 0.1)
        let dy = random(n * cout * h * w, 1), y = FloatStorage(uninitializedCount: n * cout * h * w)
        let dx = FloatStorage(uninitializedCount: layer.readsImage ? 0 : x.count), dw = FloatStorage(count: weight.count)
        // The layouts training runs this layer in: blocked where the channel count allows (else NCHW, the image).
        let layouts = DNNLConvPlan.Layouts(sourceBlocked: cin % b == 0, destinationBlocked: cout % b == 0,
                                           sourceWidth: cin % b == 0 ? b : 8, destinationWidth: cout % b == 0 ? b : 8)
        // Below AVX-512 oneDNN has no Winograd: time Starling's F(2x2, 3x3) against the direct path training runs.
        if !DNNLActivation.instructionSet.hasPrefix("avx512") {
            return runOwn(layer, rounds: rounds, clock: clock, layouts: layouts, x: x, weight: weight, bias: bias, y: y, dy: dy, dx: dx,
                          dw: dw)
        }
        var geometries: [ConvolutionAlgorithm: ConvGeometry] = [:]
        for (algorithm, setting) in [(ConvolutionAlgorithm.direct, WinogradSetting.never), (.winograd, .always)] {
            var g = ConvGeometry(input: [n, cin, h, w], weight: [cout, cin, 3, 3], stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
            g.winograd = setting
            geometries[algorithm] = g
        }
        guard let direct = geometries[.direct], let winograd = geometries[.winograd] else { return nil }
        func plan(_ g: ConvGeometry, _ variant: DNNLConvPlan.Variant) -> DNNLConvPlan? {
            DNNLConvPlans.plan(g, images: g.dnnlChunk(variant, layouts: layouts), variant: variant, layouts: layouts)
        }
        guard let forwardPlan = plan(winograd, .forward(bias: true, inference: nil)), let backwardPlan = plan(winograd, .backward),
              forwardPlan.algorithms.forward == .winograd || backwardPlan.algorithms.backwardData == .winograd
                || backwardPlan.algorithms.backwardWeights == .winograd,
              let directForward = plan(direct, .forward(bias: true, inference: nil)), let directBackward = plan(direct, .backward)
        else { return nil }
        let passes: [ConvolutionPass] = layer.readsImage ? [.forward, .backwardWeights] : ConvolutionPass.allCases
        func run(_ g: ConvGeometry, _ pass: ConvolutionPass) {
            let done = switch pass {
            case .forward: g.dnnlConvolve(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, beta: 0, layouts: layouts)
            case .backwardData: g.dnnlAccumulateInputGradient(outputGrad: dy.pointer, weight: weight.pointer, into: dx.pointer, layouts: layouts,
                                                              accumulate: false)
            case .backwardWeights: g.dnnlAccumulateWeightGradient(input: x.pointer, outputGrad: dy.pointer, into: dw.pointer, layouts: layouts)
            }
            precondition(done, "oneDNN lost the plan of \(layer.description)")
        }
        var times: [ConvolutionPass: [ConvolutionAlgorithm: [Double]]] = [:]
        for round in 0...max(rounds, 1) {
            for pass in passes {
                for (algorithm, g) in [(ConvolutionAlgorithm.direct, direct), (.winograd, winograd)] {
                    let t0 = seconds(clock)
                    run(g, pass)
                    let t = seconds(clock) - t0
                    if round > 0 { times[pass, default: [:]][algorithm, default: []].append(t) }
                }
            }
        }
        let flops = 2 * Double(n * h * w) * Double(cout * cin * 9)
        return passes.map { pass in
            func name(_ p: DNNLConvPlan) -> String { p.implementations[pass] ?? "?" }
            return Pass(pass: pass, direct: times[pass]?[.direct] ?? [], winograd: times[pass]?[.winograd] ?? [], flops: flops,
                        directImplementation: name(pass == .forward ? directForward : directBackward),
                        winogradImplementation: name(pass == .forward ? forwardPlan : backwardPlan),
                        rule: direct.requestedAlgorithm(pass, setting: .rule))
        }
    }
}

extension ConvAlgorithmBenchmark {
    /// The forward pass and input gradient of `layer` by the direct path `conv2dBlocked` runs without Winograd
    /// (Starling's narrow-output or direct kernel where they apply, else oneDNN's), against Starling's Winograd
    /// F(2x2, 3x3) (WinogradF2x3.swift), interleaved; nil where the latter does not take the layer (an NCHW side, a
    /// 16-wide block) or Starling's kernels are off. The weight gradient's direct path is Starling's blocked 3x3 kernel
    /// (maps 24 pixels wide or more) or oneDNN's, without the bias gradient either way.
    static func runOwn(_ layer: Layer, rounds: Int, clock: Clock, layouts: DNNLConvPlan.Layouts, x: FloatStorage, weight: FloatStorage,
                       bias: FloatStorage, y: FloatStorage, dy: FloatStorage, dx: FloatStorage, dw: FloatStorage) -> [Pass]? {
        var g = ConvGeometry(input: [layer.batch, layer.inChannels, layer.height, layer.width], weight: [layer.outChannels, layer.inChannels, 3, 3],
                             stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
        g.winograd = .never
        guard g.runsOwnWinograd(.forward, layouts, setting: .always), !layer.readsImage else { return nil }
        let passes: [ConvolutionPass] = [.forward, .backwardData, .backwardWeights]
        func run(_ pass: ConvolutionPass, winograd: Bool) {
            let done = switch (pass, winograd) {
            case (.backwardWeights, true):
                g.ownWinogradWeightGradient(input: x.pointer, outputGrad: dy.pointer, into: dw.pointer, layouts: layouts, setting: .always)
            case (.backwardWeights, false):
                g.blockedWeightGradient3x3(input: x.pointer, outputGrad: dy.pointer, into: dw.pointer, biasGradient: nil, layouts: layouts)
                    || g.dnnlAccumulateWeightGradient(input: x.pointer, outputGrad: dy.pointer, into: dw.pointer, layouts: layouts)
            case (.forward, true):
                g.ownWinogradForward(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, layouts: layouts, setting: .always)
            case (.forward, false):
                g.narrowOutputForward(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, layouts: layouts)
                    || g.directForward(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, layouts: layouts)
                    || g.dnnlConvolve(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, beta: 0, layouts: layouts)
            case (_, true):
                g.ownWinogradInputGradient(outputGrad: dy.pointer, weight: weight.pointer, into: dx.pointer, accumulate: false, layouts: layouts,
                                           setting: .always)
            case (_, false):
                g.dnnlAccumulateInputGradient(outputGrad: dy.pointer, weight: weight.pointer, into: dx.pointer, layouts: layouts, accumulate: false)
            }
            precondition(done, "no plan for \(layer.description)")
        }
        var times: [ConvolutionPass: [Bool: [Double]]] = [:]
        for round in 0...max(rounds, 1) {
            for pass in passes {
                for winograd in [false, true] {
                    let t0 = seconds(clock)
                    run(pass, winograd: winograd)
                    let t = seconds(clock) - t0
                    if round > 0 { times[pass, default: [:]][winograd, default: []].append(t) }
                }
            }
        }
        let flops = 2 * Double(layer.batch * layer.height * layer.width) * Double(layer.inChannels * layer.outChannels * 9)
        let forwardDirect = g.narrowOutputShape(layouts) != nil ? "starling narrow-output"
            : ConvGeometry.directForwardTakes(inChannels: layer.inChannels, outChannels: layer.outChannels, width: layer.width)
                && layer.outChannels % 16 == 0 ? "starling direct" : "oneDNN direct"
        let weightsDirect = layer.width >= 24 ? "starling direct" : "oneDNN direct"
        return passes.map { pass in
            Pass(pass: pass, direct: times[pass]?[false] ?? [], winograd: times[pass]?[true] ?? [], flops: flops,
                 directImplementation: pass == .forward ? forwardDirect : pass == .backwardData ? "oneDNN direct" : weightsDirect,
                 winogradImplementation: "starling_wino_2x3",
                 rule: g.runsOwnWinograd(pass, layouts, setting: .rule) ? .winograd : .direct)
        }
    }
}

/// The error of each convolution pass against a float64 reference computed at sampled points: the outputs of the
/// forward pass and of the input gradient at `samples` random positions, and `samples` random weights of the weight
/// gradient, each summed in Double from the same float inputs. Exact at those points (no second float implementation
/// in between), and cheap on real-sized layers, where a full float64 convolution would take minutes.
public enum ConvolutionAccuracy {
    /// The largest error of a Winograd pass, over the result's largest magnitude, that the tests accept (README).
    public static let winogradBound = 1e-5

    /// Per pass: the largest error at the sampled points over the largest magnitude of the whole result (its scale).
    public struct Errors: Sendable {
        public var relative: [ConvolutionPass: Double] = [:]
        /// The algorithm oneDNN ran each pass with.
        public var algorithms: [ConvolutionPass: ConvolutionAlgorithm] = [:]
    }

    /// Runs the three passes of a 3x3 `same` convolution at stride 1 of `layer`'s shape (with `batch` images in
    /// place of the layer's own) under `setting`, in the blocked layout of width `blockWidth` where the channels allow.
    public static func measure(_ layer: ConvAlgorithmBenchmark.Layer, batch: Int? = nil, setting: WinogradSetting,
                               blockWidth b: Int = ChannelLayout.blockWidth, samples: Int = 400, seed: UInt64 = 11) -> Errors {
        let n = batch ?? layer.batch
        let (cin, cout, h, w) = (layer.inChannels, layer.outChannels, layer.height, layer.width)
        var rng = RandomGenerator(seed: seed)
        func random(_ count: Int, _ scale: Float) -> FloatStorage {
            let s = FloatStorage(uninitializedCount: count)
            for i in 0..<count { s.pointer[i] = rng.uniform(-scale, scale) }
            return s
        }
        // He-uniform weights, as the models initialise them; activations and gradients of unit scale.
        let x = random(n * cin * h * w, 1), weight = random(cout * cin * 9, Float((6.0 / Double(cin * 9)).squareRoot()))
        let bias = random(cout, 0.1), dy = random(n * cout * h * w, 1)
        let y = FloatStorage(uninitializedCount: n * cout * h * w), dx = FloatStorage(uninitializedCount: x.count)
        let dw = FloatStorage(count: weight.count)
        let (inBlocked, outBlocked) = (cin % b == 0, cout % b == 0)
        let layouts = DNNLConvPlan.Layouts(sourceBlocked: inBlocked, destinationBlocked: outBlocked,
                                           sourceWidth: inBlocked ? b : 8, destinationWidth: outBlocked ? b : 8)
        var g = ConvGeometry(input: [n, cin, h, w], weight: [cout, cin, 3, 3], stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
        g.winograd = setting
        let ran = g.dnnlConvolve(input: x.pointer, weight: weight.pointer, bias: bias.pointer, output: y.pointer, beta: 0, layouts: layouts)
            && g.dnnlAccumulateInputGradient(outputGrad: dy.pointer, weight: weight.pointer, into: dx.pointer, layouts: layouts, accumulate: false)
            && g.dnnlAccumulateWeightGradient(input: x.pointer, outputGrad: dy.pointer, into: dw.pointer, layouts: layouts)
        precondition(ran, "oneDNN has no plan for \(layer.description)")
        var errors = Errors()
        let forwardVariant = DNNLConvPlan.Variant.forward(bias: true, inference: nil)
        if let forward = DNNLConvPlans.plan(g, images: g.dnnlChunk(forwardVariant, layouts: layouts), variant: forwardVariant, layouts: layouts),
           let backward = DNNLConvPlans.plan(g, images: g.dnnlChunk(.backward, layouts: layouts), variant: .backward, layouts: layouts) {
            errors.algorithms = [.forward: forward.algorithms.forward, .backwardData: backward.algorithms.backwardData,
                                 .backwardWeights: backward.algorithms.backwardWeights]
        }
        // Offsets of element (image, channel, row, column) in a blocked ([N, C/B, H, W, B]) or NCHW tensor.
        func offset(_ blocked: Bool, channels: Int) -> (Int, Int, Int, Int) -> Int {
            blocked ? { i, c, r, q in (((i * (channels / b) + c / b) * h + r) * w + q) * b + c % b }
                    : { i, c, r, q in ((i * channels + c) * h + r) * w + q }
        }
        let xi = offset(inBlocked, channels: cin), yi = offset(outBlocked, channels: cout)
        func wi(_ o: Int, _ c: Int, _ ki: Int, _ kj: Int) -> Int { ((o * cin + c) * 3 + ki) * 3 + kj }
        func scale(_ s: FloatStorage) -> Double { Double((0..<s.count).reduce(Float(0)) { Swift.max($0, abs(s.pointer[$1])) }) }
        let (xp, wp, dyp) = (x.pointer, weight.pointer, dy.pointer)

        var worst = 0.0
        for _ in 0..<samples {
            let (i, o, r, q) = (Int(rng.next() % UInt64(n)), Int(rng.next() % UInt64(cout)), Int(rng.next() % UInt64(h)), Int(rng.next() % UInt64(w)))
            var sum = Double(bias.pointer[o])
            for c in 0..<cin {
                for ki in 0..<3 where (0..<h).contains(r + ki - 1) {
                    for kj in 0..<3 where (0..<w).contains(q + kj - 1) {
                        sum += Double(xp[xi(i, c, r + ki - 1, q + kj - 1)]) * Double(wp[wi(o, c, ki, kj)])
                    }
                }
            }
            worst = Swift.max(worst, abs(Double(y.pointer[yi(i, o, r, q)]) - sum))
        }
        errors.relative[.forward] = worst / scale(y)

        worst = 0
        for _ in 0..<samples {
            let (i, c, r, q) = (Int(rng.next() % UInt64(n)), Int(rng.next() % UInt64(cin)), Int(rng.next() % UInt64(h)), Int(rng.next() % UInt64(w)))
            var sum = 0.0
            for o in 0..<cout {
                for ki in 0..<3 where (0..<h).contains(r - ki + 1) {
                    for kj in 0..<3 where (0..<w).contains(q - kj + 1) {
                        sum += Double(dyp[yi(i, o, r - ki + 1, q - kj + 1)]) * Double(wp[wi(o, c, ki, kj)])
                    }
                }
            }
            worst = Swift.max(worst, abs(Double(dx.pointer[xi(i, c, r, q)]) - sum))
        }
        errors.relative[.backwardData] = worst / scale(dx)

        worst = 0
        for _ in 0..<Swift.max(1, samples / 8) {
            let (o, c, ki, kj) = (Int(rng.next() % UInt64(cout)), Int(rng.next() % UInt64(cin)), Int(rng.next() % UInt64(3)), Int(rng.next() % UInt64(3)))
            var sum = 0.0
            for i in 0..<n {
                for r in Swift.max(0, 1 - ki)..<Swift.min(h, h + 1 - ki) {
                    for q in Swift.max(0, 1 - kj)..<Swift.min(w, w + 1 - kj) {
                        sum += Double(dyp[yi(i, o, r, q)]) * Double(xp[xi(i, c, r + ki - 1, q + kj - 1)])
                    }
                }
            }
            worst = Swift.max(worst, abs(Double(dw.pointer[wi(o, c, ki, kj)]) - sum))
        }
        errors.relative[.backwardWeights] = worst / scale(dw)
        return errors
    }
}
