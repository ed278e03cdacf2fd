import CDNNL
#if canImport(Glibc)
import Glibc
#endif

/// Convolution on oneDNN (Intel's deep-neural-network library, libdnnl 2.x: what PyTorch's CPU convolutions run on).
///
/// Its JIT kernels work in blocked layouts (8 channels innermost for AVX2), keep the outputs of a whole receptive
/// field in registers and never build a patch matrix: on SSD7's 3x3 layers they run 1.2-1.6x the GFLOP/s of the sgemm
/// lowerings in Convolution.swift (conv1's weight gradient, from 3 channels, is slower; BENCHMARKS.md). Starling's tensors stay NCHW; each call reorders its inputs into
/// the layouts oneDNN picked and its result back, adding into the destination (a reorder with a `sum` post-op),
/// which is the accumulate-into-gradient contract of `ConvGeometry`. The reorders are memory-bound passes, cheap
/// next to the convolution they feed. Large batches go through in chunks of images so that the blocked copies stay
/// under `ConvGeometry.dnnlChunkBudget` floats, and a Winograd pass's whole call (copies and oneDNN's scratchpad) under
/// `ConvGeometry.winogradCallBudget` bytes.
///
/// A geometry oneDNN refuses (for example a negative right padding that no legal amount fixes) has no plan, and
/// `ConvGeometry` falls back to sgemm; so does everything when `STARLING_CONV=sgemm` is set.
enum DNNL {
    /// The CPU engine, or nil if oneDNN cannot start (then every convolution takes the sgemm path).
    nonisolated(unsafe) static let engine: dnnl_engine_t? = {
        var engine: dnnl_engine_t?
        return dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success ? engine : nil
    }()

    static func check(_ status: dnnl_status_t, _ what: @autoclosure () -> String) {
        precondition(status == dnnl_success, "oneDNN: \(what()) failed with status \(status.rawValue)")
    }

    /// Sets the thread count of oneDNN's OpenMP pool (done together with OpenBLAS's, see `BLAS.setThreadCount`).
    static func setThreadCount(_ n: Int) { _ = starling_omp_set_num_threads(Int32(n)) }

    /// The memory descriptor of a dense f32 tensor in a plain layout.
    static func descriptor(_ dims: [Int], _ tag: dnnl_format_tag_t) -> dnnl_memory_desc_t {
        var md = dnnl_memory_desc_t()
        check(dnnl_memory_desc_init_by_tag(&md, Int32(dims.count), dims.map { Int64($0) }, dnnl_f32, tag), "memory descriptor \(dims)")
        return md
    }

    /// A memory descriptor of a primitive descriptor (its source, weights, scratchpad...).
    static func query(_ pd: dnnl_primitive_desc_t, _ what: dnnl_query_t) -> dnnl_memory_desc_t {
        guard let md = dnnl_primitive_desc_query_md(pd, what, 0) else {
            preconditionFailure("oneDNN: a primitive descriptor without the memory descriptor \(what.rawValue)")
        }
        return md.pointee
    }

    static func equal(_ a: dnnl_memory_desc_t, _ b: dnnl_memory_desc_t) -> Bool {
        withUnsafePointer(to: a) { pa in withUnsafePointer(to: b) { pb in dnnl_memory_desc_equal(pa, pb) != 0 } }
    }

    /// A memory object over a tensor's buffer, or over a block of an arena.
    final class Memory {
        let handle: dnnl_memory_t
        init(_ md: dnnl_memory_desc_t, _ pointer: UnsafeMutableRawPointer) {
            var memory: dnnl_memory_t?
            withUnsafePointer(to: md) { check(dnnl_memory_create(&memory, $0, DNNL.engine, pointer), "memory") }
            guard let memory else { preconditionFailure("oneDNN: memory creation succeeded without a memory object") }
            handle = memory
        }
        convenience init(_ md: dnnl_memory_desc_t, arena: Arena) {
            self.init(md, arena.allocate(withUnsafePointer(to: md) { dnnl_memory_desc_get_size($0) }))
        }
        deinit { dnnl_memory_destroy(handle) }
    }

    /// The blocked copies and scratchpads of one call, bump-allocated from one mapping that is kept for the next call
    /// and grown to the largest call seen. Not from the heap: there these short-lived blocks, placed between the
    /// activations, fragmented it (peak RSS of SSD7 training 2.5 -> 3.1 GB), and blocks from oneDNN's own allocator
    /// were unmapped and faulted in again every call (page zeroing took 12 % of a step). Nor from Starling's own blocks
    /// (`LargeBlocks`), given back at the end of each call: on SSD7 (batch 16, 1 process x 2 threads, one run each) the
    /// large blocks' mappings grew 847 -> 988 MB and the peak RSS 951 -> 1,079 MB for a largest call of 13 MB.
    final class Arena: @unchecked Sendable {
        private var base: UnsafeMutableRawPointer?
        private(set) var capacity = 0
        private var used = 0, requested = 0
        private var overflow: [(UnsafeMutableRawPointer, Int)] = []
        /// Blocks of this call lent by Starling's large blocks (`LargeBlocks.borrow`), given back at `reset`.
        private var borrowed: [(UnsafeMutableRawPointer, Int)] = []

        /// A block of an arena's call from this size on (in training) is never kept in the arena: see `allocate`.
        /// Variables for the tests only (a small convolution's scratch through the same path).
        /// 16 MB, not 32: SSD7's 64 -> 64 Winograd calls at 37 x 60 (27.8 MB at 8 images a call, on 2 ranks or
        /// 2 replicas) were kept in an arena per rank or replica beside the activations' peak (SSD7 2 ranks
        /// 847-850 -> 807-811 MB, yolov3-tiny 872-893 -> 853-861 MB, CPU level; 8 MB gave no more).
        nonisolated(unsafe) static var unkeptBytes = 16 << 20
        /// ... when the large blocks' mapped range is at least this many times the block: see `allocate`.
        nonisolated(unsafe) static var poolFactor = 4

        func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
            let size = (bytes + 4095) & ~4095
            requested += size
            Self.noteRequest(requested)
            // In training, a block this large (a Winograd pass's scratchpad: SSD300's conv4_x ask 70-118 MB a call on
            // AVX-512) is not kept in the arena, where it stayed resident through the whole step beside the
            // activations' high-water mark, and at the step's peak of live blocks, when no convolution runs
            // (SSD300: 122 MB of arena in a resident peak of 1,244 MB). It is taken from Starling's large blocks for
            // this call: a free extent if one holds it (pages already resident, holding no live value; nothing else
            // takes a block inside a call, so nothing lands around it), else at their top, given back at the end of
            // the call, so that one pool's high-water mark holds both. Mapped for each call instead (no free extent
            // holding yolov2's 105 MB at its 13 x 13 layers, beside a full graph) it was faulted in and zeroed 20
            // times a step: system time +3 s a run, and yolov2's peak unchanged. Smaller blocks stay in the arena:
            // lent from between the activations in every call they fragmented them (see above). So does a block
            // large next to the large blocks' range (under `poolFactor` times it): there its extension of their top
            // was not filled again by the graph, and the arena kept its size for the calls' smaller blocks besides
            // (U-Net at width 0.25: 42 MB of scratch a call against 149 MB of blocks, peak 259 -> 290 MB;
            // yolov3-tiny 566 -> 588 MB). And where no free extent holds it but the arena has the room (grown in
            // an earlier call, before the large blocks' range passed `poolFactor` times it), it is the arena's:
            // taken at the top it had grown the large blocks beside an arena as large (yolov3-tiny 566 -> 634 MB).
            if GradMode.isEnabled && size >= Self.unkeptBytes && LargeBlocks.shared.usage.mapped >= Self.poolFactor * size {
                let lent = LargeBlocks.shared.borrow(bytes: size)
                if lent == nil, let base, used + size <= capacity {
                    used += size
                    return base + (used - size)
                }
                requested -= size
                let block = lent ?? LargeBlocks.shared.take(bytes: size)
                borrowed.append((block, size))
                Self.noteUnkept(size, borrowed: lent != nil)
                return block
            }
            if let base, used + size <= capacity {
                used += size
                return base + (used - size)
            }
            // Inference (no graph recorded): a block beyond the arena comes from a free extent of Starling's large
            // blocks if one holds it, and the arena does not grow for it. After training those extents are the
            // activations' memory, resident and unused while inference runs; growing the arena instead added the
            // largest inference call's copies to the process's peak (U-Net at width 0.25, 2 replicas of 4 images:
            // the arenas 4.5 -> 12.0 MB, the peak +7.4 MB over training's).
            if !GradMode.isEnabled, let block = LargeBlocks.shared.borrow(bytes: size) {
                requested -= size
                borrowed.append((block, size))
                return block
            }
            let block = Self.map(size)
            overflow.append((block, size))
            return block
        }

