/// Batch normalisation (Ioffe & Szegedy 2015) over the channel axis 1 of [N, C] or [N, C, H, W] (any number
/// of trailing axes), forward and backward side by side.
///
/// Conventions, Keras's where Keras and PyTorch differ:
/// - `momentum` is the weight of the old value: running = running * momentum + batch * (1 - momentum),
///   default 0.99 (PyTorch's momentum 0.1 means 0.9 here). `epsilon` (default 1e-3) is added to the
///   variance under the square root.
/// - Training normalises with the batch mean and the biased batch variance (divided by the count m).
/// - What the running variance averages differs between frameworks: PyTorch, the paper's inference rule
///   (Algorithm 2) and Keras 2 on 4-D inputs (its fused kernel) use the unbiased estimate m / (m - 1) times the
///   biased one; Keras 2 on 2-D inputs (its non-fused path) and Keras 3 use the biased one. `.unbiased` is the
///   default; `.biased` reproduces the others. With m = 1 the biased value (0) is used.
/// - Evaluation normalises with the running statistics and leaves them untouched.
/// The running statistics are plain constant tensors updated in place; they are not differentiated.
///
/// ## Synchronised batch norm across data-parallel ranks
/// Every quantity that mixes samples is a per-channel sum, so statistics over the global batch need one
/// elementwise allreduce-sum of a small Double buffer per pass, supplied as `crossReplicaSum`:
/// - forward: [sum x (C) | sum x^2 (C) | m (1)]. Mean, variance and the running averages come from the
///   global sums, so they are identical on every rank and the running statistics stay in sync.
/// - backward: [sum dy (C) | sum dy x^ (C)] (x^ the normalised input), from which dx follows for the global
///   batch mean and variance. With the global count m, each rank's dx is then R times the gradient of the
///   rank-averaged loss (each rank's dy comes from its own mean loss), which the trainer's averaging of
///   parameter gradients over the R ranks divides back: the convention of PyTorch's SyncBatchNorm.
/// gamma and beta get the local sums: their gradients are averaged by the trainer like every other parameter.
/// The hook is called collectively: every rank must run the same batch-norm layers in the same order, which
/// holds when all ranks run the same model. Without a hook the statistics are those of the local batch.
///
/// With `layout: .blocked` the input is [N, C/B, H, W, B], B = 8 or 16 (BlockedLayout.swift), and each loop takes a
/// pixel's B channels as one vector; the values are those of the NCHW op up to the order of Double sums (tested).
///
/// The sums are accumulated in Double, so the variance E[x^2] - E[x]^2 (the form that allreduces) stays
/// accurate to Float precision unless a channel's mean exceeds its standard deviation by a factor of ~1e4.
extension Tensor {
    public func batchNorm(gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor, training: Bool,
                          momentum: Float = 0.99, epsilon: Float = 1e-3,
                          runningVarianceEstimator: RunningVarianceEstimator = .unbiased,
                          crossReplicaSum: CrossReplicaSum? = nil, layout: ChannelLayout = .planar) -> Tensor {
        normalized(gamma: gamma, beta: beta, runningMean: runningMean, runningVar: runningVar, training: training, momentum: momentum,
                   epsilon: epsilon, runningVarianceEstimator: runningVarianceEstimator, crossReplicaSum: crossReplicaSum, activation: nil,
                   layout: layout)
    }

    /// `batchNorm(...).elu(alpha:)` as one op, bit for bit the same values and gradients: in-place activated batch
    /// norm (S. Rota Bulo, L. Porzi, P. Kontschieder, "In-Place Activated BatchNorm for Memory-Optimized Training of
    /// DNNs", CVPR 2018) in its simplest form. The normalised values are never stored: backward needs only the input
    /// (for the statistics) and the output y, whose ELU derivative is 1 where y > 0 and y + alpha elsewhere. That
    /// saves one activation-sized tensor, its gradient and a pass over memory per layer (SSD7's seven blocks).
    public func batchNormELU(gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor, training: Bool,
                             momentum: Float = 0.99, epsilon: Float = 1e-3,
                             runningVarianceEstimator: RunningVarianceEstimator = .unbiased,
                             crossReplicaSum: CrossReplicaSum? = nil, alpha: Float = 1, layout: ChannelLayout = .planar,
                             moments: ChannelMoments? = nil) -> Tensor {
        precondition(alpha > 0, "ELU alpha \(alpha) must be positive for its output to determine its derivative")
        return normalized(gamma: gamma, beta: beta, runningMean: runningMean, runningVar: runningVar, training: training, momentum: momentum,
                          epsilon: epsilon, runningVarianceEstimator: runningVarianceEstimator, crossReplicaSum: crossReplicaSum, activation: .elu(alpha: alpha),
                          layout: layout, moments: moments)
    }

