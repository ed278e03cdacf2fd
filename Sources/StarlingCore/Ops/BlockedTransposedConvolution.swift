/// Transposed convolution (`conv2dTransposed`) in the blocked layout [N, C/8, H, W, 8].
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
    /// adjoint convolution in the blocked layout, and input and output channels are multiples of 8. `input` is the
    /// NCHW shape.
    public static func canConvolveTransposedBlocked(input: [Int], weight: [Int], stride: (Int, Int), padding: Padding) -> Bool {
        guard DNNLConvPlans.enabled, let g = transposedGeometry(input: input, weight: weight, stride: stride, padding: padding),
              g.inChannels % 8 == 0, g.outChannels % 8 == 0 else { return false }
        return g.dnnlCanTrain(DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true), bias: false)
    }

    /// `conv2dTransposed(weight, bias:, stride:, padding:)` of a blocked input [N, Cin/8, H, W, 8] into a blocked output
    /// [N, Cout/8, Hout, Wout, 8]. Call `canConvolveTransposedBlocked` first: without oneDNN's plans this traps.
    public func conv2dTransposedBlocked(_ weight: Tensor, bias: Tensor, stride: (Int, Int), padding: Padding) -> Tensor {
        let x = self
        precondition(x.rank == 5 && x.shape[4] == 8, "conv2dTransposedBlocked needs a blocked input [N, C/8, H, W, 8], got \(x.shape)")
        let planar = [x.shape[0], x.shape[1] * 8, x.shape[2], x.shape[3]]
        guard let g = Tensor.transposedGeometry(input: planar, weight: weight.shape, stride: stride, padding: padding) else {
            preconditionFailure("conv2dTransposedBlocked of \(planar) by \(weight.shape): no geometry (check canConvolveTransposedBlocked first)")
        }
        let cout = g.inChannels
        precondition(bias.shape == [cout], "bias \(bias.shape) for \(cout) output channels")
        let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true)
        if GradMode.isEnabled && (x.requiresGrad || weight.requiresGrad) { g.prepareDNNLBackward(layouts) }
        let shape = [g.batch, cout / 8, g.height, g.width, 8]
        let out = Tensor.result(shape: shape, storage: FloatStorage(uninitializedCount: Tensor.elementCount(shape)), inputs: [x, weight, bias]) { out in
            let dy = UnsafePointer(out.grad)
            if bias.requiresGrad {
                accumulateBlockedChannelSums(dy, planes: g.batch * cout / 8, blocks: cout / 8, pixels: g.inPlane, into: bias.grad)
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
        // The bias, one 8-channel vector a block, added to every pixel of the block.
        let (planes, blocks, pixels, b) = (g.batch * cout / 8, cout / 8, g.inPlane, UnsafePointer(bias.data))
        Parallel.forEachChunk(of: planes, work: out.count) { range in
            for plane in range {
                let vector = BlockedKernels.load(b + 8 * (plane % blocks))
                let start = y + plane * pixels * 8
                for p in 0..<pixels { BlockedKernels.store(BlockedKernels.load(start + 8 * p) + vector, start + 8 * p) }
            }
        }
        return out
    }
}