        /// Frees this call's blocks; the mapping grows to what the call asked for in all (less what was borrowed).
        func reset() {
            for (block, size) in overflow { munmap(block, size) }
            overflow.removeAll(keepingCapacity: true)
            for (block, size) in borrowed { LargeBlocks.shared.give(block, bytes: size) }
            borrowed.removeAll(keepingCapacity: true)
            if requested > capacity {
                if let base { munmap(base, capacity) }
                base = Self.map(requested)
                Self.lock.lock()
                Self.mappedBytes += requested - capacity
                Self.lock.unlock()
                capacity = requested
            }
            used = 0
            requested = 0
        }

        private static func map(_ size: Int) -> UnsafeMutableRawPointer {
            let block = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            guard let block, block != UnsafeMutableRawPointer(bitPattern: -1) else {
                preconditionFailure("out of memory: oneDNN scratch of \(size) bytes")
            }
            return block
        }

        nonisolated(unsafe) private static var idle: [Arena] = []
        private static let lock = PThreadMutex()
        /// The arenas' mappings in all, and the most one call asked for since `resetPeak` (the memory ledger's).
        nonisolated(unsafe) private static var mappedBytes = 0, peakRequest = 0

        /// Training's blocks not kept in an arena since `resetPeak`: lent by free extents of the large blocks, and taken
        /// beyond them (at their top), with their bytes.
        nonisolated(unsafe) private static var unkept = (lent: 0, lentBytes: 0, taken: 0, takenBytes: 0)

        private static func noteRequest(_ bytes: Int) {
            lock.lock()
            peakRequest = Swift.max(peakRequest, bytes)
            lock.unlock()
        }

        private static func noteUnkept(_ bytes: Int, borrowed: Bool) {
            lock.lock()
            if borrowed { unkept.lent += 1; unkept.lentBytes += bytes } else { unkept.taken += 1; unkept.takenBytes += bytes }
            lock.unlock()
        }

        static var usage: (mapped: Int, peakRequest: Int) {
            lock.lock()
            defer { lock.unlock() }
            return (mappedBytes, peakRequest)
        }

        /// Training's blocks not kept in an arena since `resetPeak` (see `allocate`).
        static var unkeptUsage: (lent: Int, lentBytes: Int, taken: Int, takenBytes: Int) {
            lock.lock()
            defer { lock.unlock() }
            return unkept
        }

        static func resetPeak() {
            lock.lock()
            peakRequest = 0
            unkept = (0, 0, 0, 0)
            lock.unlock()
        }

        /// Runs `body` with an arena of its own (one per concurrent caller; a training loop keeps reusing one).
        static func with<R>(_ body: (Arena) -> R) -> R {
            lock.lock()
            let arena = idle.popLast() ?? Arena()
            lock.unlock()
            defer {
                arena.reset()
                lock.lock()
                idle.append(arena)
                lock.unlock()
            }
            return body(arena)
        }
    }

    /// A primitive with its descriptor; the scratchpad is the caller's (user mode), so that one primitive can run
    /// on several threads at once.
    final class Primitive: @unchecked Sendable {
        let descriptor: dnnl_primitive_desc_t
        let primitive: dnnl_primitive_t
        let scratchpad: dnnl_memory_desc_t?
        /// Bytes of that scratchpad (0 without one).
        let scratchpadBytes: Int

        init?(_ descriptor: dnnl_primitive_desc_t?) {
            guard let descriptor else { return nil }
            var primitive: dnnl_primitive_t?
            guard dnnl_primitive_create(&primitive, descriptor) == dnnl_success, let primitive else {
                dnnl_primitive_desc_destroy(descriptor)
                return nil
            }
            self.descriptor = descriptor
            self.primitive = primitive
            let md = DNNL.query(descriptor, dnnl_query_scratchpad_md)
            scratchpadBytes = withUnsafePointer(to: md) { dnnl_memory_desc_get_size($0) }
            self.scratchpad = scratchpadBytes > 0 ? md : nil
        }
        deinit { dnnl_primitive_destroy(primitive); dnnl_primitive_desc_destroy(descriptor) }

        func md(_ query: dnnl_query_t) -> dnnl_memory_desc_t { DNNL.query(descriptor, query) }

        /// Runs the primitive on `arguments` to completion.
        func execute(_ arguments: [(Int32, Memory)], arena: Arena) {
            let scratch = scratchpad.map { Memory($0, arena: arena) }
            var args = arguments.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.handle) }
            if let scratch { args.append(dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: scratch.handle)) }
            var stream: dnnl_stream_t?
            check(dnnl_stream_create(&stream, DNNL.engine, dnnl_stream_default_flags.rawValue), "stream")
            defer { dnnl_stream_destroy(stream) }
            check(dnnl_primitive_execute(primitive, stream, Int32(args.count), args), "execute")
            check(dnnl_stream_wait(stream), "wait")
            withExtendedLifetime(arguments) { withExtendedLifetime(scratch) {} }
        }
    }

    /// Attributes: scratchpad in user mode; if `accumulate`, a sum post-op (destination += result); with an
    /// `activation`, that activation applied to the result before it is stored.
    static func attributes(accumulate: Bool, activation: FusedActivation? = nil) -> dnnl_primitive_attr_t? {
        var attr: dnnl_primitive_attr_t?
        check(dnnl_primitive_attr_create(&attr), "attributes")
        check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode")
        let eltwise: (kind: dnnl_alg_kind_t, alpha: Float)? = switch activation {
        case .none, .identity?: nil
        case .elu(let alpha)?: (dnnl_eltwise_elu, alpha)
        case .leakyRelu(let slope)?: (dnnl_eltwise_relu, slope)   // oneDNN's relu takes the negative slope as alpha
        case .logistic?: (dnnl_eltwise_logistic, 0)
        }
        if accumulate || eltwise != nil {
            var ops: dnnl_post_ops_t?
            check(dnnl_post_ops_create(&ops), "post-ops")
            if accumulate { check(dnnl_post_ops_append_sum(ops, 1), "sum post-op") }
            if let eltwise { check(dnnl_post_ops_append_eltwise(ops, 1, eltwise.kind, eltwise.alpha, 0), "activation post-op") }
            check(dnnl_primitive_attr_set_post_ops(attr, ops), "set post-ops")
            dnnl_post_ops_destroy(ops)
        }
        return attr
    }

    /// A reorder from `source` to `destination` layouts, adding into the destination if `accumulate`.
    static func reorder(from source: dnnl_memory_desc_t, to destination: dnnl_memory_desc_t, accumulate: Bool) -> Primitive? {
        let attr = attributes(accumulate: accumulate)
        defer { dnnl_primitive_attr_destroy(attr) }
        var pd: dnnl_primitive_desc_t?
        let status = withUnsafePointer(to: source) { s in
            withUnsafePointer(to: destination) { d in dnnl_reorder_primitive_desc_create(&pd, s, engine, d, engine, attr) }
        }
        return status == dnnl_success ? Primitive(pd) : nil
    }
}

