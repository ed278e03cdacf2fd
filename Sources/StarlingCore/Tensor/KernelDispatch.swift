import CCPU
#if canImport(Glibc)
import Glibc
#endif
@_exported import StarlingKernels
import StarlingKernelsAVX2
import StarlingKernelsAVX512

/// Which build of the hot loops this process runs. Starling is compiled for baseline x86-64 so that one binary runs on
/// every node of a cluster; the loops of `StarlingKernels` are compiled a second time for Haswell's instruction set
/// (AVX2, FMA) in `StarlingKernelsAVX2` and a third for Skylake-SP's (AVX-512, 16-lane loops) in `StarlingKernelsAVX512`,
/// and chosen here once, from what the CPU and the OS report (cpuid, xgetbv), the way numpy and PyTorch dispatch their
/// kernels. `STARLING_KERNELS=baseline` or `avx2` forces a lower build (benchmarks compare them); any other value, or a
/// level the CPU cannot run, is refused by the CLI. The builds round differently where a loop multiplies and adds (a
/// fused multiply-add rounds once), by a few units in the last place; the AVX2 and AVX-512 builds differ only where a
/// sum's order differs with the vector width; the blocked layout's loops give the same bits in all three (tested).
public enum KernelDispatch {
    public enum Level: String, Sendable, CaseIterable {
        case baseline
        case avx2
        case avx512
    }

    /// What this CPU can run, lowest first.
    public static let supported: [Level] = starling_cpu_supports_avx512() != 0 ? [.baseline, .avx2, .avx512]
        : starling_cpu_supports_haswell() != 0 ? [.baseline, .avx2] : [.baseline]

    /// The CPU as cpuid names it, with its family and model (what benchmarks print beside each figure).
    public static let cpuDescription: String = {
        var brand = [CChar](repeating: 0, count: 49)
        var family: UInt32 = 0, model: UInt32 = 0
        starling_cpu_identity(&brand, &family, &model)
        let name = String(decoding: brand.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .split(separator: " ").joined(separator: " ")
        return "\(name.isEmpty ? "unnamed CPU" : name) (family \(family) model \(model))"
    }()

    /// The module of fused kernels for a level above baseline.
    static func fused(_ level: Level) -> any FusedKernelSet.Type {
        switch level {
        case .baseline: preconditionFailure("the baseline build has no fused kernels")
        case .avx2: StarlingKernelsAVX2.FusedKernels.self
        case .avx512: StarlingKernelsAVX512.FusedKernels.self
        }
    }

    /// The level in use: the highest the CPU supports, unless STARLING_KERNELS names another it supports. With a value
    /// that is no level, or a level this CPU cannot run, the CLI refuses to start (`overrideError`), as it does for
    /// STARLING_GEMM and STARLING_BLOCK: a benchmark asked for one build must not time another.
    public static let current: Level = (try? setting.get()) ?? supported.last ?? .baseline

    /// STARLING_KERNELS's level, nil when unset or empty.
    private static let setting: Result<Level?, SettingValueError> =
        level(named: getenv("STARLING_KERNELS").map { String(cString: $0) }, supported: supported)

    /// The level `value` names if this CPU (`supported`) runs it; nil for no value. A pure function, for the tests.
    public static func level(named value: String?, supported: [Level]) -> Result<Level?, SettingValueError> {
        let names = Level.allCases.map { (name: $0.rawValue, value: $0) }
        return EnvironmentSetting.parse("STARLING_KERNELS", value, accepting: names).flatMap { level in
            guard let level, !supported.contains(level) else { return .success(level) }
            return .failure(SettingValueError(variable: "STARLING_KERNELS", value: level.rawValue, accepted: names.map(\.name),
                                              unavailable: "this CPU runs only \(supported.map(\.rawValue).joined(separator: ", ")) (cpuid)"))
        }
    }

    /// The error a bad STARLING_KERNELS gives, or nil.
    public static var overrideError: SettingValueError? {
        if case .failure(let error) = setting { return error }
        return nil
    }
}

/// The entry points. Most take the build to run (`kernels`, the process's by default) so that tests can run every one;
/// the convolution kernels (`ConvolutionKernels.swift`) exist in the AVX2 and AVX-512 builds only (their baseline builds
/// would be slower than oneDNN).
extension KernelDispatch {
    /// y = ELU(x) (`ActivationKernels.elu`); x and y may be the same buffer.
    static func elu(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, alpha: Float, kernels: Level = current) {
        switch kernels {
        case .baseline: ActivationKernels.elu(n, x, y, alpha: alpha, SeparateMultiplyAdd.self)
        default: fused(kernels).elu(n, x, y, alpha: alpha)
        }
    }

