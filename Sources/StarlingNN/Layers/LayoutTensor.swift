import StarlingCore

/// What a network's forward pass runs on when it trains or infers on Tensors: a `Tensor` in whichever memory layout its
/// ops chose, so that the fast paths live behind the ops and every convolutional network gets them from the one forward
/// pass it writes (`NetworkValue`). A model runs its pass on `LayoutTensor(images)` and reads `.tensor` (NCHW) at the end.
///
/// Three layouts, chosen op by op from the shapes, the CPU and what oneDNN has plans for:
/// - planar: NCHW, every op of `Tensor`; any op without a faster path converts its input to it first.
/// - blocked (training, and any pass that records gradients): [N, C/B, H, W, B], oneDNN's nChw8c or nChw16c
///   (BlockedLayout.swift), B = `ChannelLayout.blockWidth` (16 on AVX-512 CPUs, 8 elsewhere). A convolution with a
///   multiple of B output channels writes it, one with a multiple of 8 but not of 16 writes 8-channel blocks (so a
///   16-wide model's narrow layers stay blocked, in AVX2's blocks), any other count NCHW; batch norm (alone, or with an
///   ELU or leaky ReLU fused in), 2x2 max-pooling, nearest upsampling, element-wise activations, sums and channel
///   concatenation read and write it with their backward; no reorder to NCHW runs around the convolutions. A
///   convolution may hand its output's channel statistics to the batch norm that follows (`ChannelMoments`).
///   `STARLING_LAYOUT=nchw` switches it off.
/// - inference (no gradients recorded): oneDNN's own layout (`DNNLActivation`), a convolution run lazily so that a
///   following batch norm in inference mode is folded into its kernel and bias and an activation into its store
///   (a post-op); 2x2 max-pooling stays in that layout.
///
/// The values are those of the planar ops up to float rounding: folding, fused activations and blocked sums reorder
/// arithmetic (tested per family against the planar pass, values and gradients).
public struct LayoutTensor: NetworkValue {
    enum Form {
        case planar(Tensor)
        /// [N, C/B, H, W, B]; `moments`: the per-channel sums the convolution that wrote it computed, if it did.
        case blocked(Tensor, moments: ChannelMoments?)
        case inference(DNNLActivation)
        case pending(PendingConvolution)
    }

    /// The values, or a batch norm not run yet whose first reader chooses how it runs (`DeferredNormalization`).
    private enum State {
        case ready(Form)
        case deferred(DeferredNormalization)
        case deferredConvolution(DeferredConvolution)
        /// The ReLU of a deferred convolution nothing had read: a 2x2/2 pooling reading it first runs the three as one op.
        case deferredRectification(DeferredConvolution)
    }

    private let state: State

    /// The values in their layout (a deferred batch norm run now, once). Values a convolution gave back after reading
    /// them (`DeferredConvolution.readInput`) are computed again for a reader after it.
    var form: Form {
        let form: Form = switch state {
        case .ready(let form): form
        case .deferred(let normalization): normalization.result.form
        case .deferredConvolution(let convolution): convolution.result.form
        case .deferredRectification(let convolution): convolution.rectifiedResult.form
        }
        switch form {
        case .planar(let x), .blocked(let x, _): x.restoreValues()
        case .inference, .pending: break
        }
        return form
    }

    /// Counts the convolutions each path ran, for tests that check a pass took the fast paths
    /// (`LayoutTensor.$census.withValue(LayoutCensus()) { ... }`; a task-local, so tests running alongside do not count).
    @TaskLocal package static var census: LayoutCensus?

    /// The block width a pass that starts from planar values blocks them in: `ChannelLayout.blockWidth` (the CPU's, or
    /// STARLING_BLOCK), which tests set per pass to compare the widths (`LayoutTensor.$blockWidth.withValue(8) { ... }`).
    @TaskLocal package static var blockWidth: Int = ChannelLayout.blockWidth

    /// The NCHW shape (the values' logical shape whatever their layout).
    public let shape: [Int]

    /// `tensor` as it is (planar).
    public init(_ tensor: Tensor) {
        state = .ready(.planar(tensor))
        shape = tensor.shape
    }

    private init(deferring normalization: DeferredNormalization, shape: [Int]) {
        state = .deferred(normalization)
        self.shape = shape
    }

    private init(deferring convolution: DeferredConvolution, shape: [Int]) {
        state = .deferredConvolution(convolution)
        self.shape = shape
    }

    private init(deferringReLUOf convolution: DeferredConvolution, shape: [Int]) {
        state = .deferredRectification(convolution)
        self.shape = shape
    }

    init(_ form: Form) {
        state = .ready(form)
        switch form {
        case .planar(let x): shape = x.shape
        case .blocked(let x, _): shape = [x.shape[0], x.shape[1] * x.shape[4], x.shape[2], x.shape[3]]
        case .inference(let a): shape = a.shape
        case .pending(let p): shape = p.shape
        }
    }

    /// The values as a planar (NCHW) Tensor, converted if they are laid out otherwise (with their gradient).
    public var tensor: Tensor {
        switch form {
        case .planar(let x): return x
        case .blocked(let x, _): return x.unblocked()
        case .inference(let a): return a.tensor()
        case .pending(let p): return p.result.tensor
        }
    }

    /// A planar op applied to the planar values.
    private func planar(_ op: (Tensor) -> Tensor) -> LayoutTensor { LayoutTensor(op(tensor)) }

    /// The blocked tensor, if the values are blocked.
    fileprivate var blocked: Tensor? {
        if case .blocked(let x, _) = form { return x }
        return nil
    }

    /// The values for an inference op in oneDNN's layouts: a pending convolution run, planar values shared.
    fileprivate var inferenceInput: DNNLActivation? {
        switch form {
        case .inference(let a): return a
        case .pending(let p): return p.result.inferenceInput
        case .planar(let x): return x.rank == 4 ? DNNLActivation(x) : nil
        case .blocked: return nil
        }
    }

    /// The values in oneDNN's layouts where an inference op already put them there (not planar values: those stay planar).
    fileprivate var laidOutInference: DNNLActivation? {
        switch form {
        case .inference(let a): return a
        case .pending(let p): return p.result.laidOutInference
        case .planar, .blocked: return nil
        }
    }

