/// The kernels of `StarlingKernels` instantiated with fused multiply-adds, in a module compiled for a wider instruction set
/// than baseline x86-64. This one file is compiled twice: as `StarlingKernelsAVX2` for Haswell's set (AVX2 and FMA: eight
/// float lanes a register and one rounding per multiply-add, against four lanes and two for baseline x86-64), and through
/// a symbolic link as `StarlingKernelsAVX512` for Skylake-SP's (AVX-512 F/CD/BW/DQ/VL, with LLVM's preference for 256-bit
/// vectors turned off: the loops written over scalars vectorise sixteen lanes wide, the ones written on SIMD8 stay eight
/// lanes but get 32 registers). Nothing here may run on a CPU without the module's set: StarlingCore's `KernelDispatch`
/// calls these only after asking the CPU (cpuid, xgetbv). Each entry point is kept out of cross-module inlining, which
/// would compile its body again in the caller's module, for the caller's (baseline) CPU.
import StarlingKernels

public enum FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func bceLogitsTerms(_ n: Int, logits z: UnsafePointer<Float>, targets t: UnsafePointer<Float>,
                                      probabilities p: UnsafeMutablePointer<Float>, terms l: UnsafeMutablePointer<Float>) {
        LossKernels.bceLogitsTerms(n, logits: z, targets: t, probabilities: p, terms: l, FusedMultiplyAdd.self)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func adam(_ n: Int, weights w: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
                            m mp: UnsafeMutablePointer<Float>, v vp: UnsafeMutablePointer<Float>,
                            gradientScale: Float, beta1: Float, beta2: Float, epsilon: Float,
                            correctedRate: Float, coupledDecay: Float, decoupledDecay: Float) {
        OptimizerKernels.adam(n, weights: w, gradients: g, m: mp, v: vp, gradientScale: gradientScale, beta1: beta1, beta2: beta2,
                              epsilon: epsilon, correctedRate: correctedRate, coupledDecay: coupledDecay,
                              decoupledDecay: decoupledDecay, FusedMultiplyAdd.self)
    }
}

extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func elu(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, alpha: Float) {
        ActivationKernels.elu(n, x, y, alpha: alpha, FusedMultiplyAdd.self)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func affineELU(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                 mean: Float, scale: Float, shift: Float, alpha: Float) {
        ActivationKernels.affineELU(n, x, y, mean: mean, scale: scale, shift: shift, alpha: alpha, FusedMultiplyAdd.self)
    }
}

/// The blocked layout's loops take the block width (8 or 16) and the per-channel constants as pointers to the block's first
/// channel: a 16-channel pixel is one zmm register in the AVX-512 build, two ymm ones in the AVX2 build.
extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func affineELUBlocked(width: Int, _ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                        mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, alpha: Float) {
        BlockedKernels.affineELU(width: width, pixels, x, y, mean: mean, scale: scale, shift: shift, alpha: alpha, FusedMultiplyAdd.self)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func affineLeakyReLUBlocked(width: Int, _ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                              mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>,
                                              slope: Float) {
        BlockedKernels.affineLeakyReLU(width: width, pixels, x, y, mean: mean, scale: scale, shift: shift, slope: slope)
    }
}

extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func fiveWideWeightGradient(images: Int, channels: Int, height: Int, width: Int, kernelH: Int, padTop: Int,
                                              padLeft: Int, outHeight: Int, outWidth: Int, outBlocks: Int,
                                              x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dw: UnsafeMutablePointer<Float>,
                                              biasGradient: UnsafeMutablePointer<Float>?,
                                              blockPairs: Range<Int>, padded: UnsafeMutablePointer<Float>) {
        FiveWideWeightGradient.accumulate(images: images, channels: channels, height: height, width: width, kernelH: kernelH,
                                          padTop: padTop, padLeft: padLeft, outHeight: outHeight, outWidth: outWidth,
                                          outBlocks: outBlocks, x: x, dy: dy, dw: dw, biasGradient: biasGradient,
                                          blockPairs: blockPairs, padded: padded, FusedMultiplyAdd.self)
    }
}

extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func blockedWeightGradient3x3Row(_ y: Int, height: Int, width: Int, input: UnsafePointer<Float>,
                                                   outputGradient: UnsafePointer<Float>, outBlockCount: Int,
                                                   partial: UnsafeMutablePointer<SIMD8<Float>>, withBias: Bool) {
        BlockedWeightGradient3x3.accumulateRow(y, height: height, width: width, input: input, outputGradient: outputGradient,
                                               outBlockCount: outBlockCount, partial: partial, withBias: withBias, FusedMultiplyAdd.self)
    }
}

extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func directForwardRow(_ y: Int, width: Int, rowFloats: Int, blocked: Bool, padded: UnsafePointer<Float>,
                                        steps: UnsafePointer<Int>, stepCount: Int, weights: UnsafePointer<Float>,
                                        bias: UnsafePointer<Float>, out0: UnsafeMutablePointer<Float>, out1: UnsafeMutablePointer<Float>,
                                        moments: UnsafeMutablePointer<SIMD8<Double>>?) {
        // Two instantiations, so that the pixel stride is a constant in each loop.
        if blocked {
            DirectForward.row(y, width: width, rowFloats: rowFloats, pixelStride: 8, padded: padded, steps: steps, stepCount: stepCount,
                              weights: weights, bias: bias, out0: out0, out1: out1, moments: moments, FusedMultiplyAdd.self)
        } else {
            DirectForward.row(y, width: width, rowFloats: rowFloats, pixelStride: 1, padded: padded, steps: steps, stepCount: stepCount,
                              weights: weights, bias: bias, out0: out0, out1: out1, moments: moments, FusedMultiplyAdd.self)
        }
    }
}

/// The blocked layout's memory-bound loops.
extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func blockedSumAndDot(width: Int, _ pixels: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                                        shift: UnsafePointer<Float>?, sums: UnsafeMutablePointer<Double>, products: UnsafeMutablePointer<Double>) {
        BlockedKernels.sumAndDot(width: width, pixels, a, b, shift: shift, sums: sums, products: products)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func blockedInputGradient(width: Int, _ pixels: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                            into dx: UnsafeMutablePointer<Float>, mean: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                                            slope: UnsafePointer<Float>, offset: UnsafePointer<Float>, overwrite: Bool) {
        BlockedKernels.inputGradient(width: width, pixels, dy: dy, x: x, into: dx, mean: mean, scale: scale, slope: slope, offset: offset,
                                     overwrite: overwrite)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func maxPoolRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                  into y: UnsafeMutablePointer<Float>) {
        BlockedKernels.maxPoolRow(width: width, pixels, top: top, bottom: bottom, into: y)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func maxPoolRowGradient(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                          y: UnsafePointer<Float>, dy: UnsafePointer<Float>, topGradient: UnsafeMutablePointer<Float>,
                                          bottomGradient: UnsafeMutablePointer<Float>, overwrite: Bool) {
        BlockedKernels.maxPoolRowGradient(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, topGradient: topGradient,
                                          bottomGradient: bottomGradient, overwrite: overwrite)
    }
}

extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func bceLogitsSum(_ n: Int, logits z: UnsafePointer<Float>, targets t: UnsafePointer<Float>,
                                    probabilities p: UnsafeMutablePointer<Float>) -> Double {
        // The terms loop (written over scalars, so it vectorises as wide as the build allows: sixteen lanes in the AVX-512
        // module) into a chunk that stays in L1, then the chunk summed as `LossKernels.bceLogitsSum` sums its lanes: the
        // same bits. `LossKernels.bceLogitsSum` is written on SIMD8 and stays eight lanes wide there; this runs 1.3-1.9x
        // faster in the AVX-512 build and level in the AVX2 one (`bench --only kernels`; BENCHMARKS.md, "The fully connected
        // autoencoders' step").
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 4096) { chunk in
            let terms = chunk.baseAddress!
            var total = 0.0
            var start = 0
            while start < n {
                let count = Swift.min(4096, n - start)
                LossKernels.bceLogitsTerms(count, logits: z + start, targets: t + start, probabilities: p + start, terms: terms,
                                           FusedMultiplyAdd.self)
                total += Double(VectorMath.sum(count, terms))
                start += count
            }
            return total
        }
    }
}

/// Batch norm + activation + 2x2 max-pooling pooled before the activation (`PooledActivationKernels`).
extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func pooledForwardRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                        mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>,
                                        activation: PooledActivation, into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer?) {
        PooledActivationKernels.forwardRow(width: width, pixels, top: top, bottom: bottom, mean: mean, scale: scale, shift: shift,
                                           activation: activation, into: y, windows: windows, FusedMultiplyAdd.self)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func pooledGradientSums(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                          y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer, mean: UnsafePointer<Float>,
                                          activation: PooledActivation, sums: UnsafeMutablePointer<Double>, products: UnsafeMutablePointer<Double>) {
        PooledActivationKernels.gradientSums(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows, mean: mean,
                                             activation: activation, sums: sums, products: products)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func pooledInputGradientRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                              y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                                              topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>,
                                              mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, slope: UnsafePointer<Float>,
                                              offset: UnsafePointer<Float>, activation: PooledActivation, overwrite: Bool) {
        PooledActivationKernels.inputGradientRow(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows,
                                                 topGradient: topGradient, bottomGradient: bottomGradient, mean: mean, scale: scale,
                                                 slope: slope, offset: offset, activation: activation, overwrite: overwrite)
    }
}

