/// Transposed convolution (`conv2dTransposed`) in the blocked layout [N, C/B, H, W, B], B 8 or 16.
///
/// Between blocked convolutions (a U-Net's up-convolutions) the planar op costs a reorder of its input to NCHW, one of
/// its output back to the blocked layout, oneDNN's own reorders from NCHW to the layout it computes in, the same again
/// for both gradients, and its NCHW output makes the channel concatenation that follows unblock the skip features too.
/// Here input, output and both gradients stay blocked. As the planar op, it is the adjoint of the convolution whose input
/// has this op's output shape, run on that convolution's oneDNN primitives (`ConvGeometry`'s blocked plans): forward is
/// its input-gradient kernel, the input gradient its forward kernel, the weight gradient its weight-gradient kernel with
/// the roles of input and output gradient swapped (oneDNN's own deconvolution primitive, tried first, ran slower per call
/// than these plans on U-Net's up-convolutions, `DNNL_VERBOSE=1`). The weights keep PyTorch's ConvTranspose2d layout
/// [Cin, Cout, kh, kw], which is that convolution's [out, in, kh, kw].
extension Tensor {
    /// The convolution this transposed convolution of `input` (NCHW shape) by `weight` ([Cin, Cout, kh, kw]) is the
    /// adjoint of, or nil where `conv2dTransposed` has no geometry for it (explicit padding, dilation, groups).
    static func transposedGeometry(input: [Int], weight: [Int], stride: (Int, Int), padding: Padding) -> ConvGeometry? {
        guard input.count == 4, weight.count == 4, weight[0] == input[1], input[2] > 0, input[3] > 0, weight[2] > 0, weight[3] > 0,
              stride.0 > 0, stride.1 > 0, padding == .valid || padding == .same else { return nil }
        let (n, cin, h, w, cout, kh, kw) = (input[0], input[1], input[2], input[3], weight[1], weight[2], weight[3])
        let outH = padding.transposedOutput(size: h, kernel: kh, stride: stride.0, vertical: true)
        let outW = padding.transposedOutput(size: w, kernel: kw, stride: stride.1, vertical: false)
        let rows = padding.window(size: outH, kernel: kh, stride: stride.0, vertical: true)
        let cols = padding.window(size: outW, kernel: kw, stride: stride.1, vertical: false)
        guard rows.output == h, cols.output == w else { return nil }
        return ConvGeometry(batch: n, inChannels: cout, outChannels: cin, groups: 1, height: outH, width: outW, kernelH: kh, kernelW: kw,
                            strideH: stride.0, strideW: stride.1, dilationH: 1, dilationW: 1, padTop: rows.before, padLeft: cols.before,
                            outHeight: h, outWidth: w)
    }

    /// Whether `conv2dTransposedBlocked` can run this transposed convolution: oneDNN is there with the plans of its
    /// adjoint convolution in the blocked layout, the input's channels are a multiple of `inputWidth` and the output's of
    /// `width`. `input` is the NCHW shape.
    public static func canConvolveTransposedBlocked(input: [Int], weight: [Int], stride: (Int, Int), padding: Padding,
                                                    width: Int, inputWidth: Int) -> Bool {
        guard DNNLConvPlans.enabled, [width, inputWidth].allSatisfy({ $0 == 8 || $0 == 16 }),
              let g = transposedGeometry(input: input, weight: weight, stride: stride, padding: padding),
              g.inChannels % width == 0, g.outChannels % inputWidth == 0 else { return false }
        return g.dnnlCanTrain(adjointLayouts(width: width, inputWidth: inputWidth), bias: false)
    }

