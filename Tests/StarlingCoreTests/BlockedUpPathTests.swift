import Testing
@testable import StarlingCore

/// The blocked ops of U-Net's path: the transposed convolution (`conv2dTransposedBlocked`) against the NCHW op, and the
/// convolution with its ReLU as one op (`conv2dBlockedReLU`) against the two ops; values and every gradient, and each
/// against finite differences; at block widths 8 and 16 (a side whose channels are not a multiple of 16 stays 8 wide in a
/// 16-wide pass, as the layers choose).
@Suite struct BlockedUpPathTests {
    private func side(_ channels: Int, _ preferred: Int) -> Int { channels % preferred == 0 ? preferred : 8 }

    /// Runs `f` on fresh copies of `inputs`, back-propagates fixed random weights, and returns the output (NCHW values)
    /// and each input's gradient.
    private func run(_ inputs: [Tensor], _ f: ([Tensor]) -> Tensor) -> (output: [Float], gradients: [[Float]]) {
        let copies = inputs.map { Tensor.variable(shape: $0.shape, values: $0.toArray()) }
        let out = f(copies)
        out.backward(seed: randomValues(out.count, seed: 77, 0.5, 1.5))
        return (out.toArray(), copies.map { $0.gradArray ?? [] })
    }

    /// U-Net's 2x2 at stride 2 (even and odd maps), and overlapping windows: 3x3 at stride 2 "same" and "valid", 3x3 at
    /// stride 1; 16 -> 8 and 8 -> 24 channels.
    @Test(arguments: [8, 16]) func transposedConvolutionMatchesNCHW(preferred: Int) throws {
        for (kernel, stride, padding, cin, cout, h, w) in [(2, 2, Padding.valid, 16, 8, 6, 7), (2, 2, Padding.valid, 8, 24, 5, 3),
                                                           (3, 2, Padding.same, 16, 8, 4, 5), (3, 2, Padding.valid, 8, 16, 3, 4),
                                                           (3, 1, Padding.valid, 16, 16, 5, 5), (2, 2, Padding.same, 8, 8, 9, 2)] {
            let x = randomVariable([2, cin, h, w], seed: 51), weight = randomVariable([cin, cout, kernel, kernel], seed: 52)
            let b = randomVariable([cout], seed: 53)
            let (inWidth, outWidth) = (side(cin, preferred), side(cout, preferred))
            try #require(Tensor.canConvolveTransposedBlocked(input: x.shape, weight: weight.shape, stride: (stride, stride), padding: padding,
                                                             width: outWidth, inputWidth: inWidth))
            let reference = run([x, weight, b]) { $0[0].conv2dTransposed($0[1], bias: $0[2], stride: (stride, stride), padding: padding) }
            let blocked = run([x, weight, b]) {
                let y = $0[0].blocked(width: inWidth).conv2dTransposedBlocked($0[1], bias: $0[2], stride: (stride, stride), padding: padding,
                                                                              width: outWidth)
                #expect(y.shape[4] == outWidth)
                return y.unblocked()
            }
            expectClose(blocked.output, reference.output, tolerance: 1e-5)
            for k in 0..<3 { expectClose(blocked.gradients[k], reference.gradients[k], tolerance: 1e-4) }
        }
    }

    /// An input read by two transposed convolutions: the second backward adds to the gradient the first wrote.
    @Test(arguments: [8, 16]) func transposedConvolutionAddsToAnExistingGradient(preferred: Int) {
        let x = randomVariable([2, 16, 3, 4], seed: 54)
        let (w1, w2) = (randomVariable([16, 16, 2, 2], seed: 55), randomVariable([16, 32, 2, 2], seed: 56))
        let (b1, b2) = (randomVariable([16], seed: 57), randomVariable([32], seed: 58))
        let reference = run([x, w1, b1, w2, b2]) { t in
            Tensor.concat([t[0].conv2dTransposed(t[1], bias: t[2], stride: (2, 2)), t[0].conv2dTransposed(t[3], bias: t[4], stride: (2, 2))], axis: 1)
        }
        let blocked = run([x, w1, b1, w2, b2]) { t in
            let xb = t[0].blocked(width: preferred)
            return Tensor.concat([xb.conv2dTransposedBlocked(t[1], bias: t[2], stride: (2, 2), padding: .valid),
                                  xb.conv2dTransposedBlocked(t[3], bias: t[4], stride: (2, 2), padding: .valid)], axis: 1).unblocked()
        }
        expectClose(blocked.output, reference.output, tolerance: 1e-5)
        for k in 0..<5 { expectClose(blocked.gradients[k], reference.gradients[k], tolerance: 1e-4) }
    }

    @Test func transposedConvolutionFiniteDifferences() {
        let w = randomVariable([8, 8, 2, 2], seed: 59), b = randomVariable([8], seed: 60)
        checkGradients([randomVariable([2, 1, 3, 2, 8], seed: 61), w, b]) {
            $0[0].conv2dTransposedBlocked($0[1], bias: $0[2], stride: (2, 2), padding: .valid)
        }
        checkGradients([randomVariable([1, 1, 3, 3, 8], seed: 62), randomVariable([8, 8, 3, 3], seed: 63), b]) {
            $0[0].conv2dTransposedBlocked($0[1], bias: $0[2], stride: (2, 2), padding: .same)
        }
        // 16 wide in, 16 wide out; and 16 wide in, 8 wide out.
        checkGradients([randomVariable([1, 1, 2, 2, 16], seed: 70), randomVariable([16, 16, 2, 2], seed: 71), randomVariable([16], seed: 72)]) {
            $0[0].conv2dTransposedBlocked($0[1], bias: $0[2], stride: (2, 2), padding: .valid)
        }
        checkGradients([randomVariable([1, 1, 2, 2, 16], seed: 73), randomVariable([16, 8, 2, 2], seed: 74), b]) {
            $0[0].conv2dTransposedBlocked($0[1], bias: $0[2], stride: (2, 2), padding: .valid, width: 8)
        }
    }

    /// Against `conv2dBlocked(...).relu()`: a blocked input 26 pixels wide (Starling's own forward kernel where the CPU
    /// has it, then the ReLU pass), a blocked input into 32 channels and a strided one (oneDNN with the ReLU fused into
    /// its store), an NCHW input of 3 channels (the first layer).
    @Test(arguments: [8, 16]) func convolutionReLUMatchesTheTwoOps(preferred: Int) throws {
        for (cin, cout, stride, padding, width) in [(16, 16, 1, Padding.same, 26), (16, 32, 1, Padding.same, 9), (8, 16, 2, Padding.valid, 11),
                                                    (3, 16, 1, Padding.same, 26), (8, 8, 1, Padding.same, 13), (16, 8, 1, Padding.same, 7)] {
            let blockedInput = cin % 8 == 0
            let x = randomVariable([2, cin, 5, width], seed: 64), w = randomVariable([cout, cin, 3, 3], seed: 65)
            let b = randomVariable([cout], seed: 66)
            let (inWidth, outWidth) = (side(cin, preferred), side(cout, preferred))
            try #require(Tensor.canConvolveBlocked(input: x.shape, weight: w.shape, stride: (stride, stride), padding: padding,
                                                   blockedInput: blockedInput, blockedOutput: true, width: outWidth, inputWidth: inWidth))
            func input(_ t: Tensor) -> Tensor { blockedInput ? t.blocked(width: inWidth) : t }
            let reference = run([x, w, b]) {
                input($0[0]).conv2dBlocked($0[1], bias: $0[2], stride: (stride, stride), padding: padding, width: outWidth).relu().unblocked()
            }
            let fused = run([x, w, b]) {
                input($0[0]).conv2dBlockedReLU($0[1], bias: $0[2], stride: (stride, stride), padding: padding, width: outWidth).unblocked()
            }
            #expect(reference.output.contains { $0 == 0 } && reference.output.contains { $0 > 0 })
            expectClose(fused.output, reference.output, tolerance: 1e-5)
            for k in 0..<3 { expectClose(fused.gradients[k], reference.gradients[k], tolerance: 1e-4) }
        }
    }

    /// The forward pass into one 8-channel block by the adjoint's data-gradient kernel (`adjointForward`, what
    /// `conv2dBlockedReLU` runs there) against oneDNN's forward kernel: 3x3, 5x5 and 1x1 kernels, one to three input blocks,
    /// odd map sizes, with and without the ReLU.
    @Test func adjointForwardMatchesTheForwardKernel() throws {
        for (cin, kernel) in [(8, 3), (16, 3), (8, 5), (24, 1)] {
            let (n, h, w) = (3, 7, 19)
            let x = randomVariable([n, cin, h, w], seed: 81).blocked(width: 8), weight = randomVariable([8, cin, kernel, kernel], seed: 82)
            let b = randomVariable([8], seed: 83)
            let g = ConvGeometry(input: [n, cin, h, w], weight: weight.shape, stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
            let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: 8, destinationWidth: 8)
            guard ConvGeometry.ownKernels else { #expect(!g.adjointForwardApplies(layouts)); continue }
            let reference = FloatStorage(count: n * 8 * h * w)
            try #require(g.dnnlConvolve(input: x.data, weight: weight.data, bias: b.data, output: reference.pointer, beta: 0, layouts: layouts))
            for relu in [false, true] {
                let y = FloatStorage(count: n * 8 * h * w)
                #expect(g.adjointForward(input: x.data, weight: weight.data, bias: b.data, output: y.pointer, layouts: layouts, relu: relu))
                expectClose(y.toArray(), reference.toArray().map { relu ? max($0, 0) : $0 }, tolerance: 1e-4)
            }
        }
        // Not taken: 16 output channels, a stride of 2, a 16-wide side.
        let eight = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: 8, destinationWidth: 8)
        #expect(!ConvGeometry(input: [1, 8, 6, 6], weight: [16, 8, 3, 3], stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
            .adjointForwardApplies(eight))
        #expect(!ConvGeometry(input: [1, 8, 6, 6], weight: [8, 8, 3, 3], stride: (2, 2), padding: .same, dilation: (1, 1), groups: 1)
            .adjointForwardApplies(eight))
        #expect(!ConvGeometry(input: [1, 16, 6, 6], weight: [8, 16, 3, 3], stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
            .adjointForwardApplies(DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: 16, destinationWidth: 8)))
    }

    @Test func convolutionReLUFiniteDifferences() {
        checkGradients([randomVariable([2, 1, 4, 3, 8], seed: 67), randomVariable([8, 8, 3, 3], seed: 68), randomVariable([8], seed: 69)],
                       eps: 1e-3) {
            $0[0].conv2dBlockedReLU($0[1], bias: $0[2], stride: (1, 1), padding: .same)
        }
        checkGradients([randomVariable([1, 1, 3, 3, 16], seed: 75), randomVariable([16, 16, 3, 3], seed: 76), randomVariable([16], seed: 77)],
                       eps: 1e-3) {
            $0[0].conv2dBlockedReLU($0[1], bias: $0[2], stride: (1, 1), padding: .same)
        }
    }

    /// The transposed convolution with its ReLU as one op (`conv2dTransposedBlockedReLU`, conv-vae's decoder) against
    /// `conv2dTransposedBlocked(...).relu()`: the same values and gradients bit for bit (the same sums, the ReLU applied as
    /// the bias is added and its mask in place in backward); conv-vae's 3x3 stride-2 "same" layers, a 2x2 one.
    @Test(arguments: [8, 16]) func transposedConvolutionReLUIsTheTwoOps(preferred: Int) throws {
        for (kernel, stride, padding, cin, cout, h, w) in [(3, 2, Padding.same, 16, 16, 4, 5), (3, 2, Padding.same, 16, 8, 3, 3),
                                                           (2, 2, Padding.valid, 8, 24, 3, 2), (3, 1, Padding.same, 32, 16, 5, 4)] {
            let x = randomVariable([2, cin, h, w], seed: 93), weight = randomVariable([cin, cout, kernel, kernel], seed: 94)
            let b = randomVariable([cout], seed: 95)
            let (inWidth, outWidth) = (side(cin, preferred), side(cout, preferred))
            try #require(Tensor.canConvolveTransposedBlocked(input: x.shape, weight: weight.shape, stride: (stride, stride), padding: padding,
                                                             width: outWidth, inputWidth: inWidth))
            let reference = run([x, weight, b]) {
                $0[0].blocked(width: inWidth).conv2dTransposedBlocked($0[1], bias: $0[2], stride: (stride, stride), padding: padding,
                                                                      width: outWidth).relu().unblocked()
            }
            let fused = run([x, weight, b]) {
                $0[0].blocked(width: inWidth).conv2dTransposedBlockedReLU($0[1], bias: $0[2], stride: (stride, stride), padding: padding,
                                                                          width: outWidth).unblocked()
            }
            #expect(reference.output.contains { $0 == 0 } && reference.output.contains { $0 > 0 })
            #expect(fused.output == reference.output, "\(cin) -> \(cout), \(kernel)x\(kernel) at \(stride), width \(preferred)")
            for k in 0..<3 { #expect(fused.gradients[k] == reference.gradients[k], "gradient \(k), \(cin) -> \(cout), width \(preferred)") }
        }
    }

    /// A stride-1 "same" transposed convolution of a blocked input into a few planar channels (conv-vae's last layer,
    /// 32 -> 1) run as the convolution by the flipped kernel on the narrow kernels (`conv2dTransposedBlockedNarrow`),
    /// against the NCHW op: values and every gradient; odd map sizes, 3x3, 5x5 and 1x1 kernels.
    @Test(arguments: [8, 16]) func narrowTransposedConvolutionMatchesNCHW(preferred: Int) throws {
        guard NarrowOutput.enabled else { return }   // STARLING_CONV=dnnl: the layer stays on the planar op
        for (kernel, cin, cout, h, w) in [(3, 32, 1, 7, 9), (3, 16, 3, 5, 4), (5, 16, 2, 6, 7), (1, 8, 4, 3, 5), (3, 24, 1, 4, 6)] {
            let inWidth = side(cin, preferred)
            let x = randomVariable([3, cin, h, w], seed: 96), weight = randomVariable([cin, cout, kernel, kernel], seed: 97)
            let b = randomVariable([cout], seed: 98)
            try #require(Tensor.canConvolveTransposedBlockedNarrow(input: x.shape, weight: weight.shape, stride: (1, 1), padding: .same,
                                                                   inputWidth: inWidth))
            let reference = run([x, weight, b]) { $0[0].conv2dTransposed($0[1], bias: $0[2], stride: (1, 1), padding: .same) }
            let narrow = run([x, weight, b]) {
                let y = $0[0].blocked(width: inWidth).conv2dTransposedBlockedNarrow($0[1], bias: $0[2])
                #expect(y.shape == [3, cout, h, w])
                return y
            }
            expectClose(narrow.output, reference.output, tolerance: 1e-5)
            for k in 0..<3 { expectClose(narrow.gradients[k], reference.gradients[k], tolerance: 1e-4) }
        }
        // Not taken: stride 2, "valid" padding, an even kernel, five output channels.
        #expect(!Tensor.canConvolveTransposedBlockedNarrow(input: [1, 16, 4, 4], weight: [16, 1, 3, 3], stride: (2, 2), padding: .same, inputWidth: 8))
        #expect(!Tensor.canConvolveTransposedBlockedNarrow(input: [1, 16, 4, 4], weight: [16, 1, 3, 3], stride: (1, 1), padding: .valid, inputWidth: 8))
        #expect(!Tensor.canConvolveTransposedBlockedNarrow(input: [1, 16, 4, 4], weight: [16, 1, 2, 2], stride: (1, 1), padding: .same, inputWidth: 8))
        #expect(!Tensor.canConvolveTransposedBlockedNarrow(input: [1, 16, 4, 4], weight: [16, 5, 3, 3], stride: (1, 1), padding: .same, inputWidth: 8))
    }

    /// The flipped kernel by its definition, [o, c, i, j] = w[c, o, kh - 1 - i, kw - 1 - j].
    @Test func flippedKernelIsTheDefinition() {
        let w = randomVariable([3, 2, 2, 3], seed: 99)
        let f = w.transposedConvolutionKernelFlipped()
        #expect(f.shape == [2, 3, 2, 3])
        let (wv, fv) = (w.toArray(), f.toArray())
        for o in 0..<2 { for c in 0..<3 { for i in 0..<2 { for j in 0..<3 {
            #expect(fv[((o * 3 + c) * 2 + i) * 3 + j] == wv[((c * 2 + o) * 2 + 1 - i) * 3 + 2 - j])
        } } } }
    }

    @Test func narrowTransposedConvolutionAndTransposedReLUFiniteDifferences() {
        checkGradients([randomVariable([3, 2, 3, 5], seed: 100)]) { $0[0].transposedConvolutionKernelFlipped() }
        if NarrowOutput.enabled {
            checkGradients([randomVariable([2, 1, 4, 3, 8], seed: 101), randomVariable([8, 1, 3, 3], seed: 102), randomVariable([1], seed: 103)],
                           eps: 1e-3) {
                $0[0].conv2dTransposedBlockedNarrow($0[1], bias: $0[2])
            }
            checkGradients([randomVariable([1, 2, 3, 3, 16], seed: 104), randomVariable([32, 2, 3, 3], seed: 105), randomVariable([2], seed: 106)],
                           eps: 1e-3) {
                $0[0].conv2dTransposedBlockedNarrow($0[1], bias: $0[2])
            }
        }
        checkGradients([randomVariable([2, 1, 3, 2, 8], seed: 107), randomVariable([8, 8, 3, 3], seed: 108), randomVariable([8], seed: 109)],
                       eps: 1e-3) {
            $0[0].conv2dTransposedBlockedReLU($0[1], bias: $0[2], stride: (2, 2), padding: .same)
        }
        checkGradients([randomVariable([1, 1, 2, 2, 16], seed: 110), randomVariable([16, 16, 3, 3], seed: 111), randomVariable([16], seed: 112)],
                       eps: 1e-3) {
            $0[0].conv2dTransposedBlockedReLU($0[1], bias: $0[2], stride: (2, 2), padding: .same)
        }
    }
}
