#if canImport(Glibc)
import Glibc
#endif

/// Training in the blocked layout: [N, C/B, H, W, B], B = 8 (oneDNN's nChw8c, the layout its AVX2 convolutions
/// compute in) or 16 (nChw16c, its AVX-512 kernels' layout). A convolutional stack kept in it end to end (convolution,
/// batch norm + ELU, max-pooling, each with its backward) never converts between layouts: in NCHW every convolution
/// reorders its input, output and both gradients (SSD7: ~0.3 s of a 2.5 s step of 16 images on one thread,
/// `DNNL_VERBOSE=1`), and in blocks of the width oneDNN does not compute in it reorders 8 <-> 16 instead. Channel counts
/// in this layout are multiples of B, so a tensor holds exactly N C H W floats and channel k of a pixel is lane k % B
/// of block k / B. B is the tensor's last dimension: every op reads it from there, so both widths run in one process
/// (the tests compare them); models take `ChannelLayout.blockWidth`.
///
/// Ops, forward and backward side by side: `blocked(width:)` and `unblocked()` (layout changes, for the ends of a
/// stack), `conv2dBlocked` (oneDNN, from an NCHW or blocked input to a blocked or NCHW output), batch norm with
/// `layout: .blocked` (BatchNorm.swift), and `maxPool2x2Blocked`. Each is tested against its NCHW counterpart.
public enum ChannelLayout: Sendable {
    /// [N, C, ...], each channel's plane contiguous.
    case planar
    /// [N, C/B, H, W, B], B = 8 or 16.
    case blocked

    /// Whether models that can train in the blocked layout do: yes unless `STARLING_LAYOUT=nchw` (for comparisons).
    public static let blockedTrainingEnabled: Bool = {
        if let value = getenv("STARLING_LAYOUT"), String(cString: value) == "nchw" { return false }
        return DNNLConvPlans.enabled
    }()

    /// The block width models train in: 16 where cpuid reports AVX-512 (oneDNN's kernels compute in 16-channel blocks
    /// there, and Starling's blocked loops fill a zmm register), 8 elsewhere; `STARLING_BLOCK=8` or `16` overrides it
    /// (both are correct on every CPU). With any other value the CLI refuses to start (`blockWidthError`).
    public static let blockWidth: Int = (try? blockWidthSelected.get()) ?? (KernelDispatch.supported.contains(.avx512) ? 16 : 8)

    /// STARLING_BLOCK's width, nil when unset or empty.
    private static let blockWidthSelected = blockWidthSetting(value: getenv("STARLING_BLOCK").map { String(cString: $0) })

    /// The width a value of STARLING_BLOCK names: 8 or 16, nil for none. A pure function, for the tests.
    static func blockWidthSetting(value: String?) -> Result<Int?, SettingValueError> {
        EnvironmentSetting.parse("STARLING_BLOCK", value, accepting: [("8", 8), ("16", 16)])
    }

    /// The error a bad STARLING_BLOCK gives, or nil.
    public static var blockWidthError: SettingValueError? {
        if case .failure(let error) = blockWidthSelected { return error }
        return nil
    }
}

extension Tensor {
    /// NCHW [N, C, H, W] (C a multiple of `width`, 8 or 16) as [N, C/width, H, W, width].
    public func blocked(width: Int) -> Tensor {
        precondition(width == 8 || width == 16, "block width \(width): 8 or 16")
        precondition(rank == 4 && shape[1] % width == 0, "blocked(width: \(width)) needs [N, C, H, W] with C a multiple of \(width), got \(shape)")
        let (n, blocks, plane) = (shape[0], shape[1] / width, shape[2] * shape[3])
        let x = self
        let out = Tensor.result(shape: [n, blocks, shape[2], shape[3], width], storage: FloatStorage(uninitializedCount: count),
                                inputs: [x]) { out in
            Tensor.reblock(n * blocks, width: width, plane: plane, from: out.grad, toPlanar: x.gradientForWriting())
        }
        Tensor.reblock(n * blocks, width: width, plane: plane, from: x.data, toBlocked: (out.data, true))
        return out
    }

    /// `blocked(width: 8)`.
    public func blocked8() -> Tensor { blocked(width: 8) }

    /// [N, C/B, H, W, B] as NCHW [N, C, H, W].
    public func unblocked() -> Tensor {
        precondition(rank == 5 && (shape[4] == 8 || shape[4] == 16), "unblocked needs [N, C/B, H, W, B] with B 8 or 16, got \(shape)")
        let (n, blocks, plane, width) = (shape[0], shape[1], shape[2] * shape[3], shape[4])
        let x = self
        let out = Tensor.result(shape: [n, blocks * width, shape[2], shape[3]], storage: FloatStorage(uninitializedCount: count),
                                inputs: [x]) { out in
            Tensor.reblock(n * blocks, width: width, plane: plane, from: out.grad, toBlocked: x.gradientForWriting())
        }
        Tensor.reblock(n * blocks, width: width, plane: plane, from: x.data, toPlanar: (out.data, true))
        return out
    }

    /// The width of a blocked tensor's blocks (its last dimension).
    var blockWidth: Int {
        precondition(rank == 5 && (shape[4] == 8 || shape[4] == 16), "a blocked tensor is [N, C/B, H, W, B] with B 8 or 16, got \(shape)")
        return shape[4]
    }

    /// Planar -> blocked for `groups` groups of `width` planes, written or added.
    private static func reblock(_ groups: Int, width: Int, plane: Int, from x: UnsafePointer<Float>,
                                toBlocked target: (pointer: UnsafeMutablePointer<Float>, overwrite: Bool)) {
        let y = target.pointer
        for g in 0..<groups {
            let source = x + g * width * plane, destination = y + g * width * plane
            for p in 0..<plane {
                for l in 0..<width {
                    let v = source[l * plane + p]
                    destination[width * p + l] = target.overwrite ? v : destination[width * p + l] + v
                }
            }
        }
    }