    /// y = ELU(scale (x - mean) + shift) (`ActivationKernels.affineELU`).
    static func affineELU(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, mean: Float, scale: Float,
                          shift: Float, alpha: Float, kernels: Level = current) {
        switch kernels {
        case .baseline: ActivationKernels.affineELU(n, x, y, mean: mean, scale: scale, shift: shift, alpha: alpha, SeparateMultiplyAdd.self)
        default: fused(kernels).affineELU(n, x, y, mean: mean, scale: scale, shift: shift, alpha: alpha)
        }
    }

    /// Binary cross-entropy terms and sigmoid on logits (`LossKernels.bceLogitsTerms`).
    static func bceLogitsTerms(_ n: Int, logits z: UnsafePointer<Float>, targets t: UnsafePointer<Float>,
                               probabilities p: UnsafeMutablePointer<Float>, terms l: UnsafeMutablePointer<Float>, kernels: Level = current) {
        switch kernels {
        case .baseline: LossKernels.bceLogitsTerms(n, logits: z, targets: t, probabilities: p, terms: l, SeparateMultiplyAdd.self)
        default: fused(kernels).bceLogitsTerms(n, logits: z, targets: t, probabilities: p, terms: l)
        }
    }

    /// The exponent-bit test of the gradient checks (`ExponentKernels.carry`): at baseline four SSE operations per
    /// vector of 16 values, one AVX-512 operation in the wider modules.
    static func exponentCarry(_ p: UnsafePointer<Float>, count: Int, added: UInt32, kernels: Level = current) -> UInt32 {
        switch kernels {
        case .baseline: ExponentKernels.carry(p, count: count, added: added)
        default: fused(kernels).exponentCarry(p, count: count, added: added)
        }
    }

    /// The sum of the binary cross-entropy terms on logits, the sigmoid written to p (`LossKernels.bceLogitsSum`).
    static func bceLogitsSum(_ n: Int, logits z: UnsafePointer<Float>, targets t: UnsafePointer<Float>,
                             probabilities p: UnsafeMutablePointer<Float>, kernels: Level = current) -> Double {
        switch kernels {
        case .baseline: LossKernels.bceLogitsSum(n, logits: z, targets: t, probabilities: p, SeparateMultiplyAdd.self)
        default: fused(kernels).bceLogitsSum(n, logits: z, targets: t, probabilities: p)
        }
    }

    /// p = g (p - t) in place, the gradient of the mean BCE on logits over its sigmoid (`LossKernels.bceLogitsGradient`).
    static func bceLogitsGradient(_ n: Int, probabilities p: UnsafeMutablePointer<Float>, targets t: UnsafePointer<Float>, scale g: Float,
                                  kernels: Level = current) {
        switch kernels {
        case .baseline: LossKernels.bceLogitsGradient(n, probabilities: p, targets: t, scale: g)
        default: fused(kernels).bceLogitsGradient(n, probabilities: p, targets: t, scale: g)
        }
    }

