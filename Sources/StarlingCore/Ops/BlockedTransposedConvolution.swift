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

    /// `conv2dTransposed(weight, bias:, stride:, padding:)` of a blocked input [N, Cin/B, H, W, B] into a blocked output
    /// [N, Cout/W, Hout, Wout, W], W = `width` (by default the input's B). Call `canConvolveTransposedBlocked` first:
    /// without oneDNN's plans this traps.
    public func conv2dTransposedBlocked(_ weight: Tensor, bias: Tensor, stride: (Int, Int), padding: Padding, width: Int? = nil) -> Tensor {
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
            let dy = UnsafePointer(out.grad)
            if bias.requiresGrad {
                accumulateBlockedChannelSums(dy, width: block, planes: g.batch * cout / block, blocks: cout / block, pixels: g.inPlane,
                                             into: bias.grad)
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
        let y = out.data
        let done = g.dnnlAccumulateInputGradient(outputGrad: x.data, weight: weight.data, into: y, layouts: layouts, accumulate: false)
        precondition(done, "conv2dTransposedBlocked without oneDNN's plans for \(planar) x \(weight.shape): check canConvolveTransposedBlocked first")
        // The bias, one B-channel vector a block, added to every pixel of the block.
        let (planes, blocks, pixels, b) = (g.batch * cout / block, cout / block, g.inPlane, UnsafePointer(bias.data))
        Parallel.forEachChunk(of: planes, work: out.count) { range in
            for plane in range {
                let vector = b + block * (plane % blocks)
                let start = y + plane * pixels * block
                for p in 0..<pixels {
                    let pixel = start + block * p
                    for lane in 0..<block { pixel[lane] += vector[lane] }
                }
            }
        }
        return out
    }
}
