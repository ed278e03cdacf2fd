import Testing
@testable import StarlingCore

/// Starling's Winograd F(2x2, 3x3) (WinogradF2x3.swift) against a float64 convolution of the same float inputs: the
/// forward pass and the input gradient, on odd maps (tiles cut at the right and bottom edges), padding 0 and 1, several
/// channel counts, batches > 1 and blocks of tiles that cut the batch at odd places; and a finite-difference check of
/// the input gradient through the blocked convolution op. Forced on every CPU (`anyCPU`): on AVX-512 machines
/// production runs oneDNN's F(4x4, 3x3) instead, but the code is the same.
@Suite struct WinogradF2x3Tests {
    /// One case: channels, map, padding (0 or 1 on every side), images.
    struct Case: CustomStringConvertible {
        let cin: Int, cout: Int, height: Int, width: Int, pad: Int, batch: Int
        var description: String { "\(cin)->\(cout) \(height)x\(width) pad \(pad) batch \(batch)" }
        var geometry: ConvGeometry {
            ConvGeometry(input: [batch, cin, height, width], weight: [cout, cin, 3, 3], stride: (1, 1),
                         padding: pad == 1 ? .same : .valid, dilation: (1, 1), groups: 1)
        }
    }

    static let cases: [Case] = [
        Case(cin: 8, cout: 8, height: 7, width: 9, pad: 1, batch: 2),
        Case(cin: 16, cout: 24, height: 5, width: 5, pad: 0, batch: 3),
        Case(cin: 24, cout: 16, height: 11, width: 6, pad: 1, batch: 2),
        Case(cin: 64, cout: 64, height: 9, width: 13, pad: 1, batch: 2),
        Case(cin: 8, cout: 64, height: 6, width: 7, pad: 0, batch: 2),
        Case(cin: 64, cout: 8, height: 3, width: 3, pad: 1, batch: 3),
    ]