    /// The adjoint convolution's layouts: its source is this op's output (`width` wide), its destination this op's input.
    private static func adjointLayouts(width: Int, inputWidth: Int) -> DNNLConvPlan.Layouts {
        DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: width, destinationWidth: inputWidth)
    }

    /// The gradients of a blocked transposed convolution from its output's gradient `dy` (dense, [N, Cout/W, Hout,
    /// Wout, W]): the bias's channel sums, the weight's and the input's through oneDNN's plans (the adjoint convolution's
    /// weight gradient and forward pass). Shared by the op alone and the one written into a concatenation.
    private static func transposedBlockedBackward(_ dy: UnsafePointer<Float>, _ g: ConvGeometry, x: Tensor, weight: Tensor, bias: Tensor,
                                                  width block: Int, layouts: DNNLConvPlan.Layouts) {
        let cout = g.inChannels
        if bias.requiresGrad {
            accumulateBlockedChannelSums(dy, width: block, planes: g.batch * cout / block, blocks: cout / block, pixels: g.inPlane, into: bias.grad)
        }
        if weight.requiresGrad {
            let done = g.dnnlAccumulateWeightGradient(input: dy, outputGrad: x.data, into: weight.grad, layouts: layouts)
            precondition(done, "oneDNN lost the plan of a blocked transposed convolution")
        }
        if x.requiresGrad {
            let (dx, overwrite) = x.gradientForWriting()
            let done = g.dnnlConvolve(input: dy, weight: weight.data, bias: nil, output: dx, beta: overwrite ? 0 : 1, layouts: layouts)
            precondition(done, "oneDNN lost the plan of a blocked transposed convolution")
        }
    }

    /// `conv2dTransposed(weight, bias:, stride:, padding:)` of a blocked input [N, Cin/B, H, W, B] into a blocked output
    /// [N, Cout/W, Hout, Wout, W], W = `width` (by default the input's B). Call `canConvolveTransposedBlocked` first:
    /// without oneDNN's plans this traps.
    public func conv2dTransposedBlocked(_ weight: Tensor, bias: Tensor, stride: (Int, Int), padding: Padding, width: Int? = nil) -> Tensor {
        transposedBlocked(weight, bias: bias, stride: stride, padding: padding, width: width, relu: false)
    }

    /// `conv2dTransposedBlocked(...).relu()` as one op (conv-vae's decoder: every up-convolution but the last feeds a ReLU
    /// and nothing else). As `conv2dBlockedReLU`: the transposed convolution's backward never reads its output and the
    /// ReLU's derivative is known from its own (y > 0 exactly where the input was), so one buffer holds the rectified
    /// values (the ReLU applied in the pass that adds the bias) and backward masks the output gradient in place: one
    /// activation and one gradient of the output's size fewer than the two ops (128 x 32 x 28 x 28: 12.8 MB each), and
    /// one pass fewer each way.
    public func conv2dTransposedBlockedReLU(_ weight: Tensor, bias: Tensor, stride: (Int, Int), padding: Padding, width: Int? = nil) -> Tensor {
        transposedBlocked(weight, bias: bias, stride: stride, padding: padding, width: width, relu: true)
    }

    private func transposedBlocked(_ weight: Tensor, bias: Tensor, stride: (Int, Int), padding: Padding, width: Int?, relu: Bool) -> Tensor {
        let x = self
        let inBlock = x.blockWidth, block = width ?? inBlock
        let planar = [x.shape[0], x.shape[1] * inBlock, x.shape[2], x.shape[3]]
        guard let g = Tensor.transposedGeometry(input: planar, weight: weight.shape, stride: stride, padding: padding) else {
            preconditionFailure("conv2dTransposedBlocked of \(planar) by \(weight.shape): no geometry (check canConvolveTransposedBlocked first)")
        }
        let cout = g.inChannels
        precondition(bias.shape == [cout], "bias \(bias.shape) for \(cout) output channels")
        let layouts = Tensor.adjointLayouts(width: block, inputWidth: inBlock)
        if GradMode.isEnabled && (x.requiresGrad || weight.requiresGrad) { g.prepareDNNLBackward(layouts) }
        let shape = [g.batch, cout / block, g.height, g.width, block]
        let out = Tensor.result(shape: shape, storage: FloatStorage(uninitializedCount: Tensor.elementCount(shape)), inputs: [x, weight, bias]) { out in
            if relu {
                // The ReLU's backward in place: this op's output gradient is read by nothing after its own backward.
                let (y, dy) = (UnsafePointer(out.data), out.grad)
                Parallel.forEachAlignedChunk(of: out.count) { r in
                    for i in r { let v = y[i], d = dy[i]; dy[i] = v > 0 ? d : 0 }
                }
            }
            Tensor.transposedBlockedBackward(UnsafePointer(out.grad), g, x: x, weight: weight, bias: bias, width: block, layouts: layouts)
        }
        let y = out.data
        let done = g.dnnlAccumulateInputGradient(outputGrad: x.data, weight: weight.data, into: y, layouts: layouts, accumulate: false)
        precondition(done, "conv2dTransposedBlocked without oneDNN's plans for \(planar) x \(weight.shape): check canConvolveTransposedBlocked first")
        // The bias, one B-channel vector a block, added to every pixel of the block (and the ReLU in the same pass).
        let (planes, blocks, pixels, b) = (g.batch * cout / block, cout / block, g.inPlane, UnsafePointer(bias.data))
        Parallel.forEachChunk(of: planes, work: out.count) { range in
            for plane in range {
                let vector = b + block * (plane % blocks)
                let start = y + plane * pixels * block
                if relu {
                    for p in 0..<pixels {
                        let pixel = start + block * p
                        for lane in 0..<block { let v = pixel[lane] + vector[lane]; pixel[lane] = v > 0 ? v : 0 }
                    }
                } else {
                    for p in 0..<pixels {
                        let pixel = start + block * p
                        for lane in 0..<block { pixel[lane] += vector[lane] }
                    }
                }
            }
        }
        return out
    }
}