/// The convolution primitives of one geometry at a fixed number of images, and the reorders around them: a forward
/// plan (with or without bias; for training, or for inference with an activation fused in) or a backward plan (both
/// gradients).
final class DNNLConvPlan: @unchecked Sendable {
    enum Variant: Hashable {
        /// `inference`: nil for a training forward pass, else the activation applied as the output is stored.
        case forward(bias: Bool, inference: FusedActivation?)
        /// A training forward pass with `activation` applied as the output is stored (`conv2dBlockedReLU`): the training
        /// propagation kind, whose kernels compute in the blocked layouts the backward plans use (an inference plan may
        /// pick NHWC and reorder around every call).
        case activatedTrainingForward(bias: Bool, activation: FusedActivation)
        case backward
    }

    /// The layouts of the caller's source and destination (and of their gradients): NCHW, or the blocked layout of
    /// `Tensor.blocked(width:)` ([N, C/B, H, W, B], oneDNN's nChw8c or nChw16c), in which its AVX2 (B = 8) or AVX-512
    /// (B = 16) kernels compute, so that a blocked caller of the CPU's width needs no reorder at all.
    struct Layouts: Hashable {
        var sourceBlocked = false
        var destinationBlocked = false
        /// B of a blocked source and of a blocked destination: they may differ (a 16-channel model's layer of 8 or 24
        /// channels is 8 wide).
        var sourceWidth = 8
        var destinationWidth = 8
        static let planar = Layouts()

        /// Both blocked sides (if any) 8 wide: the layout Starling's own convolution kernels are written for.
        var eightWide: Bool { (!sourceBlocked || sourceWidth == 8) && (!destinationBlocked || destinationWidth == 8) }

        /// Whether oneDNN must compute in the caller's 8-channel blocks rather than choose its layout: where a blocked
        /// side of 8-channel blocks holds a channel count that is not a multiple of 16 (a 16-wide model's layers of 8 or
        /// 24 channels). Left to choose, oneDNN's AVX-512 kernels pad such a side to 16-channel blocks: a convolution of 8
        /// to 8 channels computed 16 x 16 (4x its multiply-adds) with a reorder 8 <-> 16 around each pass (U-Net at an
        /// eighth of the width: its first level's layers took half of oneDNN's time for a quarter of the FLOPs,
        /// BENCHMARKS.md). Fixed to nChw8c it runs its AVX2 kernels on them, unpadded, with no reorder; on AVX2 CPUs
        /// (8-channel blocks everywhere) it chose nChw8c anyway.
        func keepsEightChannelBlocks(inChannels: Int, outChannels: Int) -> Bool {
            (sourceBlocked && sourceWidth == 8 && inChannels % 16 != 0) || (destinationBlocked && destinationWidth == 8 && outChannels % 16 != 0)
        }

        static func tag(_ blocked: Bool, width: Int) -> dnnl_format_tag_t {
            blocked ? (width == 16 ? dnnl_aBcd16b : dnnl_aBcd8b) : dnnl_nchw
        }
    }

    /// The algorithm of each pass: what was asked for, or direct where oneDNN refused Winograd (an AVX2 CPU, a
    /// post-op its Winograd kernel lacks).
    struct Algorithms: Hashable {
        var forward = ConvolutionAlgorithm.direct, backwardData = ConvolutionAlgorithm.direct, backwardWeights = ConvolutionAlgorithm.direct
        /// The output-channel slices each call of the plan runs in, one after another (`DNNLConvPlans.algorithms`): 1,
        /// or k where a Winograd pass's call on one image holds more than the call budget only for its transformed
        /// weights, which each slice holds a k-th of.
        var slices = 1
        static let direct = Algorithms()

        /// The algorithms `g` asks for in training (see `ConvGeometry.requestedAlgorithm`). Inference plans run direct:
        /// their outputs then match the ONNX export's and PyTorch's to float32 rounding, where Winograd's rounding,
        /// compounded over SSD300's convolutions at random weights, moved a box by 0.036 pixels (past the export test's
        /// 1e-4 of the image).
        init(_ g: ConvGeometry, variant: Variant) {
            if case .forward(_, _?) = variant { return }
            (forward, backwardData, backwardWeights) = (g.requestedAlgorithm(.forward), g.requestedAlgorithm(.backwardData),
                                                        g.requestedAlgorithm(.backwardWeights))
        }
        init() {}

        subscript(pass: ConvolutionPass) -> ConvolutionAlgorithm {
            get {
                switch pass {
                case .forward: forward
                case .backwardData: backwardData
                case .backwardWeights: backwardWeights
                }
            }
            set {
                switch pass {
                case .forward: forward = newValue
                case .backwardData: backwardData = newValue
                case .backwardWeights: backwardWeights = newValue
                }
            }
        }

        var anyWinograd: Bool { ConvolutionPass.allCases.contains { self[$0] == .winograd } }
    }

    let images: Int
    /// The algorithms this plan's primitives run (a backward plan's forward primitive is only a hint).
    let algorithms: Algorithms
    /// With `algorithms.slices` k > 1 the primitives, the user descriptors and `callBytes` are those of one slice of
    /// `sliceChannels` = out/k output channels: the weights' and bias's slices are dense (OIhw, x), the destination's is
    /// the whole tensor's channel range (`dnnl_memory_desc_init_submemory`: the whole tensor's strides, in NCHW and in
    /// blocks alike, since a slice is whole blocks), which the plan's reorders copy to and from its dense buffers. Each
    /// call runs the k slices in turn, each in its own arena call. Inference plans (`DNNLInference`, which reads these
    /// descriptors itself) run direct and are never sliced.
    let sliceChannels: Int
    /// Floats of one slice of the weights, and of one image's destination.
    private let sliceWeights: Int, sliceDestination: Int
    /// Whether callers overwrite (rather than add to) the input gradient: only blocked ones do (`conv2dBlocked`).
    private let overwritesInputGradient: Bool
    let sourceUser: dnnl_memory_desc_t, weightsUser: dnnl_memory_desc_t, destinationUser: dnnl_memory_desc_t
    let biasUser: dnnl_memory_desc_t
    /// A backward plan's forward primitive is only the hint its backward ones are made from; it never runs.
    let forward: DNNL.Primitive
    let backwardData: DNNL.Primitive?, backwardWeights: DNNL.Primitive?

    /// Reorders, created on first use: (from, to, accumulate) -> primitive.
    private var reorders: [ReorderKey: DNNL.Primitive] = [:]
    private let lock = PThreadMutex()

    private struct ReorderKey: Hashable { let role: Int; let accumulate: Bool }

    /// Whether this plan computes in the caller's 8-channel blocks (`Layouts.keepsEightChannelBlocks`).
    let keepsEightChannelBlocks: Bool