    /// The activation fused into a pending convolution that has none yet, or nil.
    private func fusing(_ activation: FusedActivation) -> LayoutTensor? {
        guard case .pending(let p) = form, p.activation == .identity else { return nil }
        return LayoutTensor(.pending(p.with(activation: activation)))
    }

    // MARK: Element-wise: any layout, kept.

    private func elementwise(_ op: (Tensor) -> Tensor) -> LayoutTensor {
        if case .blocked(let x, _) = form { return LayoutTensor(.blocked(op(x), moments: nil)) }
        return planar(op)
    }

    public func relu() -> LayoutTensor {
        // A training convolution nothing has read yet: its ReLU waits for its own first reader too, which chooses
        // between the convolution + ReLU and the convolution + ReLU + 2x2 pooling (`DeferredConvolution`).
        if case .deferredConvolution(let convolution) = state, convolution.unread { return LayoutTensor(deferringReLUOf: convolution, shape: shape) }
        if case .deferred(let normalization) = state, let rectified = normalization.rectified() {
            return LayoutTensor(deferring: rectified, shape: shape)
        }
        return fusing(.leakyRelu(slope: 0)) ?? elementwise { $0.relu() }
    }
    public func sigmoid() -> LayoutTensor { fusing(.logistic) ?? elementwise { $0.sigmoid() } }
    public func elu(alpha: Float) -> LayoutTensor { fusing(.elu(alpha: alpha)) ?? elementwise { $0.elu(alpha: alpha) } }
    public func leakyRelu(slope: Float) -> LayoutTensor { fusing(.leakyRelu(slope: slope)) ?? elementwise { $0.leakyRelu(slope: slope) } }
    public func affine(scale: Float, shift: Float) -> LayoutTensor {
        recomputableFromConstant(elementwise { $0.affine(scale: scale, shift: shift) }) { $0.affine(scale: scale, shift: shift) }
    }

    /// `result` (`op` of these values) declared recomputable (`Tensor.recomputable(by:)`) where these values are a constant
    /// in training (the images: no gradient flows into them): an image's normalisation, which the first convolution keeps
    /// for its weight gradient and then gives back after reading it, to run `op` again on the images in backward (one
    /// pass over the batch: SSD7's 3 x 300 x 480 images, 13 MB for 8, against a step of 16 GFLOP).
    private func recomputableFromConstant(_ result: LayoutTensor, _ op: @escaping (Tensor) -> Tensor) -> LayoutTensor {
        guard GradMode.isEnabled, case .ready(.planar(let x)) = state, !x.requiresGrad, case .ready(let form) = result.state else { return result }
        switch form {
        case .planar(let y), .blocked(let y, _):
            if !y.requiresGrad { y.recomputable { GradMode.disabled { op(x) }.storage } }
        case .inference, .pending: break
        }
        return result
    }

    public static func + (lhs: LayoutTensor, rhs: LayoutTensor) -> LayoutTensor {
        // A deferred batch norm + leaky ReLU nothing has read yet, added to a blocked value of its shape: one op.
        if case .deferred(let normalization) = rhs.state, let sum = normalization.adding(lhs) { return sum }
        if case .deferred(let normalization) = lhs.state, let sum = normalization.adding(rhs) { return sum }
        if let a = lhs.blocked, let b = rhs.blocked, a.shape == b.shape { return LayoutTensor(.blocked(a + b, moments: nil)) }
        return LayoutTensor(lhs.tensor + rhs.tensor)
    }

    // MARK: Layers

    public func applying(_ layer: Conv2D) -> LayoutTensor {
        let (w, b) = (layer.kernel.value, layer.bias.value)
        guard shape.count == 4, layer.dilation == (1, 1) else {
            Self.census?.count(.planar)
            return planar { $0.conv2d(w, bias: b, stride: layer.stride, padding: layer.padding, dilation: layer.dilation) }
        }
        if !GradMode.isEnabled && DNNLActivation.isAvailable, blocked == nil {
            Self.census?.count(.pending)
            return LayoutTensor(.pending(PendingConvolution(input: self, kernel: w, bias: b, stride: layer.stride, padding: layer.padding)))
        }
        let width = w.shape[0] % Self.blockWidth == 0 ? Self.blockWidth : 8
        let blockedInput = blocked != nil, blockedOutput = w.shape[0] % width == 0
        if ChannelLayout.blockedTrainingEnabled, blockedInput || blockedOutput,
           Tensor.canConvolveBlocked(input: shape, weight: w.shape, stride: layer.stride, padding: layer.padding,
                                     blockedInput: blockedInput, blockedOutput: blockedOutput, width: width,
                                     inputWidth: blocked?.shape[4]) {
            let source = blocked ?? tensor
            if blockedOutput && GradMode.isEnabled {
                Self.census?.count(.blocked)
                let convolution = DeferredConvolution(input: source, kernel: w, bias: b, stride: layer.stride, padding: layer.padding, width: width)
                return LayoutTensor(deferring: convolution, shape: Tensor.conv2dShape(input: shape, weight: w.shape, stride: layer.stride,
                                                                                     padding: layer.padding))
            }
            let moments: ChannelMoments? = nil
            let y = source.conv2dBlocked(w, bias: b, stride: layer.stride, padding: layer.padding, blockedOutput: blockedOutput,
                                         width: width, moments: moments)
            Self.census?.count(.blocked)
            return LayoutTensor(blockedOutput ? .blocked(y, moments: moments) : .planar(y))
        }
        Self.census?.count(.planar)
        return planar { $0.conv2d(w, bias: b, stride: layer.stride, padding: layer.padding) }
    }

