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
            x.blockedConvolutionBackward(g, weight: weight, bias: bias, outputGrad: UnsafePointer(dy), layouts: layouts)
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

    /// `conv2dBlockedReLU(...)` followed by 2x2/2 max-pooling as one op, for a convolution + ReLU whose output nothing but
    /// the pooling reads (SSD300's conv1_2, conv2_2 and conv3_3: 184, 92 and 46 MB at 300 x 300, batch 8). The two ops
    /// keep the full-size rectified output for backward (the ReLU's mask and the pooling's argmax); this one keeps the
    /// pooled values (the next layer's input, kept anyway) and a 2-bit index a pooled value (`RectifiedPoolingKernels`),
    /// 1/16 of the pooled output. The full-size output exists only while forward pools it; backward writes the
    /// convolution's output gradient from the indices (dy at each window's maximum where the pooled value is positive,
    /// zero elsewhere: what the pooling's and the ReLU's backward give) and runs the convolution's backward, which
    /// reads its input, not its output. Values and gradients are the two ops' bit for bit (the same convolution, the
    /// same first maximum in row-major order).
    ///
    /// `pooling` as `maxPool2d`'s: `.valid` drops an odd last row or column (`maxPool2x2Blocked`), `.same` pools it in
    /// a window of its own (SSD300's 75 x 75 conv3_3 into 38 x 38; padded pixels never win). Call
    /// `canConvolveBlocked(..., blockedOutput: true)` first.
    public func conv2dBlockedReLUMaxPool2x2(_ weight: Tensor, bias: Tensor, stride: (Int, Int) = (1, 1), padding: Padding = .valid,
                                            width: Int? = nil, pooling: Padding = .valid) -> Tensor {
        let x = self
        let (g, layouts, shape, planar) = blockedConvolutionPlan(weight, bias: bias, stride: stride, padding: padding,
                                                                 blockedOutput: true, width: width)
        let (n, blocks, h, w, bw) = (shape[0], shape[1], shape[2], shape[3], shape[4])
        precondition(pooling == .valid || pooling == .same, "conv2dBlockedReLUMaxPool2x2: pooling padding \(pooling) is not valid or same")
        let partial = pooling == .same
        let (oh, ow, row) = (partial ? (h + 1) / 2 : h / 2, partial ? (w + 1) / 2 : w / 2, w * bw)
        precondition(oh > 0 && ow > 0, "conv2dBlockedReLUMaxPool2x2: a \(h) x \(w) map has no whole 2x2 window")
        // Windows with both columns; with `.same` and an odd width, one more of the last column alone.
        let (whole, lastColumnAlone) = (w / 2, ow > w / 2)
        let outShape = [n, blocks, oh, ow, bw]
        let (pooledCount, fullCount) = (Tensor.elementCount(outShape), Tensor.elementCount(shape))
        // The window indices, pooledCount / 4 bytes, in a Float block for the ledger's counts; nothing needs them at inference.
        let keepWindows = GradMode.isEnabled && [x, weight, bias].contains { $0.requiresGrad }
        let windows = FloatStorage(uninitializedCount: keepWindows ? (pooledCount / 4 + 3) / 4 : 0)
        let out = Tensor.result(shape: outShape, storage: FloatStorage(uninitializedCount: pooledCount), inputs: [x, weight, bias]) { out in
            // The convolution's output gradient, alive for this backward only: written window by window below, zeros
            // first where `.valid` leaves a last row or column in no window.
            let gradient = FloatStorage(uninitializedCount: fullCount)
            let (pooled, dPooled, indices, dz) = (UnsafePointer(out.data), UnsafePointer(out.grad), UnsafeRawPointer(windows.pointer),
                                                  gradient.pointer)
            if 2 * oh < h && !partial || 2 * ow < w && !partial { dz.update(repeating: 0, count: fullCount) }
            Parallel.forEachChunk(of: n * blocks * oh, work: fullCount) { rows in
                // A window's second row past the map (`.same`, odd height) and the last column alone go through scratch.
                withUnsafeTemporaryAllocation(of: Float.self, capacity: row + 4 * bw) { scratch in
                    let (spare, top2, bottom2) = (scratch.baseAddress!, scratch.baseAddress! + row, scratch.baseAddress! + row + 2 * bw)
                    for r in rows {
                        let (plane, i) = r.quotientAndRemainder(dividingBy: oh)
                        let top = (plane * h + 2 * i) * row, o = (plane * oh + i) * ow * bw
                        let bottom = 2 * i + 1 < h ? dz + top + row : spare
                        KernelDispatch.rectifiedPoolGradientRow(width: bw, whole, y: pooled + o, dy: dPooled + o, windows: indices + o / 4,
                                                                topGradient: dz + top, bottomGradient: bottom)
                        guard lastColumnAlone else { continue }
                        let last = o + whole * bw
                        KernelDispatch.rectifiedPoolGradientRow(width: bw, 1, y: pooled + last, dy: dPooled + last, windows: indices + last / 4,
                                                                topGradient: top2, bottomGradient: bottom2)
                        (dz + top + (w - 1) * bw).update(from: top2, count: bw)
                        if 2 * i + 1 < h { (dz + top + row + (w - 1) * bw).update(from: bottom2, count: bw) }
                    }
                }
            }
            x.blockedConvolutionBackward(g, weight: weight, bias: bias, outputGrad: UnsafePointer(dz), layouts: layouts)
            withExtendedLifetime((gradient, windows)) {}
        }
        // Forward: the rectified convolution into a block that lives until it is pooled.
        let rectified = FloatStorage(uninitializedCount: fullCount)
        convolveWithReLU(g, layouts: layouts, planar: planar, weight: weight, bias: bias, into: rectified.pointer)
        let (z, pooled) = (UnsafePointer(rectified.pointer), out.data)
        let indices = keepWindows ? UnsafeMutableRawPointer(windows.pointer) : nil
        Parallel.forEachChunk(of: n * blocks * oh, work: fullCount) { rows in
            // The last column alone pooled as a window of two equal columns: the left one is the maximum, index 0 or 2.
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 4 * bw) { scratch in
                let (top2, bottom2) = (scratch.baseAddress!, scratch.baseAddress! + 2 * bw)
                for r in rows {
                    let (plane, i) = r.quotientAndRemainder(dividingBy: oh)
                    let top = z + (plane * h + 2 * i) * row, o = (plane * oh + i) * ow * bw
                    // A window row past the map (`.same`, odd height): the top row twice, whose maximum is the top's.
                    let bottom = 2 * i + 1 < h ? top + row : top
                    func pool(_ pixels: Int, _ top: UnsafePointer<Float>, _ bottom: UnsafePointer<Float>, at o: Int) {
                        if let indices {
                            KernelDispatch.rectifiedPoolRow(width: bw, pixels, top: top, bottom: bottom, into: pooled + o, windows: indices + o / 4)
                        } else {
                            KernelDispatch.maxPoolRow(width: bw, pixels, top: top, bottom: bottom, into: pooled + o)
                        }
                    }
                    pool(whole, top, bottom, at: o)
                    guard lastColumnAlone else { continue }
                    for (copy, source) in [(top2, top + (w - 1) * bw), (bottom2, bottom + (w - 1) * bw)] {
                        copy.update(from: source, count: bw)
                        (copy + bw).update(from: source, count: bw)
                    }
                    pool(1, top2, bottom2, at: o + whole * bw)
                }
            }
        }
        withExtendedLifetime(rectified) {}
        return out
    }
}
