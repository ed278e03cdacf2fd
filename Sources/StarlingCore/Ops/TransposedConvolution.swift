/// Transposed convolution (Keras Conv2DTranspose, PyTorch ConvTranspose2d), forward and backward.
///
/// It is the adjoint of `conv2d`: the convolution whose input has this op's output shape and whose output has
/// this op's input shape. So the forward pass is that convolution's input-gradient kernel (sgemm, then col2im),
/// and the backward pass is its forward kernel (im2col, then sgemm); both reuse `ConvGeometry`.

extension Padding {
    /// Output length of a transposed window op on an axis of length `m`, following Keras:
    /// `.same` gives m * stride; `.valid` gives m * stride + max(kernel - stride, 0), which is (m - 1) * stride + kernel
    /// whenever kernel >= stride; explicit padding (PyTorch's rule) gives (m - 1) * stride + kernel - before - after.
    public func transposedOutput(size m: Int, kernel k: Int, stride s: Int, vertical: Bool) -> Int {
        precondition(k > 0 && s > 0, "kernel \(k) and stride \(s) must be positive")
        switch self {
        case .valid: return m * s + Swift.max(k - s, 0)
        case .same: return m * s
        case .explicit(let top, let bottom, let left, let right):
            let (before, after) = vertical ? (top, bottom) : (left, right)
            let out = (m - 1) * s + k - before - after
            precondition(out > 0, "padding \(self) leaves no output for input \(m), kernel \(k), stride \(s)")
            return out
        }
    }
}

extension Tensor {
    /// Transposed convolution of NCHW images: each input pixel scatters a weighted copy of the kernel onto an
    /// output window `stride` pixels further than its neighbour's, which upsamples by the stride.
    ///
    /// - Parameters:
    ///   - weight: [Cin, Cout / groups, KH, KW], PyTorch's ConvTranspose2d layout (the matching conv2d's
    ///     [Cout, Cin / groups, KH, KW] with its roles swapped).
    ///   - bias: [Cout].
    ///   - padding: see `Padding.transposedOutput`; `.same` gives exactly input * stride.
    /// - Returns: [N, Cout, Hout, Wout].
    public func conv2dTransposed(_ weight: Tensor, bias: Tensor? = nil, stride: (Int, Int) = (1, 1),
                                 padding: Padding = .valid, dilation: (Int, Int) = (1, 1), groups: Int = 1) -> Tensor {
        let x = self
        precondition(x.rank == 4 && weight.rank == 4, "conv2dTransposed expects NCHW input and a 4-D weight, got \(x.shape) and \(weight.shape)")
        let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (kh, kw) = (weight.shape[2], weight.shape[3])
        precondition(groups > 0 && cin % groups == 0, "groups \(groups) must divide \(cin) input channels")
        precondition(weight.shape[0] == cin, "weight \(weight.shape) for \(cin) input channels")
        precondition(dilation.0 > 0 && dilation.1 > 0, "dilation \(dilation) must be positive")
        let cout = weight.shape[1] * groups
        if let bias { precondition(bias.shape == [cout], "bias \(bias.shape) for \(cout) output channels") }
        let (kh1, kw1) = ((kh - 1) * dilation.0 + 1, (kw - 1) * dilation.1 + 1)
        let outH = padding.transposedOutput(size: h, kernel: kh1, stride: stride.0, vertical: true)
        let outW = padding.transposedOutput(size: w, kernel: kw1, stride: stride.1, vertical: false)
        // The convolution this op is the adjoint of maps [N, Cout, outH, outW] back to [N, Cin, h, w].
        let rows = padding.window(size: outH, kernel: kh1, stride: stride.0, vertical: true)
        let cols = padding.window(size: outW, kernel: kw1, stride: stride.1, vertical: false)
        precondition(rows.output == h && cols.output == w, "transposed geometry \(outH)x\(outW) does not invert to \(h)x\(w)")
        let geometry = ConvGeometry(batch: n, inChannels: cout, outChannels: cin, groups: groups, height: outH, width: outW,
                                    kernelH: kh, kernelW: kw, strideH: stride.0, strideW: stride.1,
                                    dilationH: dilation.0, dilationW: dilation.1, padTop: rows.before, padLeft: cols.before,
                                    outHeight: h, outWidth: w)
        var inputs = [x, weight]
        if let bias { inputs.append(bias) }
        let out = Tensor.result(shape: [n, cout, outH, outW], inputs: inputs) { out in
            let dy = UnsafePointer(out.grad)
            if let bias, bias.requiresGrad {
                accumulateChannelSums(dy, batch: n, channels: cout, plane: geometry.inPlane, into: bias.grad)
            }
            if weight.requiresGrad { geometry.accumulateWeightGradient(input: dy, outputGrad: x.data, into: weight.grad) }
            if x.requiresGrad { geometry.convolve(input: dy, weight: weight.data, output: x.grad, beta: 1) }
        }
        if let bias { broadcastChannels(bias.data, into: out.data, batch: n, channels: cout, plane: geometry.inPlane) }
        geometry.accumulateInputGradient(outputGrad: x.data, weight: weight.data, into: out.data)
        return out
    }
}