    /// Blocked -> planar for `groups` groups of `width` planes, written or added.
    private static func reblock(_ groups: Int, width: Int, plane: Int, from x: UnsafePointer<Float>,
                                toPlanar target: (pointer: UnsafeMutablePointer<Float>, overwrite: Bool)) {
        let y = target.pointer
        for g in 0..<groups {
            let source = x + g * width * plane, destination = y + g * width * plane
            for l in 0..<width {
                for p in 0..<plane {
                    let v = source[width * p + l]
                    destination[l * plane + p] = target.overwrite ? v : destination[l * plane + p] + v
                }
            }
        }
    }

    /// Whether `conv2dBlocked` can run this convolution: oneDNN is there and has plans for the training step of this
    /// geometry, input and output channels are multiples of their block widths where blocked (`width` the output's,
    /// `inputWidth` the input's, by default the same). `input` is the NCHW shape.
    public static func canConvolveBlocked(input: [Int], weight: [Int], stride: (Int, Int) = (1, 1), padding: Padding = .valid,
                                          blockedInput: Bool, blockedOutput: Bool, width: Int = ChannelLayout.blockWidth,
                                          inputWidth: Int? = nil) -> Bool {
        let inputWidth = inputWidth ?? width
        guard DNNLConvPlans.enabled, [width, inputWidth].allSatisfy({ $0 == 8 || $0 == 16 }), input.count == 4, weight.count == 4,
              input[1] == weight[1], !blockedInput || input[1] % inputWidth == 0, !blockedOutput || weight[0] % width == 0 else { return false }
        let g = ConvGeometry(input: input, weight: weight, stride: stride, padding: padding, dilation: (1, 1), groups: 1)
        guard g.outHeight > 0, g.outWidth > 0 else { return false }
        return g.dnnlCanTrain(DNNLConvPlan.Layouts(sourceBlocked: blockedInput, destinationBlocked: blockedOutput,
                                                   sourceWidth: blockedInput ? inputWidth : 8, destinationWidth: blockedOutput ? width : 8),
                              bias: true)
    }

    /// conv2d(self, weight) + bias on oneDNN with no layout change around it: the input is NCHW (rank 4) or blocked
    /// (rank 5), the output blocked or, with `blockedOutput: false`, NCHW. A blocked output is `width` channels wide (by
    /// default the input's width, or `ChannelLayout.blockWidth` after an NCHW input); the two widths may differ. Call
    /// `canConvolveBlocked` first: without a oneDNN plan this traps.
    public func conv2dBlocked(_ weight: Tensor, bias: Tensor, stride: (Int, Int) = (1, 1), padding: Padding = .valid,
                              blockedOutput: Bool = true, width: Int? = nil, moments: ChannelMoments? = nil) -> Tensor {
        let x = self
        let (g, layouts, shape, planar) = blockedConvolutionPlan(weight, bias: bias, stride: stride, padding: padding,
                                                                 blockedOutput: blockedOutput, width: width)
        let out = Tensor.result(shape: shape, storage: FloatStorage(uninitializedCount: Tensor.elementCount(shape)),
                                inputs: [x, weight, bias], backwardReadsResult: false) { out in
            x.blockedConvolutionBackward(g, weight: weight, bias: bias, outputGrad: UnsafePointer(out.grad), layouts: layouts)
        }
        let done = g.narrowOutputForward(input: x.data, weight: weight.data, bias: bias.data, output: out.data, layouts: layouts)
            || g.ownWinogradForward(input: x.data, weight: weight.data, bias: bias.data, output: out.data, layouts: layouts)
            || g.directForward(input: x.data, weight: weight.data, bias: bias.data, output: out.data, layouts: layouts, moments: moments)
            || g.dnnlConvolve(input: x.data, weight: weight.data, bias: bias.data, output: out.data, beta: 0, layouts: layouts)
        precondition(done, "conv2dBlocked without a oneDNN plan for \(planar) x \(weight.shape): check canConvolveBlocked first")
        return out
    }

    /// The geometry, oneDNN layouts and output shape of a blocked convolution of this input (NCHW, rank 4, or blocked,
    /// rank 5) by `weight`, for `conv2dBlocked` and `conv2dBlockedReLU`; makes the backward plans when gradients are
    /// recorded. `planar` is the input's NCHW shape.
    func blockedConvolutionPlan(_ weight: Tensor, bias: Tensor, stride: (Int, Int), padding: Padding, blockedOutput: Bool,
                                width: Int?) -> (geometry: ConvGeometry, layouts: DNNLConvPlan.Layouts, shape: [Int], planar: [Int]) {
        blockedConvolutionPlan(weightShape: weight.shape, bias: bias, stride: stride, padding: padding, blockedOutput: blockedOutput,
                               width: width, backward: requiresGrad || weight.requiresGrad)
    }

