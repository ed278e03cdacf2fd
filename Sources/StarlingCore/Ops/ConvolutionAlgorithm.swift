import CCPU
#if canImport(Glibc)
import Glibc
#endif

/// Which algorithm oneDNN computes a convolution pass with.
public enum ConvolutionAlgorithm: String, Sendable, Hashable {
    /// oneDNN's direct kernels: every multiply-add of every window (`dnnl_convolution_direct`).
    case direct
    /// Winograd's minimal filtering F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
    /// 2016): each 6x6 input tile and 3x3 kernel are transformed, multiplied element by element (a batched product over
    /// the channels) and the 4x4 output tile transformed back: 36 multiplications for 16 outputs instead of 144.
    /// oneDNN 2.x has it for f32 on AVX-512 CPUs only (`jit_avx512_core_f32_wino_conv_4x3`: forward, backward data and
    /// backward weights, 3x3 at stride 1 without dilation, padding at most 1); elsewhere it refuses the descriptor.
    case winograd
}

/// The three passes of a training convolution, each of which may run its own algorithm.
public enum ConvolutionPass: String, Sendable, Hashable, CaseIterable {
    case forward, backwardData, backwardWeights
}

/// STARLING_WINOGRAD: whether convolutions may run Winograd's algorithm.
public enum WinogradSetting: String, Sendable, Equatable {
    /// Unset: per pass, where `ConvGeometry.winogradPays` says it is faster (measured per layer, BENCHMARKS.md).
    case rule
    /// `STARLING_WINOGRAD=1`: every pass oneDNN can run with Winograd (for comparisons).
    case always
    /// `STARLING_WINOGRAD=0`: never; every pass direct, as before.
    case never

    /// STARLING_WINOGRAD's value, checked (the CLI refuses to start with a bad one: `settingError`).
    static let selected: Result<WinogradSetting, SettingValueError> = parse(getenv("STARLING_WINOGRAD").map { String(cString: $0) })

    /// The setting for a value of STARLING_WINOGRAD: nil or empty is the rule, 1 always, 0 never.
    public static func parse(_ value: String?) -> Result<WinogradSetting, SettingValueError> {
        EnvironmentSetting.parse("STARLING_WINOGRAD", value, accepting: [("0", WinogradSetting.never), ("1", .always)]).map { $0 ?? .rule }
    }

    /// The setting this process runs: with a bad STARLING_WINOGRAD (which the CLI reports before starting), the rule.
    public static let current: WinogradSetting = (try? selected.get()) ?? .rule

    /// The error a bad STARLING_WINOGRAD gives, or nil.
    public static var settingError: SettingValueError? {
        if case .failure(let error) = selected { return error }
        return nil
    }

    /// For run headers and benchmarks.
    public static var summary: String {
        // oneDNN 2.x's only f32 Winograd kernel is its avx512_core one; below AVX-512 the 8-channel blocks run Starling's
        // own F(2x2, 3x3) (WinogradF2x3.swift), unless Starling's kernels are off.
        if !DNNLActivation.instructionSet.hasPrefix("avx512") && current != .never {
            guard ConvGeometry.ownKernels else {
                return "no Winograd on oneDNN \(DNNLActivation.instructionSet) (oneDNN 2.x has it for AVX-512 only) nor Starling's (its kernels are off)"
            }
            return switch current {
            case .always: "Starling's Winograd F(2x2, 3x3) on every 3x3 stride-1 8-channel-block pass (STARLING_WINOGRAD=1; oneDNN \(DNNLActivation.instructionSet) has none)"
            default: "Starling's Winograd F(2x2, 3x3) where it pays: 3x3 stride-1 passes (the weight gradient too) of up to 128 x 128 channels with 32+ on both sides on maps of 14+ pixels a side, or forward passes and input gradients summing 128+ channels into 128+ (256-512 on the wider side) on maps of 26+ pixels a side (13+ at 512) (STARLING_WINOGRAD=0 or 1 to change; oneDNN \(DNNLActivation.instructionSet) has none)"
            }
        }
        let calls = "at most \(WinogradCallBudget.current >> 20) MB a call (STARLING_WINOGRAD_CALL_MB)"
        return switch current {
        case .rule: "Winograd where it pays\(ConvGeometry.fullWidthDirectKernels ? " (full-width AVX-512: passes summing 16 channels, or under 512 on 8 x 8 maps, direct)" : ""), \(calls) (STARLING_WINOGRAD=0 or 1 to change)"
        case .always: "Winograd wherever oneDNN has it, \(calls) (STARLING_WINOGRAD=1)"
        case .never: "no Winograd (STARLING_WINOGRAD=0)"
        }
    }
}

