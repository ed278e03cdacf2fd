import CDNNL

/// An activation that stays in the layout oneDNN chose for it (8 channels innermost on AVX2) from one inference op to
/// the next: a convolution's output feeds the pooling and the next convolution with no reorder to NCHW and back.
/// At batch 1 on 2 threads those reorders took ~2.5 ms of SSD7's ~27 ms frame (`DNNL_VERBOSE=1`). Inference only
/// (no gradient); `tensor()` returns to NCHW where Starling's own ops take over.
public final class DNNLActivation {
    /// NCHW dimensions.
    public let shape: [Int]
    let md: dnnl_memory_desc_t
    let storage: FloatStorage

    /// Whether this path can run (oneDNN loaded and not switched off with `STARLING_CONV=sgemm`).
    public static var isAvailable: Bool { DNNLConvPlans.enabled }

    /// The instruction set oneDNN's JIT kernels use on this CPU (what cpuid reports, capped by `ONEDNN_MAX_CPU_ISA`),
    /// printed beside benchmark figures: AVX2 kernels compute 8 channels at a time, AVX-512 ones 16.
    public static var instructionSet: String {
        switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_sse41: "sse41"
        case dnnl_cpu_isa_avx: "avx"
        case dnnl_cpu_isa_avx2: "avx2"
        case dnnl_cpu_isa_avx2_vnni: "avx2_vnni"
        case dnnl_cpu_isa_avx512_core: "avx512_core"
        case dnnl_cpu_isa_avx512_core_vnni: "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core_bf16: "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_amx: "avx512_core_amx"
        case let other: "isa 0x\(String(other.rawValue, radix: 16))"
        }
    }

    init(shape: [Int], md: dnnl_memory_desc_t) {
        self.shape = shape
        self.md = md
        let bytes = withUnsafePointer(to: md) { dnnl_memory_desc_get_size($0) }
        storage = FloatStorage(uninitializedCount: (bytes + 3) / 4)
    }

    /// Another view of `storage` (the same bytes under another descriptor).
    private init(shape: [Int], md: dnnl_memory_desc_t, storage: FloatStorage) {
        (self.shape, self.md, self.storage) = (shape, md, storage)
    }

    /// An NCHW tensor, shared as it is (no copy).
    public init(_ tensor: Tensor) {
        precondition(tensor.rank == 4, "an activation is NCHW, got \(tensor.shape)")
        shape = tensor.shape
        md = DNNL.descriptor(tensor.shape, dnnl_nchw)
        storage = tensor.storage
    }

    var memory: DNNL.Memory { DNNL.Memory(md, UnsafeMutableRawPointer(storage.pointer)) }

    /// This activation in `target`'s layout: itself if it already is, else a reordered copy.
    func laidOut(as target: dnnl_memory_desc_t) -> DNNLActivation {
        if DNNL.equal(md, target) { return self }
        let copy = DNNLActivation(shape: shape, md: target)
        guard let reorder = DNNL.reorder(from: md, to: target, accumulate: false) else {
            preconditionFailure("oneDNN: no reorder between two layouts of \(shape)")
        }
        DNNL.Arena.with { reorder.execute([(DNNL_ARG_FROM, memory), (DNNL_ARG_TO, copy.memory)], arena: $0) }
        return copy
    }

    /// The activation as an NCHW tensor.
    public func tensor() -> Tensor {
        let plain = laidOut(as: DNNL.descriptor(shape, dnnl_nchw))
        return Tensor(shape: shape, storage: plain.storage === storage ? copyOfStorage() : plain.storage)
    }

    private func copyOfStorage() -> FloatStorage {
        let copy = FloatStorage(uninitializedCount: Tensor.elementCount(shape))
        copy.pointer.update(from: storage.pointer, count: copy.count)
        return copy
    }

    /// conv2d(self, weight) + bias, then `activation` (as `Tensor`'s op of that name), in oneDNN's layout; the
    /// activation runs as the convolution stores its output (a post-op). Nil if oneDNN has no plan for this geometry.
    public func conv2d(_ weight: Tensor, bias: Tensor, stride: (Int, Int) = (1, 1), padding: Padding = .valid,
                       activation: FusedActivation = .identity) -> DNNLActivation? {
        let g = ConvGeometry(input: shape, weight: weight.shape, stride: stride, padding: padding, dilation: (1, 1), groups: 1)
        precondition(bias.shape == [g.outChannels], "bias \(bias.shape) for \(g.outChannels) output channels")
        if let y = narrowOutputConvolution(g, weight, bias: bias, activation: activation) { return y }
        guard DNNLConvPlans.enabled,
              let plan = DNNLConvPlans.plan(g, images: g.batch, variant: .forward(bias: true, inference: activation)) else { return nil }
        let source = laidOut(as: plan.forward.md(dnnl_query_src_md))
        let result = DNNLActivation(shape: [g.batch, g.outChannels, g.outHeight, g.outWidth], md: plan.forward.md(dnnl_query_dst_md))
        DNNL.Arena.with { arena in
            let w = plan.input(weight.data, userMD: plan.weightsUser, md: plan.forward.md(dnnl_query_weights_md),
                               role: .forwardWeights, arena: arena)
            let b = DNNL.Memory(plan.biasUser, UnsafeMutableRawPointer(bias.data))
            plan.forward.execute([(DNNL_ARG_SRC, source.memory), (DNNL_ARG_WEIGHTS, w), (DNNL_ARG_BIAS, b),
                                  (DNNL_ARG_DST, result.memory)], arena: arena)
        }
        return result
    }

    /// A convolution from this activation to a planar output of at most four channels (the autoencoders' last layer, 16
    /// or 32 channels to the image) on Starling's `NarrowOutputConvolution`, as training runs it (`conv2dBlocked`):
    /// oneDNN 2.6 computes such an output in blocks of its kernel's width, 16 channels for one on AVX-512 (BENCHMARKS.md,
    /// "Inference paths"). Nil where the narrow kernels do not apply (channels in no blocks `channelBlocks` finds, more
    /// outputs, a stride, `STARLING_CONV=dnnl`).
    private func narrowOutputConvolution(_ g: ConvGeometry, _ weight: Tensor, bias: Tensor, activation: FusedActivation) -> DNNLActivation? {
        func layouts(_ block: Int) -> DNNLConvPlan.Layouts {
            DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: false, sourceWidth: block, destinationWidth: 8)
        }
        guard g.outChannels <= NarrowOutput.maxChannels, let block = [16, 8].first(where: { g.inChannels % $0 == 0 }),
              g.narrowOutputShape(layouts(block)) != nil, let (source, width) = channelBlocks() else { return nil }
        let y = Tensor(shape: [g.batch, g.outChannels, g.outHeight, g.outWidth],
                       storage: FloatStorage(uninitializedCount: g.batch * g.outChannels * g.outPlane))
        let ran = g.narrowOutputForward(input: UnsafePointer(source.storage.pointer), weight: weight.data, bias: bias.data, output: y.data,
                                        layouts: layouts(width))
        precondition(ran, "the narrow-output convolution refused \(shape) in \(width)-channel blocks")
        return DNNLActivation(GradMode.disabled { activation.applied(to: y) })
    }

    /// The width of this activation's channel blocks where it is in oneDNN's nChw8c or nChw16c (channels padded to a
    /// whole block), the layouts Starling's blocked loops read; nil in any other layout (NCHW, NHWC).
    var blockWidth: Int? {
        [(8, dnnl_aBcd8b), (16, dnnl_aBcd16b)].first { DNNL.equal(md, DNNL.descriptor(shape, $0.1)) }?.0
    }

    /// Whether this activation is NHWC (oneDNN's `acdb`), the layout its brgconv kernels choose for inference on AVX-512.
    var isChannelsLast: Bool { DNNL.equal(md, DNNL.descriptor(shape, dnnl_acdb)) }

    /// The values in whole blocks of 8 or 16 channels for Starling's blocked loops, and the block width: itself in nChw8c
    /// or nChw16c (a channel count that fills its blocks), the same memory where it is NHWC of 8 or 16 channels (one block
    /// a pixel: the same bytes), a reordered copy in 16-channel blocks (8 where the count is not a multiple of 16) where
    /// it is NHWC of more; nil otherwise.
    func channelBlocks() -> (DNNLActivation, width: Int)? {
        let channels = shape[1]
        if let width = blockWidth { return channels % width == 0 ? (self, width) : nil }
        guard isChannelsLast, let width = [16, 8].first(where: { channels % $0 == 0 }) else { return nil }
        let blocked = DNNL.descriptor(shape, width == 16 ? dnnl_aBcd16b : dnnl_aBcd8b)
        return channels == width ? (DNNLActivation(shape: shape, md: blocked, storage: storage), width) : (laidOut(as: blocked), width)
    }

    /// Every pixel repeated scale.0 times vertically and scale.1 times horizontally (`upsampleNearest`) in this
    /// activation's layout where it is blocked (nChw8c, nChw16c) or NHWC, so that the convolution after it reads it with
    /// no reorder: the training pass's loop over pixels of one block, or of all the channels; nil in other layouts (the
    /// caller then upsamples in NCHW).
    public func upsampleNearest(scale: (Int, Int)) -> DNNLActivation? {
        precondition(scale.0 > 0 && scale.1 > 0, "upsampling scale \(scale) must be positive")
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let (planes, pixel): (Int, Int)
        if let block = blockWidth { (planes, pixel) = (n * ((c + block - 1) / block), block) }
        else if isChannelsLast { (planes, pixel) = (n, c) }
        else { return nil }
        let outShape = [n, c, h * scale.0, w * scale.1]
        // The output's descriptor has the input's layout: the same tag on the new spatial size.
        let tag = blockWidth.map { $0 == 16 ? dnnl_aBcd16b : dnnl_aBcd8b } ?? dnnl_acdb
        let result = DNNLActivation(shape: outShape, md: DNNL.descriptor(outShape, tag))
        Tensor.upsampleNearestPixels(UnsafePointer(storage.pointer), into: result.storage.pointer, planes: planes, height: h, width: w,
                                     scale: scale, pixel: pixel)
        return result
    }

    /// `parts` joined along the channels (`Tensor.concat(_, axis: 1)`) in their layout where they share one: all NHWC
    /// (each pixel's channels copied part after part) or all in blocks of one width that their channel counts fill
    /// (each image's blocks copied part after part); nil otherwise (the caller then joins them in NCHW). YOLO's route
    /// after its upsampling joins two NHWC maps on AVX-512: in NCHW that took three reorders of the 26 x 26 maps.
    public static func concatChannels(_ parts: [DNNLActivation]) -> DNNLActivation? {
        guard let first = parts.first else { return nil }
        let (n, h, w) = (first.shape[0], first.shape[2], first.shape[3])
        guard parts.allSatisfy({ $0.shape[0] == n && $0.shape[2] == h && $0.shape[3] == w }) else { return nil }
        let counts = parts.map { $0.shape[1] }, channels = counts.reduce(0, +)
        let outShape = [n, channels, h, w]
        if parts.allSatisfy(\.isChannelsLast) {
            let result = DNNLActivation(shape: outShape, md: DNNL.descriptor(outShape, dnnl_acdb))
            let y = result.storage.pointer, sources = parts.map { UnsafePointer($0.storage.pointer) }
            Parallel.forEachChunk(of: n * h, work: n * h * w * channels) { rows in
                for row in rows {
                    for pixel in (row * w)..<((row + 1) * w) {
                        var target = y + pixel * channels
                        for (x, c) in zip(sources, counts) {
                            target.update(from: x + pixel * c, count: c)
                            target += c
                        }
                    }
                }
            }
            return result
        }
        guard let block = first.blockWidth, parts.allSatisfy({ $0.blockWidth == block && $0.shape[1] % block == 0 }) else { return nil }
        let result = DNNLActivation(shape: outShape, md: DNNL.descriptor(outShape, block == 16 ? dnnl_aBcd16b : dnnl_aBcd8b))
        let y = result.storage.pointer
        for image in 0..<n {
            var target = y + image * channels * h * w
            for part in parts {
                let size = part.shape[1] * h * w
                target.update(from: part.storage.pointer + image * size, count: size)
                target += size
            }
        }
        return result
    }

    /// Max over each 2x2 window at stride 2 (`maxPool2d(kernel: (2, 2))`, valid padding: an odd last row or column is
    /// dropped), in this activation's layout. In the blocked layouts of 8 channels (AVX2's nChw8c) and 16 (AVX-512's
    /// nChw16c) it is Starling's own loop: each pixel's channels are one vector, so a window is 4 vector loads and 3
    /// maxima, rows shared over the threads (oneDNN 2.6's pooling took 4 ms on SSD7's first 32 x 300 x 480 map, this
    /// 0.4-0.6 ms). Other layouts go to oneDNN's pooling.
    public func maxPool2x2() -> DNNLActivation {
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let outShape = [n, c, h / 2, w / 2]
        if let width = blockWidth {
            let result = DNNLActivation(shape: outShape, md: DNNL.descriptor(outShape, width == 16 ? dnnl_aBcd16b : dnnl_aBcd8b))
            let (oh, ow, blocks) = (h / 2, w / 2, (c + width - 1) / width)
            let x = UnsafePointer(storage.pointer), y = result.storage.pointer
            Parallel.forEachChunk(of: n * blocks * oh, work: n * blocks * width * h * w) { rows in
                for r in rows {
                    let plane = r / oh, i = r % oh
                    let top = x + ((plane * h + 2 * i) * w) * width
                    KernelDispatch.maxPoolRow(width: width, ow, top: top, bottom: top + w * width, into: y + ((plane * oh + i) * ow) * width)
                }
            }
            return result
        }
        let pooling = DNNLPoolingPlans.plan(source: md, shape: shape)
        let result = DNNLActivation(shape: outShape, md: pooling.md(dnnl_query_dst_md))
        DNNL.Arena.with { pooling.execute([(DNNL_ARG_SRC, memory), (DNNL_ARG_DST, result.memory)], arena: $0) }
        return result
    }
}