    /// The same for a kernel of `weightShape` (one that is not a tensor of its own: a slice of a layer's), the backward
    /// plans made when gradients are recorded and `backward` says some gradient is wanted.
    func blockedConvolutionPlan(weightShape: [Int], bias: Tensor, stride: (Int, Int), padding: Padding, blockedOutput: Bool,
                                width: Int?, backward: Bool) -> (geometry: ConvGeometry, layouts: DNNLConvPlan.Layouts, shape: [Int], planar: [Int]) {
        let blockedInput = rank == 5
        precondition(rank == 4 || blockedInput, "blocked convolution input \(shape)")
        let inBlock = blockedInput ? blockWidth : 8
        let block = width ?? (blockedInput ? inBlock : ChannelLayout.blockWidth)
        let planar = blockedInput ? [shape[0], shape[1] * inBlock, shape[2], shape[3]] : shape
        let g = ConvGeometry(input: planar, weight: weightShape, stride: stride, padding: padding, dilation: (1, 1), groups: 1)
        precondition(bias.shape == [g.outChannels], "bias \(bias.shape) for \(g.outChannels) output channels")
        // A side that is not blocked has width 8 in the plan's key, as `canConvolveBlocked` makes it.
        let layouts = DNNLConvPlan.Layouts(sourceBlocked: blockedInput, destinationBlocked: blockedOutput, sourceWidth: inBlock,
                                           destinationWidth: blockedOutput ? block : 8)
        let (n, cout) = (g.batch, g.outChannels)
        let outShape = blockedOutput ? [n, cout / block, g.outHeight, g.outWidth, block] : [n, cout, g.outHeight, g.outWidth]
        if GradMode.isEnabled && backward { g.prepareDNNLBackward(layouts) }
        return (g, layouts, outShape, planar)
    }

    /// 2x2 max-pooling at stride 2 (valid: an odd last row or column is dropped) in the blocked layout. Backward
    /// finds each window's maximum again from the input and output instead of keeping an argmax: the gradient goes
    /// to the first input equal to the output, in row-major order, as `maxPool2d`'s argmax does.
    public func maxPool2x2Blocked() -> Tensor {
        let x = self, b = blockWidth
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let (oh, ow) = (h / 2, w / 2)
        let outShape = [shape[0], shape[1], oh, ow, b]
        let out = Tensor.result(shape: outShape, storage: FloatStorage(uninitializedCount: Tensor.elementCount(outShape)),
                                inputs: [x]) { out in
            let (dx, overwrite) = x.gradientForWriting()
            let xp = x.data, y = out.data, dy = out.grad
            Parallel.forEachChunk(of: planes * oh, work: planes * h * w * b) { rows in
                for r in rows {
                    let (plane, i) = r.quotientAndRemainder(dividingBy: oh)
                    let top = (plane * h + 2 * i) * w * b, bottom = top + w * b, o = (plane * oh + i) * ow * b
                    KernelDispatch.maxPoolRowGradient(width: b, ow, top: xp + top, bottom: xp + bottom, y: y + o, dy: dy + o,
                                                      topGradient: dx + top, bottomGradient: dx + bottom, overwrite: overwrite)
                    guard overwrite else { continue }
                    // Inputs no window covers get no gradient; written, since dx is fresh.
                    if w % 2 == 1 {
                        (dx + top + (w - 1) * b).update(repeating: 0, count: b)
                        (dx + bottom + (w - 1) * b).update(repeating: 0, count: b)
                    }
                    if h % 2 == 1 && i == oh - 1 { (dx + (plane * h + h - 1) * w * b).update(repeating: 0, count: w * b) }
                }
            }
            // With a single row no window exists and the loop above never ran.
            if overwrite && oh == 0 { dx.update(repeating: 0, count: x.count) }
        }
        let xp = x.data, y = out.data
        Parallel.forEachChunk(of: planes * oh, work: planes * h * w * b) { rows in
            for r in rows {
                let (plane, i) = r.quotientAndRemainder(dividingBy: oh)
                let top = (plane * h + 2 * i) * w * b
                KernelDispatch.maxPoolRow(width: b, ow, top: xp + top, bottom: xp + top + w * b, into: y + (plane * oh + i) * ow * b)
            }
        }
        return out
    }
}

extension Tensor {
    /// `upsampleNearest` in the blocked layout: every pixel's B channels repeated scale.0 times vertically and scale.1
    /// times horizontally; backward sums each pixel's copies.
    public func upsampleNearestBlocked(scale: (Int, Int)) -> Tensor {
        precondition(scale.0 > 0 && scale.1 > 0, "upsampling scale \(scale) must be positive")
        let x = self, b = blockWidth
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let (sh, sw) = scale
        let (oh, ow) = (h * sh, w * sw)
        let outShape = [shape[0], shape[1], oh, ow, b]
        // Every output pixel is a copy of one input pixel, written below.
        // One pixel's B channels as one vector (SIMD8 or SIMD16), so that a copy or a sum is one load and store.
        @inline(__always) func upsample<V: BlockVector>(_: V.Type) -> Tensor {
            let out = Tensor.result(shape: outShape, storage: FloatStorage(uninitializedCount: Tensor.elementCount(outShape)),
                                    inputs: [x]) { out in
                let dy = UnsafePointer(out.grad), dx = x.grad
                Parallel.forEachChunk(of: planes * h, work: planes * oh * ow * b) { rows in
                    for row in rows {
                        let (p, r) = row.quotientAndRemainder(dividingBy: h)
                        let dxr = dx + row * w * b
                        for c in 0..<w {
                            var sum = V.load(dxr + b * c)
                            for k in 0..<sh {
                                let dyr = dy + ((p * oh + r * sh + k) * ow + c * sw) * b
                                for q in 0..<sw { sum += V.load(dyr + b * q) }
                            }
                            sum.store(dxr + b * c)
                        }
                    }
                }
            }
            Tensor.upsampleNearestPixels(UnsafePointer(x.data), into: out.data, planes: planes, height: h, width: w, scale: scale, pixel: b)
            return out
        }
        return b == 16 ? upsample(SIMD16<Float>.self) : upsample(SIMD8<Float>.self)
    }

