import CDNNL
import Testing
@testable import StarlingCore

/// The blocked-layout ops against their NCHW counterparts (values and every gradient) and against finite differences,
/// at both block widths (8 and 16 channels) whatever the CPU: every build handles both.
@Suite struct BlockedLayoutTests {
    /// Runs `f` on fresh copies of `inputs`, back-propagates fixed random weights, and returns the output (as NCHW
    /// values) and each input's gradient.
    private func run(_ inputs: [Tensor], _ f: ([Tensor]) -> Tensor) -> (output: [Float], gradients: [[Float]]) {
        let copies = inputs.map { Tensor.variable(shape: $0.shape, values: $0.toArray()) }
        let out = f(copies)
        out.backward(seed: randomValues(out.count, seed: 77, 0.5, 1.5))
        return (out.toArray(), copies.map { $0.gradArray ?? [] })
    }

    @Test func reblockingRoundTripsAndItsGradient() {
        let x = randomVariable([2, 32, 3, 5], seed: 1)
        let blocked = x.blocked8()
        #expect(blocked.shape == [2, 4, 3, 5, 8])
        // Element (n, c, h, w) lands at (n, c / 8, h, w, c % 8).
        #expect(blocked.data[(((1 * 4 + 1) * 3 + 2) * 5 + 4) * 8 + 3] == x.data[((1 * 32 + 11) * 3 + 2) * 5 + 4])
        #expect(blocked.unblocked().toArray() == x.toArray())
        // At 16: (n, c / 16, h, w, c % 16).
        let wide = x.blocked(width: 16)
        #expect(wide.shape == [2, 2, 3, 5, 16])
        #expect(wide.data[(((1 * 2 + 1) * 3 + 2) * 5 + 4) * 16 + 11] == x.data[((1 * 32 + 27) * 3 + 2) * 5 + 4])
        #expect(wide.unblocked().toArray() == x.toArray())
        for width in [8, 16] {
            checkGradients([randomVariable([1, width, 2, 3], seed: 2)]) { $0[0].blocked(width: width) }
            checkGradients([randomVariable([1, 1, 2, 3, width], seed: 3)]) { $0[0].unblocked() }
        }
    }

    @Test(arguments: [8, 16]) func upsamplingMatchesNCHW(width: Int) {
        for scale in [(2, 2), (1, 3), (3, 1)] {
            let x = randomVariable([2, 32, 3, 5], seed: 7)
            let reference = run([x]) { $0[0].upsampleNearest(scale: scale) }
            let blocked = run([x]) { $0[0].blocked(width: width).upsampleNearestBlocked(scale: scale).unblocked() }
            #expect(blocked.output == reference.output)
            expectClose(blocked.gradients[0], reference.gradients[0], tolerance: 1e-6)
        }
        checkGradients([randomVariable([1, 1, 2, 3, width], seed: 8)]) { $0[0].upsampleNearestBlocked(scale: (2, 2)) }
    }