    /// `batchNorm(...).leakyRelu(slope:)` as one op, as `batchNormELU` fuses the ELU (darknet's convolutional blocks):
    /// leaky ReLU's derivative, 1 where y > 0 and `slope` elsewhere, is read from the output. `slope: 0` is
    /// `batchNorm(...).relu()` (VGG's and ResNet's blocks), the same values (a zero may carry the sign of -0) and the same
    /// gradients bit for bit: the normalised values are not kept beside the rectified ones.
    ///
    /// `keepingInput: false` is the paper's full form: the input's values (a convolution's output, which its own
    /// backward never reads) are given back right after forward (`Tensor.releaseValues`), and backward recovers what it
    /// needs from the output alone: leaky ReLU is invertible (z = y, or y / slope where y <= 0) and so is the affine
    /// normalisation (x - mean = (z - beta) / scale, scale = gamma / sqrt(var + eps)), and batch norm's backward needs
    /// only x - mean. The caller promises that nothing reads the input's values after this op (`LayoutTensor` runs the
    /// convolution again for a later reader). The op keeps the input when it cannot invert: a ReLU (slope 0: the output
    /// does not determine the normalised values it zeroed, which batch norm's backward needs), a channel whose |gamma| is
    /// below 1e-2 max(1, |beta|) (there z - beta cancels: the recovered x - mean would carry float error of order
    /// 6e-8 |beta / gamma| of the channel's deviation), an input that is a leaf or whose own op reads it in backward.
    /// The values are the same bits either way; the gradients agree to float rounding (tested against the kept input
    /// and by finite differences), not bit for bit: z and x - mean are recomputed, not read. YOLOv3 at 416 x 416,
    /// batch 8: the convolution outputs of its 52 blocks outside the shortcuts, about 0.75 GB, are not held.
    ///
    /// `recomputingInput`, where the op keeps its input otherwise (a ReLU): x's values are given back after forward as
    /// above and backward gets them again from the closure (a convolution run again from its input, which that
    /// convolution's backward keeps anyway), for an input that costs little to compute and much to hold: VGG's conv1_1,
    /// 3 channels in and 16 (width 0.25) out at 375 x 500. The closure must return x's values, the same bits (the
    /// gradients then are the kept form's to the bit), in a buffer backward may keep as x's gradient. Where the op
    /// inverts instead (`keepingInput: false`, a leaky ReLU), the closure computes the output again: it is declared
    /// recomputable (`Tensor.recomputable(by:)`) from x run again and the statistics, the same bits.
    public func batchNormLeakyReLU(gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor, training: Bool,
                                   momentum: Float = 0.99, epsilon: Float = 1e-3,
                                   runningVarianceEstimator: RunningVarianceEstimator = .unbiased,
                                   crossReplicaSum: CrossReplicaSum? = nil, slope: Float, layout: ChannelLayout = .planar,
                                   moments: ChannelMoments? = nil, keepingInput: Bool = true,
                                   recomputingInput: (() -> FloatStorage)? = nil) -> Tensor {
        precondition(slope >= 0 && slope < 1, "leaky ReLU slope \(slope) must lie in [0, 1) for its output to determine its derivative")
        return normalized(gamma: gamma, beta: beta, runningMean: runningMean, runningVar: runningVar, training: training, momentum: momentum,
                          epsilon: epsilon, runningVarianceEstimator: runningVarianceEstimator, crossReplicaSum: crossReplicaSum,
                          activation: .leakyRelu(slope: slope), layout: layout, moments: moments, keepingInput: keepingInput,
                          recomputingInput: recomputingInput)
    }

    /// `residual + batchNorm(...).leakyRelu(slope:)` as one op (darknet's shortcut after a block): the sum is written
    /// where the activated values were, so they are never kept. Backward reads the leaky ReLU's derivative from the
    /// activated values computed again into a buffer of its own from the input and the statistics (the same kernel, the
    /// same bits), and adds the output gradient to the residual's: the values and gradients of `residual + y` on the two
    /// ops to the bit. YOLOv3's 23 residual blocks at 416 x 416, batch 8: about 0.45 GB less at the end of forward.
    /// `keepingInput: false` gives x back after forward as `batchNormLeakyReLU` does, y recovered in backward as the
    /// output minus the residual (to the sum's rounding: see `invertedBackward`).
    public func batchNormLeakyReLUAdding(_ residual: Tensor, gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor,
                                         training: Bool, momentum: Float = 0.99, epsilon: Float = 1e-3,
                                         runningVarianceEstimator: RunningVarianceEstimator = .unbiased,
                                         crossReplicaSum: CrossReplicaSum? = nil, slope: Float, layout: ChannelLayout = .planar,
                                         moments: ChannelMoments? = nil, keepingInput: Bool = true) -> Tensor {
        precondition(slope > 0 && slope < 1, "leaky ReLU slope \(slope) must lie in (0, 1) for its output to determine its derivative")
        precondition(residual.shape == shape, "residual \(residual.shape) added to batch norm of \(shape)")
        return normalized(gamma: gamma, beta: beta, runningMean: runningMean, runningVar: runningVar, training: training, momentum: momentum,
                          epsilon: epsilon, runningVarianceEstimator: runningVarianceEstimator, crossReplicaSum: crossReplicaSum,
                          activation: .leakyRelu(slope: slope), layout: layout, moments: moments, residual: residual,
                          keepingInput: keepingInput)
    }