    /// `keepingEightChannelBlocks: false` lets oneDNN choose every layout, as for other channel counts.
    init?(_ g: ConvGeometry, images: Int, variant: Variant, layouts: Layouts = .planar, algorithms requested: Algorithms = .direct,
          keepingEightChannelBlocks: Bool = true) {
        guard DNNL.engine != nil else { return nil }
        self.images = images
        overwritesInputGradient = layouts.sourceBlocked
        let whole = g
        let slices = requested.slices
        precondition(slices == 1 || (g.groups == 1 && g.outChannels % slices == 0), "\(slices) slices of \(g.outChannels) channels")
        let g = slices == 1 ? whole : whole.withOutputChannels(whole.outChannels / slices)
        sliceChannels = g.outChannels
        sliceWeights = g.outChannels * g.inPerGroup * g.kernelH * g.kernelW
        sliceDestination = g.outChannels * g.outPlane
        let (kh, kw) = (g.kernelH, g.kernelW)
        let effH = (kh - 1) * g.dilationH + 1, effW = (kw - 1) * g.dilationW + 1
        // oneDNN wants (in + left + right - kernel) / stride + 1 == out: any right padding in a range of `stride`
        // values works; take the smallest that is not negative.
        func rightPad(_ input: Int, _ output: Int, _ before: Int, _ kernel: Int, _ stride: Int) -> Int? {
            let exact = (output - 1) * stride + kernel - input - before
            let pad = Swift.max(exact, 0)
            return pad <= exact + stride - 1 ? pad : nil
        }
        guard let padBottom = rightPad(g.height, g.outHeight, g.padTop, effH, g.strideH),
              let padRight = rightPad(g.width, g.outWidth, g.padLeft, effW, g.strideW) else { return nil }

        let (inBlock, outBlock) = (layouts.sourceWidth, layouts.destinationWidth)
        precondition(!layouts.sourceBlocked || g.inChannels % inBlock == 0, "a blocked source needs a multiple of \(inBlock) channels")
        precondition(!layouts.destinationBlocked || g.outChannels % outBlock == 0, "a blocked destination needs a multiple of \(outBlock) channels")
        sourceUser = DNNL.descriptor([images, g.inChannels, g.height, g.width], Layouts.tag(layouts.sourceBlocked, width: inBlock))
        let destinationTag = Layouts.tag(layouts.destinationBlocked, width: outBlock)
        if slices == 1 {
            destinationUser = DNNL.descriptor([images, g.outChannels, g.outHeight, g.outWidth], destinationTag)
        } else {
            let parent = DNNL.descriptor([images, whole.outChannels, g.outHeight, g.outWidth], destinationTag)
            var slice = dnnl_memory_desc_t()
            let dims: [Int64] = [Int64(images), Int64(g.outChannels), Int64(g.outHeight), Int64(g.outWidth)]
            guard withUnsafePointer(to: parent, { dnnl_memory_desc_init_submemory(&slice, $0, dims, [0, 0, 0, 0]) }) == dnnl_success else {
                return nil
            }
            destinationUser = slice
        }
        weightsUser = g.groups == 1
            ? DNNL.descriptor([g.outChannels, g.inChannels, kh, kw], dnnl_oihw)
            : DNNL.descriptor([g.groups, g.outPerGroup, g.inPerGroup, kh, kw], dnnl_goihw)
        biasUser = DNNL.descriptor([g.outChannels], dnnl_x)

        let eightChannelBlocks = keepingEightChannelBlocks && layouts.keepsEightChannelBlocks(inChannels: g.inChannels, outChannels: g.outChannels)
        keepsEightChannelBlocks = eightChannelBlocks
        func computeTag(_ blocked: Bool, _ width: Int) -> dnnl_format_tag_t {
            eightChannelBlocks && blocked && width == 8 ? dnnl_aBcd8b : dnnl_format_tag_any
        }
        var source = DNNL.descriptor([images, g.inChannels, g.height, g.width], computeTag(layouts.sourceBlocked, inBlock))
        var destination = DNNL.descriptor([images, g.outChannels, g.outHeight, g.outWidth], computeTag(layouts.destinationBlocked, outBlock))
        var weights = g.groups == 1
            ? DNNL.descriptor([g.outChannels, g.inChannels, kh, kw], dnnl_format_tag_any)
            : DNNL.descriptor([g.groups, g.outPerGroup, g.inPerGroup, kh, kw], dnnl_format_tag_any)
        let biasMD = UnsafeMutablePointer<dnnl_memory_desc_t>.allocate(capacity: 1)
        biasMD.initialize(to: biasUser)
        defer { biasMD.deallocate() }
        let strides: [Int64] = [Int64(g.strideH), Int64(g.strideW)]
        let dilates: [Int64] = [Int64(g.dilationH - 1), Int64(g.dilationW - 1)]
        let padL: [Int64] = [Int64(g.padTop), Int64(g.padLeft)], padR: [Int64] = [Int64(padBottom), Int64(padRight)]

        var (bias, inference, activation): (Bool, FusedActivation?, FusedActivation?) = (false, nil, nil)
        switch variant {
        case .forward(let b, let fused): (bias, inference, activation) = (b, fused, fused)
        case .activatedTrainingForward(let b, let fused): (bias, activation) = (b, fused)
        case .backward: break
        }
        let attr = DNNL.attributes(accumulate: false)
        let forwardAttr = DNNL.attributes(accumulate: false, activation: activation)
        defer { dnnl_primitive_attr_destroy(attr); dnnl_primitive_attr_destroy(forwardAttr) }
        func create(_ desc: inout dnnl_convolution_desc_t, hint: dnnl_primitive_desc_t?,
                    attr: dnnl_primitive_attr_t? = attr) -> DNNL.Primitive? {
            var pd: dnnl_primitive_desc_t?
            guard dnnl_primitive_desc_create(&pd, &desc, attr, DNNL.engine, hint) == dnnl_success else { return nil }
            return DNNL.Primitive(pd)
        }
        // Each pass with the algorithm asked for, or direct where oneDNN has no Winograd primitive for it.
        func algorithm(_ asked: ConvolutionAlgorithm) -> [dnnl_alg_kind_t] {
            asked == .winograd ? [dnnl_convolution_winograd, dnnl_convolution_direct] : [dnnl_convolution_direct]
        }
        func kind(_ alg: dnnl_alg_kind_t) -> ConvolutionAlgorithm { alg == dnnl_convolution_winograd ? .winograd : .direct }
        var chosen = Algorithms()
        chosen.slices = slices
        var forwardPrimitive: DNNL.Primitive?
        for alg in algorithm(requested.forward) where forwardPrimitive == nil {
            var fd = dnnl_convolution_desc_t()
            guard dnnl_dilated_convolution_forward_desc_init(&fd, inference == nil ? dnnl_forward_training : dnnl_forward_inference,
                                                             alg, &source, &weights, bias ? UnsafePointer(biasMD) : nil,
                                                             &destination, strides, dilates, padL, padR) == dnnl_success else { continue }
            forwardPrimitive = create(&fd, hint: nil, attr: forwardAttr)
            chosen.forward = kind(alg)
        }
        guard let forward = forwardPrimitive else { return nil }
        self.forward = forward
        guard variant == .backward else {
            (backwardData, backwardWeights) = (nil, nil)
            algorithms = chosen
            return
        }
        var data: DNNL.Primitive?, gradient: DNNL.Primitive?
        for alg in algorithm(requested.backwardData) where data == nil {
            var bd = dnnl_convolution_desc_t()
            guard dnnl_dilated_convolution_backward_data_desc_init(&bd, alg, &source, &weights, &destination,
                                                                   strides, dilates, padL, padR) == dnnl_success else { continue }
            data = create(&bd, hint: forward.descriptor)
            chosen.backwardData = kind(alg)
        }
        for alg in algorithm(requested.backwardWeights) where gradient == nil {
            var wd = dnnl_convolution_desc_t()
            guard dnnl_dilated_convolution_backward_weights_desc_init(&wd, alg, &source, &weights, nil, &destination,
                                                                      strides, dilates, padL, padR) == dnnl_success else { continue }
            gradient = create(&wd, hint: forward.descriptor)
            chosen.backwardWeights = kind(alg)
        }
        guard let data, let gradient else { return nil }
        self.backwardData = data
        self.backwardWeights = gradient
        algorithms = chosen
    }

    /// Whether a pass this plan runs (not a backward plan's forward hint) is on Winograd.
    var runsWinograd: Bool { callBytes.keys.contains { algorithms[$0] == .winograd } }

    /// Bytes of the scratchpad oneDNN asks for on each pass this plan runs (a backward plan's forward primitive never
    /// runs and is left out). Winograd's holds the transformed weights and the transformed tiles of every image of the
    /// call, so it grows with `images`; direct's is nil or a few hundred KB.
    var scratchpadBytes: [ConvolutionPass: Int] {
        var bytes: [ConvolutionPass: Int] = [:]
        if backwardData == nil { bytes[.forward] = forward.scratchpadBytes }
        bytes[.backwardData] = backwardData?.scratchpadBytes
        bytes[.backwardWeights] = backwardWeights?.scratchpadBytes
        return bytes
    }