/// 2x2 max-pooling of a ReLU's output keeping window indices, and its gradient from them (`RectifiedPoolingKernels`).
extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func rectifiedPoolRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                        into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer) {
        RectifiedPoolingKernels.forwardRow(width: width, pixels, top: top, bottom: bottom, into: y, windows: windows)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func rectifiedPoolGradientRow(width: Int, _ pixels: Int, y: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                                windows: UnsafeRawPointer, topGradient: UnsafeMutablePointer<Float>,
                                                bottomGradient: UnsafeMutablePointer<Float>) {
        RectifiedPoolingKernels.gradientRow(width: width, pixels, y: y, dy: dy, windows: windows, topGradient: topGradient,
                                            bottomGradient: bottomGradient)
    }
}
extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func exponentCarry(_ p: UnsafePointer<Float>, count: Int, added: UInt32) -> UInt32 {
        ExponentKernels.carry(p, count: count, added: added)
    }
}

extension FusedKernels {
    // 16 bytes widened to 16 floats a step in the AVX-512 build (vpmovzxbd, vcvtdq2ps): the baseline build's SSE2 has
    // no single widening instruction and unpacks in three.
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func scaledFloats(_ n: Int, _ source: UnsafePointer<UInt8>, _ out: UnsafeMutablePointer<Float>, scale: Float) {
        PixelKernels.scaledFloats(n, source, out, scale: scale)
    }
}

extension FusedKernels {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func bceLogitsGradient(_ n: Int, probabilities p: UnsafeMutablePointer<Float>, targets t: UnsafePointer<Float>,
                                         scale g: Float) {
        LossKernels.bceLogitsGradient(n, probabilities: p, targets: t, scale: g)
    }
}

extension FusedKernels: FusedKernelSet {}

extension FusedKernels: NarrowConvolutionKernelSet {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func narrowForward(block: Int, _ s: NarrowConvolutionShape, x: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                                     bias: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
        NarrowOutputConvolution.forward(block: block, s, x: x, weights: weights, bias: bias, y: y, scratch: scratch, FusedMultiplyAdd.self)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func narrowInputGradient(block: Int, _ s: NarrowConvolutionShape, dy: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                                           dx: UnsafeMutablePointer<Float>, overwrite: Bool, scratch: UnsafeMutablePointer<Float>) {
        NarrowOutputConvolution.inputGradient(block: block, s, dy: dy, weights: weights, dx: dx, overwrite: overwrite, scratch: scratch,
                                              FusedMultiplyAdd.self)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func narrowWeightGradient(block: Int, _ s: NarrowConvolutionShape, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                            partial: UnsafeMutablePointer<Float>) {
        NarrowOutputConvolution.weightGradient(block: block, s, x: x, dy: dy, partial: partial, FusedMultiplyAdd.self)
    }
}

extension FusedKernels: WinogradKernelSet {
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func winogradInputTiles(_ s: WinogradTiling, first: Int, count: Int, x: UnsafePointer<Float>, blocks: Range<Int>?,
                                          into v: UnsafeMutablePointer<Float>, stride: Int) {
        WinogradTransforms.inputTiles(s, first: first, count: count, x: x, blocks: blocks, into: v, stride: stride)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func winogradGradientTiles(_ s: WinogradTiling, first: Int, count: Int, dy: UnsafePointer<Float>,
                                             into m: UnsafeMutablePointer<Float>, stride: Int) {
        WinogradTransforms.gradientTiles(s, first: first, count: count, dy: dy, into: m, stride: stride)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func winogradWeightProducts(count: Int, n: Int, k: Int, a: UnsafePointer<Float>, aStride: Int, b: UnsafePointer<Float>,
                                              bStride: Int, c: UnsafeMutablePointer<Float>, cStride: Int, ldc: Int) {
        WinogradProducts.accumulateTransposed(count: count, n: n, k: k, a: a, aStride: aStride, b: b, bStride: bStride, c: c,
                                              cStride: cStride, ldc: ldc, FusedMultiplyAdd.self)
    }

    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func winogradOutputTiles(_ s: WinogradTiling, first: Int, count: Int, m: UnsafePointer<Float>, stride: Int,
                                           bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>, accumulate: Bool, relu: Bool) {
        WinogradTransforms.outputTiles(s, first: first, count: count, m: m, stride: stride, bias: bias, y: y, accumulate: accumulate,
                                       relu: relu)
    }
    @inline(never) @_semantics("optimize.no.crossmodule")
    public static func winogradProducts(count: Int, k: Int, n: Int, v: UnsafePointer<Float>, vStride: Int, u: UnsafePointer<Float>,
                                        m: UnsafeMutablePointer<Float>, mStride: Int) {
        WinogradProducts.multiply(count: count, k: k, n: n, v: v, vStride: vStride, u: u, m: m, mStride: mStride, FusedMultiplyAdd.self)
    }
}