    /// Runs `body` with subnormal floats flushed to zero on this thread (MXCSR's FTZ and DAZ bits, restored after):
    /// the optimizers' passes. A moment whose gradient stays zero (an encoder weight of an MNIST pixel that is never
    /// lit) decays by beta1 (or the momentum) every step and reaches float32's subnormal range after ~750 steps, where
    /// x86 cores take a microcode assist per operation: 3-4x slower passes over such values on this Zen 4 and Zen 3
    /// (BENCHMARKS.md, "One process on 2 cores, sixth pass"). Flushed, such a moment becomes 0 where it would have
    /// been below 1.2e-38: an update of lr x 1e-38 / (sqrt(v) + eps), far below the last place of any weight above
    /// ~1e-28, so weights keep their bits except where a moment, a weight or a gradient is itself subnormal. The
    /// same on every kernel level (the baseline's scalar SSE code obeys MXCSR as the vector builds do), every rank and
    /// every replica. TensorFlow runs its ops with the same two bits set; PyTorch does not by default
    /// (`torch.set_flush_denormal`).
    @inline(__always)
    static func withSubnormalsFlushed<T>(_ body: () throws -> T) rethrows -> T {
        let csr = starling_flush_subnormals_begin()
        defer { starling_flush_subnormals_end(csr) }
        return try body()
    }

    /// One Adam update of n parameters (`OptimizerKernels.adam`), subnormals flushed to zero (`withSubnormalsFlushed`).
    static func adam(_ n: Int, weights w: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
                     m mp: UnsafeMutablePointer<Float>, v vp: UnsafeMutablePointer<Float>, gradientScale: Float, beta1: Float,
                     beta2: Float, epsilon: Float, correctedRate: Float, coupledDecay: Float, decoupledDecay: Float, kernels: Level = current) {
        withSubnormalsFlushed {
            switch kernels {
            case .baseline:
                OptimizerKernels.adam(n, weights: w, gradients: g, m: mp, v: vp, gradientScale: gradientScale, beta1: beta1, beta2: beta2,
                                      epsilon: epsilon, correctedRate: correctedRate, coupledDecay: coupledDecay,
                                      decoupledDecay: decoupledDecay, SeparateMultiplyAdd.self)
            default:
                fused(kernels).adam(n, weights: w, gradients: g, m: mp, v: vp, gradientScale: gradientScale, beta1: beta1, beta2: beta2,
                                 epsilon: epsilon, correctedRate: correctedRate, coupledDecay: coupledDecay, decoupledDecay: decoupledDecay)
            }
        }
    }

    /// y = ELU(scale (x - mean) + shift) over a plane of the blocked layout (`BlockedKernels.affineELU`), blocks of
    /// `width` (8 or 16) channels, the per-channel constants from the block's first channel.
    static func affineELUBlocked(width: Int, _ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                 mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, alpha: Float,
                                 kernels: Level = current) {
        switch kernels {
        case .baseline:
            BlockedKernels.affineELU(width: width, pixels, x, y, mean: mean, scale: scale, shift: shift, alpha: alpha, SeparateMultiplyAdd.self)
        default: fused(kernels).affineELUBlocked(width: width, pixels, x, y, mean: mean, scale: scale, shift: shift, alpha: alpha)
        }
    }

    /// y = leaky ReLU(scale (x - mean) + shift) over a plane of the blocked layout (`BlockedKernels.affineLeakyReLU`).
    static func affineLeakyReLUBlocked(width: Int, _ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                       mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, slope: Float,
                                       kernels: Level = current) {
        switch kernels {
        case .baseline: BlockedKernels.affineLeakyReLU(width: width, pixels, x, y, mean: mean, scale: scale, shift: shift, slope: slope)
        default: fused(kernels).affineLeakyReLUBlocked(width: width, pixels, x, y, mean: mean, scale: scale, shift: shift, slope: slope)
        }
    }