    private func normalized(gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor, training: Bool,
                            momentum: Float, epsilon: Float, runningVarianceEstimator: RunningVarianceEstimator,
                            crossReplicaSum: CrossReplicaSum?, activation: BatchNormKernel.Activation?, layout: ChannelLayout,
                            moments: ChannelMoments? = nil, residual: Tensor? = nil, keepingInput: Bool = true,
                            recomputingInput: (() -> FloatStorage)? = nil) -> Tensor {
        let blocked = layout == .blocked
        precondition(rank >= 2, "batch norm needs [N, C, ...], got \(shape)")
        let width = blocked ? blockWidth : 0
        let (n, c) = (shape[0], blocked ? shape[1] * width : shape[1])
        let inner = blocked ? shape[2] * shape[3] : (n * c == 0 ? 0 : count / (n * c))
        for (t, what) in [(gamma, "gamma"), (beta, "beta"), (runningMean, "running mean"), (runningVar, "running variance")] {
            precondition(t.shape == [c], "batch norm \(what) \(t.shape) for \(c) channels")
        }
        precondition(!runningMean.requiresGrad && !runningVar.requiresGrad, "running statistics must be constants")
        let planes = BatchNormKernel.Planes(samples: n, channels: c, inner: inner, width: width)
        let x = self

        let stats = BatchNormStatistics(x, planes, gamma: gamma, runningMean: runningMean, runningVar: runningVar, training: training,
                                        momentum: momentum, epsilon: epsilon, estimator: runningVarianceEstimator,
                                        crossReplicaSum: crossReplicaSum, moments: moments)
        // In-place activated batch norm (see `batchNormLeakyReLU`): the input given back after forward where the output
        // determines it, decided here, before the closure, on gamma and beta (the same on every rank).
        var invertingSlope: Float?
        if !keepingInput, case .leakyRelu(let s)? = activation, s > 0, GradMode.isEnabled, x.valuesReleasable, residual?.valuesReleased != true,
           Self.invertible(gamma: gamma, beta: beta) {
            invertingSlope = s
        }
        // Otherwise, with a way to compute x again: x given back after forward, computed again in backward.
        let recomputing = invertingSlope == nil && residual == nil && GradMode.isEnabled && x.valuesReleasable ? recomputingInput : nil
        // `normalize` writes every output element.
        let out = Tensor.result(shape: shape, storage: FloatStorage(uninitializedCount: count), inputs: [x, gamma, beta] + (residual.map { [$0] } ?? []),
                                backwardReadsResult: residual == nil) { out in
            // With an activation fused in, the gradient reaching the normalisation is dy times its derivative, from y.
            // It overwrites dy in place: this closure is dy's last reader (the node and its gradient are released
            // right after it), and a separate buffer cost as much memory as the activation (295 MB for SSD7's first).
            let dy = out.grad
            if let slope = invertingSlope {
                Self.invertedBackward(out: out, dy: dy, x: x, residual: residual, gamma: gamma, beta: beta, planes: planes, stats: stats,
                                      slope: slope, crossReplicaSum: crossReplicaSum)
                return
            }
            if let residual, case .leakyRelu(let slope)? = activation {
                // The sum's gradient reaches the residual as it is (added, as the two ops' sum adds it); y is computed
                // again for the derivative (the output holds the sum), into a buffer given back at once.
                if residual.requiresGrad {
                    let dr = residual.grad
                    Parallel.forEachAlignedChunk(of: out.count) { r in for i in r { dr[i] += dy[i] } }
                }
                let y = FloatStorage(uninitializedCount: out.count)
                BatchNormKernel.normalize(planes, x: x.data, mean: stats.mean.pointer, scale: stats.scale.pointer, beta: beta.data,
                                          into: y.pointer, activation: activation)
                withExtendedLifetime(y) { BatchNormKernel.leakyReLUGradient(out.count, dy: dy, y: y.pointer, slope: slope, into: dy) }
            } else {
                switch activation {
                case .elu(let alpha)?: BatchNormKernel.eluGradient(out.count, dy: dy, y: out.data, alpha: alpha, into: dy)
                case .leakyRelu(let slope)?: BatchNormKernel.leakyReLUGradient(out.count, dy: dy, y: out.data, slope: slope, into: dy)
                case nil: break
                }
            }
            // x's values, computed again where forward gave them back.
            let recomputed = recomputing.map { recompute in
                let values = recompute()
                precondition(values.count == x.count, "batch norm's input computed again: \(values.count) values for \(x.shape)")
                return values
            }
            let xs = recomputed?.pointer ?? x.data
            // sums = [sum dy | sum dy (x - mean)] per channel, over the local batch.
            var sums = [Double](repeating: 0, count: 2 * c)
            sums.withUnsafeMutableBufferPointer { s in
                BatchNormKernel.channelSums(planes, dy, xs, shift: stats.mean.pointer, into: s.baseAddress!)
            }
            guard let (slope, offset) = stats.backward(&sums, x: x, gamma: gamma, beta: beta, crossReplicaSum: crossReplicaSum) else { return }
            defer { withExtendedLifetime((slope, offset, recomputed)) {} }
            // Element-wise: dx may be x's own block, or the recomputed values' (which then become x's gradient).
            let (dx, overwrite): (UnsafeMutablePointer<Float>, Bool)
            if let recomputed {
                let existing = x.gradientAdopting(recomputed)
                (dx, overwrite) = (existing ?? recomputed.pointer, existing == nil)
            } else {
                (dx, overwrite) = x.gradientForWriting(overValues: true)
            }
            BatchNormKernel.inputGradient(planes, dy: dy, x: xs, mean: stats.mean.pointer, scale: stats.scale.pointer,
                                          slope: slope.pointer, offset: offset.pointer, into: dx, overwrite: overwrite)
        }
        BatchNormKernel.normalize(planes, x: x.data, mean: stats.mean.pointer, scale: stats.scale.pointer, beta: beta.data,
                                  into: out.data, activation: activation)
        if let residual {
            let (r, z) = (residual.data, out.data)
            Parallel.forEachAlignedChunk(of: count) { range in for i in range { z[i] = r[i] + z[i] } }
        }
        if (invertingSlope != nil || recomputing != nil) && out.requiresGrad { x.releaseValues() }
        // In-place activated batch norm over an input cheap to compute again (darknet's first layer, 3 -> 32 at 416 x 416:
        // 169 MB at batch 8): the output too is computed again, x run again first, then the same kernel over it with the
        // same statistics, the same bits; the next convolution gives it back after its forward run, and backward gets
        // it again for that convolution's weight gradient and this op's inversion.
        if invertingSlope != nil, residual == nil, let recomputeInput = recomputingInput, out.requiresGrad {
            let count = count
            out.recomputable {
                let values = FloatStorage(uninitializedCount: count)
                let xs = recomputeInput()
                precondition(xs.count == count, "batch norm's input computed again: \(xs.count) values for \(count)")
                withExtendedLifetime(xs) {
                    BatchNormKernel.normalize(planes, x: xs.pointer, mean: stats.mean.pointer, scale: stats.scale.pointer,
                                              beta: beta.data, into: values.pointer, activation: activation)
                }
                return values
            }
        }
        // The activated output is the next convolution's input, which that convolution keeps for its weight gradient:
        // where x stays in the graph for this op's backward (a ReLU, or gamma too small to invert), the output is
        // computed again from x and the statistics by the same kernel, the same bits, in one element-wise pass (x itself
        // run again first where forward gave it back: VGG's conv1_1), so a convolution reading it last in forward may
        // give it back (`releaseRecomputableValues`) and backward gets it again just before its first reader. VGG16's
        // rectified maps in faster-rcnn at 375 x 500: about a third of the graph at the end of forward.
        if let activation, invertingSlope == nil, residual == nil, out.requiresGrad {
            let recomputeInput = recomputing
            let count = count
            out.recomputable {
                let values = FloatStorage(uninitializedCount: count)
                let xs = recomputeInput?()
                if xs == nil { x.restoreValues() }
                withExtendedLifetime(xs) {
                    BatchNormKernel.normalize(planes, x: xs?.pointer ?? x.data, mean: stats.mean.pointer, scale: stats.scale.pointer,
                                              beta: beta.data, into: values.pointer, activation: activation)
                }
                return values
            }
        }
        return out
    }