/// STARLING_WINOGRAD_CALL_MB: how many bytes one oneDNN call of a pass on Winograd may take from the scratch arena (its
/// blocked copies and oneDNN's scratchpad, which holds the transformed tiles of every image of the call): such passes
/// go through the batch in chunks of images that fit (`ConvGeometry.dnnlChunk(_:layouts:)`).
public enum WinogradCallBudget {
    /// Chosen by measurement (BENCHMARKS.md, "Winograd's scratch capped").
    public static let defaultMegabytes = 128

    static let selected: Result<Int, WinogradCallBudgetError> = parse(getenv("STARLING_WINOGRAD_CALL_MB").map { String(cString: $0) })

    /// Bytes for a value of STARLING_WINOGRAD_CALL_MB: nil or empty is the default, else a whole number of megabytes
    /// from 1 to 1,048,576.
    public static func parse(_ value: String?) -> Result<Int, WinogradCallBudgetError> {
        guard let value, !value.isEmpty else { return .success(defaultMegabytes << 20) }
        guard let megabytes = Int(value), (1...(1 << 20)).contains(megabytes) else { return .failure(WinogradCallBudgetError(value: value)) }
        return .success(megabytes << 20)
    }

    /// The budget this process runs, in bytes: with a bad STARLING_WINOGRAD_CALL_MB (which the CLI reports before
    /// starting), the default.
    public static let current: Int = (try? selected.get()) ?? defaultMegabytes << 20

    /// The error a bad STARLING_WINOGRAD_CALL_MB gives, or nil.
    public static var settingError: WinogradCallBudgetError? {
        if case .failure(let error) = selected { return error }
        return nil
    }
}

public struct WinogradCallBudgetError: Error, Equatable, CustomStringConvertible {
    public let value: String
    public var description: String { "STARLING_WINOGRAD_CALL_MB=\(value): expected a whole number of megabytes from 1 to 1048576" }
}

extension ConvGeometry {
    /// A shape oneDNN's Winograd F(4x4, 3x3) kernels take: 3x3 at stride 1, no dilation, one group, padding at most 1
    /// on each side. The CPU is oneDNN's to judge: it refuses the descriptor below AVX-512, and the plan then runs direct.
    var winogradShape: Bool {
        kernelH == 3 && kernelW == 3 && strideH == 1 && strideW == 1 && dilationH == 1 && dilationW == 1 && groups == 1
            && padTop <= 1 && padLeft <= 1 && outHeight + 2 - height - padTop <= 1 && outWidth + 2 - width - padLeft <= 1
    }

    /// The algorithm to ask oneDNN for on `pass`, under `setting` (by default this geometry's `winograd`, else
    /// STARLING_WINOGRAD's). Depends on the shape of one image, the pass and the CPU class only, never on the batch or
    /// the thread count, so that every rank of a job on one CPU model (each with its share of the batch) and every
    /// thread count runs the same one.
    /// `fullWidthDirect`: the rule's CPU class (`fullWidthDirectKernels` unless given), for tests of either class.
    func requestedAlgorithm(_ pass: ConvolutionPass, setting: WinogradSetting? = nil,
                            fullWidthDirect: Bool = ConvGeometry.fullWidthDirectKernels) -> ConvolutionAlgorithm {
        guard winogradShape else { return .direct }
        switch setting ?? winograd ?? WinogradSetting.current {
        case .never: return .direct
        case .always: return .winograd
        case .rule: return winogradPays(pass, fullWidthDirect: fullWidthDirect) ? .winograd : .direct
        }
    }

    /// An Intel CPU with AVX-512: cores that run 512-bit FMAs at full width, so that oneDNN's direct kernels do twice
    /// the multiplications a cycle of a Zen 4's (which splits them into 256-bit halves) and Winograd's fewer
    /// multiplications pay later. Read from cpuid (vendor and vector level), the same on every rank of a homogeneous
    /// cluster. Measured on an Emerald Rapids Xeon (family 6 model 207; `bench --only conv-algorithms`, BENCHMARKS.md
    /// "Winograd's rule on a full-width AVX-512 Xeon"); other vendors keep the rule measured on the Zen 4.
    static let fullWidthDirectKernels: Bool = VectorISA.thisCPU == .avx512 && starling_cpu_is_intel() != 0