/// An activation a convolution applies to its output as it stores it (a oneDNN post-op), with the semantics of
/// `Tensor`'s op of that name.
public enum FusedActivation: Hashable, Sendable {
    case identity
    case elu(alpha: Float)
    /// x for x > 0, slope x otherwise; slope 0 is ReLU.
    case leakyRelu(slope: Float)
    case logistic
}

extension FusedActivation {
    /// `Tensor`'s op of this name applied to `x`: for a convolution that ran without oneDNN's post-op.
    public func applied(to x: Tensor) -> Tensor {
        switch self {
        case .identity: x
        case .elu(let alpha): x.elu(alpha: alpha)
        case .leakyRelu(let slope): slope == 0 ? x.relu() : x.leakyRelu(slope: slope)
        case .logistic: x.sigmoid()
        }
    }
}

/// 2x2/2 max-pooling primitives (inference), made once per input shape and layout.
enum DNNLPoolingPlans {
    nonisolated(unsafe) private static var plans: [(shape: [Int], source: dnnl_memory_desc_t, primitive: DNNL.Primitive)] = []
    private static let lock = PThreadMutex()

    static func plan(source: dnnl_memory_desc_t, shape: [Int]) -> DNNL.Primitive {
        lock.lock()
        defer { lock.unlock() }
        if let hit = plans.first(where: { $0.shape == shape && DNNL.equal($0.source, source) }) { return hit.primitive }
        var src = source
        var dst = DNNL.descriptor([shape[0], shape[1], shape[2] / 2, shape[3] / 2], dnnl_format_tag_any)
        var desc = dnnl_pooling_v2_desc_t()
        let two: [Int64] = [2, 2], zero: [Int64] = [0, 0]
        DNNL.check(dnnl_pooling_v2_forward_desc_init(&desc, dnnl_forward_inference, dnnl_pooling_max, &src, &dst,
                                                      two, two, zero, zero, zero), "pooling descriptor \(shape)")
        let attr = DNNL.attributes(accumulate: false)
        defer { dnnl_primitive_attr_destroy(attr) }
        var pd: dnnl_primitive_desc_t?
        DNNL.check(dnnl_primitive_desc_create(&pd, &desc, attr, DNNL.engine, nil), "pooling \(shape)")
        guard let primitive = DNNL.Primitive(pd) else { preconditionFailure("oneDNN: no pooling primitive for \(shape)") }
        plans.append((shape, source, primitive))
        return primitive
    }
}
