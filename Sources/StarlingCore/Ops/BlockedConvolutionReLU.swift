/// A convolution and the ReLU after it as one training op in the blocked layout (U-Net's blocks: every convolution but
/// the classifier feeds a ReLU and nothing else).
///
/// As two ops the step keeps both the convolution's output and the ReLU's for backward and runs a pass over each, and
/// backward writes one gradient buffer for each. The convolution's backward never reads its output (only its input,
/// its weights and the output gradient), and the ReLU's derivative is known from its output (y > 0 exactly where the
/// input was), so one buffer serves both: the rectified values are written where the convolution wrote its output
/// (by oneDNN as a post-op of the store, or in one pass after Starling's own kernels), and backward masks the output
/// gradient in place before the convolution's backward reads it. One activation and one gradient of the output's
/// size fewer, and one pass fewer each way.
extension Tensor {
    /// `conv2dBlocked(weight, bias:, stride:, padding:, width:).relu()` with a blocked output, as one op. Call
    /// `canConvolveBlocked(..., blockedOutput: true)` first: without a oneDNN plan this traps.
    public func conv2dBlockedReLU(_ weight: Tensor, bias: Tensor, stride: (Int, Int) = (1, 1), padding: Padding = .valid,
                                  width: Int? = nil) -> Tensor {
        let x = self
        let (g, layouts, shape, planar) = blockedConvolutionPlan(weight, bias: bias, stride: stride, padding: padding,
                                                                 blockedOutput: true, width: width)
        let out = Tensor.result(shape: shape, storage: FloatStorage(uninitializedCount: Tensor.elementCount(shape)),
                                inputs: [x, weight, bias]) { out in
            // The ReLU's backward: the output gradient where the output is positive, 0 elsewhere, in place (this op's
            // gradient is read by nothing after its own backward).
            let (y, dy) = (UnsafePointer(out.data), out.grad)
            Parallel.forEachAlignedChunk(of: out.count) { r in
                for i in r { let v = y[i], d = dy[i]; dy[i] = v > 0 ? d : 0 }
            }
            g.blockedBackward(input: x.data, weight: weight.data, outputGrad: UnsafePointer(dy),
                              weightGradient: weight.requiresGrad ? weight.grad : nil, biasGradient: bias.requiresGrad ? bias.grad : nil,
                              inputGradient: x.requiresGrad ? x.gradientForWriting() : nil, layouts: layouts)
        }
        convolveWithReLU(g, layouts: layouts, planar: planar, weight: weight, bias: bias, into: out.data)
        return out
    }

    /// The convolution with the ReLU applied as it stores (or in one pass after it) into `y`, the blocked output.
    private func convolveWithReLU(_ g: ConvGeometry, layouts: DNNLConvPlan.Layouts, planar: [Int], weight: Tensor, bias: Tensor,
                                  into y: UnsafeMutablePointer<Float>) {
        let x = self, count = g.batch * g.outChannels * g.outPlane
        // Starling's Winograd F(2x2, 3x3) where it runs (AVX2 CPUs), the ReLU applied as it stores.
        if g.ownWinogradForward(input: x.data, weight: weight.data, bias: bias.data, output: y, layouts: layouts, relu: true) { return }
        let direct = g.directForward(input: x.data, weight: weight.data, bias: bias.data, output: y, layouts: layouts)
        // Into one 8-channel block: the adjoint's data-gradient kernel, twice as fast as oneDNN's forward one (AdjointForward.swift).
        let adjoint = !direct && g.adjointForward(input: x.data, weight: weight.data, bias: bias.data, output: y, layouts: layouts, relu: true)
        let fused = !direct && !adjoint && g.withDNNLChunks(.activatedTrainingForward(bias: true, activation: .leakyRelu(slope: 0)), layouts: layouts) { plan, n in
            plan.convolve(x.data + n * g.inChannels * g.inPlane, weight.data, bias: bias.data, y + n * g.outChannels * g.outPlane,
                          accumulate: false)
        }
        if !fused && !adjoint {
            // Starling's own kernel ran (or oneDNN has no plan with the ReLU fused): the ReLU in one pass after it.
            let done = direct || g.dnnlConvolve(input: x.data, weight: weight.data, bias: bias.data, output: y, beta: 0, layouts: layouts)
            precondition(done, "conv2dBlockedReLU without a oneDNN plan for \(planar) x \(weight.shape): check canConvolveBlocked first")
            Parallel.forEachAlignedChunk(of: count) { r in
                for i in r { let v = y[i]; y[i] = v > 0 ? v : 0 }
            }
        }
    }