    /// Bytes one call of each pass takes from the scratch arena (`DNNL.Arena`, whole pages each): the copies of its
    /// operands in the layouts the primitive computes in where the caller's differ, the copy of its result where the
    /// layouts differ or the pass always adds into the caller's (the weight gradient), and the primitive's scratchpad.
    /// A call that adds into a result whose layouts agree (a transposed convolution's accumulated gradient) takes one
    /// result-sized copy more. What `ConvGeometry.dnnlChunk(_:layouts:)` keeps under the budget.
    var callBytes: [ConvolutionPass: Int] {
        func pages(_ md: dnnl_memory_desc_t) -> Int {
            (withUnsafePointer(to: md) { dnnl_memory_desc_get_size($0) } + 4095) & ~4095
        }
        func copy(_ user: dnnl_memory_desc_t, _ md: dnnl_memory_desc_t, always: Bool = false) -> Int {
            always || !DNNL.equal(user, md) ? pages(md) : 0
        }
        func scratch(_ p: DNNL.Primitive) -> Int { (p.scratchpadBytes + 4095) & ~4095 }
        guard let backwardData, let backwardWeights else {
            return [.forward: copy(sourceUser, forward.md(dnnl_query_src_md)) + copy(weightsUser, forward.md(dnnl_query_weights_md))
                        + copy(destinationUser, forward.md(dnnl_query_dst_md)) + scratch(forward)]
        }
        return [
            .backwardData: copy(destinationUser, backwardData.md(dnnl_query_diff_dst_md))
                + copy(weightsUser, backwardData.md(dnnl_query_weights_md))
                + copy(sourceUser, backwardData.md(dnnl_query_diff_src_md)) + scratch(backwardData),
            .backwardWeights: copy(sourceUser, backwardWeights.md(dnnl_query_src_md))
                + copy(destinationUser, backwardWeights.md(dnnl_query_diff_dst_md))
                + copy(weightsUser, backwardWeights.md(dnnl_query_diff_weights_md), always: true) + scratch(backwardWeights),
        ]
    }

    /// oneDNN's name for the implementation of each primitive (`jit_wino_4x3:avx512_core`, `jit:avx2`...): what
    /// `DNNL_VERBOSE=1` prints, for tests and benchmarks.
    var implementations: [ConvolutionPass: String] {
        func name(_ p: DNNL.Primitive?) -> String? {
            guard let p else { return nil }
            var text: UnsafePointer<CChar>?
            guard dnnl_primitive_desc_query(p.descriptor, dnnl_query_impl_info_str, 0, &text) == dnnl_success, let text else { return nil }
            return String(cString: text)
        }
        var names: [ConvolutionPass: String] = [:]
        if backwardData == nil { names[.forward] = name(forward) }
        names[.backwardData] = name(backwardData)
        names[.backwardWeights] = name(backwardWeights)
        return names
    }

    /// Whether oneDNN gave any of this plan's primitives its reference implementation (plain loops, ~1,000x slower
    /// than its JIT kernels): what it falls back to for a layout none of its kernels for this CPU computes in.
    var runsReferenceKernels: Bool {
        [forward, backwardData, backwardWeights].compactMap { $0 }.contains { primitive in
            var info: UnsafePointer<CChar>?
            guard dnnl_primitive_desc_query(primitive.descriptor, dnnl_query_impl_info_str, 0, &info) == dnnl_success, let info else { return false }
            return String(cString: info).hasPrefix("ref")
        }
    }

    /// Makes the reorders this plan's calls need now instead of on first use (see `ConvGeometry.prepareDNNLBackward`).
    func prepareReorders() {
        func make(_ role: Role, _ from: dnnl_memory_desc_t, _ to: dnnl_memory_desc_t, accumulate: Bool) {
            if accumulate || !DNNL.equal(from, to) { _ = reorder(role.rawValue, from: from, to: to, accumulate: accumulate) }
        }
        if let backwardData, let backwardWeights {
            make(.dataDiffDestination, destinationUser, backwardData.md(dnnl_query_diff_dst_md), accumulate: false)
            make(.dataWeights, weightsUser, backwardData.md(dnnl_query_weights_md), accumulate: false)
            make(.dataDiffSource, backwardData.md(dnnl_query_diff_src_md), sourceUser, accumulate: true)
            if overwritesInputGradient { make(.dataDiffSource, backwardData.md(dnnl_query_diff_src_md), sourceUser, accumulate: false) }
            make(.weightsSource, sourceUser, backwardWeights.md(dnnl_query_src_md), accumulate: false)
            make(.weightsDiffDestination, destinationUser, backwardWeights.md(dnnl_query_diff_dst_md), accumulate: false)
            make(.weightsDiffWeights, backwardWeights.md(dnnl_query_diff_weights_md), weightsUser, accumulate: true)
        } else {
            make(.forwardSource, sourceUser, forward.md(dnnl_query_src_md), accumulate: false)
            make(.forwardWeights, weightsUser, forward.md(dnnl_query_weights_md), accumulate: false)
            make(.forwardDestination, forward.md(dnnl_query_dst_md), destinationUser, accumulate: false)
        }
    }

    /// The reorder for `role` (an index that names a (from, to) pair of this plan), made once.
    private func reorder(_ role: Int, from: dnnl_memory_desc_t, to: dnnl_memory_desc_t, accumulate: Bool) -> DNNL.Primitive {
        lock.lock()
        defer { lock.unlock() }
        let key = ReorderKey(role: role, accumulate: accumulate)
        if let r = reorders[key] { return r }
        guard let r = DNNL.reorder(from: from, to: to, accumulate: accumulate) else {
            preconditionFailure("oneDNN: no reorder between the layouts of one of its own convolutions")
        }
        reorders[key] = r
        return r
    }

    /// `user` (a plain-layout tensor) as the memory a primitive reads in layout `md`: the tensor itself if the
    /// layouts agree, else a reordered copy.
    func input(_ user: UnsafePointer<Float>, userMD: dnnl_memory_desc_t, md: dnnl_memory_desc_t, role: Role,
                       arena: DNNL.Arena) -> DNNL.Memory {
        let plain = DNNL.Memory(userMD, UnsafeMutableRawPointer(mutating: user))
        if DNNL.equal(userMD, md) { return plain }
        let copy = DNNL.Memory(md, arena: arena)
        reorder(role.rawValue, from: userMD, to: md, accumulate: false)
            .execute([(DNNL_ARG_FROM, plain), (DNNL_ARG_TO, copy)], arena: arena)
        return copy
    }

    /// Runs `body` on memory in layout `md` and leaves its result in `user`: added to it if `accumulate`, else
    /// overwriting it (in place when the layouts agree).
    private func output(_ user: UnsafeMutablePointer<Float>, userMD: dnnl_memory_desc_t, md: dnnl_memory_desc_t, role: Role,
                        accumulate: Bool, arena: DNNL.Arena, _ body: (DNNL.Memory) -> Void) {
        let plain = DNNL.Memory(userMD, UnsafeMutableRawPointer(user))
        if !accumulate && DNNL.equal(userMD, md) { return body(plain) }
        let result = DNNL.Memory(md, arena: arena)
        body(result)
        reorder(role.rawValue, from: md, to: userMD, accumulate: accumulate)
            .execute([(DNNL_ARG_FROM, result), (DNNL_ARG_TO, plain)], arena: arena)
    }

    enum Role: Int { case forwardSource, forwardWeights, forwardDestination, dataDiffDestination, dataWeights,
                             dataDiffSource, weightsSource, weightsDiffDestination, weightsDiffWeights }

    /// y = conv(x, w) (+ bias), or y += conv(x, w) if `accumulate`, for `images` images starting at x and y: slice by
    /// slice, y[:, s] = conv(x, w[s]) + bias[s].
    func convolve(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                  _ y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        for s in 0..<algorithms.slices {
            convolveSlice(x, w + s * sliceWeights, bias: bias.map { $0 + s * sliceChannels }, y + s * sliceDestination, accumulate: accumulate)
        }
    }