    /// In training, one blocked op (`conv2dBlockedReLU`) where the convolution would write a blocked output; otherwise
    /// the two ops (in inference the ReLU is fused into the pending convolution's store).
    public func applyingWithReLU(_ layer: Conv2D) -> LayoutTensor {
        let w = layer.kernel.value
        let width = w.shape.first.map { $0 % Self.blockWidth == 0 } == true ? Self.blockWidth : 8
        guard GradMode.isEnabled, ChannelLayout.blockedTrainingEnabled, shape.count == 4, layer.dilation == (1, 1),
              Tensor.canConvolveBlocked(input: shape, weight: w.shape, stride: layer.stride, padding: layer.padding,
                                        blockedInput: blocked != nil, blockedOutput: true, width: width,
                                        inputWidth: blocked?.shape[4]) else { return applying(layer).relu() }
        Self.census?.count(.blocked)
        let x = blocked ?? tensor
        let y = x.conv2dBlockedReLU(w, bias: layer.bias.value, stride: layer.stride, padding: layer.padding, width: width)
        // As a deferred convolution's (`DeferredConvolution.rectifiedResult`): this reader gives back an input that is
        // cheap to compute again (the images' scaling, a cheap first convolution's output), and a cheap convolution's
        // rectified output is computed again in backward instead of held through the step (U-Net's first layer, 3 -> 16
        // channels at 128 x 128: 8 MB at 8 images, 27 multiply-adds a value computed twice more a step).
        x.releaseRecomputableValues()
        if DeferredConvolution.cheapToRecompute(w.shape) && y.requiresGrad {
            let (bias, stride, padding) = (layer.bias.value, layer.stride, layer.padding)
            y.recomputable(alsoInBackward: true) {
                x.restoreValues()
                return GradMode.disabled { x.conv2dBlockedReLU(w, bias: bias, stride: stride, padding: padding, width: width) }.storage
            }
        }
        return LayoutTensor(.blocked(y, moments: nil))
    }

    /// In training, where each half of the kernel has a blocked plan from its input as it lies (blocked, or planar: a
    /// valid U-Net's cropped skip, an odd map's padded up-convolution): one op of the two inputs
    /// (`conv2dBlockedReLU(concatenating:...)`), no concatenation kept; otherwise the concatenation and the convolution
    /// + ReLU.
    public func applyingWithReLU(_ layer: Conv2D, concatenating second: LayoutTensor) -> LayoutTensor {
        let w = layer.kernel.value
        let width = w.shape.first.map { $0 % Self.blockWidth == 0 } == true ? Self.blockWidth : 8
        if GradMode.isEnabled, ChannelLayout.blockedTrainingEnabled, layer.dilation == (1, 1), shape.count == 4, second.shape.count == 4 {
            let (a, b) = (blocked ?? tensor, second.blocked ?? second.tensor)
            if Tensor.canConvolveBlockedReLU(concatenating: shape, second.shape, weight: w.shape, stride: layer.stride, padding: layer.padding,
                                             width: width, firstWidth: a.rank == 5 ? a.shape[4] : nil, secondWidth: b.rank == 5 ? b.shape[4] : nil) {
                Self.census?.count(.blocked)
                Self.census?.count(.concatenatedConvolution)
                return LayoutTensor(.blocked(a.conv2dBlockedReLU(concatenating: b, w, bias: layer.bias.value, stride: layer.stride,
                                                                 padding: layer.padding, width: width), moments: nil))
            }
        }
        return Self.concat([self, second], axis: 1).applyingWithReLU(layer)
    }

    /// On blocked values while gradients are recorded, deferred until something reads the result
    /// (`DeferredNormalization`): a ReLU that reads it first runs batch norm and ReLU as one op, which keeps no
    /// normalised copy beside the rectified one (and a 2x2 max-pooling reading that first runs the three as one).
    public func applying(_ layer: BatchNormalization, training: Bool, crossReplicaSum: CrossReplicaSum?) -> LayoutTensor {
        // A convolution cheaper to run again than to keep, nothing has read yet: its output handed over, so that the
        // batch norm + ReLU may give it back after forward and run the convolution again in backward.
        if GradMode.isEnabled, case .deferredConvolution(let convolution) = state, convolution.cheapToRecompute,
           let (x, moments) = convolution.forNormalization() {
            return LayoutTensor(deferring: DeferredNormalization(input: x, moments: moments, layer: layer, slope: nil, training: training,
                                                                 crossReplicaSum: crossReplicaSum, convolution: convolution), shape: shape)
        }
        switch form {
        case .blocked(let x, let moments) where GradMode.isEnabled:
            return LayoutTensor(deferring: DeferredNormalization(input: x, moments: moments, layer: layer, slope: nil, training: training,
                                                                 crossReplicaSum: crossReplicaSum), shape: shape)
        case .blocked(let x, _):
            return LayoutTensor(.blocked(layer.normalizing(x, training: training, crossReplicaSum: crossReplicaSum, layout: .blocked),
                                         moments: nil))
        case .pending(let p) where !training && p.activation == .identity:
            return LayoutTensor(.pending(p.folding(layer)))
        default:
            return planar { layer.normalizing($0, training: training, crossReplicaSum: crossReplicaSum, layout: .planar) }
        }
    }