    /// `FiveWideWeightGradient.accumulate`, only in the AVX2 and AVX-512 builds (the baseline one would be slower than oneDNN).
    static func fiveWideWeightGradient(images: Int, channels: Int, height: Int, width: Int, kernelH: Int, padTop: Int, padLeft: Int,
                                       outHeight: Int, outWidth: Int, outBlocks: Int, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                       dw: UnsafeMutablePointer<Float>, biasGradient: UnsafeMutablePointer<Float>?, blockPairs: Range<Int>,
                                       padded: UnsafeMutablePointer<Float>, kernels: Level = current) {
        precondition(kernels != .baseline, "the five-wide weight gradient runs in the AVX2 and AVX-512 builds only")
        fused(kernels).fiveWideWeightGradient(images: images, channels: channels, height: height, width: width, kernelH: kernelH,
                                           padTop: padTop, padLeft: padLeft, outHeight: outHeight, outWidth: outWidth,
                                           outBlocks: outBlocks, x: x, dy: dy, dw: dw, biasGradient: biasGradient,
                                           blockPairs: blockPairs, padded: padded)
    }

    /// `BlockedWeightGradient3x3.accumulateRow`, only in the AVX2 and AVX-512 builds (the baseline one would be slower than oneDNN).
    static func blockedWeightGradient3x3Row(_ y: Int, height: Int, width: Int, input: UnsafePointer<Float>,
                                            outputGradient: UnsafePointer<Float>, outBlockCount: Int,
                                            partial: UnsafeMutablePointer<SIMD8<Float>>, withBias: Bool,
                                            kernels: Level = current) {
        precondition(kernels != .baseline, "the blocked 3x3 weight gradient runs in the AVX2 and AVX-512 builds only")
        fused(kernels).blockedWeightGradient3x3Row(y, height: height, width: width, input: input, outputGradient: outputGradient,
                                                outBlockCount: outBlockCount, partial: partial, withBias: withBias)
    }

    /// `DirectForward.row`, only in the AVX2 and AVX-512 builds (the baseline one would be slower than oneDNN).
    static func directForwardRow(_ y: Int, width: Int, rowFloats: Int, blocked: Bool, padded: UnsafePointer<Float>,
                                 steps: UnsafePointer<Int>, stepCount: Int, weights: UnsafePointer<Float>,
                                 bias: UnsafePointer<Float>, out0: UnsafeMutablePointer<Float>, out1: UnsafeMutablePointer<Float>,
                                 moments: UnsafeMutablePointer<SIMD8<Double>>?, kernels: Level = current) {
        precondition(kernels != .baseline, "the direct forward kernel runs in the AVX2 and AVX-512 builds only")
        fused(kernels).directForwardRow(y, width: width, rowFloats: rowFloats, blocked: blocked, padded: padded, steps: steps,
                                     stepCount: stepCount, weights: weights, bias: bias, out0: out0, out1: out1, moments: moments)
    }

    // The blocked layout's loops (`BlockedKernels`, `PooledActivationKernels`), blocks of `width` (8 or 16) channels.

    /// sums[l] += sum a, products[l] += sum a (b - shift) over a plane, for the block's lanes.
    static func blockedSumAndDot(width: Int, _ pixels: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, shift: UnsafePointer<Float>?,
                                 sums: UnsafeMutablePointer<Double>, products: UnsafeMutablePointer<Double>, kernels: Level = current) {
        if kernels != .baseline {
            fused(kernels).blockedSumAndDot(width: width, pixels, a, b, shift: shift, sums: sums, products: products)
        } else {
            BlockedKernels.sumAndDot(width: width, pixels, a, b, shift: shift, sums: sums, products: products)
        }
    }

    static func blockedInputGradient(width: Int, _ pixels: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                     into dx: UnsafeMutablePointer<Float>, mean: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                                     slope: UnsafePointer<Float>, offset: UnsafePointer<Float>, overwrite: Bool, kernels: Level = current) {
        if kernels != .baseline {
            fused(kernels).blockedInputGradient(width: width, pixels, dy: dy, x: x, into: dx, mean: mean, scale: scale, slope: slope,
                                                offset: offset, overwrite: overwrite)
        } else {
            BlockedKernels.inputGradient(width: width, pixels, dy: dy, x: x, into: dx, mean: mean, scale: scale, slope: slope, offset: offset,
                                         overwrite: overwrite)
        }
    }