    private func convolveSlice(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                               _ y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        DNNL.Arena.with { arena in
            let src = input(x, userMD: sourceUser, md: forward.md(dnnl_query_src_md), role: .forwardSource, arena: arena)
            let wei = input(w, userMD: weightsUser, md: forward.md(dnnl_query_weights_md), role: .forwardWeights, arena: arena)
            let b = bias.map { DNNL.Memory(biasUser, UnsafeMutableRawPointer(mutating: $0)) }
            output(y, userMD: destinationUser, md: forward.md(dnnl_query_dst_md), role: .forwardDestination,
                   accumulate: accumulate, arena: arena) { dst in
                var args = [(DNNL_ARG_SRC, src), (DNNL_ARG_WEIGHTS, wei), (DNNL_ARG_DST, dst)]
                if let b { args.append((DNNL_ARG_BIAS, b)) }
                forward.execute(args, arena: arena)
            }
        }
    }

    /// dx += conv^T(dy, w), or dx = conv^T(dy, w) without `accumulate`: the sum over slices of conv^T(dy[:, s], w[s]),
    /// the first slice as the caller asks, the others added.
    func accumulateInputGradient(_ dy: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
                                 accumulate: Bool = true) {
        for s in 0..<algorithms.slices {
            accumulateInputGradientSlice(dy + s * sliceDestination, w + s * sliceWeights, dx, accumulate: accumulate || s > 0)
        }
    }

    private func accumulateInputGradientSlice(_ dy: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
                                              accumulate: Bool) {
        guard let backwardData else { preconditionFailure("a forward plan has no backward primitives") }
        DNNL.Arena.with { arena in
            let diffDst = input(dy, userMD: destinationUser, md: backwardData.md(dnnl_query_diff_dst_md),
                                role: .dataDiffDestination, arena: arena)
            let wei = input(w, userMD: weightsUser, md: backwardData.md(dnnl_query_weights_md), role: .dataWeights, arena: arena)
            output(dx, userMD: sourceUser, md: backwardData.md(dnnl_query_diff_src_md), role: .dataDiffSource,
                   accumulate: accumulate, arena: arena) { diffSrc in
                backwardData.execute([(DNNL_ARG_DIFF_DST, diffDst), (DNNL_ARG_WEIGHTS, wei), (DNNL_ARG_DIFF_SRC, diffSrc)], arena: arena)
            }
        }
    }

    /// dw += the weight gradient over these images; slice by slice, dw[s] += that of (x, dy[:, s]).
    func accumulateWeightGradient(_ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dw: UnsafeMutablePointer<Float>) {
        for s in 0..<algorithms.slices {
            accumulateWeightGradientSlice(x, dy + s * sliceDestination, dw + s * sliceWeights)
        }
    }

    private func accumulateWeightGradientSlice(_ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dw: UnsafeMutablePointer<Float>) {
        guard let backwardWeights else { preconditionFailure("a forward plan has no backward primitives") }
        DNNL.Arena.with { arena in
            let src = input(x, userMD: sourceUser, md: backwardWeights.md(dnnl_query_src_md), role: .weightsSource, arena: arena)
            let diffDst = input(dy, userMD: destinationUser, md: backwardWeights.md(dnnl_query_diff_dst_md),
                                role: .weightsDiffDestination, arena: arena)
            output(dw, userMD: weightsUser, md: backwardWeights.md(dnnl_query_diff_weights_md), role: .weightsDiffWeights,
                   accumulate: true, arena: arena) { diffWei in
                backwardWeights.execute([(DNNL_ARG_SRC, src), (DNNL_ARG_DIFF_DST, diffDst), (DNNL_ARG_DIFF_WEIGHTS, diffWei)],
                                        arena: arena)
            }
        }
    }
}

/// Plans by geometry and thread count, made once per process (creating one JIT-compiles its kernels). The thread
/// count is part of the key because a oneDNN primitive divides its work for the threads there were when it was made
/// and runs on that many (`num_threads` of its own parallel regions) whatever the count is later: a process that
/// changes its count (the trainer's thread calibration) must get primitives made for the new one.
enum DNNLConvPlans {
    struct Key: Hashable {
        let dims: [Int]
        let variant: DNNLConvPlan.Variant
        let layouts: DNNLConvPlan.Layouts
        let threads: Int
        let algorithms: DNNLConvPlan.Algorithms
    }
    nonisolated(unsafe) private static var plans: [Key: DNNLConvPlan?] = [:]
    private static let lock = PThreadMutex()

    /// Whether convolutions may use oneDNN: yes unless `STARLING_CONV=sgemm` (for comparisons) or oneDNN is missing.
    static let enabled: Bool = {
        if let value = getenv("STARLING_CONV"), String(cString: value) == "sgemm" { return false }
        return DNNL.engine != nil
    }()

    static func key(_ g: ConvGeometry, images: Int, variant: DNNLConvPlan.Variant, layouts: DNNLConvPlan.Layouts) -> Key {
        Key(dims: dims(g, images: images), variant: variant, layouts: layouts, threads: BLAS.threadCount,
            algorithms: algorithms(g, variant: variant, layouts: layouts))
    }

    private static func dims(_ g: ConvGeometry, images: Int) -> [Int] {
        [images, g.inChannels, g.outChannels, g.groups, g.height, g.width, g.kernelH, g.kernelW,
         g.strideH, g.strideW, g.dilationH, g.dilationW, g.padTop, g.padLeft, g.outHeight, g.outWidth]
    }

    private struct FittedKey: Hashable { let plan: Key; let budget: Int; let slicingThreads: Int }
    nonisolated(unsafe) private static var fitted: [FittedKey: DNNLConvPlan.Algorithms] = [:]

    /// The algorithms `g` runs for `variant`: those it asks for (`DNNLConvPlan.Algorithms(g, variant:)`), except where
    /// one call of a pass asked to run Winograd on a single image already takes more than `g.winogradCallBudget` bytes
    /// from the scratch arena. Winograd's scratchpad holds, besides the transformed tiles of the call's images, the
    /// transformed weights (6 x 6 = 36 floats for each 3 x 3 kernel), and for the weight gradient one such buffer more
    /// per thread (oneDNN's S_D_Giot_W schedule): 3 x 36 x 1024 x 1024 floats, 453 MB, for yolov2's 1024 -> 1024 layers
    /// at 13 x 13 on 2 threads, which no chunk of the batch makes smaller. There, on one thread
    /// (`ConvGeometry.winogradSlicingThreads`), the plan's calls run in k slices of the output channels
    /// (`Algorithms.slices`; each slice's weights a k-th), the smallest k of whole 16-channel blocks (the blocks oneDNN's
    /// AVX-512 Winograd computes in) whose one-image calls all take at most half the budget; elsewhere, or where no k
    /// does, those passes run direct, unsliced. Half, so that a call holds several images, each call transforming its
    /// slice's weights once for them: the smallest k whose one-image call fit the whole budget ran yolov2's gradients one
    /// image a call, at the same CPU a step on one thread (0.80 of main's against 0.79) but a peak 23 MB above main's,
    /// which half keeps level. One thread, by measurement (yolov2's 1024 -> 1024 at 13 x 13, 8 images, blocked, CPU ms a pass,
    /// loaded; BENCHMARKS.md, "yolov2's 13 x 13 layers on Winograd in slices"): on one thread 140-160 in 4 (forward) and
    /// 8 slices (gradients) against direct's 230-300; on two, the input gradient in 4 slices 290 against direct's 240
    /// (in 8, 425-510) and the weight gradient in 8 383-429 against 296-312. A single image's call depends on the shape
    /// and the thread count, never on the batch: every rank of a job (the same threads, its share of the batch) runs the
    /// same algorithms and slices.
    static func algorithms(_ g: ConvGeometry, variant: DNNLConvPlan.Variant, layouts: DNNLConvPlan.Layouts) -> DNNLConvPlan.Algorithms {
        let requested = DNNLConvPlan.Algorithms(g, variant: variant)
        guard requested.anyWinograd else { return requested }
        let key = FittedKey(plan: Key(dims: dims(g, images: 1), variant: variant, layouts: layouts, threads: BLAS.threadCount,
                                      algorithms: requested), budget: g.winogradCallBudget, slicingThreads: g.winogradSlicingThreads)
        chunkLock.lock()
        let known = fitted[key]
        chunkLock.unlock()
        if let known { return known }
        var chosen = requested
        func over(_ plan: DNNLConvPlan, _ budget: Int) -> [ConvolutionPass] {
            plan.callBytes.filter { plan.algorithms[$0.key] == .winograd && $0.value > budget }.map(\.key)
        }
        if let one = make(g, images: 1, variant: variant, layouts: layouts, algorithms: requested), !over(one, g.winogradCallBudget).isEmpty {
            let block = 16
            let slicings = (2...Swift.max(2, g.outChannels / block)).filter { g.outChannels % ($0 * block) == 0 }
            let fitting = g.groups != 1 || BLAS.threadCount > g.winogradSlicingThreads ? nil : slicings.lazy.map { k -> DNNLConvPlan.Algorithms in
                var sliced = requested
                sliced.slices = k
                return sliced
            }.first { sliced in
                guard let plan = make(g, images: 1, variant: variant, layouts: layouts, algorithms: sliced) else { return false }
                return over(plan, g.winogradCallBudget / 2).isEmpty && over(one, g.winogradCallBudget).allSatisfy { plan.algorithms[$0] == .winograd }
            }
            if let fitting {
                chosen = fitting
            } else {
                for pass in over(one, g.winogradCallBudget) { chosen[pass] = .direct }
            }
        }
        chunkLock.lock()
        fitted[key] = chosen
        chunkLock.unlock()
        return chosen
    }