    public func applyingWithELU(_ layer: BatchNormalization, alpha: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> LayoutTensor {
        switch form {
        case .blocked(let x, let moments):
            return LayoutTensor(.blocked(layer.withELU(x, training: training, crossReplicaSum: crossReplicaSum, alpha: alpha,
                                                       layout: .blocked, moments: moments), moments: nil))
        case .pending(let p) where !training && p.activation == .identity:
            return LayoutTensor(.pending(p.folding(layer).with(activation: .elu(alpha: alpha))))
        default:
            return planar { layer.withELU($0, training: training, crossReplicaSum: crossReplicaSum, alpha: alpha) }
        }
    }

    /// On blocked values, deferred until something reads the result (`DeferredNormalization`): a 2x2 max-pooling that
    /// reads it first runs batch norm, leaky ReLU and pooling as one op, which keeps no full-size activated copy.
    public func applyingWithLeakyReLU(_ layer: BatchNormalization, slope: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> LayoutTensor {
        // A training convolution nothing has read yet: its output is this batch norm's alone, so the batch norm may give
        // its values back after forward (in-place activated batch norm), the convolution run again for a later reader.
        if case .deferredConvolution(let convolution) = state, let (x, moments) = convolution.forNormalization() {
            return LayoutTensor(deferring: DeferredNormalization(input: x, moments: moments, layer: layer, slope: slope, training: training,
                                                                 crossReplicaSum: crossReplicaSum, convolution: convolution), shape: shape)
        }
        switch form {
        case .blocked(let x, let moments):
            return LayoutTensor(deferring: DeferredNormalization(input: x, moments: moments, layer: layer, slope: slope, training: training,
                                                                 crossReplicaSum: crossReplicaSum), shape: shape)
        case .pending(let p) where !training && p.activation == .identity:
            return LayoutTensor(.pending(p.folding(layer).with(activation: .leakyRelu(slope: slope))))
        default:
            return planar { layer.withLeakyReLU($0, training: training, crossReplicaSum: crossReplicaSum, slope: slope) }
        }
    }

    public func applyingWithELUAndMaxPool2x2(_ layer: BatchNormalization, alpha: Float, training: Bool,
                                             crossReplicaSum: CrossReplicaSum?) -> LayoutTensor {
        if case .blocked(let x, let moments) = form {
            return LayoutTensor(.blocked(layer.withELUAndMaxPool2x2(x, training: training, crossReplicaSum: crossReplicaSum, alpha: alpha,
                                                                    moments: moments), moments: nil))
        }
        return applyingWithELU(layer, alpha: alpha, training: training, crossReplicaSum: crossReplicaSum)
            .maxPool2d(kernel: (2, 2), stride: nil, padding: .valid)
    }

    public func applying(_ layer: Dense) -> LayoutTensor { planar { $0.applying(layer) } }
    /// Blocked values stay blocked; planar ones in training are blocked first where the output can be (a decoder's first
    /// up-convolution after a dense layer: conv-vae's 64 x 7 x 7 -> 64 x 14 x 14, its input a quarter of its output, where
    /// the planar op reorders input, output and both gradients inside oneDNN); a blocked input into an output of a few
    /// channels at stride 1 takes the narrow kernels (`conv2dTransposedBlockedNarrow`) and writes it planar.
    public func applying(_ layer: Conv2DTranspose) -> LayoutTensor { transposed(layer, relu: false) }

    /// In training, one blocked op (`conv2dTransposedBlockedReLU`) where the transposed convolution runs blocked;
    /// otherwise the two ops.
    public func applyingWithReLU(_ layer: Conv2DTranspose) -> LayoutTensor { transposed(layer, relu: true) }

    private func transposed(_ layer: Conv2DTranspose, relu: Bool) -> LayoutTensor {
        let (w, b) = (layer.kernel.value, layer.bias.value)
        // As a convolution's: a layer of 8k channels (not 16k) writes 8-channel blocks in a 16-wide pass.
        let width = w.shape.count == 4 && w.shape[1] % Self.blockWidth == 0 ? Self.blockWidth : 8
        func blockedOp(_ x: Tensor) -> LayoutTensor {
            Self.census?.count(.transposedBlocked)
            let y = relu ? x.conv2dTransposedBlockedReLU(w, bias: b, stride: layer.stride, padding: layer.padding, width: width)
                         : x.conv2dTransposedBlocked(w, bias: b, stride: layer.stride, padding: layer.padding, width: width)
            return LayoutTensor(.blocked(y, moments: nil))
        }
        if let x = blocked {
            if Tensor.canConvolveTransposedBlocked(input: shape, weight: w.shape, stride: layer.stride, padding: layer.padding,
                                                   width: width, inputWidth: x.shape[4]) { return blockedOp(x) }
            if Tensor.canConvolveTransposedBlockedNarrow(input: shape, weight: w.shape, stride: layer.stride, padding: layer.padding,
                                                         inputWidth: x.shape[4]) {
                Self.census?.count(.transposedNarrow)
                let y = LayoutTensor(.planar(x.conv2dTransposedBlockedNarrow(w, bias: b)))
                return relu ? y.relu() : y
            }
        } else if GradMode.isEnabled, ChannelLayout.blockedTrainingEnabled, shape.count == 4 {
            // Blocked here once: the planar op would reorder its input, its output and both gradients inside oneDNN.
            let inputWidth = shape[1] % Self.blockWidth == 0 ? Self.blockWidth : 8
            if shape[1] % inputWidth == 0,
               Tensor.canConvolveTransposedBlocked(input: shape, weight: w.shape, stride: layer.stride, padding: layer.padding,
                                                   width: width, inputWidth: inputWidth) { return blockedOp(tensor.blocked(width: inputWidth)) }
        }
        Self.census?.count(.transposedPlanar)
        let y = planar { $0.applying(layer) }
        return relu ? y.relu() : y
    }

    public func applying(_ layer: LSTMLayer) -> LayoutTensor { planar { $0.applying(layer) } }

    // MARK: Pooling and channel concatenation: blocked and inference paths for what they have, planar otherwise.

    public func maxPool2d(kernel: (Int, Int), stride: (Int, Int)?, padding: Padding) -> LayoutTensor {
        let stride = stride ?? kernel
        // A convolution + ReLU nothing else has read yet, 2x2/2 pooled: the three as one op, which keeps the pooled map and
        // window indices instead of the rectified one (`DeferredConvolution.rectifiedPooled`; "same" pools an odd last
        // row or column in windows of their own, as `maxPool2d` does).
        if kernel == (2, 2), stride == (2, 2), padding == .valid || padding == .same, shape.count == 4, shape[2] >= 2, shape[3] >= 2,
           case .deferredRectification(let convolution) = state, let pooled = convolution.rectifiedPooled(pooling: padding) {
            return pooled
        }
        // 2x2 windows at stride 2 cover an even map exactly: "same" pads nothing there and equals "valid".
        let evenMap = shape.count == 4 && shape[2] % 2 == 0 && shape[3] % 2 == 0
        let halving = kernel == (2, 2) && stride == (2, 2) && (padding == .valid || (padding == .same && evenMap))
        if halving, case .deferred(let normalization) = state, let pooled = normalization.pooled() { return pooled }
        if halving, let x = blocked { return LayoutTensor(.blocked(x.maxPool2x2Blocked(), moments: nil)) }
        if halving, !GradMode.isEnabled, let a = inferenceInput { return LayoutTensor(.inference(a.maxPool2x2())) }
        return planar { $0.maxPool2d(kernel: kernel, stride: stride, padding: padding) }
    }

    public func upsampleNearest(scale: (Int, Int)) -> LayoutTensor {
        if let x = blocked { return LayoutTensor(.blocked(x.upsampleNearestBlocked(scale: scale), moments: nil)) }
        if !GradMode.isEnabled, let a = inferenceInput, let y = a.upsampleNearest(scale: scale) { return LayoutTensor(.inference(y)) }
        return planar { $0.upsampleNearest(scale: scale) }
    }

    public static func concat(_ values: [LayoutTensor], axis: Int) -> LayoutTensor {
        let blocks = values.compactMap(\.blocked)
        if axis == 1, blocks.count == values.count, Set(blocks.map { $0.shape[4] }).count == 1 { return LayoutTensor(.blocked(Tensor.concat(blocks, axis: 1), moments: nil)) }
        if axis == 1, !GradMode.isEnabled, values.count > 1 {
            let laidOut = values.compactMap(\.laidOutInference)
            if laidOut.count == values.count, let y = DNNLActivation.concatChannels(laidOut) { return LayoutTensor(.inference(y)) }
        }
        return LayoutTensor(Tensor.concat(values.map(\.tensor), axis: axis))
    }

    // MARK: Planar only

    public func subtractingChannelMeans(_ means: [Float]) -> LayoutTensor {
        recomputableFromConstant(planar { $0.subtractingChannelMeans(means) }) { $0.subtractingChannelMeans(means) }
    }
    public func softmax(axis: Int) -> LayoutTensor { planar { $0.softmax(axis: axis) } }
    public func reshaped(_ newShape: [Int]) -> LayoutTensor { planar { $0.reshaped(newShape) } }
    public func flattened() -> LayoutTensor { planar { $0.flattened() } }
    public func transposed(_ permutation: [Int]) -> LayoutTensor { planar { $0.transposed(permutation) } }
    public func lastTimestep() -> LayoutTensor { planar { $0.lastTimestep() } }
    public func repeatedOverSteps(_ steps: Int) -> LayoutTensor { planar { $0.repeatedOverSteps(steps) } }
    public func resized(height: Int, width: Int) -> LayoutTensor { planar { $0.resized(height: height, width: width) } }
    public func padded(top: Int, left: Int, bottom: Int, right: Int, value: Float) -> LayoutTensor {
        planar { $0.padded(top: top, left: left, bottom: bottom, right: right, value: value) }
    }
    public func cropped(top: Int, left: Int, height: Int, width: Int) -> LayoutTensor {
        planar { $0.cropped(top: top, left: left, height: height, width: width) }
    }
    public func spaceToDepth(blockSize: Int) -> LayoutTensor { planar { $0.spaceToDepth(blockSize: blockSize) } }
    /// Region pooling reads the features planar (NCHW); its result, one small map a region, is planar too.
    public func roiMaxPool(rois: LayoutTensor, outputHeight: Int, outputWidth: Int, spatialScale: Float) -> LayoutTensor {
        planar { $0.roiMaxPool(rois: rois.tensor, outputHeight: outputHeight, outputWidth: outputWidth, spatialScale: spatialScale) }
    }
    public func roiAlign(rois: LayoutTensor, outputHeight: Int, outputWidth: Int, spatialScale: Float, samplingRatio: Int,
                         aligned: Bool) -> LayoutTensor {
        planar {
            $0.roiAlign(rois: rois.tensor, outputHeight: outputHeight, outputWidth: outputWidth, spatialScale: spatialScale,
                        samplingRatio: samplingRatio, aligned: aligned)
        }
    }
    /// Blocked values stay blocked (SSD300's conv4_3 in training: no NCHW copy held for backward, 23 MB at batch 8, and its
    /// predictors' convolutions read blocked values); any other layout goes through the planar op.
    public func l2NormalizeChannels(gamma: Parameter, epsilon: Float) -> LayoutTensor {
        if let x = blocked { return LayoutTensor(.blocked(x.l2NormalizeChannelsBlocked(gamma: gamma.value, epsilon: epsilon), moments: nil)) }
        return planar { $0.l2NormalizeChannels(gamma: gamma.value, epsilon: epsilon) }
    }
}

/// How many convolutions ran in each layout (`LayoutTensor.census`).
package final class LayoutCensus: @unchecked Sendable {
    /// Blocked (training) convolutions, inference convolutions (run later in oneDNN's layout, or planar where oneDNN has
    /// no plan: then counted in `planar` too), planar ones.
    package private(set) var blocked = 0, pending = 0, planar = 0
    /// Deferred batch norms run with the pooling after them as one op, and those read again after that
    /// (`DeferredNormalization`).
    package private(set) var pooledNormalizations = 0, normalizationsReadAfterPooling = 0
    /// Deferred batch norms run with the residual sum after them as one op (`DeferredNormalization.adding`); read
    /// again after that, they count in `normalizationsReadAfterPooling`.
    package private(set) var residualNormalizations = 0
    /// Blocked training convolutions run with the ReLU that read them first as one op, and those of them read again by
    /// something else after that (`DeferredConvolution`).
    package private(set) var convolutionsWithReLU = 0, convolutionsReadAfterReLU = 0
    /// Blocked training convolutions run with their ReLU and the 2x2 pooling after it as one op, and those of them whose
    /// rectified output something else read after the pooling (run again: `DeferredConvolution`).
    package private(set) var pooledConvolutions = 0, convolutionsReadAfterPooling = 0
    /// Batch norms + leaky ReLU that gave their input's values back after forward (in-place activated batch norm).
    package private(set) var normalizationsWithoutInput = 0
    /// Plain batch norms that the ReLU reading them first ran with as one op (`DeferredNormalization.rectified`).
    package private(set) var normalizationsWithReLU = 0
    /// Transposed convolutions run blocked (input and output), from a blocked input into a narrow planar output, and planar.
    package private(set) var transposedBlocked = 0, transposedNarrow = 0, transposedPlanar = 0
    /// Blocked training convolutions (+ ReLU) of two inputs whose concatenation never existed (`conv2dBlockedReLU(concatenating:)`;
    /// also counted in `blocked`).
    package private(set) var concatenatedConvolutions = 0
    package init() {}

    /// Only the task that set the census counts (a forward pass runs its ops on one thread).
    func count(_ path: Path) {
        switch path {
        case .blocked: blocked += 1
        case .pending: pending += 1
        case .planar: planar += 1
        case .pooledNormalization: pooledNormalizations += 1
        case .normalizationReadAfterPooling: normalizationsReadAfterPooling += 1
        case .normalizationAddedToResidual: residualNormalizations += 1
        case .convolutionWithReLU: convolutionsWithReLU += 1
        case .convolutionReadAfterReLU: convolutionsReadAfterReLU += 1
        case .normalizationWithoutInput: normalizationsWithoutInput += 1
        case .pooledConvolution: pooledConvolutions += 1
        case .convolutionReadAfterPooling: convolutionsReadAfterPooling += 1
        case .normalizationWithReLU: normalizationsWithReLU += 1
        case .transposedBlocked: transposedBlocked += 1
        case .transposedNarrow: transposedNarrow += 1
        case .transposedPlanar: transposedPlanar += 1
        case .concatenatedConvolution: concatenatedConvolutions += 1
        }
    }

    enum Path {
        case blocked, pending, planar, pooledNormalization, normalizationReadAfterPooling, normalizationAddedToResidual, convolutionWithReLU,
             convolutionReadAfterReLU, normalizationWithoutInput, pooledConvolution, convolutionReadAfterPooling,
             normalizationWithReLU, transposedBlocked, transposedNarrow, transposedPlanar, concatenatedConvolution
    }
}

/// A batch norm + leaky ReLU on blocked values (darknet's blocks), not run until something reads its result, so that
/// what follows chooses how it runs: a 2x2 max-pooling at stride 2 reading it first runs the three as one op
/// (`Tensor.batchNormLeakyReLUMaxPool2x2Blocked`), which keeps the pooled map and 2-bit window indices instead of the
/// full-size activated output (yolov3-tiny at 416 x 416, batch 8: 84.5 MB at layer 0 alone); anything else runs batch
/// norm + leaky ReLU alone, once. Nothing in the model says which: the pass is written once over `NetworkValue`.
///
/// A sum with a blocked value of the same shape reading it first (a darknet shortcut: `h + block(h)`) runs as one op too
/// (`Tensor.batchNormLeakyReLUAdding`), which writes the sum where the activated values were (YOLOv3's residual blocks:
/// about 0.45 GB at 416 x 416, batch 8).
///
/// A value read by the pooling (or the sum) and then by something else (yolov3-tiny's layer 8, pooled and routed to layer 20) is
/// computed a second time for the later reader, as a graph node of its own from the same input: the same batch
/// statistics (the same sums in the same order, or the convolution's), the running statistics updated once (the second
/// run updates throwaway copies), and the two nodes' gradients adding up to the one op's within rounding. That costs
/// what the unfused ops cost; it happens on deeper, smaller maps.
///
/// A plain batch norm on blocked values in training (`slope` nil: VGG's and ResNet's blocks, whose ReLU is an op of its
/// own) is deferred too: a ReLU reading it first takes it as batch norm + leaky ReLU of slope 0, deferred in turn
/// (`rectified`), which keeps the input and the rectified output where the two ops kept the normalised values too
/// (faster-rcnn's VGG16 at 375 x 500, batch 2: about 100 MB), and runs with a 2x2 pooling after it as one op. The values
/// and gradients are the two ops' (a zero may be -0), the batch statistics from the convolution's channel sums
/// (`ChannelMoments`) where it computed them. Anything else reads the plain batch norm, run as before.
///
/// The forward pass runs its ops in program order on one task, so the deferred op runs inside the same pass, on every
/// rank at the same point (with `--sync-bn` its collectives keep their order across ranks).
final class DeferredNormalization {
    let input: Tensor
    let moments: ChannelMoments?
    let layer: BatchNormalization
    /// The leaky ReLU's slope (0: ReLU), or nil for batch norm alone.
    let slope: Float?
    let training: Bool
    let crossReplicaSum: CrossReplicaSum?
    private var full: LayoutTensor?
    private var fusedAlready = false
    /// The residual form keeping its input (tests compare the two; the default gives it back).
    @TaskLocal static var residualKeepsInput = false

    /// True when nothing but this batch norm reads `input` (a convolution's output handed over by `DeferredConvolution`):
    /// batch norm + leaky ReLU alone, or with the residual sum, then gives its values back after forward
    /// (`batchNormLeakyReLU(..., keepingInput: false)`, `batchNormLeakyReLUAdding`). The pooled form keeps them: its
    /// output does not determine the input.
    var ownsInput: Bool { convolution != nil }
    /// The convolution that handed `input` over, run again for a read of this value after the residual form gave the
    /// input back.
    let convolution: DeferredConvolution?

    init(input: Tensor, moments: ChannelMoments?, layer: BatchNormalization, slope: Float?, training: Bool, crossReplicaSum: CrossReplicaSum?,
         convolution: DeferredConvolution? = nil) {
        self.convolution = convolution
        self.input = input
        self.moments = moments
        self.layer = layer
        self.slope = slope
        self.training = training
        self.crossReplicaSum = crossReplicaSum
    }

    /// Batch norm + ReLU, deferred, for the ReLU reading a plain batch norm first (the same one for a second ReLU); nil
    /// when this has an activation already or something else read it first.
    func rectified() -> DeferredNormalization? {
        if let withReLU { return withReLU }
        guard slope == nil, full == nil, !fusedAlready else { return nil }
        fusedAlready = true
        LayoutTensor.census?.count(.normalizationWithReLU)
        let value = DeferredNormalization(input: input, moments: moments, layer: layer, slope: 0, training: training,
                                          crossReplicaSum: crossReplicaSum, convolution: convolution)
        withReLU = value
        return value
    }
    private var withReLU: DeferredNormalization?

    /// Batch norm, leaky ReLU and 2x2/2 max-pooling as one op, if nothing has read the values yet; nil otherwise.
    func pooled() -> LayoutTensor? {
        guard let slope, full == nil, !fusedAlready else { return nil }
        fusedAlready = true
        input.restoreValues()
        LayoutTensor.census?.count(.pooledNormalization)
        let y = layer.withLeakyReLUAndMaxPool2x2(input, training: training, crossReplicaSum: crossReplicaSum, slope: slope, moments: moments)
        input.releaseRecomputableValues()   // a cheap first convolution's output (`DeferredConvolution.forNormalization`)
        return LayoutTensor(.blocked(y, moments: nil))
    }

    /// `residual` + batch norm + leaky ReLU as one op (`Tensor.batchNormLeakyReLUAdding`: a darknet shortcut), if nothing
    /// has read the values yet and the residual is blocked in the same shape; nil otherwise.
    func adding(_ residual: LayoutTensor) -> LayoutTensor? {
        // The residual read first: it may be this value itself (x + x), which then has run alone.
        // Slope 0 (ReLU) is not inverted, and darknet's shortcut is what this fuses.
        guard let slope, slope > 0, !fusedAlready, let r = residual.blocked, full == nil, r.shape == input.shape else { return nil }
        fusedAlready = true
        input.restoreValues()
        LayoutTensor.census?.count(.normalizationAddedToResidual)
        let y = layer.withLeakyReLUAdding(r, to: input, training: training, crossReplicaSum: crossReplicaSum, slope: slope, layout: .blocked,
                                          moments: moments, keepingInput: !ownsInput || Self.residualKeepsInput)
        if input.valuesReleased { LayoutTensor.census?.count(.normalizationWithoutInput) }
        return LayoutTensor(.blocked(y, moments: nil))
    }

    /// Batch norm + leaky ReLU, run on first use.
    var result: LayoutTensor {
        if let full { return full }
        input.restoreValues()   // given back by a convolution that read it (`DeferredConvolution.readInput`): computed again
        if fusedAlready { LayoutTensor.census?.count(.normalizationReadAfterPooling) }
        guard let slope else {
            // Batch norm alone; after a ReLU took it (`rectified`), a node of its own that leaves the moving statistics
            // to the ReLU's op, on the convolution run again where the ReLU's op may give the input back.
            var x = input
            if fusedAlready, let convolution, case .blocked(let again, _) = convolution.result.form { x = again }
            let y = layer.normalizing(x, training: training, crossReplicaSum: crossReplicaSum, layout: .blocked,
                                      updatingRunningStatistics: !fusedAlready)
            let value = LayoutTensor(.blocked(y, moments: nil))
            full = value
            return value
        }
        // After the residual form gave the input back: the convolution again (the same bits and sums), a node of its own.
        var (x, sums) = (input, moments)
        if input.valuesReleased, let convolution, case .blocked(let again, let againSums) = convolution.result.form { (x, sums) = (again, againSums) }
        // ReLU (slope 0) on a convolution's output handed over: given back after forward, the convolution run again in
        // backward (`cheapToRecompute`); the leaky ReLU recovers it from the output instead, and where that convolution
        // is cheap to run again (darknet's first layer) the output itself is computed again in backward from it.
        let cheap = slope == 0 || convolution?.cheapToRecompute == true
        let recompute: (() -> FloatStorage)? = cheap && !fusedAlready && x === input ? convolution?.recomputed : nil
        let y = layer.withLeakyReLU(x, training: training, crossReplicaSum: crossReplicaSum, slope: slope, layout: .blocked,
                                    moments: sums, updatingRunningStatistics: !fusedAlready, keepingInput: !ownsInput || fusedAlready,
                                    recomputingInput: recompute)
        if x.valuesReleased { LayoutTensor.census?.count(.normalizationWithoutInput) }
        let value = LayoutTensor(.blocked(y, moments: nil))
        full = value
        return value
    }
}

/// A blocked training convolution not run until something reads its output, so that a ReLU reading it first runs with
/// it as one op (`conv2dBlockedReLU`), which keeps one buffer where the two ops keep the convolution's output beside the
/// rectified one (the ReLU's backward reads its input; the convolution's backward never reads its output): SSD300's
/// VGG layers at 300 x 300, batch 8, keep about 0.8 GB less. Anything else reads the convolution alone, run once, with
/// the channel sums a batch norm after it takes (`ChannelMoments`).
///
/// The ReLU itself waits for its first reader (`LayoutTensor.relu()`): a 2x2/2 max-pooling reading it first runs the
/// convolution, the ReLU and the pooling as one op (`conv2dBlockedReLUMaxPool2x2`), which keeps the pooled map and 2-bit
/// window indices instead of the full-size rectified output (SSD300's conv1_2, conv2_2 and conv3_3 at 300 x 300, batch
/// 8: 184, 92 and 46 MB, the last "same"-pooled from 75 x 75, which the ops apart pool planar); any other reader gets
/// the convolution + ReLU.
///
/// As `DeferredNormalization`: a value read by the ReLU (or the pooling) and then by something else is computed a second
/// time for the later reader, a graph node of its own from the same input and weights, so the gradients of the two add
/// up as the one op's would. The forward pass reads its values in program order on one task, so the convolution runs
/// inside the pass.
final class DeferredConvolution {
    let input: Tensor
    let kernel: Tensor, bias: Tensor
    let stride: (Int, Int), padding: Padding
    let width: Int
    private var plain: LayoutTensor?
    private var activated: LayoutTensor?
    private var pooledAlready = false

    init(input: Tensor, kernel: Tensor, bias: Tensor, stride: (Int, Int), padding: Padding, width: Int) {
        self.input = input
        self.kernel = kernel
        self.bias = bias
        self.stride = stride
        self.padding = padding
        self.width = width
    }

    /// The input for a run: values given back after an earlier run computed again first (`Tensor.restoreValues`).
    /// After each run in forward the input is given back if its op declared it recomputable (`Tensor.recomputable(by:)`:
    /// a batch norm + activation + 2x2 pooling's output, the images' normalisation): no copy is held through the rest of
    /// forward, the backward sweep computes it again for this convolution's weight gradient, and a later reader in
    /// forward (through `LayoutTensor.form` or another deferred op) computes it again first.
    private var readInput: Tensor { input.restoreValues(); return input }

    /// Nothing has read the convolution's output, its ReLU or its pooling yet.
    var unread: Bool { plain == nil && activated == nil && !handedOver && !pooledAlready }

    /// The convolution and the ReLU as one op, unless the convolution's output was read alone first (then the ReLU of
    /// that); run on first use.
    var rectifiedResult: LayoutTensor {
        if let activated { return activated }
        let value: LayoutTensor
        if plain == nil && !handedOver {
            LayoutTensor.census?.count(pooledAlready ? .convolutionReadAfterPooling : .convolutionWithReLU)
            let y = readInput.conv2dBlockedReLU(kernel, bias: bias, stride: stride, padding: padding, width: width)
            input.releaseRecomputableValues()
            // A convolution cheap to run again (SSD300's conv1_1: 27 multiply-adds an output, 176 MB at batch 8): its
            // rectified output is computed again in backward instead of held through the step, once the next convolution
            // has read it (`readInput`); that convolution's backward gives it back again between its weight gradient and its
            // input gradient (`blockedConvolutionBackward`), so that the input gradient takes its place. (Without that, the
            // value and its gradient beside the output gradient raised the resident peak 1,321 -> 1,402 MB: BENCHMARKS.md,
            // "Values computed again in backward".) Captures the values, not this object, which holds the output.
            if cheapToRecompute && y.requiresGrad {
                let (x, kernel, bias, stride, padding, width) = (input, kernel, bias, stride, padding, width)
                y.recomputable(alsoInBackward: true) {
                    x.restoreValues()
                    return GradMode.disabled { x.conv2dBlockedReLU(kernel, bias: bias, stride: stride, padding: padding, width: width) }.storage
                }
            }
            value = LayoutTensor(.blocked(y, moments: nil))
        } else {
            guard case .blocked(let x, _) = result.form else { preconditionFailure("a deferred convolution's output is blocked") }
            value = LayoutTensor(.blocked(x.relu(), moments: nil))
        }
        activated = value
        return value
    }

    /// The convolution, the ReLU and 2x2/2 max-pooling (`pooling`: valid or same) as one op, if nothing has read the
    /// convolution or its ReLU yet; nil otherwise.
    func rectifiedPooled(pooling: Padding) -> LayoutTensor? {
        guard unread else { return nil }
        pooledAlready = true
        LayoutTensor.census?.count(.pooledConvolution)
        let y = readInput.conv2dBlockedReLUMaxPool2x2(kernel, bias: bias, stride: stride, padding: padding, width: width, pooling: pooling)
        input.releaseRecomputableValues()
        return LayoutTensor(.blocked(y, moments: nil))
    }

    /// The convolution alone for a batch norm that reads it first and owns its output (`DeferredNormalization.ownsInput`),
    /// if nothing has read it yet; nil otherwise. Not kept here: a later reader runs the convolution again (`result`),
    /// since the batch norm may give these values back after forward.
    func forNormalization() -> (Tensor, ChannelMoments)? {
        guard unread else { return nil }
        handedOver = true
        let moments = ChannelMoments()
        let y = readInput.conv2dBlocked(kernel, bias: bias, stride: stride, padding: padding, blockedOutput: true, width: width, moments: moments)
        input.releaseRecomputableValues()
        // A first layer cheap to run again (darknet's 3 -> 32 at 416 x 416: 169 MB at batch 8): the batch norm + activation
        // + pooling that keeps it for its backward gives it back after forward (`DeferredNormalization.pooled`), and the
        // backward sweep computes it again (as `recomputed`: the same kernels, the same bits). Captures the values, not
        // this object, which may hold a later reader's output.
        if cheapToRecompute && y.requiresGrad {
            let (x, kernel, bias, stride, padding, width) = (input, kernel, bias, stride, padding, width)
            y.recomputable {
                x.restoreValues()
                return GradMode.disabled {
                    x.conv2dBlocked(kernel, bias: bias, stride: stride, padding: padding, blockedOutput: true, width: width, moments: ChannelMoments())
                }.storage
            }
        }
        return (y, moments)
    }
    private var handedOver = false

    /// Whether the convolution costs little enough to run again in backward instead of keeping its output for the batch
    /// norm + ReLU after it: at most 64 multiply-adds an output value (3 x 3 over 3 or 4 input channels, as an image's
    /// first layer; VGG's conv1_1 at width 0.25: 27, its output 24 MB for 2 images at 375 x 500, where conv1_2's pass
    /// over it costs 144 an output value and both backward passes twice that).
    var cheapToRecompute: Bool { Self.cheapToRecompute(kernel.shape) }
    static func cheapToRecompute(_ kernel: [Int]) -> Bool { kernel.count == 4 && kernel[1] * kernel[2] * kernel[3] <= 64 }

    /// The output computed again, outside the graph, the same way as `forNormalization` (the same kernels, the same bits).
    func recomputed() -> FloatStorage {
        GradMode.disabled {
            readInput.conv2dBlocked(kernel, bias: bias, stride: stride, padding: padding, blockedOutput: true, width: width, moments: ChannelMoments())
        }.storage
    }

    /// The convolution alone, run on first use.
    var result: LayoutTensor {
        if let plain { return plain }
        if activated != nil || handedOver || pooledAlready { LayoutTensor.census?.count(.convolutionReadAfterReLU) }
        let moments = ChannelMoments()
        let y = readInput.conv2dBlocked(kernel, bias: bias, stride: stride, padding: padding, blockedOutput: true, width: width, moments: moments)
        input.releaseRecomputableValues()
        let value = LayoutTensor(.blocked(y, moments: moments))
        plain = value
        return value
    }
}

/// An inference convolution not run yet: a batch norm in inference mode that follows is folded into its kernel and
/// bias, an activation into its store; it runs (once) when another op reads it.
final class PendingConvolution {
    let input: LayoutTensor
    let kernel: Tensor, bias: Tensor
    let stride: (Int, Int), padding: Padding
    let activation: FusedActivation
    let shape: [Int]
    private var computed: LayoutTensor?

    init(input: LayoutTensor, kernel: Tensor, bias: Tensor, stride: (Int, Int), padding: Padding, activation: FusedActivation = .identity) {
        self.input = input
        self.kernel = kernel
        self.bias = bias
        self.stride = stride
        self.padding = padding
        self.activation = activation
        shape = Tensor.conv2dShape(input: input.shape, weight: kernel.shape, stride: stride, padding: padding)
    }

    func with(activation: FusedActivation) -> PendingConvolution {
        PendingConvolution(input: input, kernel: kernel, bias: bias, stride: stride, padding: padding, activation: activation)
    }

    func folding(_ norm: BatchNormalization) -> PendingConvolution {
        let (k, b) = norm.folded(kernel: kernel, bias: bias)
        return PendingConvolution(input: input, kernel: k, bias: b, stride: stride, padding: padding, activation: activation)
    }

    /// The convolution in oneDNN's layout, or planar where oneDNN has no plan for it.
    var result: LayoutTensor {
        if let computed { return computed }
        let value: LayoutTensor
        if let source = input.inferenceInput,
           let y = source.conv2d(kernel, bias: bias, stride: stride, padding: padding, activation: activation) {
            value = LayoutTensor(.inference(y))
        } else {
            LayoutTensor.census?.count(.planar)
            value = LayoutTensor(activation.applied(to: input.tensor.conv2d(kernel, bias: bias, stride: stride, padding: padding)))
        }
        computed = value
        return value
    }
}