    static let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: 8, destinationWidth: 8)

    /// Offset of (image, channel, row, column) in [N, C/8, H, W, 8].
    static func blocked(_ i: Int, _ c: Int, _ r: Int, _ q: Int, channels: Int, height: Int, width: Int) -> Int {
        (((i * (channels / 8) + c / 8) * height + r) * width + q) * 8 + c % 8
    }

    /// y (blocked) = conv(x, w) + bias in Double.
    static func referenceForward(_ k: Case, _ g: ConvGeometry, x: [Float], w: [Float], bias: [Float]) -> [Double] {
        var y = [Double](repeating: 0, count: k.batch * k.cout * g.outPlane)
        for i in 0..<k.batch { for o in 0..<k.cout { for r in 0..<g.outHeight { for q in 0..<g.outWidth {
            var sum = Double(bias[o])
            for c in 0..<k.cin { for ki in 0..<3 { for kj in 0..<3 {
                let (row, column) = (r + ki - k.pad, q + kj - k.pad)
                guard (0..<k.height).contains(row), (0..<k.width).contains(column) else { continue }
                sum += Double(x[blocked(i, c, row, column, channels: k.cin, height: k.height, width: k.width)]) * Double(w[((o * k.cin + c) * 3 + ki) * 3 + kj])
            } } }
            y[blocked(i, o, r, q, channels: k.cout, height: g.outHeight, width: g.outWidth)] = sum
        } } } }
        return y
    }

    /// dx (blocked) = conv^T(dy, w) in Double.
    static func referenceInputGradient(_ k: Case, _ g: ConvGeometry, dy: [Float], w: [Float]) -> [Double] {
        var dx = [Double](repeating: 0, count: k.batch * k.cin * k.height * k.width)
        for i in 0..<k.batch { for o in 0..<k.cout { for r in 0..<g.outHeight { for q in 0..<g.outWidth {
            let d = Double(dy[blocked(i, o, r, q, channels: k.cout, height: g.outHeight, width: g.outWidth)])
            for c in 0..<k.cin { for ki in 0..<3 { for kj in 0..<3 {
                let (row, column) = (r + ki - k.pad, q + kj - k.pad)
                guard (0..<k.height).contains(row), (0..<k.width).contains(column) else { continue }
                dx[blocked(i, c, row, column, channels: k.cin, height: k.height, width: k.width)] += d * Double(w[((o * k.cin + c) * 3 + ki) * 3 + kj])
            } } }
        } } } }
        return dx
    }

    /// dw[o][c][ki][kj] = the sum over images and output pixels of dy[o] x[c] at the tap's offset, in Double.
    static func referenceWeightGradient(_ k: Case, _ g: ConvGeometry, x: [Float], dy: [Float]) -> [Double] {
        var dw = [Double](repeating: 0, count: k.cout * k.cin * 9)
        for i in 0..<k.batch { for o in 0..<k.cout { for r in 0..<g.outHeight { for q in 0..<g.outWidth {
            let d = Double(dy[blocked(i, o, r, q, channels: k.cout, height: g.outHeight, width: g.outWidth)])
            for c in 0..<k.cin { for ki in 0..<3 { for kj in 0..<3 {
                let (row, column) = (r + ki - k.pad, q + kj - k.pad)
                guard (0..<k.height).contains(row), (0..<k.width).contains(column) else { continue }
                dw[((o * k.cin + c) * 3 + ki) * 3 + kj] += d * Double(x[blocked(i, c, row, column, channels: k.cin, height: k.height, width: k.width)])
            } } }
        } } } }
        return dw
    }

    /// Largest |a - b| over the largest |b|.
    static func relativeError(_ a: UnsafePointer<Float>, _ b: [Double]) -> Double {
        let scale = b.map(abs).max() ?? 0
        return (0..<b.count).map { abs(Double(a[$0]) - b[$0]) }.max().map { $0 / Swift.max(scale, 1e-30) } ?? 0
    }

    @Test(arguments: cases) func forwardMatchesFloat64(_ k: Case) {
        let g = k.geometry
        let x = randomValues(k.batch * k.cin * k.height * k.width, seed: 1), w = randomValues(k.cout * k.cin * 9, seed: 2, -0.3, 0.3)
        let bias = randomValues(k.cout, seed: 3)
        let reference = Self.referenceForward(k, g, x: x, w: w, bias: bias)
        // The default block (every tile at once here) and blocks of 7 tiles, which end inside images and rows.
        for tilesPerBlock in [nil, 7] as [Int?] {
            for relu in [false, true] {
                var y = [Float](repeating: .nan, count: reference.count)
                let ran = x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
                    y.withUnsafeMutableBufferPointer { yp in
                        g.ownWinogradForward(input: xp.baseAddress!, weight: wp.baseAddress!, bias: bp.baseAddress!, output: yp.baseAddress!,
                                             layouts: Self.layouts, relu: relu, setting: .always, anyCPU: true, tilesPerBlock: tilesPerBlock)
                    }
                } } }
                #expect(ran, "\(k)")
                let expected = relu ? reference.map { Swift.max($0, 0) } : reference
                let error = y.withUnsafeBufferPointer { Self.relativeError($0.baseAddress!, expected) }
                #expect(error < ConvolutionAccuracy.winogradBound, "\(k) block \(String(describing: tilesPerBlock)) relu \(relu): \(error)")
            }
        }
    }

    @Test(arguments: cases) func inputGradientMatchesFloat64(_ k: Case) {
        let g = k.geometry
        let dy = randomValues(k.batch * k.cout * g.outPlane, seed: 4), w = randomValues(k.cout * k.cin * 9, seed: 5, -0.3, 0.3)
        let reference = Self.referenceInputGradient(k, g, dy: dy, w: w)
        let prior = randomValues(reference.count, seed: 6)
        for tilesPerBlock in [nil, 5] as [Int?] {
            for accumulate in [false, true] {
                var dx = accumulate ? prior : [Float](repeating: .nan, count: reference.count)
                let ran = dy.withUnsafeBufferPointer { dp in w.withUnsafeBufferPointer { wp in
                    dx.withUnsafeMutableBufferPointer { xp in
                        g.ownWinogradInputGradient(outputGrad: dp.baseAddress!, weight: wp.baseAddress!, into: xp.baseAddress!,
                                                   accumulate: accumulate, layouts: Self.layouts, setting: .always, anyCPU: true,
                                                   tilesPerBlock: tilesPerBlock)
                    }
                } }
                #expect(ran, "\(k)")
                let expected = accumulate ? zip(reference, prior).map { $0 + Double($1) } : reference
                let error = dx.withUnsafeBufferPointer { Self.relativeError($0.baseAddress!, expected) }
                #expect(error < ConvolutionAccuracy.winogradBound, "\(k) block \(String(describing: tilesPerBlock)) accumulate \(accumulate): \(error)")
            }
        }
    }

    /// The weight gradient, added to what dw held (as training accumulates it), against float64: the default block
    /// (every tile at once here) and blocks of 5 tiles, which end inside images and rows; the error over the largest
    /// |dL/dw| (not of the sum with the prior).
    @Test(arguments: cases) func weightGradientMatchesFloat64(_ k: Case) {
        let g = k.geometry
        let x = randomValues(k.batch * k.cin * k.height * k.width, seed: 31), dy = randomValues(k.batch * k.cout * g.outPlane, seed: 32)
        let reference = Self.referenceWeightGradient(k, g, x: x, dy: dy)
        let prior = randomValues(reference.count, seed: 33)
        let scale = reference.map(abs).max() ?? 0
        for tilesPerBlock in [nil, 5] as [Int?] {
            var dw = prior
            let ran = x.withUnsafeBufferPointer { xp in dy.withUnsafeBufferPointer { dp in dw.withUnsafeMutableBufferPointer { wp in
                g.ownWinogradWeightGradient(input: xp.baseAddress!, outputGrad: dp.baseAddress!, into: wp.baseAddress!, layouts: Self.layouts,
                                            setting: .always, anyCPU: true, tilesPerBlock: tilesPerBlock)
            } } }
            #expect(ran, "\(k)")
            let error = (0..<reference.count).map { abs(Double(dw[$0]) - (reference[$0] + Double(prior[$0]))) }.max()! / scale
            #expect(error < ConvolutionAccuracy.winogradBound, "\(k) block \(String(describing: tilesPerBlock)): \(error)")
        }
    }

    /// The weight gradient's tiles cut into parts, each with its own sums added in part order, and the threads taking
    /// parts (and, beyond the parts, each part's input channels): for 1, 2 and 3 parts, 1, 2, 3 and 4 threads give the
    /// same bits in each build (24 channels: one, two and three 8-channel blocks a thread, so 16- and 8-wide columns;
    /// 126 tiles: two parts of 63 end inside an image's row, blocks of 7 tiles inside rows too); 16 output channels take
    /// the 6-row register block and a 4-row remainder. The default parts (two here) match two parts given; each part
    /// count within the float64 bound. The bias gradient summed beside it (element 5 of the gradient's transform, added
    /// to what it held) likewise: the same bits on any thread count, within the bound of dy's sums.
    @Test func weightGradientThreadsGiveTheSameBits() {
        let k = Case(cin: 24, cout: 16, height: 11, width: 13, pad: 1, batch: 3)
        let g = k.geometry
        let x = randomValues(k.batch * k.cin * k.height * k.width, seed: 41), dy = randomValues(k.batch * k.cout * g.outPlane, seed: 42)
        let reference = Self.referenceWeightGradient(k, g, x: x, dy: dy)
        let priorBias = randomValues(k.cout, seed: 43)
        var biasReference = priorBias.map(Double.init)
        for i in 0..<k.batch { for o in 0..<k.cout { for r in 0..<g.outHeight { for q in 0..<g.outWidth {
            biasReference[o] += Double(dy[Self.blocked(i, o, r, q, channels: k.cout, height: g.outHeight, width: g.outWidth)])
        } } } }
        // dw, then the bias gradient.
        func run(parts: Int?, threads: Int, kernels: KernelDispatch.Level) -> [Float] {
            var dw = [Float](repeating: 0, count: reference.count), bias = priorBias
            x.withUnsafeBufferPointer { xp in dy.withUnsafeBufferPointer { dp in dw.withUnsafeMutableBufferPointer { wp in
                bias.withUnsafeMutableBufferPointer { bp in
                    WinogradF2x3.weightGradient(images: k.batch, input: xp.baseAddress!, inChannels: k.cin, height: k.height, width: k.width,
                                                outputGrad: dp.baseAddress!, outChannels: k.cout, outHeight: g.outHeight, outWidth: g.outWidth,
                                                padTop: 1, padLeft: 1, into: wp.baseAddress!, biasGradient: bp.baseAddress!, tilesPerBlock: 7,
                                                parts: parts, threads: threads, kernels: kernels)
                }
            } } }
            return dw + bias
        }
        #expect(WinogradF2x3.weightGradientParts(tiles: k.batch * 6 * 7, inChannels: k.cin, outChannels: k.cout) == 2)
        #expect(WinogradF2x3.weightGradientParts(tiles: 63, inChannels: 32, outChannels: 32) == 1)
        #expect(WinogradF2x3.weightGradientParts(tiles: 512, inChannels: 64, outChannels: 64) == 1)
        for kernels in KernelDispatch.supported {
            for parts in [1, 2, 3] {
                let one = run(parts: parts, threads: 1, kernels: kernels)
                for threads in [2, 3, 4] {
                    #expect(run(parts: parts, threads: threads, kernels: kernels) == one, "\(kernels), \(parts) parts on \(threads) threads")
                }
                if parts == 2 {
                    for threads in [1, 2] { #expect(run(parts: nil, threads: threads, kernels: kernels) == one, "\(kernels), default parts") }
                }
                let error = one.withUnsafeBufferPointer { Self.relativeError($0.baseAddress!, reference) }
                #expect(error < ConvolutionAccuracy.winogradBound, "\(kernels), \(parts) parts: \(error)")
                let biasError = one.withUnsafeBufferPointer { Self.relativeError($0.baseAddress! + reference.count, biasReference) }
                #expect(biasError < ConvolutionAccuracy.winogradBound, "\(kernels), \(parts) parts, bias: \(biasError)")
            }
        }
    }

    /// Each thread its own blocks of tiles (`convolve`): 1, 2 and 3 threads give the same bits as one thread, and so do
    /// other blocks of tiles (a tile's products are summed over the channels in one order whatever block or thread
    /// computes it), in every build this CPU runs; blocks of 7 tiles end inside images and rows, and 3 threads split
    /// 18 blocks unevenly. The builds differ in how the products round (fused multiply-adds above baseline), so each
    /// build is compared with itself, and all with float64. The threads' default blocks (a third of the call's tiles)
    /// stay within the float64 bound, with the output added to what was there.
    @Test func threadsAndBuildsGiveTheSameBits() {
        let k = Case(cin: 16, cout: 24, height: 11, width: 13, pad: 1, batch: 3)
        let g = k.geometry
        let x = randomValues(k.batch * k.cin * k.height * k.width, seed: 21), w = randomValues(k.cout * k.cin * 9, seed: 22, -0.3, 0.3)
        let bias = randomValues(k.cout, seed: 23), prior = randomValues(k.batch * k.cout * g.outPlane, seed: 24)
        let u = UnsafeMutablePointer<Float>.allocate(capacity: 16 * k.cin * k.cout)
        defer { u.deallocate() }
        w.withUnsafeBufferPointer { WinogradF2x3.transformWeights($0.baseAddress!, outChannels: k.cout, inChannels: k.cin, rotated: false, into: u) }
        func run(threads: Int, tilesPerBlock: Int?, kernels: KernelDispatch.Level, accumulate: Bool, relu: Bool) -> [Float] {
            var y = accumulate ? prior : [Float](repeating: .nan, count: prior.count)
            x.withUnsafeBufferPointer { xp in bias.withUnsafeBufferPointer { bp in y.withUnsafeMutableBufferPointer { yp in
                WinogradF2x3.convolve(images: k.batch, input: xp.baseAddress!, inChannels: k.cin, height: k.height, width: k.width,
                                      transformedWeights: u, outChannels: k.cout, outHeight: g.outHeight, outWidth: g.outWidth,
                                      padTop: 1, padLeft: 1, bias: bp.baseAddress!, output: yp.baseAddress!, accumulate: accumulate,
                                      relu: relu, tilesPerBlock: tilesPerBlock, threads: threads, kernels: kernels)
            } } }
            return y
        }
        let plain = Self.referenceForward(k, g, x: x, w: w, bias: bias)
        let expected = zip(plain, prior).map { $0 + Double($1) }
        for (accumulate, relu) in [(false, false), (true, true)] {
            for kernels in KernelDispatch.supported {
                let reference = run(threads: 1, tilesPerBlock: 7, kernels: kernels, accumulate: accumulate, relu: relu)
                #expect(!reference.contains { $0.isNaN })
                for (threads, block) in [(1, 13), (2, 7), (3, 7), (2, 30)] {
                    let y = run(threads: threads, tilesPerBlock: block, kernels: kernels, accumulate: accumulate, relu: relu)
                    #expect(y == reference, "\(kernels) on \(threads) threads, blocks of \(block), accumulate \(accumulate), relu \(relu)")
                }
                if !accumulate {
                    let error = reference.withUnsafeBufferPointer { Self.relativeError($0.baseAddress!, plain) }
                    #expect(error < ConvolutionAccuracy.winogradBound, "\(kernels): \(error)")
                }
            }
        }
        for threads in [2, 3] {
            let y = run(threads: threads, tilesPerBlock: nil, kernels: KernelDispatch.current, accumulate: true, relu: false)
            let error = y.withUnsafeBufferPointer { Self.relativeError($0.baseAddress!, expected) }
            #expect(error < ConvolutionAccuracy.winogradBound, "\(threads) threads: \(error)")
        }
    }

    /// The transformed-tile error stays near direct's: within 8x of oneDNN's direct forward pass on the same inputs
    /// (Winograd F(4x4, 3x3) was 1.2-8x, README), and the two agree to the Winograd bound.
    @Test func errorNearDirect() {
        let k = Case(cin: 64, cout: 64, height: 17, width: 15, pad: 1, batch: 2)
        var g = k.geometry
        g.winograd = .never
        let x = randomValues(k.batch * k.cin * k.height * k.width, seed: 7), w = randomValues(k.cout * k.cin * 9, seed: 8, -0.1, 0.1)
        let bias = randomValues(k.cout, seed: 9)
        let reference = Self.referenceForward(k, g, x: x, w: w, bias: bias)
        var winograd = [Float](repeating: 0, count: reference.count), direct = winograd
        x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
            _ = g.ownWinogradForward(input: xp.baseAddress!, weight: wp.baseAddress!, bias: bp.baseAddress!, output: &winograd,
                                     layouts: Self.layouts, setting: .always, anyCPU: true)
            #expect(g.dnnlConvolve(input: xp.baseAddress!, weight: wp.baseAddress!, bias: bp.baseAddress!, output: &direct, beta: 0,
                                   layouts: Self.layouts))
        } } }
        let (we, de) = (Self.relativeError(winograd, reference), Self.relativeError(direct, reference))
        #expect(we < ConvolutionAccuracy.winogradBound && we < Swift.max(8 * de, 1e-7), "Winograd \(we), direct \(de)")
    }

    /// The settings: 0 never, 1 on any shape it takes, the rule only where it paid; never a stride of 2, a 5x5 kernel,
    /// an NCHW side or a 16-wide block.
    @Test func whereItRuns() {
        let g = Case(cin: 64, cout: 64, height: 32, width: 32, pad: 1, batch: 2).geometry
        #expect(g.runsOwnWinograd(.forward, Self.layouts, setting: .always, anyCPU: true))
        #expect(g.runsOwnWinograd(.backwardData, Self.layouts, setting: .always, anyCPU: true))
        #expect(g.runsOwnWinograd(.backwardWeights, Self.layouts, setting: .always, anyCPU: true))
        #expect(!g.runsOwnWinograd(.forward, Self.layouts, setting: .never, anyCPU: true))
        // The rule: up to 128 x 128 channels (the register-block products), 32 or more on both sides and 14 pixels or more
        // a side; above, 128 channels or more summed and written, 256-512 on the wider side, 26 pixels or more a side (13
        // or more with 512 on the wider side).
        #expect(g.runsOwnWinograd(.forward, Self.layouts, setting: .rule, anyCPU: true))   // 64 -> 64 at 32 x 32
        func rule(_ cin: Int, _ cout: Int, _ side: Int, _ pass: ConvolutionPass) -> Bool {
            ConvGeometry(input: [2, cin, side, side], weight: [cout, cin, 3, 3], stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
                .runsOwnWinograd(pass, Self.layouts, setting: .rule, anyCPU: true)
        }
        for pass in [ConvolutionPass.forward, .backwardData] {
            #expect(rule(128, 256, 26, pass) && rule(384, 256, 26, pass) && rule(256, 512, 13, pass) && rule(512, 256, 13, pass))
            #expect(!rule(256, 128, 16, pass) && !rule(512, 1024, 13, pass) && !rule(1024, 512, 13, pass))
            #expect(!rule(128, 256, 8, pass) && !rule(256, 256, 12, pass))
            // The register-block products' layers: U-Net's at width 0.25 from 32 channels, yolov3-tiny's conv_4 and conv_6,
            // SSD7's, denoising-ae's 14 x 14; not 16-channel sides, 8 x 8 maps nor 7 x 7.
            #expect(rule(64, 64, 32, pass) && rule(128, 128, 16, pass) && rule(64, 128, 52, pass) && rule(128, 64, 32, pass))
            #expect(rule(32, 128, 64, pass) && rule(128, 32, 64, pass) && rule(32, 32, 14, pass) && rule(48, 64, 75, pass))
            #expect(!rule(16, 16, 128, pass) && !rule(16, 32, 64, pass) && !rule(32, 16, 128, pass) && !rule(128, 128, 8, pass))
            #expect(!rule(32, 32, 7, pass) && !rule(48, 48, 9, pass) && !rule(128, 128, 13, pass))
        }
        // The weight gradient: up to 128 x 128 channels, 32 or more on both sides, 14 pixels or more a side.
        #expect(rule(32, 32, 64, .backwardWeights) && rule(128, 128, 16, .backwardWeights) && rule(64, 32, 64, .backwardWeights))
        #expect(!rule(16, 16, 128, .backwardWeights) && !rule(32, 16, 128, .backwardWeights) && !rule(128, 128, 8, .backwardWeights))
        #expect(!rule(256, 128, 16, .backwardWeights) && !rule(128, 256, 26, .backwardWeights) && !rule(256, 512, 26, .backwardWeights))
        let strided = ConvGeometry(input: [2, 64, 32, 32], weight: [64, 64, 3, 3], stride: (2, 2), padding: .same, dilation: (1, 1), groups: 1)
        let five = ConvGeometry(input: [2, 64, 32, 32], weight: [64, 64, 5, 5], stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
        for other in [strided, five] { #expect(!other.runsOwnWinograd(.forward, Self.layouts, setting: .always, anyCPU: true)) }
        var planarInput = Self.layouts
        planarInput.sourceBlocked = false
        var wide = Self.layouts
        (wide.sourceWidth, wide.destinationWidth) = (16, 16)
        for layouts in [planarInput, wide] { #expect(!g.runsOwnWinograd(.forward, layouts, setting: .always, anyCPU: true)) }
        // oneDNN's own Winograd is preferred on AVX-512 CPUs.
        if DNNLActivation.instructionSet.hasPrefix("avx512") { #expect(!g.runsOwnWinograd(.forward, Self.layouts, setting: .always)) }
    }

    /// Finite differences of the weight gradient through `conv2dBlocked` with Starling's Winograd forced on (all three
    /// passes), at 40 sampled weights; the bias gradient (summed from dy beside it) against the sum of the seed.
    @Test func weightGradientThroughTheOp() {
        ConvGeometry.$ownWinogradForcedForTests.withValue(true) {
            let k = Case(cin: 32, cout: 32, height: 15, width: 14, pad: 1, batch: 2)
            #expect(k.geometry.runsOwnWinograd(.backwardWeights, Self.layouts))
            let x = Tensor(shape: [k.batch, k.cin, k.height, k.width], values: randomValues(k.batch * k.cin * k.height * k.width, seed: 51))
            let w = randomVariable([k.cout, k.cin, 3, 3], seed: 52, -0.1, 0.1), b = randomVariable([k.cout], seed: 53)
            let projection = randomValues(k.batch * k.cout * k.height * k.width, seed: 54, 0.5, 1.5)
            func op() -> Tensor { x.blocked8().conv2dBlocked(w, bias: b, stride: (1, 1), padding: .same, width: 8).unblocked() }
            op().backward(seed: projection)
            let (analytic, biasGradient) = (w.gradArray ?? [], b.gradArray ?? [])
            #expect(analytic.count == w.count && biasGradient.count == k.cout)
            func objective() -> Double {
                let y = GradMode.disabled { op() }
                return (0..<y.count).reduce(0.0) { $0 + Double(projection[$1]) * Double(y.data[$1]) }
            }
            var rng = RandomGenerator(seed: 55)
            let eps: Float = 0.05
            for _ in 0..<40 {
                let i = Int(rng.next() % UInt64(w.count)), saved = w.data[i]
                w.data[i] = saved + eps
                let plus = objective()
                w.data[i] = saved - eps
                let minus = objective()
                w.data[i] = saved
                let numeric = (plus - minus) / Double(2 * eps)
                #expect(abs(Double(analytic[i]) - numeric) <= 2e-2 + 1e-3 * abs(numeric), "w[\(i)]: analytic \(analytic[i]), numeric \(numeric)")
            }
            let plane = k.height * k.width
            for o in 0..<k.cout {
                let sum = (0..<k.batch).reduce(0.0) { total, i in
                    (0..<plane).reduce(total) { $0 + Double(projection[(i * k.cout + o) * plane + $1]) }
                }
                #expect(abs(Double(biasGradient[o]) - sum) <= 1e-4 * abs(sum), "bias[\(o)]: \(biasGradient[o]) against \(sum)")
            }
        }
    }

    /// Finite differences through `conv2dBlocked` and `conv2dBlockedReLU` with Starling's Winograd forced on (as
    /// STARLING_WINOGRAD=1 on an AVX2 CPU), at 60 sampled inputs.
    @Test func inputGradientThroughTheOp() {
        ConvGeometry.$ownWinogradForcedForTests.withValue(true) { checkThroughTheOp() }
    }

    func checkThroughTheOp() {
        let k = Case(cin: 64, cout: 64, height: 17, width: 16, pad: 1, batch: 2)
        #expect(k.geometry.runsOwnWinograd(.forward, Self.layouts) && k.geometry.runsOwnWinograd(.backwardData, Self.layouts))
        let x = randomVariable([k.batch, k.cin, k.height, k.width], seed: 10)
        let w = Tensor(shape: [k.cout, k.cin, 3, 3], values: randomValues(k.cout * k.cin * 9, seed: 11, -0.1, 0.1))
        let b = Tensor(shape: [k.cout], values: randomValues(k.cout, seed: 12))
        let projection = randomValues(x.count * k.cout / k.cin, seed: 14, 0.5, 1.5)
        func op(_ input: Tensor) -> Tensor { input.blocked8().conv2dBlocked(w, bias: b, stride: (1, 1), padding: .same, width: 8).unblocked() }
        x.clearGrad()
        op(x).backward(seed: projection)
        let analytic = x.gradArray ?? []
        // The objective is linear in x: central differences are exact but for rounding.
        func objective() -> Double {
            let y = GradMode.disabled { op(x) }
            return (0..<y.count).reduce(0.0) { $0 + Double(projection[$1]) * Double(y.data[$1]) }
        }
        var rng = RandomGenerator(seed: 15)
        let eps: Float = 0.25
        for _ in 0..<60 {
            let i = Int(rng.next() % UInt64(x.count)), saved = x.data[i]
            x.data[i] = saved + eps
            let plus = objective()
            x.data[i] = saved - eps
            let minus = objective()
            x.data[i] = saved
            let numeric = (plus - minus) / Double(2 * eps)
            #expect(abs(Double(analytic[i]) - numeric) <= 2e-3 + 1e-3 * abs(numeric), "x[\(i)]: analytic \(analytic[i]), numeric \(numeric)")
        }
        // The ReLU fused into the store: the same values and input gradient as the op followed by a ReLU.
        let seed = randomValues(x.count * k.cout / k.cin, seed: 13)
        x.clearGrad()
        let fused = x.blocked8().conv2dBlockedReLU(w, bias: b, stride: (1, 1), padding: .same, width: 8).unblocked()
        fused.backward(seed: seed)
        let fusedGradient = x.gradArray ?? []
        x.clearGrad()
        let apart = x.blocked8().conv2dBlocked(w, bias: b, stride: (1, 1), padding: .same, width: 8).unblocked().relu()
        apart.backward(seed: seed)
        let apartGradient = x.gradArray ?? []
        #expect(fused.toArray() == apart.toArray())
        #expect(fusedGradient.count == x.count && fusedGradient == apartGradient)
    }
}