    /// Whether every channel's affine map can be inverted to float precision: |gamma| >= 1e-2 max(1, |beta|).
    private static func invertible(gamma: Tensor, beta: Tensor) -> Bool {
        let (g, b) = (gamma.data, beta.data)
        for k in 0..<gamma.count where !(abs(g[k]) >= 1e-2 * Swift.max(1, abs(b[k]))) { return false }
        return true
    }

    /// Batch norm + leaky ReLU's backward from the output alone (`batchNormLeakyReLU(..., keepingInput: false)`).
    /// With z = leaky^-1(y) = scale (x - mean) + beta, x - mean = (z - beta) / scale, so the kept-input formulas hold
    /// with z for x, beta for the mean, and the per-channel factors of x - mean divided by scale:
    /// sum dz (x - mean) = sum dz (z - beta) / scale, and slope (x - mean) = (slope / scale) (z - beta).
    /// z goes into a buffer of x's size, over which x's gradient is then written (it becomes the gradient when x has
    /// none yet): one buffer where the kept-input form wrote the gradient over x's values.
    ///
    /// With a residual (the output holds residual + y, darknet's shortcut) y is recovered as output - residual, which
    /// both ops keep anyway (the residual is the shortcut's input, read by the block's first convolution): y to within
    /// a rounding of the sum, so where |y| is below that rounding its sign, and the leaky ReLU's derivative there, may
    /// differ from the kept form's.
    private static func invertedBackward(out: Tensor, dy: UnsafeMutablePointer<Float>, x: Tensor, residual: Tensor?, gamma: Tensor,
                                         beta: Tensor, planes: BatchNormKernel.Planes, stats: BatchNormStatistics, slope leak: Float,
                                         crossReplicaSum: CrossReplicaSum?) {
        let n = out.count, c = planes.channels
        let y = UnsafePointer(out.data)
        let zStorage = FloatStorage(uninitializedCount: n)
        let z = zStorage.pointer
        if let residual {
            // The sum's gradient reaches the residual as it is, before dy becomes the leaky ReLU's input gradient.
            let r = UnsafePointer(residual.data)
            if residual.requiresGrad {
                let dr = residual.grad
                Parallel.forEachAlignedChunk(of: n) { range in for i in range { dr[i] += dy[i] } }
            }
            Parallel.forEachAlignedChunk(of: n) { range in for i in range { z[i] = y[i] - r[i] } }
            BatchNormKernel.leakyReLUGradient(n, dy: dy, y: z, slope: leak, into: dy)
            Parallel.forEachAlignedChunk(of: n) { range in
                for i in range { let v = z[i]; z[i] = v > 0 ? v : v / leak }
            }
        } else {
            BatchNormKernel.leakyReLUGradient(n, dy: dy, y: y, slope: leak, into: dy)
            Parallel.forEachAlignedChunk(of: n) { range in
                for i in range { let v = y[i]; z[i] = v > 0 ? v : v / leak }
            }
        }
        var sums = [Double](repeating: 0, count: 2 * c)
        sums.withUnsafeMutableBufferPointer { s in
            guard let base = s.baseAddress else { return }   // no channels: nothing to sum
            BatchNormKernel.channelSums(planes, dy, z, shift: beta.data, into: base)
        }
        let scale = stats.scale.pointer
        for k in 0..<c { sums[c + k] /= Double(scale[k]) }   // sum dz (x - mean)
        guard let (slope, offset) = stats.backward(&sums, x: x, gamma: gamma, beta: beta, crossReplicaSum: crossReplicaSum) else { return }
        let sl = slope.pointer
        for k in 0..<c { sl[k] /= scale[k] }
        withExtendedLifetime((slope, offset)) {
            // Element-wise: each gradient element is written after the one read of z at its index, so dx may be z's buffer.
            if let dx = x.gradientAdopting(zStorage) {
                BatchNormKernel.inputGradient(planes, dy: dy, x: z, mean: beta.data, scale: scale, slope: sl, offset: offset.pointer,
                                              into: dx, overwrite: false)
            } else {
                BatchNormKernel.inputGradient(planes, dy: dy, x: z, mean: beta.data, scale: scale, slope: sl, offset: offset.pointer,
                                              into: z, overwrite: true)
            }
        }
    }
}