    static func plan(_ g: ConvGeometry, images: Int, variant: DNNLConvPlan.Variant,
                     layouts: DNNLConvPlan.Layouts = .planar) -> DNNLConvPlan? {
        let key = key(g, images: images, variant: variant, layouts: layouts)
        lock.lock()
        defer { lock.unlock() }
        if let plan = plans[key] { return plan }
        let plan = make(g, images: images, variant: variant, layouts: layouts, algorithms: key.algorithms)
        plan?.prepareReorders()
        plans[key] = plan
        return plan
    }

    /// Keeps `plan` as the one for `key` (unless there is one).
    private static func keep(_ plan: DNNLConvPlan, _ key: Key) {
        lock.lock()
        defer { lock.unlock() }
        guard plans.index(forKey: key) == nil else { return }
        plan.prepareReorders()
        plans[key] = plan
    }

    /// A plan not kept (`plan` keeps what it makes).
    private static func make(_ g: ConvGeometry, images: Int, variant: DNNLConvPlan.Variant, layouts: DNNLConvPlan.Layouts,
                             algorithms: DNNLConvPlan.Algorithms) -> DNNLConvPlan? {
        let plan = DNNLConvPlan(g, images: images, variant: variant, layouts: layouts, algorithms: algorithms)
        // 8-channel blocks are what oneDNN's AVX2 and SSE4.1 kernels compute in, so every x86 CPU with a JIT kernel has
        // one for them; should a CPU have none, its own layout with reorders is still far faster than reference loops.
        if let fixed = plan, fixed.keepsEightChannelBlocks, fixed.runsReferenceKernels {
            return DNNLConvPlan(g, images: images, variant: variant, layouts: layouts, algorithms: algorithms,
                                keepingEightChannelBlocks: false)
        }
        return plan
    }

    private struct ChunkKey: Hashable { let plan: Key; let budget: Int; let largest: Int }
    nonisolated(unsafe) private static var chunks: [ChunkKey: Int] = [:]
    private static let chunkLock = PThreadMutex()

    /// Images per call of `variant` for `g.batch` images (see `ConvGeometry.dnnlChunk(_:layouts:)`), found once per
    /// shape, thread count and budget and kept beside the plans.
    static func chunk(_ g: ConvGeometry, variant: DNNLConvPlan.Variant, layouts: DNNLConvPlan.Layouts, largest: Int) -> Int {
        let key = ChunkKey(plan: key(g, images: g.batch, variant: variant, layouts: layouts), budget: g.winogradCallBudget, largest: largest)
        chunkLock.lock()
        let known = chunks[key]
        chunkLock.unlock()
        if let known { return known }
        let chunk = fittingChunk(g, variant: variant, layouts: layouts, largest: largest, algorithms: key.plan.algorithms)
        chunkLock.lock()
        chunks[key] = chunk
        chunkLock.unlock()
        return chunk
    }

    /// `largest` unless a pass of the plan at `largest` images runs Winograd and one of its calls takes more than
    /// `g.winogradCallBudget` bytes from the arena; then the most images whose calls all fit (at least one), evened out
    /// over the batch (8 images at most 3 a call: 3, 3, 2). oneDNN's Winograd scratchpad holds the transformed tiles of
    /// every image of the call, so a call's bytes are close to affine in its images: measured at `largest` and at one
    /// image, the line gives the candidate, which is then checked on its own plan (and lowered until it fits). Where one
    /// image alone takes more than the budget, as few images as take no more than one image does.
    private static func fittingChunk(_ g: ConvGeometry, variant: DNNLConvPlan.Variant, layouts: DNNLConvPlan.Layouts, largest: Int,
                                     algorithms: DNNLConvPlan.Algorithms) -> Int {
        guard algorithms.anyWinograd else { return largest }
        func callBytes(_ plan: DNNLConvPlan) -> Int { plan.callBytes.values.max() ?? 0 }
        func bytes(_ images: Int) -> Int? {
            make(g, images: images, variant: variant, layouts: layouts, algorithms: algorithms).map(callBytes)
        }
        guard largest > 1, let full = make(g, images: largest, variant: variant, layouts: layouts, algorithms: algorithms) else { return largest }
        guard full.runsWinograd, callBytes(full) > g.winogradCallBudget,
              let one = bytes(1) else {
            keep(full, key(g, images: largest, variant: variant, layouts: layouts))
            return largest
        }
        let perImage = Double(callBytes(full) - one) / Double(largest - 1)
        let allowed = Swift.max(g.winogradCallBudget, one)
        var most = perImage <= 0 ? largest : Swift.min(largest, Swift.max(1, 1 + Int(Double(allowed - one) / perImage)))
        while true {
            let calls = (g.batch + most - 1) / most
            let chunk = (g.batch + calls - 1) / calls
            if chunk == 1 || (bytes(chunk) ?? Int.max) <= allowed { return chunk }
            most = chunk - 1
        }
    }
}

extension DNNLConvPlans {
    /// The training plans made so far for this thread count, largest call first: `limit` lines of each one's shape,
    /// images per call, and per pass the algorithm, oneDNN's scratchpad and the whole call's bytes from the arena; for a
    /// pass on Winograd, the same figures of the direct primitive on the same call (made for the comparison, not kept).
    static func callReport(limit: Int) -> [String] {
        lock.lock()
        let made = plans.compactMap { key, plan in plan.map { (key, $0) } }.filter { key, _ in
            key.threads == BLAS.threadCount && { if case .forward(_, _?) = key.variant { return false } else { return true } }()
        }
        lock.unlock()
        func mb(_ bytes: Int) -> String {
            let tenths = (bytes * 10 + 524_288) / 1_048_576
            return "\(tenths / 10).\(tenths % 10) MB"
        }
        let sorted = made.sorted { ($0.1.callBytes.values.max() ?? 0) > ($1.1.callBytes.values.max() ?? 0) }
        return sorted.prefix(limit).map { key, plan in
            let d = key.dims
            let g = ConvGeometry(batch: d[0], inChannels: d[1], outChannels: d[2], groups: d[3], height: d[4], width: d[5],
                                 kernelH: d[6], kernelW: d[7], strideH: d[8], strideW: d[9], dilationH: d[10], dilationW: d[11],
                                 padTop: d[12], padLeft: d[13], outHeight: d[14], outWidth: d[15])
            let variant = switch key.variant {
            case .backward: "backward"
            case .forward: "forward"
            case .activatedTrainingForward: "forward + activation"
            }
            let direct = plan.algorithms == .direct ? nil
                : DNNLConvPlan(g, images: plan.images, variant: key.variant, layouts: key.layouts, algorithms: .direct)
            let passes = ConvolutionPass.allCases.compactMap { pass -> String? in
                guard let call = plan.callBytes[pass] else { return nil }
                var text = "\(pass.rawValue) \(plan.algorithms[pass].rawValue) scratchpad \(mb(plan.scratchpadBytes[pass] ?? 0)), call \(mb(call))"
                if plan.algorithms[pass] == .winograd, let direct {
                    text += " (direct: \(mb(direct.scratchpadBytes[pass] ?? 0)), \(mb(direct.callBytes[pass] ?? 0)))"
                }
                return text
            }
            let slices = plan.algorithms.slices == 1 ? "" : " in \(plan.algorithms.slices) slices of \(plan.sliceChannels) output channels"
            return "\(g.kernelH)x\(g.kernelW) \(g.inChannels)->\(g.outChannels) \(g.height)x\(g.width), \(plan.images) image(s) a call\(slices), "
                + "\(variant): " + passes.joined(separator: "; ")
        }
    }
}

