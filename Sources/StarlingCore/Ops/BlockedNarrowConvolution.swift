#if canImport(Glibc)
import Glibc
#endif
import StarlingKernelsAVX2
import StarlingKernelsAVX512

/// A blocked convolution whose output is planar and has at most `maxChannels` channels (the autoencoders' last layer,
/// 16 or 32 channels -> the image) runs on `NarrowOutputConvolution` instead of oneDNN, which computes such an output
/// in blocks of its own width: 16 channels for one on AVX-512 (BENCHMARKS.md, "conv-ae's step on AVX-512"). Chosen by
/// shape and layout inside `conv2dBlocked` and its backward; `STARLING_CONV=dnnl` leaves it to oneDNN (for comparisons).
enum NarrowOutput {
    static let maxChannels = 4
    static let enabled = getenv("STARLING_CONV").map { String(cString: $0) } != "dnnl"
}

extension KernelDispatch {
    /// The narrow-output passes of a level above baseline.
    static func narrowKernels(_ level: Level) -> (any NarrowConvolutionKernelSet.Type)? {
        switch level {
        case .baseline: nil
        case .avx2: StarlingKernelsAVX2.FusedKernels.self
        case .avx512: StarlingKernelsAVX512.FusedKernels.self
        }
    }

    static func narrowForward(block: Int, _ s: NarrowConvolutionShape, x: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                              bias: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                              kernels: Level = current) {
        if let k = narrowKernels(kernels) {
            k.narrowForward(block: block, s, x: x, weights: weights, bias: bias, y: y, scratch: scratch)
        } else {
            NarrowOutputConvolution.forward(block: block, s, x: x, weights: weights, bias: bias, y: y, scratch: scratch, SeparateMultiplyAdd.self)
        }
    }

    static func narrowInputGradient(block: Int, _ s: NarrowConvolutionShape, dy: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                                    dx: UnsafeMutablePointer<Float>, overwrite: Bool, scratch: UnsafeMutablePointer<Float>,
                                    kernels: Level = current) {
        if let k = narrowKernels(kernels) {
            k.narrowInputGradient(block: block, s, dy: dy, weights: weights, dx: dx, overwrite: overwrite, scratch: scratch)
        } else {
            NarrowOutputConvolution.inputGradient(block: block, s, dy: dy, weights: weights, dx: dx, overwrite: overwrite, scratch: scratch,
                                                  SeparateMultiplyAdd.self)
        }
    }

    static func narrowWeightGradient(block: Int, _ s: NarrowConvolutionShape, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                     partial: UnsafeMutablePointer<Float>, kernels: Level = current) {
        if let k = narrowKernels(kernels) {
            k.narrowWeightGradient(block: block, s, x: x, dy: dy, partial: partial)
        } else {
            NarrowOutputConvolution.weightGradient(block: block, s, x: x, dy: dy, partial: partial, SeparateMultiplyAdd.self)
        }
    }
}

extension ConvGeometry {
    /// The narrow kernels' shape when they apply to this convolution in these layouts: a blocked input, a planar output of
    /// at most `NarrowOutput.maxChannels` channels, stride and dilation 1, one group. Nil otherwise.
    func narrowOutputShape(_ layouts: DNNLConvPlan.Layouts) -> NarrowConvolutionShape? {
        guard NarrowOutput.enabled, layouts.sourceBlocked, !layouts.destinationBlocked, outChannels <= NarrowOutput.maxChannels,
              groups == 1, strideH == 1, strideW == 1, dilationH == 1, dilationW == 1, inChannels % layouts.sourceWidth == 0,
              outHeight > 0, outWidth > 0 else { return nil }
        return NarrowConvolutionShape(blocks: inChannels / layouts.sourceWidth, height: height, width: width, outChannels: outChannels,
                                      outHeight: outHeight, outWidth: outWidth, kernelH: kernelH, kernelW: kernelW,
                                      padTop: padTop, padLeft: padLeft)
    }

    /// The weights packed for the narrow kernels.
    private func narrowPacked(_ w: UnsafePointer<Float>, _ s: NarrowConvolutionShape, block: Int) -> FloatStorage {
        let packed = FloatStorage(uninitializedCount: outChannels * inChannels * kernelH * kernelW)
        NarrowOutputConvolution.pack(w, s, block: block, into: packed.pointer)
        return packed
    }