    /// `conv2dBlockedReLU(...).maxPool2x2Blocked()` as one op, for a convolution + ReLU whose output nothing but the
    /// 2x2/2 pooling reads (SSD300's conv1_2 and conv2_2: 184 and 92 MB at 300 x 300, batch 8). The two ops keep the
    /// full-size rectified output for backward (the ReLU's mask and the pooling's argmax); this one keeps the pooled
    /// values (the next layer's input, kept anyway) and a 2-bit index a pooled value (`RectifiedPoolingKernels`), 1/16
    /// of the pooled output. The full-size output exists only while forward pools it; backward writes the
    /// convolution's output gradient from the indices (dy at each window's maximum where the pooled value is positive,
    /// zero elsewhere: what the pooling's and the ReLU's backward give) and runs the convolution's backward, which
    /// reads its input, not its output. Values and gradients are the two ops' bit for bit (the same convolution, the
    /// same first maximum in row-major order). The output's height and width must be even (every window whole); call
    /// `canConvolveBlocked(..., blockedOutput: true)` first.
    public func conv2dBlockedReLUMaxPool2x2(_ weight: Tensor, bias: Tensor, stride: (Int, Int) = (1, 1), padding: Padding = .valid,
                                            width: Int? = nil) -> Tensor {
        let x = self
        let (g, layouts, shape, planar) = blockedConvolutionPlan(weight, bias: bias, stride: stride, padding: padding,
                                                                 blockedOutput: true, width: width)
        let (n, blocks, h, w, bw) = (shape[0], shape[1], shape[2], shape[3], shape[4])
        precondition(h % 2 == 0 && w % 2 == 0, "conv2dBlockedReLUMaxPool2x2: the convolution's output \(h) x \(w) must have even sides")
        let (oh, ow, row) = (h / 2, w / 2, w * bw)
        let outShape = [n, blocks, oh, ow, bw]
        let (pooledCount, fullCount) = (Tensor.elementCount(outShape), Tensor.elementCount(shape))
        // The window indices, pooledCount / 4 bytes, in a Float block for the ledger's counts; nothing needs them at inference.
        let keepWindows = GradMode.isEnabled && [x, weight, bias].contains { $0.requiresGrad }
        let windows = FloatStorage(uninitializedCount: keepWindows ? (pooledCount / 4 + 3) / 4 : 0)
        let out = Tensor.result(shape: outShape, storage: FloatStorage(uninitializedCount: pooledCount), inputs: [x, weight, bias]) { out in
            // The convolution's output gradient, written whole below and alive for this backward only.
            let gradient = FloatStorage(uninitializedCount: fullCount)
            let (pooled, dPooled, indices, dz) = (UnsafePointer(out.data), UnsafePointer(out.grad), UnsafeRawPointer(windows.pointer),
                                                  gradient.pointer)
            Parallel.forEachChunk(of: n * blocks * oh, work: fullCount) { rows in
                for r in rows {
                    let (plane, i) = r.quotientAndRemainder(dividingBy: oh)
                    let top = (plane * h + 2 * i) * row, o = (plane * oh + i) * ow * bw
                    KernelDispatch.rectifiedPoolGradientRow(width: bw, ow, y: pooled + o, dy: dPooled + o, windows: indices + o / 4,
                                                            topGradient: dz + top, bottomGradient: dz + top + row)
                }
            }
            g.blockedBackward(input: x.data, weight: weight.data, outputGrad: UnsafePointer(dz),
                              weightGradient: weight.requiresGrad ? weight.grad : nil, biasGradient: bias.requiresGrad ? bias.grad : nil,
                              inputGradient: x.requiresGrad ? x.gradientForWriting() : nil, layouts: layouts)
            withExtendedLifetime((gradient, windows)) {}
        }
        // Forward: the rectified convolution into a block that lives until it is pooled.
        let rectified = FloatStorage(uninitializedCount: fullCount)
        convolveWithReLU(g, layouts: layouts, planar: planar, weight: weight, bias: bias, into: rectified.pointer)
        let (z, pooled) = (UnsafePointer(rectified.pointer), out.data)
        let indices = keepWindows ? UnsafeMutableRawPointer(windows.pointer) : nil
        Parallel.forEachChunk(of: n * blocks * oh, work: fullCount) { rows in
            for r in rows {
                let (plane, i) = r.quotientAndRemainder(dividingBy: oh)
                let top = (plane * h + 2 * i) * row, o = (plane * oh + i) * ow * bw
                if let indices {
                    KernelDispatch.rectifiedPoolRow(width: bw, ow, top: z + top, bottom: z + top + row, into: pooled + o, windows: indices + o / 4)
                } else {
                    KernelDispatch.maxPoolRow(width: bw, ow, top: z + top, bottom: z + top + row, into: pooled + o)
                }
            }
        }
        withExtendedLifetime(rectified) {}
        return out
    }
}
