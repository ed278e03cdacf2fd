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
        let y = out.data
        // Starling's Winograd F(2x2, 3x3) where it runs (AVX2 CPUs), the ReLU applied as it stores.
        if g.ownWinogradForward(input: x.data, weight: weight.data, bias: bias.data, output: y, layouts: layouts, relu: true) { return out }
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
            Parallel.forEachAlignedChunk(of: out.count) { r in
                for i in r { let v = y[i]; y[i] = v > 0 ? v : 0 }
            }
        }
        return out
    }
}