    /// The forward loop of `upsampleNearestBlocked` on `planes` planes of h x w pixels of `pixel` floats each, rows over
    /// the threads: a blocked tensor's planes of one block (pixel 8 or 16, one vector), or an NHWC image (pixel = its
    /// channel count), which is what inference runs on oneDNN's activations (`DNNLActivation.upsampleNearest`).
    static func upsampleNearestPixels(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, planes: Int, height h: Int,
                                      width w: Int, scale: (Int, Int), pixel b: Int) {
        let (sh, sw) = scale
        let (oh, ow) = (h * sh, w * sw)
        @inline(__always) func rows(_ copyPixel: (UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void) {
            Parallel.forEachChunk(of: planes * h, work: planes * oh * ow * b) { rows in
                for row in rows {
                    let (p, r) = row.quotientAndRemainder(dividingBy: h)
                    let xr = x + row * w * b, first = y + (p * oh + r * sh) * ow * b
                    for c in 0..<w {
                        for q in 0..<sw { copyPixel(xr + b * c, first + (c * sw + q) * b) }
                    }
                    for k in 1..<sh { (first + k * ow * b).update(from: first, count: ow * b) }
                }
            }
        }
        // One pixel of a block is one vector; an NHWC pixel of many channels a run of them.
        switch b {
        case 16: rows { SIMD16<Float>.load($0).store($1) }
        case 8: rows { SIMD8<Float>.load($0).store($1) }
        default: rows { $1.update(from: $0, count: b) }
        }
    }
}

/// out[B b + l] += the sum over planes and pixels of lane l of the blocked tensor x (blocks of `width` = B channels),
/// b = plane % blocks.
func accumulateBlockedChannelSums(_ x: UnsafePointer<Float>, width: Int, planes: Int, blocks: Int, pixels: Int,
                                  into out: UnsafeMutablePointer<Float>) {
    @inline(__always) func sums<V: BlockVector>(_: V.Type) {
        for plane in 0..<planes {
            var sum = V(repeating: 0)
            let start = x + plane * pixels * width
            for p in 0..<pixels { sum += V.load(start + width * p) }
            let b = plane % blocks
            for l in 0..<width { out[width * b + l] += sum[l] }
        }
    }
    if width == 16 { sums(SIMD16<Float>.self) } else { sums(SIMD8<Float>.self) }
}

extension Tensor {
    /// The backward of a blocked convolution of this input (`conv2dBlocked`, `conv2dBlockedReLU`, the pooled form) from its
    /// output gradient `dy`: the weight and bias gradients, then the input gradient. An input whose values cost little to
    /// compute again (`recomputable(alsoInBackward: true)`: SSD300's conv1_1, 176 MB at batch 8) is given back between
    /// the two, which read it only for the weight gradient: the input gradient, of the same size, then takes its place
    /// instead of a block of its own beside it and the output gradient (the last attempt's live peak was there: 1,060 MB),
    /// and the backward sweep computes it again for the op that made it. Each gradient comes from the same kernels on the
    /// same values as in one call: the same bits.
    func blockedConvolutionBackward(_ g: ConvGeometry, weight: Tensor, bias: Tensor, outputGrad dy: UnsafePointer<Float>,
                                    layouts: DNNLConvPlan.Layouts) {
        let x = self
        let (weightGradient, biasGradient) = (weight.requiresGrad ? weight.grad : nil, bias.requiresGrad ? bias.grad : nil)
        guard x.requiresGrad, x.releasesForInputGradient, weightGradient != nil || biasGradient != nil else {
            g.blockedBackward(input: x.data, weight: weight.data, outputGrad: dy, weightGradient: weightGradient, biasGradient: biasGradient,
                              inputGradient: x.requiresGrad ? x.gradientForWriting() : nil, layouts: layouts)
            return
        }
        g.blockedBackward(input: x.data, weight: weight.data, outputGrad: dy, weightGradient: weightGradient, biasGradient: biasGradient,
                          inputGradient: nil, layouts: layouts)
        _ = x.releaseForInputGradient()
        // Without a weight gradient the input is not read: its (perhaps given back) pointer only fills the argument.
        g.blockedBackward(input: x.data, weight: weight.data, outputGrad: dy, weightGradient: nil, biasGradient: nil,
                          inputGradient: x.gradientForWriting(), layouts: layouts)
    }
}

extension ConvGeometry {
    /// The backward of `conv2dBlocked`: weight and bias gradients added into `weightGradient` and `biasGradient` (by
    /// Starling's kernels where they apply, which sum the bias from dy as they read it; else oneDNN and a pass over dy),
    /// and the input gradient written or added into `inputGradient`. Nil skips a gradient.
    func blockedBackward(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, outputGrad dy: UnsafePointer<Float>,
                         weightGradient: UnsafeMutablePointer<Float>?, biasGradient: UnsafeMutablePointer<Float>?,
                         inputGradient: (pointer: UnsafeMutablePointer<Float>, overwrite: Bool)?, layouts: DNNLConvPlan.Layouts) {
        if narrowOutputBackward(input: x, weight: w, outputGrad: dy, weightGradient: weightGradient, biasGradient: biasGradient,
                                inputGradient: inputGradient, layouts: layouts) { return }
        var biasDone = false
        if let weightGradient {
            if ownWinogradWeightGradient(input: x, outputGrad: dy, into: weightGradient, biasGradient: biasGradient, layouts: layouts)
                || fiveWideWeightGradient(input: x, outputGrad: dy, into: weightGradient, biasGradient: biasGradient, layouts: layouts)
                || blockedWeightGradient3x3(input: x, outputGrad: dy, into: weightGradient, biasGradient: biasGradient, layouts: layouts) {
                biasDone = true
            } else {
                let done = dnnlAccumulateWeightGradient(input: x, outputGrad: dy, into: weightGradient, layouts: layouts)
                precondition(done, "oneDNN lost the plan of a blocked convolution")
            }
        }
        if let biasGradient, !biasDone {
            if layouts.destinationBlocked {
                let width = layouts.destinationWidth
                accumulateBlockedChannelSums(dy, width: width, planes: batch * outChannels / width, blocks: outChannels / width, pixels: outPlane,
                                             into: biasGradient)
            } else {
                accumulateChannelSums(dy, batch: batch, channels: outChannels, plane: outPlane, into: biasGradient)
            }
        }
        if let (dx, overwrite) = inputGradient {
            let done = ownWinogradInputGradient(outputGrad: dy, weight: w, into: dx, accumulate: !overwrite, layouts: layouts)
                || dnnlAccumulateInputGradient(outputGrad: dy, weight: w, into: dx, layouts: layouts, accumulate: !overwrite)
            precondition(done, "oneDNN lost the plan of a blocked convolution")
        }
    }