    /// The forward pass by the narrow kernels when they apply (images over the threads); false, doing nothing, otherwise.
    func narrowOutputForward(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                             output y: UnsafeMutablePointer<Float>, layouts: DNNLConvPlan.Layouts, kernels: KernelDispatch.Level = KernelDispatch.current) -> Bool {
        guard let s = narrowOutputShape(layouts) else { return false }
        let block = layouts.sourceWidth
        let packed = narrowPacked(w, s, block: block)
        let (inImage, outImage) = (inChannels * inPlane, outChannels * outPlane)
        Parallel.forEachChunk(of: batch, work: batch * outImage * inChannels * kernelH * kernelW) { images in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(1, s.forwardScratch(block: block)))
            defer { scratch.deallocate() }
            for n in images {
                KernelDispatch.narrowForward(block: block, s, x: x + n * inImage, weights: packed.pointer, bias: bias, y: y + n * outImage,
                                             scratch: scratch, kernels: kernels)
            }
        }
        withExtendedLifetime(packed) {}
        return true
    }

    /// The backward pass by the narrow kernels when they apply; false, doing nothing, otherwise. Weight and bias gradients
    /// are added (per image in Float, over the images in Double in image order, so the result does not depend on the
    /// thread count); the input gradient is written or added.
    func narrowOutputBackward(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, outputGrad dy: UnsafePointer<Float>,
                              weightGradient: UnsafeMutablePointer<Float>?, biasGradient: UnsafeMutablePointer<Float>?,
                              inputGradient: (pointer: UnsafeMutablePointer<Float>, overwrite: Bool)?, layouts: DNNLConvPlan.Layouts,
                              kernels: KernelDispatch.Level = KernelDispatch.current) -> Bool {
        guard let s = narrowOutputShape(layouts) else { return false }
        let block = layouts.sourceWidth, taps = kernelH * kernelW
        let (inImage, outImage, weightCount) = (inChannels * inPlane, outChannels * outPlane, outChannels * inChannels * taps)
        let work = batch * outImage * inChannels * taps
        if let (dx, overwrite) = inputGradient {
            let packed = narrowPacked(w, s, block: block)
            Parallel.forEachChunk(of: batch, work: work) { images in
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: width * block)
                defer { scratch.deallocate() }
                for n in images {
                    KernelDispatch.narrowInputGradient(block: block, s, dy: dy + n * outImage, weights: packed.pointer, dx: dx + n * inImage,
                                                       overwrite: overwrite, scratch: scratch, kernels: kernels)
                }
            }
            withExtendedLifetime(packed) {}
        }
        if let weightGradient {
            let partial = FloatStorage(uninitializedCount: batch * weightCount)
            let p = partial.pointer
            Parallel.forEachChunk(of: batch, work: work) { images in
                for n in images {
                    KernelDispatch.narrowWeightGradient(block: block, s, x: x + n * inImage, dy: dy + n * outImage, partial: p + n * weightCount,
                                                        kernels: kernels)
                }
            }
            var sums = [Double](repeating: 0, count: weightCount)
            for n in 0..<batch {
                let image = p + n * weightCount
                for i in 0..<weightCount { sums[i] += Double(image[i]) }
            }
            // Packed [O, C/B, KH, KW, B] -> [O, C, KH, KW].
            for o in 0..<outChannels {
                for c in 0..<inChannels {
                    let (b, l) = c.quotientAndRemainder(dividingBy: block)
                    for t in 0..<taps { weightGradient[(o * inChannels + c) * taps + t] += Float(sums[((o * s.blocks + b) * taps + t) * block + l]) }
                }
            }
        }
        if let biasGradient {
            for o in 0..<outChannels {
                var sum = 0.0
                for n in 0..<batch {
                    let plane = dy + n * outImage + o * outPlane
                    for i in 0..<outPlane { sum += Double(plane[i]) }
                }
                biasGradient[o] += Float(sum)
            }
        }
        return true
    }
}