    /// Where Winograd beat oneDNN's direct kernels, per layer and pass, on one thread of an AVX-512 core (AMD EPYC
    /// family 25 model 17, oneDNN 2.6.3's avx512_core kernels, the blocked layout 16 channels wide, reorders included;
    /// `bench --only conv-algorithms`, BENCHMARKS.md "Winograd for the 3x3 convolutions"): 1.36-3.39x on every pass of
    /// U-Net's, yolov3-tiny's and SSD7's conv2-conv5 layers of 32 channels or more, 1.05-1.35x on U-Net's 16-channel ones
    /// at 128 x 128, 1.02-1.17x on SSD7's 9 x 15 conv6 and denoising-ae's 14 x 14 layers. It lost on three kinds of
    /// pass, which stay direct:
    /// - a few input channels (an image: U-Net's 3 -> 64, 0.29x forward and 0.39x weight gradient), so both sides
    ///   need at least 16 channels;
    /// - small maps, where 4 x 4 output tiles waste much of their work at the border (denoising-ae's 7 x 7 won only
    ///   tenths of a millisecond, and nothing smaller was measured), so both sides of the output need 8 pixels;
    /// - a pass that sums over fewer than 32 channels into more (16 -> 32 forward, 32 -> 16 input gradient) on maps
    ///   below 32,768 pixels: U-Net's at width 0.25, 0.88x at 64 x 64 and 0.87x at 128 x 128, where yolov3-tiny's
    ///   16 -> 32 forward on 208 x 208 won 1.39x.
    /// One more stays direct for the scratch it holds in the arena, which keeps the largest call's size for the whole
    /// run (BENCHMARKS.md "U-Net's Winograd scratch by shape"): the weight gradient of a layer of 256 x 256 channels or
    /// more on 2 x 2 tiles an image (maps of 8 pixels a side). Its scratchpad holds copies of the transformed weights
    /// (36 floats a kernel, 9.4 MB at 256 x 256) beside the few tiles, 27 MB a call at 4 images whatever the images, the
    /// largest call of U-Net's 2-rank and replica rows at width 0.25, for 1.5x on a 3-6 ms pass (the step's CPU time
    /// level in A/B). Larger maps (yolov3-tiny's 13 x 13, 4 x 4 tiles) keep it. (U-Net's 16 -> 16 forward passes and
    /// input gradients at 128 x 128, 6 MB of tiles an image, were tried direct too: the one-process rows' peak -26 MB,
    /// but the step's CPU time +2-5 % on one thread; not kept.)
    ///
    /// On a CPU with full-width AVX-512 direct kernels (`fullWidthDirectKernels`: an Intel Xeon) two more kinds of
    /// forward pass and input gradient stay direct, where Winograd lost there: those summing 16 channels (U-Net's 16 -> 16
    /// at 128 x 128 0.53-0.56x forward and 0.72-0.74x input gradient, yolov3-tiny's 16 -> 32 forward on 208 x 208 0.61x)
    /// and those summing fewer than 512 channels on maps of 8 x 8 or fewer (U-Net's bottleneck at width 0.25, 128 and 256
    /// channels, 0.86-0.91x; at width 1, 512 -> 1024 won 1.24x forward and 1024 -> 1024 was level, so they keep it).
    /// Their weight gradients keep Winograd (1.33-1.46x on the 16-channel ones there).
    func winogradPays(_ pass: ConvolutionPass, fullWidthDirect: Bool = ConvGeometry.fullWidthDirectKernels) -> Bool {
        guard inChannels >= 16, outChannels >= 16, outHeight >= 8, outWidth >= 8 else { return false }
        // The channels a pass sums over and the channels it writes (the weight gradient sums over images and pixels).
        let (summed, written) = pass == .backwardData ? (outChannels, inChannels) : (inChannels, outChannels)
        if fullWidthDirect && pass != .backwardWeights && (summed <= 16 || outHeight * outWidth <= 64 && summed < 512) { return false }
        if pass != .backwardWeights && summed < 32 && written > summed { return outHeight * outWidth >= 32_768 }
        if pass == .backwardWeights && outHeight <= 8 && outWidth <= 8 && inChannels * outChannels >= 256 * 256 { return false }
        return true
    }
}