/// A stride-1 transposed convolution with "same" padding and an odd kernel is the convolution by the same kernel flipped
/// in both spatial axes, its in and out roles swapped ([Cin, Cout, kh, kw] -> [Cout, Cin, kh, kw]), with the same symmetric
/// padding: y[o] = sum over taps t of x[o - t + p] w[t] = sum over t' of x[o + t' - p] w[k - 1 - t']. From a blocked
/// input to an output of at most `NarrowOutput.maxChannels` channels (conv-vae's last layer, 32 -> the image) that
/// convolution runs on the narrow kernels (`NarrowOutputConvolution`) and writes the planar output itself, where the
/// transposed op would first unblock its input (a reorder each way of the largest map of the decoder, 128 x 32 x 28 x 28)
/// and run the planar op's band product.
extension Tensor {
    /// The convolution kernel a stride-1 transposed convolution by this kernel ([Cin, Cout, kh, kw]) equals:
    /// [Cout, Cin, kh, kw], both spatial axes reversed. Differentiable (its gradient is the same permutation backwards).
    public func transposedConvolutionKernelFlipped() -> Tensor {
        precondition(rank == 4, "a transposed convolution's kernel is [Cin, Cout, kh, kw], got \(shape)")
        let (cin, cout, kh, kw) = (shape[0], shape[1], shape[2], shape[3])
        let w = self
        // Index of w[c, o, kh - 1 - i, kw - 1 - j] for the flipped kernel's [o, c, i, j].
        @inline(__always) func source(_ o: Int, _ c: Int, _ i: Int, _ j: Int) -> Int { ((c * cout + o) * kh + kh - 1 - i) * kw + kw - 1 - j }
        let out = Tensor.result(shape: [cout, cin, kh, kw], inputs: [w], backwardReadsResult: false) { out in
            let (dy, dw) = (UnsafePointer(out.grad), w.grad)
            var k = 0
            for o in 0..<cout { for c in 0..<cin { for i in 0..<kh { for j in 0..<kw { dw[source(o, c, i, j)] += dy[k]; k += 1 } } } }
        }
        let (x, y) = (UnsafePointer(w.data), out.data)
        var k = 0
        for o in 0..<cout { for c in 0..<cin { for i in 0..<kh { for j in 0..<kw { y[k] = x[source(o, c, i, j)]; k += 1 } } } }
        return out
    }

    /// Whether `conv2dTransposedBlockedNarrow` runs this transposed convolution of a blocked input (`input` the NCHW
    /// shape, `inputWidth` its blocks) by `weight` [Cin, Cout, kh, kw]: stride 1, "same" padding, odd kernel sides, at
    /// most `NarrowOutput.maxChannels` output channels, and the narrow kernels take the equivalent convolution.
    public static func canConvolveTransposedBlockedNarrow(input: [Int], weight: [Int], stride: (Int, Int), padding: Padding,
                                                          inputWidth: Int) -> Bool {
        guard NarrowOutput.enabled, stride == (1, 1), padding == .same, input.count == 4, weight.count == 4, weight[0] == input[1],
              weight[1] <= NarrowOutput.maxChannels, weight[2] % 2 == 1, weight[3] % 2 == 1 else { return false }
        let convolutionWeight = [weight[1], weight[0], weight[2], weight[3]]
        let g = ConvGeometry(input: input, weight: convolutionWeight, stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
        let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: false, sourceWidth: inputWidth, destinationWidth: 8)
        return g.narrowOutputShape(layouts) != nil
            && canConvolveBlocked(input: input, weight: convolutionWeight, padding: .same, blockedInput: true, blockedOutput: false,
                                  width: inputWidth, inputWidth: inputWidth)
    }

    /// `conv2dTransposed(weight, bias:, padding: .same)` at stride 1 of a blocked input [N, Cin/B, H, W, B] into a planar
    /// output [N, Cout, H, W]: the convolution by the flipped kernel on the narrow kernels. Call
    /// `canConvolveTransposedBlockedNarrow` first.
    public func conv2dTransposedBlockedNarrow(_ weight: Tensor, bias: Tensor) -> Tensor {
        conv2dBlocked(weight.transposedConvolutionKernelFlipped(), bias: bias, padding: .same, blockedOutput: false)
    }
}