/// A convolution's output statistics for the batch norm that reads it next: [sum x | sum x^2] per channel over the
/// batch, in Double, filled by `conv2dBlocked` when its kernel computed them as it wrote the output (Starling's own
/// forward kernels do; oneDNN's do not, and then `sums` stays nil and batch norm makes its own pass over the output).
/// The model passes one object from the convolution to the batch norm, for a tensor nothing modifies in between.
public final class ChannelMoments: @unchecked Sendable {
    public internal(set) var sums: [Double]?
    public init() {}
}

/// A batch-norm op's per-channel values: the statistics it normalises with (and, in training, the running averages
/// it updates), then in backward the coefficients of the input gradient.
final class BatchNormStatistics {
    let mean: FloatStorage, invStd: FloatStorage, scale: FloatStorage
    /// m, the count the statistics are over, over all ranks when synchronised (training only).
    private(set) var batchCount = 0.0
    let channels: Int
    let training: Bool

    init(_ x: Tensor, _ planes: BatchNormKernel.Planes, gamma: Tensor, runningMean: Tensor, runningVar: Tensor, training: Bool,
         momentum: Float, epsilon: Float, estimator: RunningVarianceEstimator, crossReplicaSum: CrossReplicaSum?,
         moments: ChannelMoments? = nil) {
        let c = planes.channels
        channels = c
        self.training = training
        mean = FloatStorage(count: c)
        invStd = FloatStorage(count: c)
        scale = FloatStorage(count: c)
        let mu = mean.pointer, inv = invStd.pointer
        if training {
            var stats = [Double](repeating: 0, count: 2 * c + 1)
            stats.withUnsafeMutableBufferPointer { s in
                if let known = moments?.sums, known.count == 2 * c {
                    for k in 0..<2 * c { s[k] = known[k] }
                } else {
                    BatchNormKernel.channelSums(planes, x.data, x.data, shift: nil, into: s.baseAddress!)
                }
                s[2 * c] = Double(planes.samples * planes.inner)
                crossReplicaSum?(s)
            }
            batchCount = stats[2 * c]
            precondition(batchCount > 0, "batch norm in training mode over an empty batch")
            let rm = runningMean.data, rv = runningVar.data
            for k in 0..<c {
                let batchMean = stats[k] / batchCount
                let variance = Swift.max(stats[c + k] / batchCount - batchMean * batchMean, 0)
                mu[k] = Float(batchMean)
                inv[k] = Float(1 / (variance + Double(epsilon)).squareRoot())
                let unbiased = estimator == .unbiased && batchCount > 1
                let averaged = unbiased ? variance * batchCount / (batchCount - 1) : variance
                rm[k] = rm[k] * momentum + Float(batchMean) * (1 - momentum)
                rv[k] = rv[k] * momentum + Float(averaged) * (1 - momentum)
            }
        } else {
            let rm = runningMean.data, rv = runningVar.data
            for k in 0..<c {
                mu[k] = rm[k]
                inv[k] = 1 / (rv[k] + epsilon).squareRoot()
            }
        }
        let g = gamma.data, sc = scale.pointer
        for k in 0..<c { sc[k] = g[k] * inv[k] }   // y = scale (x - mean) + beta
    }