    /// Every layout pair against conv2d in NCHW: odd sizes (25 wide, as Starling's kernels take maps of 24 or more),
    /// strides 1 and 2, same and valid padding, 3 or 16 input
    /// channels. The 5x5 cases with 32 outputs from an NCHW input take `FiveWideWeightGradient` on AVX2 machines, the
    /// 3x3 "same" ones with 16 to 64 outputs between blocked tensors `BlockedWeightGradient3x3` (groups of 2 and 3
    /// output blocks: 2, 3, 2 + 2, 3 + 2, 3 + 3 + 2). At width 16 every pass is oneDNN's, in nChw16c; output channel counts
    /// that are not a multiple of 16 are left out there (a model writes those NCHW).
    @Test(arguments: [(false, true), (true, true), (true, false)], [8, 16])
    func convolutionMatchesNCHW(layouts: (blockedInput: Bool, blockedOutput: Bool), width: Int) throws {
        let (blockedInput, blockedOutput) = layouts
        for (stride, padding, kernel, cout) in [((1, 1), Padding.same, 3, 8), ((2, 2), Padding.valid, 3, 8), ((1, 1), Padding.same, 5, 8),
                                                ((1, 1), Padding.same, 5, 32), ((1, 1), Padding.valid, 5, 16), ((1, 1), Padding.same, 3, 16),
                                                ((1, 1), Padding.same, 3, 24), ((1, 1), Padding.same, 3, 32), ((1, 1), Padding.same, 3, 40),
                                                ((1, 1), Padding.same, 3, 64), ((1, 1), Padding.valid, 3, 16)]
            where !blockedOutput || cout % width == 0 {
            let cin = blockedInput ? 16 : 3
            let x = randomVariable([3, cin, 9, 25], seed: 4), w = randomVariable([cout, cin, kernel, kernel], seed: 5)
            let b = randomVariable([cout], seed: 6)
            try #require(Tensor.canConvolveBlocked(input: x.shape, weight: w.shape, stride: stride, padding: padding,
                                                   blockedInput: blockedInput, blockedOutput: blockedOutput, width: width))
            let reference = run([x, w, b]) { $0[0].conv2d($0[1], bias: $0[2], stride: stride, padding: padding) }
            let blocked = run([x, w, b]) { t in
                let input = blockedInput ? t[0].blocked(width: width) : t[0]
                let y = input.conv2dBlocked(t[1], bias: t[2], stride: stride, padding: padding, blockedOutput: blockedOutput, width: width)
                return blockedOutput ? y.unblocked() : y
            }
            expectClose(blocked.output, reference.output, tolerance: 1e-4)
            for k in 0..<3 { expectClose(blocked.gradients[k], reference.gradients[k], tolerance: 1e-4) }
        }
    }

    /// Between blocks of different widths (a 16-channel model's layer of 24 channels is 8 wide): 16 -> 8 and 8 -> 16.
    @Test func convolutionBetweenWidthsMatchesNCHW() throws {
        for (cin, cout, inWidth, outWidth) in [(32, 24, 16, 8), (24, 32, 8, 16), (16, 16, 8, 16)] {
            let x = randomVariable([2, cin, 7, 25], seed: 42), w = randomVariable([cout, cin, 3, 3], seed: 43), b = randomVariable([cout], seed: 44)
            try #require(Tensor.canConvolveBlocked(input: x.shape, weight: w.shape, stride: (1, 1), padding: .same, blockedInput: true,
                                                   blockedOutput: true, width: outWidth, inputWidth: inWidth))
            let reference = run([x, w, b]) { $0[0].conv2d($0[1], bias: $0[2], stride: (1, 1), padding: .same) }
            let blocked = run([x, w, b]) { t in
                let y = t[0].blocked(width: inWidth).conv2dBlocked(t[1], bias: t[2], stride: (1, 1), padding: .same, width: outWidth)
                #expect(y.shape == [2, cout / outWidth, 7, 25, outWidth])
                return y.unblocked()
            }
            expectClose(blocked.output, reference.output, tolerance: 1e-4)
            for k in 0..<3 { expectClose(blocked.gradients[k], reference.gradients[k], tolerance: 1e-4) }
        }
    }

    /// U-Net's first level at an eighth of the width in a 16-wide pass: 8-channel sides stay in 8-channel blocks (3 -> 8
    /// from the NCHW image, 8 -> 8, the concatenation's 16 channels in two 8-channel blocks -> 8, 8 -> 16 into the next
    /// level, 8 -> 2 into the NCHW classifier output; and 24 -> 24, 8 -> 24). oneDNN computes in those blocks as they
    /// are (its plans' source and destination are the caller's memory, no padded copy) and the values and gradients
    /// are the NCHW convolution's.
    @Test func narrowLayersComputeInEightChannelBlocks() throws {
        for (cin, cout, inWidth, outWidth, kernel) in [(3, 8, 0, 8, 3), (8, 8, 8, 8, 3), (16, 8, 8, 8, 3), (8, 16, 8, 16, 3), (8, 2, 8, 0, 1),
                                                       (24, 24, 8, 8, 3), (8, 24, 8, 8, 3)] {
            let (blockedInput, blockedOutput) = (inWidth > 0, outWidth > 0)
            let padding: Padding = kernel == 1 ? .valid : .same
            let x = randomVariable([2, cin, 6, 25], seed: 91), w = randomVariable([cout, cin, kernel, kernel], seed: 92)
            let b = randomVariable([cout], seed: 93)
            try #require(Tensor.canConvolveBlocked(input: x.shape, weight: w.shape, stride: (1, 1), padding: padding, blockedInput: blockedInput,
                                                   blockedOutput: blockedOutput, width: blockedOutput ? outWidth : 8,
                                                   inputWidth: blockedInput ? inWidth : nil))
            let reference = run([x, w, b]) { $0[0].conv2d($0[1], bias: $0[2], stride: (1, 1), padding: padding) }
            let blocked = run([x, w, b]) { t in
                let y = (blockedInput ? t[0].blocked(width: inWidth) : t[0])
                    .conv2dBlocked(t[1], bias: t[2], stride: (1, 1), padding: padding, blockedOutput: blockedOutput, width: blockedOutput ? outWidth : nil)
                return blockedOutput ? y.unblocked() : y
            }
            expectClose(blocked.output, reference.output, tolerance: 1e-4)
            for k in 0..<3 { expectClose(blocked.gradients[k], reference.gradients[k], tolerance: 1e-4) }

            let layouts = DNNLConvPlan.Layouts(sourceBlocked: blockedInput, destinationBlocked: blockedOutput, sourceWidth: blockedInput ? inWidth : 8,
                                               destinationWidth: blockedOutput ? outWidth : 8)
            #expect(layouts.keepsEightChannelBlocks(inChannels: cin, outChannels: cout) == (cin % 16 != 0 && blockedInput || cout % 16 != 0 && blockedOutput))
            let g = ConvGeometry(input: x.shape, weight: w.shape, stride: (1, 1), padding: padding, dilation: (1, 1), groups: 1)
            let plan = try #require(DNNLConvPlans.plan(g, images: g.dnnlChunk, variant: .backward, layouts: layouts))
            let backwardData = try #require(plan.backwardData), backwardWeights = try #require(plan.backwardWeights)
            #expect(!plan.runsReferenceKernels)
            #expect(plan.keepsEightChannelBlocks == layouts.keepsEightChannelBlocks(inChannels: cin, outChannels: cout))
            if blockedInput && inWidth == 8 {
                for md in [plan.forward.md(dnnl_query_src_md), backwardData.md(dnnl_query_diff_src_md), backwardWeights.md(dnnl_query_src_md)] {
                    #expect(DNNL.equal(md, plan.sourceUser), "\(cin) -> \(cout): oneDNN copies the 8-channel source into its own layout")
                }
            }
            if blockedOutput && outWidth == 8 {
                for md in [plan.forward.md(dnnl_query_dst_md), backwardData.md(dnnl_query_diff_dst_md), backwardWeights.md(dnnl_query_diff_dst_md)] {
                    #expect(DNNL.equal(md, plan.destinationUser), "\(cin) -> \(cout): oneDNN copies the 8-channel destination into its own layout")
                }
            }
        }
    }

    /// The maps `DirectForward` takes (a blocked input, output channels not a multiple of 32, at least 24 pixels wide;
    /// or few NCHW input channels): the 26-pixel width leaves two single pixels after four six-pixel tiles.
    @Test func directForwardMatchesNCHW() throws {
        for (cin, cout, kernel) in [(16, 48, 3), (8, 16, 3), (3, 32, 5), (2, 16, 3)] {
            let x = randomVariable([2, cin, 5, 26], seed: 31), w = randomVariable([cout, cin, kernel, kernel], seed: 32)
            let b = randomVariable([cout], seed: 33)
            let blockedInput = cin % 8 == 0
            try #require(Tensor.canConvolveBlocked(input: x.shape, weight: w.shape, stride: (1, 1), padding: .same,
                                                   blockedInput: blockedInput, blockedOutput: true, width: 8))
            let reference = run([x, w, b]) { $0[0].conv2d($0[1], bias: $0[2], stride: (1, 1), padding: .same) }
            let blocked = run([x, w, b]) { t in
                (blockedInput ? t[0].blocked8() : t[0]).conv2dBlocked(t[1], bias: t[2], stride: (1, 1), padding: .same, width: 8).unblocked()
            }
            expectClose(blocked.output, reference.output, tolerance: 1e-4)
            for k in 0..<3 { expectClose(blocked.gradients[k], reference.gradients[k], tolerance: 1e-4) }
            // The statistics the kernel sums as it writes: [sum | sum of squares] per channel, against the output's own.
            // With every pass on oneDNN (other CPUs, STARLING_CONV=dnnl) there are none: batch norm makes its own pass.
            let moments = ChannelMoments()
            let y = GradMode.disabled {
                (blockedInput ? x.blocked8() : x).conv2dBlocked(w, bias: b, stride: (1, 1), padding: .same, width: 8, moments: moments)
            }
            guard ConvGeometry.ownKernels else { #expect(moments.sums == nil); continue }
            let sums = try #require(moments.sums)
            let planar = y.unblocked().toArray(), plane = 5 * 26
            for c in 0..<cout {
                var (sum, squares) = (0.0, 0.0)
                for n in 0..<2 { for i in 0..<plane { let v = Double(planar[(n * cout + c) * plane + i]); sum += v; squares += v * v } }
                #expect(abs(sums[c] - sum) <= 1e-5 * max(1, abs(sum)), "channel \(c) sum")
                #expect(abs(sums[cout + c] - squares) <= 1e-5 * max(1, squares), "channel \(c) squares")
            }
        }
        // oneDNN's kernels leave the statistics to batch norm.
        let moments = ChannelMoments()
        _ = GradMode.disabled { randomVariable([1, 64, 5, 26], seed: 34).blocked8().conv2dBlocked(randomVariable([64, 64, 3, 3], seed: 35),
                                                                                                   bias: randomVariable([64], seed: 36),
                                                                                                   stride: (1, 1), padding: .same, moments: moments) }
        #expect(moments.sums == nil)
    }

    /// Batch norm from the convolution's statistics gives what its own pass gives (at width 16 oneDNN computes none).
    @Test(arguments: [8, 16]) func batchNormFromConvolutionMoments(width: Int) {
        let x = randomVariable([2, 16, 5, 26], seed: 37, -1, 2), w = randomVariable([48, 16, 3, 3], seed: 38), b = randomVariable([48], seed: 39)
        let gamma = randomVariable([48], seed: 40, 0.5, 1.5), beta = randomVariable([48], seed: 41)
        func pass(_ useMoments: Bool) -> (output: [Float], gradients: [[Float]], running: [Float]) {
            let (mean, variance) = (Tensor(shape: [48], values: [Float](repeating: 0, count: 48)), Tensor(shape: [48], values: [Float](repeating: 1, count: 48)))
            let result = run([x, w, b, gamma, beta]) { t in
                let moments = useMoments ? ChannelMoments() : nil
                let y = t[0].blocked(width: width).conv2dBlocked(t[1], bias: t[2], stride: (1, 1), padding: .same, moments: moments)
                return y.batchNormELUMaxPool2x2Blocked(gamma: t[3], beta: t[4], runningMean: mean, runningVar: variance, training: true,
                                                      moments: moments).unblocked()
            }
            return (result.output, result.gradients, mean.toArray() + variance.toArray())
        }
        let (own, fromConvolution) = (pass(false), pass(true))
        expectClose(fromConvolution.output, own.output, tolerance: 1e-5)
        for k in 0..<5 { expectClose(fromConvolution.gradients[k], own.gradients[k], tolerance: 1e-4) }
        expectClose(fromConvolution.running, own.running, tolerance: 1e-6)
    }

    @Test(arguments: [8, 16]) func convolutionFiniteDifferences(width: Int) {
        let w = randomVariable([width, width, 3, 3], seed: 7), b = randomVariable([width], seed: 8)
        checkGradients([randomVariable([2, 1, 5, 4, width], seed: 9), w, b]) {
            $0[0].conv2dBlocked($0[1], bias: $0[2], stride: (1, 1), padding: .same)
        }
    }

    /// Batch norm + ELU (and plain batch norm) in training mode: outputs, running statistics and the gradients of x,
    /// gamma and beta against the NCHW op.
    @Test(arguments: [true, false], [8, 16]) func batchNormMatchesNCHW(withELU: Bool, width: Int) {
        let x = randomVariable([3, 32, 5, 7], seed: 10, -2, 3)
        let gamma = randomVariable([32], seed: 11, 0.5, 1.5), beta = randomVariable([32], seed: 12)
        func stats() -> (Tensor, Tensor) { (Tensor(shape: [32], values: randomValues(32, seed: 13)), Tensor(shape: [32], values: randomValues(32, seed: 14, 0.5, 2))) }
        let (meanA, varA) = stats(), (meanB, varB) = stats()
        func op(_ t: [Tensor], _ layout: ChannelLayout, _ mean: Tensor, _ variance: Tensor) -> Tensor {
            let input = layout == .blocked ? t[0].blocked(width: width) : t[0]
            let y = withELU
                ? input.batchNormELU(gamma: t[1], beta: t[2], runningMean: mean, runningVar: variance, training: true, layout: layout)
                : input.batchNorm(gamma: t[1], beta: t[2], runningMean: mean, runningVar: variance, training: true, layout: layout)
            return layout == .blocked ? y.unblocked() : y
        }
        let reference = run([x, gamma, beta]) { op($0, .planar, meanA, varA) }
        let blocked = run([x, gamma, beta]) { op($0, .blocked, meanB, varB) }
        expectClose(blocked.output, reference.output, tolerance: 1e-5)
        for k in 0..<3 { expectClose(blocked.gradients[k], reference.gradients[k], tolerance: 1e-4) }
        expectClose(meanB.toArray(), meanA.toArray(), tolerance: 1e-6)
        expectClose(varB.toArray(), varA.toArray(), tolerance: 1e-6)
        // Evaluation mode, from the running statistics.
        let eval = GradMode.disabled {
            (x.blocked(width: width).batchNormELU(gamma: gamma, beta: beta, runningMean: meanA, runningVar: varA, training: false,
                                                  layout: .blocked).unblocked(),
             x.batchNormELU(gamma: gamma, beta: beta, runningMean: meanA, runningVar: varA, training: false))
        }
        #expect(eval.0.toArray() == eval.1.toArray())
    }

    @Test(arguments: [8, 16]) func batchNormFiniteDifferences(width: Int) {
        let gamma = randomVariable([width], seed: 15, 0.5, 1.5), beta = randomVariable([width], seed: 16)
        let mean = Tensor(shape: [width], values: [Float](repeating: 0, count: width))
        let variance = Tensor(shape: [width], values: [Float](repeating: 1, count: width))
        checkGradients([randomVariable([2, 1, 3, 3, width], seed: 17, -2, 2), gamma, beta], eps: 1e-2, rtol: 3e-2, atol: 3e-3) {
            $0[0].batchNormELU(gamma: $0[1], beta: $0[2], runningMean: mean, runningVar: variance, training: true, layout: .blocked)
        }
    }

    /// The fused batch norm + activation (ELU, leaky ReLU) + pooling against the two ops it replaces: output, running
    /// statistics and the gradients of x, gamma and beta, in training and evaluation, on even and odd sizes, with
    /// negative gammas (where the window's maximum of z is its minimum of x) and with ties (small integers); and against
    /// finite differences. The fused op pools before the activation, so an ELU output may differ in the last place
    /// where the exp approximation is not monotonic; the leaky ReLU's is exact. Slope 0 is batch norm, ReLU (the two ops
    /// `batchNorm(...).relu()`, VGG's blocks) and pooling.
    @Test(arguments: [true, false], [8, 16]) func fusedPoolingMatchesTheTwoOps(training: Bool, width: Int) {
        for (leaky, slope) in [(false, Float(0)), (true, 0.1), (true, 0)] {
            func unfused(_ x: Tensor, _ gamma: Tensor, _ beta: Tensor, _ mean: Tensor, _ variance: Tensor) -> Tensor {
                (leaky && slope == 0
                    ? x.batchNorm(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training, layout: .blocked).relu()
                    : leaky ? x.batchNormLeakyReLU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training, slope: slope,
                                                   layout: .blocked)
                       : x.batchNormELU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training, alpha: 0.8,
                                        layout: .blocked)).maxPool2x2Blocked()
            }
            func fused(_ x: Tensor, _ gamma: Tensor, _ beta: Tensor, _ mean: Tensor, _ variance: Tensor) -> Tensor {
                leaky ? x.batchNormLeakyReLUMaxPool2x2Blocked(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training,
                                                              slope: slope)
                      : x.batchNormELUMaxPool2x2Blocked(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training,
                                                        alpha: 0.8)
            }
            for (h, w, ties) in [(6, 8, false), (7, 5, false), (1, 4, false), (5, 6, true)] {
                let shape = [2, 16 / width, h, w, width]
                let x = ties ? Tensor.variable(shape: shape, values: randomValues(2 * 16 * h * w, seed: 24, -2, 3).map { $0.rounded(.down) })
                             : randomVariable(shape, seed: 24, -2, 3)
                let signs = (0..<16).map { $0 % 3 == 1 ? Float(-1) : 1 }
                let gamma = Tensor.variable(shape: [16], values: zip(randomValues(16, seed: 25, 0.5, 1.5), signs).map { $0 * $1 })
                let beta = randomVariable([16], seed: 26)
                func stats() -> (Tensor, Tensor) { (Tensor(shape: [16], values: randomValues(16, seed: 27)), Tensor(shape: [16], values: randomValues(16, seed: 28, 0.5, 2))) }
                let (meanA, varA) = stats(), (meanB, varB) = stats()
                let reference = run([x, gamma, beta]) { unfused($0[0], $0[1], $0[2], meanA, varA) }
                let pooled = run([x, gamma, beta]) { fused($0[0], $0[1], $0[2], meanB, varB) }
                if leaky { #expect(pooled.output == reference.output, "\(h) x \(w), slope \(slope)") }
                expectClose(pooled.output, reference.output, tolerance: 1e-6)
                for k in 0..<3 { expectClose(pooled.gradients[k], reference.gradients[k], tolerance: 1e-5) }
                #expect(meanA.toArray() == meanB.toArray() && varA.toArray() == varB.toArray())
            }
            let gamma = Tensor.variable(shape: [width], values: randomValues(width, seed: 29, 0.5, 1.5).enumerated().map { $0.offset % 2 == 1 ? -$0.element : $0.element })
            let beta = randomVariable([width], seed: 30)
            let mean = Tensor(shape: [width], values: [Float](repeating: 0, count: width))
            let variance = Tensor(shape: [width], values: [Float](repeating: 1, count: width))
            // Distinct inputs, so that no window has a near tie within the finite-difference step, and a step small
            // enough that no z crosses the activations' kink at 0 (the ELU's at alpha 0.8, the leaky ReLU's).
            let count = 24 * width
            let distinct = (0..<count).map { Float(($0 * 37) % count) * 0.02 * 192 / Float(count) - 2 }
            checkGradients([Tensor.variable(shape: [2, 1, 4, 3, width], values: distinct), gamma, beta], eps: 2e-3, rtol: 3e-2, atol: 3e-3) {
                fused($0[0], $0[1], $0[2], mean, variance)
            }
        }
    }

    /// Odd sizes (the last row and column dropped) and ties (small integers), where the gradient must go to the same
    /// input as maxPool2d's argmax.
    @Test(arguments: [8, 16]) func maxPoolMatchesNCHW(width: Int) {
        for (h, w) in [(5, 7), (4, 6), (3, 2)] {
            let values = randomValues(2 * 32 * h * w, seed: 18, 0, 4).map { $0.rounded(.down) }
            let x = Tensor.variable(shape: [2, 32, h, w], values: values)
            let reference = run([x]) { $0[0].maxPool2d(kernel: (2, 2)) }
            let blocked = run([x]) { $0[0].blocked(width: width).maxPool2x2Blocked().unblocked() }
            #expect(blocked.output == reference.output)
            #expect(blocked.gradients[0] == reference.gradients[0])
        }
        // Distinct values 0.05 apart, so that no window has a near tie within the finite-difference step.
        let count = 20 * width
        let distinct = (0..<count).map { Float(($0 * 37) % count) * 0.05 }
        checkGradients([Tensor.variable(shape: [1, 1, 5, 4, width], values: distinct)]) { $0[0].maxPool2x2Blocked() }
    }

    /// The blocked batch norm + ELU in every build and at both widths, each lane against the scalar kernel of the same build.
    @Test(arguments: KernelDispatch.supported, [8, 16]) func blockedELUMatchesTheScalarKernel(_ level: KernelDispatch.Level, width: Int) {
        let pixels = 37
        let x = randomValues(width * pixels, seed: 20, -6, 4)
        let mean = randomValues(width, seed: 21), scale = randomValues(width, seed: 22, 0.5, 2), shift = randomValues(width, seed: 23)
        var y = [Float](repeating: .nan, count: width * pixels)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer {
                KernelDispatch.affineELUBlocked(width: width, pixels, xp.baseAddress!, $0.baseAddress!, mean: mean, scale: scale, shift: shift,
                                                alpha: 0.7, kernels: level)
            }
        }
        var expected = [Float](repeating: .nan, count: width * pixels)
        for l in 0..<width {
            let lane = (0..<pixels).map { x[width * $0 + l] }
            var out = [Float](repeating: 0, count: pixels)
            lane.withUnsafeBufferPointer { lp in
                out.withUnsafeMutableBufferPointer {
                    KernelDispatch.affineELU(pixels, lp.baseAddress!, $0.baseAddress!, mean: mean[l], scale: scale[l], shift: shift[l],
                                             alpha: 0.7, kernels: level)
                }
            }
            for p in 0..<pixels { expected[width * p + l] = out[p] }
        }
        #expect(y == expected)
    }
}