    /// Whether Starling's own convolution kernels (below) may run where they apply: yes on AVX2 and AVX-512 machines unless
    /// `STARLING_CONV=dnnl`, which leaves every pass to oneDNN (for comparisons).
    static let ownKernels = KernelDispatch.current != .baseline && getenv("STARLING_CONV").map { String(cString: $0) } != "dnnl"

    /// The forward pass by `DirectForward` when it applies: a K x K "same" kernel at stride 1 into a blocked output with an
    /// even number of 8-channel blocks, from an NCHW input of at most 4 channels (conv1) or a blocked one. False, doing
    /// nothing, otherwise. Images go over the threads, each copied once into scratch with zero borders.
    func directForward(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                       output y: UnsafeMutablePointer<Float>, layouts: DNNLConvPlan.Layouts, moments: ChannelMoments? = nil) -> Bool {
        let blocked = layouts.sourceBlocked
        guard Self.ownKernels, layouts.destinationBlocked, layouts.eightWide, kernelH == kernelW, kernelH % 2 == 1, groups == 1, strideH == 1, strideW == 1,
              dilationH == 1, dilationW == 1, padTop == kernelH / 2, padLeft == kernelW / 2, outHeight == height, outWidth == width,
              outChannels % 16 == 0, blocked ? inChannels % 8 == 0 : (1...4).contains(inChannels),
              Self.directForwardTakes(inChannels: inChannels, outChannels: outChannels, width: width) else { return false }
        let taps = kernelH * kernelW, border = kernelH / 2, pixel = blocked ? 8 : 1
        let packed = UnsafeMutablePointer<Float>.allocate(capacity: outChannels * inChannels * taps)
        defer { packed.deallocate() }
        DirectForward.pack(w, outChannels: outChannels, channels: inChannels, taps: taps, into: packed)
        let (paddedWidth, paddedHeight) = (width + 2 * border, height + 2 * border)
        // Planes of the padded copy: one per input channel, or one per block of 8.
        let (planes, paddedPlane) = blocked ? (inChannels / 8, paddedWidth * paddedHeight * 8) : (inChannels, paddedWidth * paddedHeight)
        let outBlocks = outChannels / 8, plane = outPlane * 8, rowFloats = paddedWidth * pixel
        let steps = DirectForward.stepOffsets(channels: inChannels, kernel: kernelH, paddedWidth: paddedWidth, paddedPlane: paddedPlane,
                                              blocked: blocked)
        // Moments per image and block pair ([sum, sum, squares, squares]), added in image order after the loop, so that
        // they do not depend on how the images went over the threads.
        let pairs = outBlocks / 2
        let perImage = moments == nil ? nil : UnsafeMutablePointer<SIMD8<Double>>.allocate(capacity: batch * pairs * 4)
        perImage?.initialize(repeating: SIMD8<Double>(repeating: 0), count: batch * pairs * 4)
        defer { perImage?.deallocate() }
        Parallel.forEachChunk(of: batch, work: batch * outChannels * outPlane * inChannels * taps) { images in
            let padded = UnsafeMutablePointer<Float>.allocate(capacity: planes * paddedPlane)
            padded.initialize(repeating: 0, count: planes * paddedPlane)
            defer { padded.deallocate() }
            steps.withUnsafeBufferPointer { offsets in
                for n in images {
                    for p in 0..<planes {
                        for row in 0..<height {
                            (padded + p * paddedPlane + (row + border) * rowFloats + border * pixel)
                                .update(from: x + ((n * planes + p) * height + row) * width * pixel, count: width * pixel)
                        }
                    }
                    for pair in 0..<pairs {
                        let first = y + (n * outBlocks + 2 * pair) * plane
                        for row in 0..<height {
                            KernelDispatch.directForwardRow(row, width: width, rowFloats: rowFloats, blocked: blocked, padded: padded,
                                                            steps: offsets.baseAddress!, stepCount: offsets.count,
                                                            weights: packed + pair * 16 * inChannels * taps, bias: bias + 16 * pair,
                                                            out0: first + row * width * 8, out1: first + plane + row * width * 8,
                                                            moments: perImage.map { $0 + (n * pairs + pair) * 4 })
                        }
                    }
                }
            }
        }
        if let moments, let perImage {
            var sums = [Double](repeating: 0, count: 2 * outChannels)
            for n in 0..<batch {
                for pair in 0..<pairs {
                    let m = perImage + (n * pairs + pair) * 4
                    for half in 0..<2 {
                        for l in 0..<8 {
                            let channel = (2 * pair + half) * 8 + l
                            sums[channel] += m[half][l]
                            sums[outChannels + channel] += m[2 + half][l]
                        }
                    }
                }
            }
            moments.sums = sums
        }
        return true
    }