    /// From sums = [sum dy | sum dy (x - mean)] over the local batch: adds gamma's and beta's gradients, then returns
    /// (slope, offset) with dx = scale dy + slope (x - mean) + offset, or nil when x needs no gradient. In training,
    /// where the batch statistics depend on x, dx = scale (dy - mean(dy) - x^ mean(dy x^)), with the sums over all
    /// ranks when synchronised; in evaluation dx = scale dy.
    func backward(_ sums: inout [Double], x: Tensor, gamma: Tensor, beta: Tensor, crossReplicaSum: CrossReplicaSum?)
        -> (slope: FloatStorage, offset: FloatStorage)? {
        let c = channels, inv = invStd.pointer, sc = scale.pointer
        for k in 0..<c { sums[c + k] *= Double(inv[k]) }   // sum dy x^
        if gamma.requiresGrad { let dg = gamma.grad; for k in 0..<c { dg[k] += Float(sums[c + k]) } }
        if beta.requiresGrad { let db = beta.grad; for k in 0..<c { db[k] += Float(sums[k]) } }
        guard x.requiresGrad else { return nil }
        let slope = FloatStorage(count: c), offset = FloatStorage(count: c)
        if training {
            sums.withUnsafeMutableBufferPointer { s in crossReplicaSum?(s) }
            let sl = slope.pointer, of = offset.pointer
            for k in 0..<c {
                let meanDy = sums[k] / batchCount, meanDyXhat = sums[c + k] / batchCount
                sl[k] = -sc[k] * inv[k] * Float(meanDyXhat)
                of[k] = -sc[k] * Float(meanDy)
            }
        }
        return (slope, offset)
    }
}

/// Which variance estimate the running variance averages (see `batchNorm`).
public enum RunningVarianceEstimator: Sendable {
    /// m / (m - 1) times the batch variance: PyTorch, Keras 2 on 4-D inputs.
    case unbiased
    /// The batch variance as used for normalising: Keras 2 on 2-D inputs, Keras 3.
    case biased
}

/// Sums a buffer of per-channel statistics elementwise over all data-parallel ranks, in place: an
/// allreduce with MPI_SUM on MPI_DOUBLE. See `batchNorm` for the buffer layouts and when it is called.
public typealias CrossReplicaSum = (UnsafeMutableBufferPointer<Double>) -> Void

