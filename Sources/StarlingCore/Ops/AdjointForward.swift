/// The forward pass of a stride-1 "same" convolution into one 8-channel block, run as the data-gradient pass of its
/// adjoint convolution.
///
/// oneDNN's AVX2 forward kernel keeps one 8-channel output block in registers and so takes twice the time of its
/// data-gradient kernel on the same shape, the same multiply-adds (U-Net at an eighth of the width, 8 -> 8 and 16 -> 8
/// at 128 x 128: 12.5 % of its training step; BENCHMARKS.md, "U-Net at an eighth of the width"). With stride 1 and the
/// padding centred, y = conv(x, W) is the input gradient of the convolution from y's shape to x's whose kernel is W with
/// its two channel axes swapped and both spatial axes reversed: dx[o, p] = sum over i and taps t of W'[i, o, t] dy[i, p -
/// t + pad] with W'[i, o, k - 1 - t] = W[o, i, t] and dy = x. Bias and ReLU follow in one pass over y.
extension ConvGeometry {
    /// Whether `adjointForward` takes this convolution in these layouts: 8-channel blocks on both sides, 8 output
    /// channels, stride and dilation 1, an odd kernel with centred padding (output the input's size), one group.
    func adjointForwardApplies(_ layouts: DNNLConvPlan.Layouts) -> Bool {
        Self.ownKernels && useDNNL && DNNLConvPlans.enabled && layouts.sourceBlocked && layouts.destinationBlocked
            && layouts.sourceWidth == 8 && layouts.destinationWidth == 8 && outChannels == 8 && inChannels % 8 == 0 && groups == 1
            && strideH == 1 && strideW == 1 && dilationH == 1 && dilationW == 1 && kernelH % 2 == 1 && kernelW % 2 == 1
            && padTop == kernelH / 2 && padLeft == kernelW / 2 && outHeight == height && outWidth == width
    }

    /// The convolution from this one's output shape to its input shape, with the same kernel size and padding.
    var adjoint: ConvGeometry {
        var g = ConvGeometry(batch: batch, inChannels: outChannels, outChannels: inChannels, groups: 1, height: height, width: width,
                             kernelH: kernelH, kernelW: kernelW, strideH: 1, strideW: 1, dilationH: 1, dilationW: 1,
                             padTop: padTop, padLeft: padLeft, outHeight: height, outWidth: width)
        g.dnnlChunkBudget = dnnlChunkBudget
        g.winogradCallBudget = winogradCallBudget
        return g
    }

    /// y = conv(x, W) + bias (rectified with `relu`) by the adjoint's data-gradient kernel when `adjointForwardApplies`;
    /// false, doing nothing, otherwise.
    func adjointForward(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                        output y: UnsafeMutablePointer<Float>, layouts: DNNLConvPlan.Layouts, relu: Bool) -> Bool {
        guard adjointForwardApplies(layouts) else { return false }
        let taps = kernelH * kernelW
        let flipped = UnsafeMutablePointer<Float>.allocate(capacity: outChannels * inChannels * taps)
        defer { flipped.deallocate() }
        for o in 0..<outChannels {
            for i in 0..<inChannels {
                let source = w + (o * inChannels + i) * taps, target = flipped + (i * outChannels + o) * taps
                for t in 0..<taps { target[taps - 1 - t] = source[t] }
            }
        }
        let eightWide = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: true, sourceWidth: 8, destinationWidth: 8)
        guard adjoint.dnnlAccumulateInputGradient(outputGrad: x, weight: flipped, into: y, layouts: eightWide, accumulate: false) else {
            return false
        }
        let b = SIMD8<Float>(UnsafeBufferPointer(start: bias, count: 8)), zero = SIMD8<Float>(repeating: 0)
        Parallel.forEachChunk(of: batch, work: batch * outPlane * 8) { images in
            let start = UnsafeMutableRawPointer(y + images.lowerBound * outPlane * 8)
            for p in 0..<(images.count * outPlane) {
                let v = start.loadUnaligned(fromByteOffset: 32 * p, as: SIMD8<Float>.self) + b
                start.storeBytes(of: relu ? v.replacing(with: zero, where: v .< zero) : v, toByteOffset: 32 * p, as: SIMD8<Float>.self)
            }
        }
        return true
    }
}