    static func maxPoolRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                           into y: UnsafeMutablePointer<Float>, kernels: Level = current) {
        if kernels != .baseline {
            fused(kernels).maxPoolRow(width: width, pixels, top: top, bottom: bottom, into: y)
        } else {
            BlockedKernels.maxPoolRow(width: width, pixels, top: top, bottom: bottom, into: y)
        }
    }

    static func maxPoolRowGradient(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                   y: UnsafePointer<Float>, dy: UnsafePointer<Float>, topGradient: UnsafeMutablePointer<Float>,
                                   bottomGradient: UnsafeMutablePointer<Float>, overwrite: Bool, kernels: Level = current) {
        if kernels != .baseline {
            fused(kernels).maxPoolRowGradient(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, topGradient: topGradient,
                                              bottomGradient: bottomGradient, overwrite: overwrite)
        } else {
            BlockedKernels.maxPoolRowGradient(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, topGradient: topGradient,
                                              bottomGradient: bottomGradient, overwrite: overwrite)
        }
    }

    static func rectifiedPoolRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                 into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer, kernels: Level = current) {
        if kernels != .baseline {
            fused(kernels).rectifiedPoolRow(width: width, pixels, top: top, bottom: bottom, into: y, windows: windows)
        } else {
            RectifiedPoolingKernels.forwardRow(width: width, pixels, top: top, bottom: bottom, into: y, windows: windows)
        }
    }

    static func rectifiedPoolGradientRow(width: Int, _ pixels: Int, y: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                         windows: UnsafeRawPointer, topGradient: UnsafeMutablePointer<Float>,
                                         bottomGradient: UnsafeMutablePointer<Float>, kernels: Level = current) {
        if kernels != .baseline {
            fused(kernels).rectifiedPoolGradientRow(width: width, pixels, y: y, dy: dy, windows: windows, topGradient: topGradient,
                                                    bottomGradient: bottomGradient)
        } else {
            RectifiedPoolingKernels.gradientRow(width: width, pixels, y: y, dy: dy, windows: windows, topGradient: topGradient,
                                                bottomGradient: bottomGradient)
        }
    }

    static func pooledForwardRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                 mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>,
                                 activation: PooledActivation, into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer?,
                                 kernels: Level = current) {
        switch kernels {
        case .baseline:
            PooledActivationKernels.forwardRow(width: width, pixels, top: top, bottom: bottom, mean: mean, scale: scale, shift: shift,
                                               activation: activation, into: y, windows: windows, SeparateMultiplyAdd.self)
        default:
            fused(kernels).pooledForwardRow(width: width, pixels, top: top, bottom: bottom, mean: mean, scale: scale, shift: shift,
                                            activation: activation, into: y, windows: windows)
        }
    }

    static func pooledGradientSums(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                   y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer, mean: UnsafePointer<Float>,
                                   activation: PooledActivation, sums: UnsafeMutablePointer<Double>, products: UnsafeMutablePointer<Double>,
                                   kernels: Level = current) {
        if kernels != .baseline {
            fused(kernels).pooledGradientSums(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows, mean: mean,
                                              activation: activation, sums: sums, products: products)
        } else {
            PooledActivationKernels.gradientSums(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows, mean: mean,
                                                 activation: activation, sums: sums, products: products)
        }
    }

    static func pooledInputGradientRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                       y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                                       topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>,
                                       mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, slope: UnsafePointer<Float>,
                                       offset: UnsafePointer<Float>, activation: PooledActivation, overwrite: Bool, kernels: Level = current) {
        if kernels != .baseline {
            fused(kernels).pooledInputGradientRow(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows,
                                                  topGradient: topGradient, bottomGradient: bottomGradient, mean: mean, scale: scale,
                                                  slope: slope, offset: offset, activation: activation, overwrite: overwrite)
        } else {
            PooledActivationKernels.inputGradientRow(width: width, pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows,
                                                     topGradient: topGradient, bottomGradient: bottomGradient, mean: mean, scale: scale,
                                                     slope: slope, offset: offset, activation: activation, overwrite: overwrite)
        }
    }
}