/// The per-channel loops. A channel's data are `samples` planes of `inner` contiguous floats (H x W), the
/// plane of (sample s, channel k) starting at (s C + k) inner. For [N, C] (inner 1) the loops run along rows
/// of C channels instead, so that they vectorise over channels rather than paying a call per float.
enum BatchNormKernel {
    struct Planes {
        let samples: Int
        let channels: Int
        let inner: Int
        /// The blocked layout's block width B (8 or 16), 0 for planar: channel k of sample s is lane k % B of the plane
        /// (s, k / B), whose `inner` pixels are vectors of B floats at (s C / B + k / B) B inner.
        var width = 0
        var blocked: Bool { width > 0 }
    }

    /// For every channel k: sums[k] += sum a, sums[C + k] += sum a (b - shift[k]) (shift 0 when nil).
    static func channelSums(_ p: Planes, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                            shift: UnsafePointer<Float>?, into sums: UnsafeMutablePointer<Double>) {
        let c = p.channels
        if p.blocked {
            let width = p.width, blocks = c / width
            Parallel.forEachChunk(of: blocks, work: p.samples * c * p.inner) { range in
                // Per block, the sums over the samples first, then added to `sums` (as the planar loop adds per sample).
                let local = UnsafeMutablePointer<Double>.allocate(capacity: 2 * width)
                defer { local.deallocate() }
                for block in range {
                    local.initialize(repeating: 0, count: 2 * width)
                    for s in 0..<p.samples {
                        let start = (s * blocks + block) * p.inner * width
                        KernelDispatch.blockedSumAndDot(width: width, p.inner, a + start, b + start, shift: shift.map { $0 + width * block },
                                                        sums: local, products: local + width)
                    }
                    for l in 0..<width { sums[width * block + l] += local[l]; sums[c + width * block + l] += local[width + l] }
                }
            }
            return
        }
        if p.inner == 1 {
            let zeros = FloatStorage(count: c)
            defer { withExtendedLifetime(zeros) {} }
            let sh = shift ?? UnsafePointer(zeros.pointer)
            let products = sums + c
            for s in 0..<p.samples {
                let ar = a + s * c, br = b + s * c
                for k in 0..<c {
                    let av = Double(ar[k])
                    sums[k] += av
                    products[k] += av * Double(br[k] - sh[k])
                }
            }
            return
        }
        // Channels are shared over the threads; each channel's sum runs in the same order whatever their number.
        Parallel.forEachChunk(of: c, work: p.samples * c * p.inner) { channels in
            for s in 0..<p.samples {
                for k in channels {
                    let start = (s * c + k) * p.inner
                    let (plain, product) = sumAndDot(p.inner, a + start, b + start, shift: shift?[k] ?? 0)
                    sums[k] += plain
                    sums[c + k] += product
                }
            }
        }
    }