    /// Which convolutions `directForward` takes over from oneDNN, from per-layer timings at batch 16 on one thread
    /// (BENCHMARKS.md): conv1's few input channels (inside a training step 111 against oneDNN's 135 ms; alone, in
    /// `bench --only ssd7-layers`, level with it), and output channels that are not a multiple
    /// of 32, which oneDNN 2.6's AVX2 kernel tiles 32 at a time (conv2, 32 -> 48: 95 against 82), on maps at least 24
    /// pixels wide (on SSD7's 15-pixel conv6 map the single pixels left after the six-pixel tiles made it slower).
    /// Elsewhere oneDNN's kernel is as fast or faster (conv3 and conv4: 97 against 100, 96 against 104).
    static func directForwardTakes(inChannels: Int, outChannels: Int, width: Int) -> Bool {
        inChannels <= 4 || (outChannels % 32 != 0 && width >= 24)
    }

    /// The weight gradient by `BlockedWeightGradient3x3` (AVX2 builds only) when it applies: a 3x3 kernel at stride 1
    /// with one pixel of padding, input and output gradient both blocked, at least two output blocks, a map at least 24
    /// pixels wide (`bench --only ssd7-layers`: on SSD7's 15- and 7-pixel maps oneDNN's kernel was as fast or faster,
    /// its rows too short for 12 register sums to pay off). False, doing nothing, otherwise. Work items are (input block, group of 2-3 output blocks) pairs, each writing its own
    /// weights, so the result does not depend on the thread count.
    func blockedWeightGradient3x3(input x: UnsafePointer<Float>, outputGrad dy: UnsafePointer<Float>, into dw: UnsafeMutablePointer<Float>,
                                  biasGradient: UnsafeMutablePointer<Float>?, layouts: DNNLConvPlan.Layouts) -> Bool {
        guard Self.ownKernels, layouts.sourceBlocked, layouts.destinationBlocked, layouts.eightWide,
              kernelH == 3, kernelW == 3, groups == 1, strideH == 1, strideW == 1, dilationH == 1, dilationW == 1,
              padTop == 1, padLeft == 1, outHeight == height, outWidth == width, inChannels % 8 == 0, outChannels % 8 == 0,
              outChannels >= 16, width >= 24 else { return false }
        let (inBlocks, outBlocks) = (inChannels / 8, outChannels / 8)
        // Output blocks in groups of 3, the remainder in groups of 2 (4 = 2 + 2, 5 = 3 + 2, 8 = 3 + 3 + 2).
        var groupSizes = [Int](repeating: 3, count: outBlocks / 3)
        switch outBlocks % 3 {
        case 1: groupSizes.removeLast(); groupSizes += [2, 2]
        case 2: groupSizes.append(2)
        default: break
        }
        let starts = groupSizes.indices.map { groupSizes[..<$0].reduce(0, +) }
        let items = inBlocks * groupSizes.count, plane = outPlane * 8
        Parallel.forEachChunk(of: items, work: batch * outChannels * outPlane * inChannels * 9) { range in
            // Per pair: Float sums over an image's rows, Double sums over the batch.
            let stride = BlockedWeightGradient3x3.sumCount(outBlockCount: 3)
            let partial = UnsafeMutablePointer<SIMD8<Float>>.allocate(capacity: range.count * stride)
            let sums = UnsafeMutablePointer<SIMD8<Double>>.allocate(capacity: range.count * stride)
            partial.initialize(repeating: SIMD8<Float>(repeating: 0), count: range.count * stride)
            sums.initialize(repeating: SIMD8<Double>(repeating: 0), count: range.count * stride)
            defer { partial.deallocate(); sums.deallocate() }
            for n in 0..<batch {
                for y in 0..<height {
                    for (k, item) in range.enumerated() {
                        let (inBlock, group) = item.quotientAndRemainder(dividingBy: groupSizes.count)
                        KernelDispatch.blockedWeightGradient3x3Row(y, height: height, width: width, input: x + (n * inBlocks + inBlock) * plane,
                                                                   outputGradient: dy + (n * outBlocks + starts[group]) * plane,
                                                                   outBlockCount: groupSizes[group], partial: partial + k * stride,
                                                                   withBias: biasGradient != nil && inBlock == 0)
                    }
                }
                BlockedWeightGradient3x3.flush(partial, into: sums, count: range.count * stride)
            }
            for (k, item) in range.enumerated() {
                let (inBlock, group) = item.quotientAndRemainder(dividingBy: groupSizes.count)
                BlockedWeightGradient3x3.addSums(sums + k * stride, into: dw, channels: inChannels, inBlock: inBlock,
                                                 firstOutBlock: starts[group], outBlockCount: groupSizes[group],
                                                 biasGradient: inBlock == 0 ? biasGradient : nil)
            }
        }
        return true
    }

