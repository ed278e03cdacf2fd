/// A convolution + ReLU over the channel concatenation of two inputs, without the concatenation (U-Net's decoder: the
/// skip features, then the up-convolution's output, into each level's first 3x3 convolution).
///
/// conv(concat(a, b), W) = conv(a, W[:, :Ca]) + conv(b, W[:, Ca:]): the weights split along their input channels. The
/// concatenated tensor is the size of both inputs and would be kept for the convolution's weight gradient, though
/// both inputs are kept anyway (the skip for its own ReLU and its pooling, the up-convolution's output as this op's
/// input); backward would write its gradient, again the size of both, and copy it out into each input's. Here each
/// half reads its input where it lies and writes its input gradient straight into that input's: a rank of U-Net at
/// width 0.25 (4 images of 128 x 128) holds the skip's 4 + 2 + 1 + 0.5 MB less through the step and the
/// concatenation's gradient less in backward. Each half runs the kernels a convolution of its shape runs.
///
/// Values differ from concat + `conv2dBlockedReLU` by float rounding only (the two halves' sums are added, not run as
/// one sum over all channels).
extension Tensor {
    /// Whether `conv2dBlockedReLU(concatenating:...)` can run: each half of `weight` (split after `first`'s channels) on
    /// its input has a blocked plan into the output's `width`; the two inputs share the images and the map.
    public static func canConvolveBlockedReLU(concatenating first: [Int], _ second: [Int], weight: [Int], stride: (Int, Int) = (1, 1),
                                              padding: Padding = .valid, width: Int, firstWidth: Int?, secondWidth: Int?) -> Bool {
        guard first.count == 4, second.count == 4, weight.count == 4, first[0] == second[0], first[2] == second[2], first[3] == second[3],
              first[1] > 0, second[1] > 0, weight[1] == first[1] + second[1] else { return false }
        return [(first, firstWidth), (second, secondWidth)].allSatisfy { input, inputWidth in
            canConvolveBlocked(input: input, weight: [weight[0], input[1], weight[2], weight[3]], stride: stride, padding: padding,
                               blockedInput: inputWidth != nil, blockedOutput: true, width: width, inputWidth: inputWidth)
        }
    }

    /// `Tensor.concat([self, second], axis: 1).conv2dBlockedReLU(weight, ...)` as one op of the two inputs, each blocked
    /// (rank 5, any block width) or NCHW; the output blocked, `width` channels wide. Call `canConvolveBlockedReLU(
    /// concatenating:...)` first.
    public func conv2dBlockedReLU(concatenating second: Tensor, _ weight: Tensor, bias: Tensor, stride: (Int, Int) = (1, 1),
                                  padding: Padding = .valid, width: Int) -> Tensor {
        let (a, b) = (self, second)
        let channelsA = a.rank == 5 ? a.shape[1] * a.shape[4] : a.shape[1]
        let channelsB = b.rank == 5 ? b.shape[1] * b.shape[4] : b.shape[1]
        precondition(weight.rank == 4 && weight.shape[1] == channelsA + channelsB,
                     "weight \(weight.shape) for inputs of \(channelsA) and \(channelsB) channels concatenated")
        let (cout, taps) = (weight.shape[0], weight.shape[2] * weight.shape[3])
        let backward = [a, b, weight, bias].contains { $0.requiresGrad }
        let halves = [(a, 0, channelsA), (b, channelsA, channelsB)].map { x, offset, channels in
            let plan = x.blockedConvolutionPlan(weightShape: [cout, channels, weight.shape[2], weight.shape[3]], bias: bias, stride: stride,
                                                padding: padding, blockedOutput: true, width: width, backward: backward)
            return (x: x, offset: offset, channels: channels, geometry: plan.geometry, layouts: plan.layouts, shape: plan.shape)
        }
        precondition(halves[0].shape == halves[1].shape, "concatenated inputs \(a.shape) and \(b.shape) convolve to different shapes")
        let shape = halves[0].shape, count = Tensor.elementCount(shape)
        // The input channels [offset, offset + channels) of every output channel's kernels, contiguous. Made where they
        // are read and dropped after: a kept copy would be the layer's weights again (width 1's bottleneck: 19 MB).
        func slice(_ offset: Int, _ channels: Int) -> FloatStorage {
            let s = FloatStorage(uninitializedCount: cout * channels * taps), w = UnsafePointer(weight.data), all = weight.shape[1] * taps
            for o in 0..<cout { (s.pointer + o * channels * taps).update(from: w + o * all + offset * taps, count: channels * taps) }
            return s
        }
        let out = Tensor.result(shape: shape, storage: FloatStorage(uninitializedCount: count), inputs: [a, b, weight, bias]) { out in
            // The ReLU's backward in place, as `conv2dBlockedReLU`'s: nothing reads this op's gradient after it.
            let (y, dy) = (UnsafePointer(out.data), out.grad)
            Parallel.forEachAlignedChunk(of: out.count) { r in
                for i in r { let v = y[i], d = dy[i]; dy[i] = v > 0 ? d : 0 }
            }
            let allTaps = weight.shape[1] * taps
            for (k, h) in halves.enumerated() {
                let w = slice(h.offset, h.channels)
                let weightGradient = weight.requiresGrad ? FloatStorage(count: cout * h.channels * taps) : nil
                // The bias's gradient once, with the first half.
                h.geometry.blockedBackward(input: h.x.data, weight: w.pointer, outputGrad: UnsafePointer(dy),
                                           weightGradient: weightGradient?.pointer, biasGradient: k == 0 && bias.requiresGrad ? bias.grad : nil,
                                           inputGradient: h.x.requiresGrad ? h.x.gradientForWriting() : nil, layouts: h.layouts)
                if let weightGradient {
                    let (from, dw) = (UnsafePointer(weightGradient.pointer), weight.grad)
                    for o in 0..<cout {
                        let source = from + o * h.channels * taps, target = dw + o * allTaps + h.offset * taps
                        for i in 0..<(h.channels * taps) { target[i] += source[i] }
                    }
                }
            }
        }
        // The first half with the bias into the output, the second into a block of the output's size, added with the
        // ReLU in one pass.
        let y = out.data
        let zero = FloatStorage(count: cout)
        let partial = FloatStorage(uninitializedCount: count)
        for (k, h) in halves.enumerated() {
            let w = slice(h.offset, h.channels)
            let (g, layouts, target) = (h.geometry, h.layouts, k == 0 ? y : partial.pointer)
            let b = UnsafePointer(k == 0 ? bias.data : zero.pointer)
            let done = g.ownWinogradForward(input: h.x.data, weight: w.pointer, bias: b, output: target, layouts: layouts)
                || g.directForward(input: h.x.data, weight: w.pointer, bias: b, output: target, layouts: layouts)
                || g.dnnlConvolve(input: h.x.data, weight: w.pointer, bias: b, output: target, beta: 0, layouts: layouts)
            precondition(done, "conv2dBlockedReLU(concatenating:) without a oneDNN plan for \(h.x.shape) x \(weight.shape): check canConvolveBlockedReLU first")
        }
        let p = UnsafePointer(partial.pointer)
        Parallel.forEachAlignedChunk(of: count) { r in
            for i in r { let v = y[i] + p[i]; y[i] = v > 0 ? v : 0 }
        }
        return out
    }
}