    /// (sum a, sum a (b - shift)) over n floats, accumulated in Double lanes.
    @inline(__always)
    static func sumAndDot(_ n: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, shift: Float) -> (Double, Double) {
        typealias D = SIMD8<Double>
        var plain = D(repeating: 0), product = D(repeating: 0)
        let sv = SIMD8<Float>(repeating: shift)
        var i = 0
        while i + 8 <= n {
            let av = D(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self))
            let bv = D(UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self) - sv)
            plain += av
            product += av * bv
            i += 8
        }
        var s = plain.sum(), d = product.sum()
        while i < n { s += Double(a[i]); d += Double(a[i]) * Double(b[i] - shift); i += 1 }
        return (s, d)
    }

    /// An activation fused into batch norm, its derivative read from the output.
    enum Activation {
        case elu(alpha: Float)
        /// 0 <= slope < 1: then leaky ReLU is max(z, slope z) (slope 0: ReLU).
        case leakyRelu(slope: Float)
    }

    /// y = scale[k] (x - mean[k]) + beta[k], then the activation if given (the same expression as `Tensor`'s op).
    static func normalize(_ p: Planes, x: UnsafePointer<Float>, mean: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                          beta: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, activation: Activation? = nil) {
        var eluAlpha: Float?, slope: Float?
        switch activation {
        case .elu(let alpha)?: eluAlpha = alpha
        case .leakyRelu(let s)?: slope = s
        case nil: break
        }
        let c = p.channels
        if p.blocked {
            let width = p.width, blocks = c / width
            // Plain batch norm: the leaky ReLU's loop with slope 1.
            let slope = eluAlpha == nil ? slope ?? 1 : nil
            Parallel.forEachChunk(of: p.samples * blocks, work: p.samples * c * p.inner) { planes in
                for plane in planes {
                    let k = width * (plane % blocks), start = plane * p.inner * width
                    let (mu, a, b) = (mean + k, scale + k, beta + k)
                    if let alpha = eluAlpha {
                        KernelDispatch.affineELUBlocked(width: width, p.inner, x + start, y + start, mean: mu, scale: a, shift: b, alpha: alpha)
                    } else if let slope {
                        KernelDispatch.affineLeakyReLUBlocked(width: width, p.inner, x + start, y + start, mean: mu, scale: a, shift: b,
                                                              slope: slope)
                    }
                }
            }
            return
        }
        if p.inner == 1 {
            for s in 0..<p.samples {
                let xr = x + s * c, yr = y + s * c
                for k in 0..<c { yr[k] = scale[k] * (xr[k] - mean[k]) + beta[k] }
            }
            if let alpha = eluAlpha { KernelDispatch.elu(p.samples * c, y, y, alpha: alpha) }
            if let slope { for i in 0..<(p.samples * c) { y[i] = max(y[i], slope * y[i]) } }
            return
        }
        Parallel.forEachChunk(of: c, work: p.samples * c * p.inner) { channels in
            for s in 0..<p.samples {
                for k in channels {
                    let start = (s * c + k) * p.inner
                    let xs = x + start, ys = y + start
                    let (mu, a, b) = (mean[k], scale[k], beta[k])
                    if let alpha = eluAlpha {
                        KernelDispatch.affineELU(p.inner, xs, ys, mean: mu, scale: a, shift: b, alpha: alpha)
                    } else if let slope {
                        for i in 0..<p.inner { let z = a * (xs[i] - mu) + b; ys[i] = max(z, slope * z) }
                    } else {
                        for i in 0..<p.inner { ys[i] = a * (xs[i] - mu) + b }
                    }
                }
            }
        }
    }

    /// dz = dy * ELU'(z) from the output y = ELU(z): 1 where y > 0, y + alpha elsewhere (as `Tensor.elu`'s backward).
    static func eluGradient(_ n: Int, dy: UnsafePointer<Float>, y: UnsafePointer<Float>, alpha: Float, into dz: UnsafeMutablePointer<Float>) {
        Parallel.forEachChunk(of: n, work: n) { range in
            for i in range {
                let g = dy[i], out = y[i]
                let slope: Float = out > 0 ? 1 : out + alpha
                dz[i] = g * slope
            }
        }
    }

    /// dz = dy * leakyReLU'(z) from the output y: 1 where y > 0, `slope` elsewhere (as `Tensor.leakyRelu`'s backward,
    /// whose input z has the sign of y).
    static func leakyReLUGradient(_ n: Int, dy: UnsafePointer<Float>, y: UnsafePointer<Float>, slope: Float, into dz: UnsafeMutablePointer<Float>) {
        Parallel.forEachChunk(of: n, work: n) { range in
            for i in range {
                let g = dy[i]
                dz[i] = y[i] > 0 ? g : slope * g
            }
        }
    }

    /// dx = scale[k] dy + slope[k] (x - mean[k]) + offset[k], added to dx unless `overwrite` (dx fresh).
    static func inputGradient(_ p: Planes, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                              mean: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                              slope: UnsafePointer<Float>, offset: UnsafePointer<Float>,
                              into dx: UnsafeMutablePointer<Float>, overwrite: Bool) {
        let c = p.channels
        if p.blocked {
            let width = p.width, blocks = c / width
            Parallel.forEachChunk(of: p.samples * blocks, work: p.samples * c * p.inner) { planes in
                for plane in planes {
                    let k = width * (plane % blocks), start = plane * p.inner * width
                    KernelDispatch.blockedInputGradient(width: width, p.inner, dy: dy + start, x: x + start, into: dx + start, mean: mean + k,
                                                        scale: scale + k, slope: slope + k, offset: offset + k, overwrite: overwrite)
                }
            }
            return
        }
        if p.inner == 1 {
            for s in 0..<p.samples {
                let gr = dy + s * c, xr = x + s * c, dr = dx + s * c
                for k in 0..<c {
                    let g = scale[k] * gr[k] + slope[k] * (xr[k] - mean[k]) + offset[k]
                    dr[k] = overwrite ? g : dr[k] + g
                }
            }
            return
        }
        Parallel.forEachChunk(of: c, work: p.samples * c * p.inner) { channels in
            for s in 0..<p.samples {
                for k in channels {
                    let start = (s * c + k) * p.inner
                    let gs = dy + start, xs = x + start, ds = dx + start
                    let (mu, a, b, o) = (mean[k], scale[k], slope[k], offset[k])
                    if overwrite {
                        for i in 0..<p.inner { ds[i] = a * gs[i] + b * (xs[i] - mu) + o }
                    } else {
                        for i in 0..<p.inner { ds[i] += a * gs[i] + b * (xs[i] - mu) + o }
                    }
                }
            }
        }
    }
}