    /// The weight gradient by `FiveWideWeightGradient` (AVX2 builds only) when it applies: a 5-wide kernel at stride 1,
    /// an NCHW input of at most 4 channels, a blocked output gradient with an even number of 8-channel blocks. False,
    /// doing nothing, otherwise. SSD7's conv1: 0.27 s in oneDNN -> 0.12 s a step of 16 images on one thread (BENCHMARKS.md).
    func fiveWideWeightGradient(input x: UnsafePointer<Float>, outputGrad dy: UnsafePointer<Float>, into dw: UnsafeMutablePointer<Float>,
                                biasGradient: UnsafeMutablePointer<Float>?, layouts: DNNLConvPlan.Layouts) -> Bool {
        guard Self.ownKernels, !layouts.sourceBlocked, layouts.destinationBlocked, layouts.eightWide, kernelW == 5, groups == 1,
              strideH == 1, strideW == 1, dilationH == 1, dilationW == 1, inChannels <= 4, outChannels % 16 == 0 else { return false }
        let pairs = outChannels / 16
        Parallel.forEachChunk(of: pairs, work: batch * outChannels * outPlane * inChannels * kernelH * kernelW) { range in
            let padded = UnsafeMutablePointer<Float>.allocate(capacity: width + 12)
            defer { padded.deallocate() }
            KernelDispatch.fiveWideWeightGradient(images: batch, channels: inChannels, height: height, width: width, kernelH: kernelH,
                                                  padTop: padTop, padLeft: padLeft, outHeight: outHeight, outWidth: outWidth,
                                                  outBlocks: outChannels / 8, x: x, dy: dy, dw: dw, biasGradient: biasGradient,
                                                  blockPairs: range, padded: padded)
        }
        return true
    }
}

extension Tensor {
    /// `batchNormELU(..., layout: .blocked).maxPool2x2Blocked()` as one op, for a block whose normalised output feeds
    /// nothing but the pooling (SSD7's first three): the same values and gradients (tested), in fewer passes over
    /// memory and one activation-sized buffer fewer (`normalizedMaxPool2x2Blocked`).
    public func batchNormELUMaxPool2x2Blocked(gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor, training: Bool,
                                              momentum: Float = 0.99, epsilon: Float = 1e-3,
                                              runningVarianceEstimator: RunningVarianceEstimator = .unbiased,
                                              crossReplicaSum: CrossReplicaSum? = nil, alpha: Float = 1,
                                              moments: ChannelMoments? = nil) -> Tensor {
        precondition(alpha > 0, "ELU alpha \(alpha) must be positive for its output to determine its derivative")
        return normalizedMaxPool2x2Blocked(gamma: gamma, beta: beta, runningMean: runningMean, runningVar: runningVar, training: training,
                                           momentum: momentum, epsilon: epsilon, runningVarianceEstimator: runningVarianceEstimator,
                                           crossReplicaSum: crossReplicaSum, activation: .elu(alpha: alpha), moments: moments)
    }

    /// `batchNormLeakyReLU(..., layout: .blocked).maxPool2x2Blocked()` as one op (darknet's blocks before a pooling
    /// layer: yolov3-tiny's first five), as `batchNormELUMaxPool2x2Blocked` fuses the ELU. `slope: 0` is batch norm +
    /// ReLU + pooling (VGG's blocks before a pooling): a window whose maximum is not positive passes no gradient, as
    /// ReLU's derivative is 0 at every input of it.
    public func batchNormLeakyReLUMaxPool2x2Blocked(gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor, training: Bool,
                                                    momentum: Float = 0.99, epsilon: Float = 1e-3,
                                                    runningVarianceEstimator: RunningVarianceEstimator = .unbiased,
                                                    crossReplicaSum: CrossReplicaSum? = nil, slope: Float,
                                                    moments: ChannelMoments? = nil) -> Tensor {
        precondition(slope >= 0 && slope < 1, "leaky ReLU slope \(slope) must lie in [0, 1) for its output to determine its derivative")
        return normalizedMaxPool2x2Blocked(gamma: gamma, beta: beta, runningMean: runningMean, runningVar: runningVar, training: training,
                                           momentum: momentum, epsilon: epsilon, runningVarianceEstimator: runningVarianceEstimator,
                                           crossReplicaSum: crossReplicaSum, activation: .leakyReLU(slope: slope), moments: moments)
    }