/// The oneDNN convolution calls of this process, for `bench --suite --memory-breakdown`.
public enum ConvolutionCalls {
    /// The `limit` plans whose calls take the most scratch (see `DNNLConvPlans.callReport`).
    public static func largest(_ limit: Int) -> [String] { DNNLConvPlans.callReport(limit: limit) }
}

extension ConvGeometry {
    /// This convolution with `channels` of its output channels (one slice of a sliced plan), its settings kept.
    func withOutputChannels(_ channels: Int) -> ConvGeometry {
        var g = ConvGeometry(batch: batch, inChannels: inChannels, outChannels: channels, groups: groups, height: height, width: width,
                             kernelH: kernelH, kernelW: kernelW, strideH: strideH, strideW: strideW, dilationH: dilationH,
                             dilationW: dilationW, padTop: padTop, padLeft: padLeft, outHeight: outHeight, outWidth: outWidth)
        (g.scratchBudget, g.shiftedMinChannels, g.shiftedBandBudget, g.useDNNL) = (scratchBudget, shiftedMinChannels, shiftedBandBudget, useDNNL)
        (g.winograd, g.dnnlChunkBudget, g.winogradCallBudget) = (winograd, dnnlChunkBudget, winogradCallBudget)
        g.winogradSlicingThreads = winogradSlicingThreads
        return g
    }

    /// Images per oneDNN call by the blocked copies alone: as many as keep one chunk's input and output under
    /// `dnnlChunkBudget` floats.
    var dnnlChunk: Int {
        Swift.max(1, Swift.min(batch, dnnlChunkBudget / Swift.max(1, inChannels * inPlane + outChannels * outPlane)))
    }

    /// Images per oneDNN call of `variant` in `layouts`: `dnnlChunk`, and where a pass of that plan runs Winograd, no
    /// more than keep each of its calls' bytes from the scratch arena (the blocked copies and oneDNN's scratchpad,
    /// `DNNLConvPlan.callBytes`) under `winogradCallBudget`. Winograd's scratchpad holds the transformed tiles of every
    /// image of the call (U-Net's 16 -> 16 forward pass at 128 x 128 and width 0.25: 42 MB for 8 images), and the arena
    /// keeps the largest call's size (`DNNLConvPlans.algorithms` puts a pass whose single image's call exceeds the
    /// budget back to direct).
    func dnnlChunk(_ variant: DNNLConvPlan.Variant, layouts: DNNLConvPlan.Layouts) -> Int {
        DNNLConvPlans.chunk(self, variant: variant, layouts: layouts, largest: dnnlChunk)
    }

    /// Makes the backward plans of this geometry if they do not exist yet. A plan's primitives, JIT code and reorders
    /// are small blocks that live as long as the process: made during a first backward pass, they land inside the
    /// large freed activations and split them, so the heap grows instead of reusing them (SSD7: 3.5 GB peak instead
    /// of 2.1). Made during the forward pass, they sit at the top of the heap like the activations being allocated.
    func prepareDNNLBackward(_ layouts: DNNLConvPlan.Layouts = .planar) {
        guard useDNNL, DNNLConvPlans.enabled else { return }
        let chunk = dnnlChunk(.backward, layouts: layouts)
        _ = DNNLConvPlans.plan(self, images: chunk, variant: .backward, layouts: layouts)
        if batch % chunk > 0 { _ = DNNLConvPlans.plan(self, images: batch % chunk, variant: .backward, layouts: layouts) }
    }

    /// Whether oneDNN has every plan a training step of this geometry needs in `layouts` (making them).
    func dnnlCanTrain(_ layouts: DNNLConvPlan.Layouts, bias: Bool) -> Bool {
        guard useDNNL, DNNLConvPlans.enabled else { return false }
        return [DNNLConvPlan.Variant.forward(bias: bias, inference: nil), .backward].allSatisfy { variant in
            let chunk = dnnlChunk(variant, layouts: layouts)
            return [chunk, batch % chunk].filter { $0 > 0 }.allSatisfy { images in
                DNNLConvPlans.plan(self, images: images, variant: variant, layouts: layouts) != nil
            }
        }
    }

    /// Calls `body(plan, firstImage)` for each chunk of images, or returns false (doing nothing) when oneDNN has
    /// no plan for this geometry.
    func withDNNLChunks(_ variant: DNNLConvPlan.Variant, layouts: DNNLConvPlan.Layouts = .planar,
                        _ body: (DNNLConvPlan, Int) -> Void) -> Bool {
        guard useDNNL, DNNLConvPlans.enabled else { return false }
        let chunk = dnnlChunk(variant, layouts: layouts)
        guard let full = DNNLConvPlans.plan(self, images: chunk, variant: variant, layouts: layouts) else { return false }
        let tail = batch % chunk
        var last: DNNLConvPlan? = full
        if tail > 0 { last = DNNLConvPlans.plan(self, images: tail, variant: variant, layouts: layouts) }
        guard let last else { return false }
        var n = 0
        while n < batch {
            body(batch - n >= chunk ? full : last, n)
            n += chunk
        }
        return true
    }

    /// oneDNN's y = conv(x) (+ bias) + beta * y; false if it has no plan for this geometry.
    /// With blocked layouts the channel counts are multiples of the block width, so an image takes the same number of floats in
    /// either layout and the chunk offsets below hold for both.
    func dnnlConvolve(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                      output y: UnsafeMutablePointer<Float>, beta: Float, layouts: DNNLConvPlan.Layouts = .planar) -> Bool {
        precondition(beta == 0 || beta == 1, "beta \(beta): oneDNN's path overwrites or adds")
        return withDNNLChunks(.forward(bias: bias != nil, inference: nil), layouts: layouts) { plan, n in
            plan.convolve(x + n * inChannels * inPlane, w, bias: bias, y + n * outChannels * outPlane, accumulate: beta == 1)
        }
    }

    func dnnlAccumulateWeightGradient(input x: UnsafePointer<Float>, outputGrad dy: UnsafePointer<Float>,
                                      into dw: UnsafeMutablePointer<Float>, layouts: DNNLConvPlan.Layouts = .planar) -> Bool {
        withDNNLChunks(.backward, layouts: layouts) { plan, n in
            plan.accumulateWeightGradient(x + n * inChannels * inPlane, dy + n * outChannels * outPlane, dw)
        }
    }

    func dnnlAccumulateInputGradient(outputGrad dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
                                     into dx: UnsafeMutablePointer<Float>, layouts: DNNLConvPlan.Layouts = .planar,
                                     accumulate: Bool = true) -> Bool {
        withDNNLChunks(.backward, layouts: layouts) { plan, n in
            plan.accumulateInputGradient(dy + n * outChannels * outPlane, w, dx + n * inChannels * inPlane, accumulate: accumulate)
        }
    }
}