    /// Batch norm, a monotonic activation and 2x2/2 max-pooling (valid) as one op in the blocked layout. It pools
    /// before the activation (`PooledActivationKernels`): f(max z) is max f(z), so the activation (an ELU's exp) runs on
    /// a quarter of the pixels, and neither the full-size activated output nor its gradient ever exists. What backward
    /// keeps beside the input (which batch norm's backward needs anyway) is the pooled output and a 2-bit index a
    /// pooled value saying which input of its window was the maximum (1/16 of the pooled output's size; keeping x at
    /// the maximum as a Float cost 109 MB in SSD7 at batch 16, the indices 7 MB). Backward reads x at the maxima through
    /// the indices for the statistics' sums, then writes the input gradient, over x's own values when nothing else reads
    /// them. Per element of x (SSD7's conv1: 295 MB at batch 16) that is ~6 passes over memory instead of ~9.
    func normalizedMaxPool2x2Blocked(gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor, training: Bool,
                                     momentum: Float, epsilon: Float, runningVarianceEstimator: RunningVarianceEstimator,
                                     crossReplicaSum: CrossReplicaSum?, activation: PooledActivation, moments: ChannelMoments?) -> Tensor {
        let x = self, bw = blockWidth
        let (n, blocks, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let (c, oh, ow, row) = (blocks * bw, h / 2, w / 2, w * bw)
        for (t, what) in [(gamma, "gamma"), (beta, "beta"), (runningMean, "running mean"), (runningVar, "running variance")] {
            precondition(t.shape == [c], "batch norm \(what) \(t.shape) for \(c) channels")
        }
        precondition(!runningMean.requiresGrad && !runningVar.requiresGrad, "running statistics must be constants")
        let planes = BatchNormKernel.Planes(samples: n, channels: c, inner: h * w, width: bw)
        let stats = BatchNormStatistics(x, planes, gamma: gamma, runningMean: runningMean, runningVar: runningVar, training: training,
                                        momentum: momentum, epsilon: epsilon, estimator: runningVarianceEstimator,
                                        crossReplicaSum: crossReplicaSum, moments: moments)
        let outShape = [n, blocks, oh, ow, bw]
        let pooledCount = Tensor.elementCount(outShape)
        // The window indices, pooledCount / 4 bytes (a whole number: B is 8 or 16), in a Float block for the ledger's
        // counts; nothing needs them at inference.
        let keepWindows = GradMode.isEnabled && [x, gamma, beta].contains { $0.requiresGrad }
        let windows = FloatStorage(uninitializedCount: keepWindows ? (pooledCount / 4 + 3) / 4 : 0)
        let work = count * 4
        // Per-channel constants of block b.
        func constants(_ p: UnsafeMutablePointer<Float>, _ block: Int) -> UnsafePointer<Float> { UnsafePointer(p + bw * block) }

        let out = Tensor.result(shape: outShape, storage: FloatStorage(uninitializedCount: pooledCount), inputs: [x, gamma, beta]) { out in
            let (xp, indices, pooled, dPooled) = (UnsafePointer(x.data), UnsafeRawPointer(windows.pointer), UnsafePointer(out.data),
                                                  UnsafePointer(out.grad))
            // Pass 1: sums = [sum dz | sum dz (x - mean)] per channel over the windows' maxima, channel blocks over the threads.
            var sums = [Double](repeating: 0, count: 2 * c)
            sums.withUnsafeMutableBufferPointer { s in
                let sp = s.baseAddress!
                Parallel.forEachChunk(of: blocks, work: work / 2) { range in
                    for b in range {
                        let mean = constants(stats.mean.pointer, b)
                        for sample in 0..<n {
                            let plane = sample * blocks + b
                            for i in 0..<oh {
                                let top = (plane * h + 2 * i) * row, o = (plane * oh + i) * ow * bw
                                KernelDispatch.pooledGradientSums(width: bw, ow, top: xp + top, bottom: xp + top + row, y: pooled + o,
                                                                  dy: dPooled + o, windows: indices + o / 4, mean: mean, activation: activation,
                                                                  sums: sp + bw * b, products: sp + c + bw * b)
                            }
                        }
                    }
                }
            }
            guard let (slope, offset) = stats.backward(&sums, x: x, gamma: gamma, beta: beta, crossReplicaSum: crossReplicaSum) else { return }
            // Pass 2: dx = scale dz + slope (x - mean) + offset, planes over the threads; pixels no window reaches
            // (an odd last row or column) have dz = 0.
            // Each window's four inputs are read before their gradients are stored, so dx may be x's own block.
            let (dx, overwrite) = x.gradientForWriting(overValues: true)
            let noGradient = UnsafeMutablePointer<Float>.allocate(capacity: row)
            noGradient.initialize(repeating: 0, count: row)
            defer { noGradient.deallocate() }
            Parallel.forEachChunk(of: n * blocks, work: work) { range in
                for plane in range {
                    let b = plane % blocks
                    let (mean, scale) = (constants(stats.mean.pointer, b), constants(stats.scale.pointer, b))
                    let (sl, of) = (constants(slope.pointer, b), constants(offset.pointer, b))
                    func unreached(_ at: Int, pixels: Int) {
                        KernelDispatch.blockedInputGradient(width: bw, pixels, dy: noGradient, x: xp + at, into: dx + at, mean: mean, scale: scale,
                                                            slope: sl, offset: of, overwrite: overwrite)
                    }
                    for i in 0..<oh {
                        let top = (plane * h + 2 * i) * row, o = (plane * oh + i) * ow * bw
                        KernelDispatch.pooledInputGradientRow(width: bw, ow, top: xp + top, bottom: xp + top + row, y: pooled + o, dy: dPooled + o,
                                                              windows: indices + o / 4, topGradient: dx + top, bottomGradient: dx + top + row,
                                                              mean: mean, scale: scale, slope: sl, offset: of, activation: activation,
                                                              overwrite: overwrite)
                        if w % 2 == 1 { unreached(top + row - bw, pixels: 1); unreached(top + 2 * row - bw, pixels: 1) }
                    }
                    if h % 2 == 1 { unreached((plane * h + h - 1) * row, pixels: w) }
                }
            }
            withExtendedLifetime((slope, offset, windows)) {}
        }
        // Forward: one pooled row at a time from two rows of x.
        func pool(into pooled: UnsafeMutablePointer<Float>, windows indices: UnsafeMutableRawPointer?) {
            let (xp, betaPointer) = (UnsafePointer(x.data), beta.data)
            Parallel.forEachChunk(of: n * blocks, work: work) { range in
                for plane in range {
                    let b = plane % blocks
                    let (mean, scale, shift) = (constants(stats.mean.pointer, b), constants(stats.scale.pointer, b), constants(betaPointer, b))
                    for i in 0..<oh {
                        let top = xp + (plane * h + 2 * i) * row, o = (plane * oh + i) * ow * bw
                        KernelDispatch.pooledForwardRow(width: bw, ow, top: top, bottom: top + row, mean: mean, scale: scale, shift: shift,
                                                        activation: activation, into: pooled + o, windows: indices.map { $0 + o / 4 })
                    }
                }
            }
        }
        pool(into: out.data, windows: keepWindows ? UnsafeMutableRawPointer(windows.pointer) : nil)
        // The pooled map is the next convolution's input, which that convolution keeps for its weight gradient; it is
        // computed again from x (kept for this op's backward) and the statistics by the same kernel, the same bits, in
        // one pass over x that costs a fraction of the convolution's. A convolution reading it gives it back after
        // forward (`releaseRecomputableValues`). Not while x itself may go (it is read here before its gradient).
        if keepWindows && out.requiresGrad && !x.valuesReleased {
            let count = pooledCount
            out.recomputable {
                x.restoreValues()   // x itself given back (a cheap first convolution's output): computed again first
                let values = FloatStorage(uninitializedCount: count)
                pool(into: values.pointer, windows: nil)
                return values
            }
        }
        return out
    }
}
