import StarlingCore

/// Batch normalisation (Ioffe & Szegedy 2015) over the channel axis, with Keras's defaults (momentum 0.99,
/// epsilon 1e-3) and names (gamma, beta, moving_mean, moving_variance). The moving statistics live in the model's
/// buffer store: checkpointed, broadcast from rank 0, never touched by the optimizer.
///
/// With a `crossReplicaSum` (`--sync-bn`) training statistics are over the global batch across ranks; without, each
/// rank normalises by its own slice, the default of Keras/Horovod and PyTorch DDP.
public struct BatchNormalization: Sendable {
    public let gamma: Parameter, beta: Parameter
    public let movingMean: Parameter, movingVariance: Parameter
    public var momentum: Float = 0.99
    public var epsilon: Float = 1e-3

    public init(_ store: ParameterStore, buffers: ParameterStore, name: String, channels: Int) {
        gamma = store.declare("\(name)/gamma", shape: [channels], initializer: .ones)
        beta = store.declare("\(name)/beta", shape: [channels], initializer: .zeros)
        movingMean = buffers.declare("\(name)/moving_mean", shape: [channels], initializer: .zeros)
        movingVariance = buffers.declare("\(name)/moving_variance", shape: [channels], initializer: .ones)
    }

    /// On a Tensor, or an ONNXValue (the export), which always infers whatever `training` says.
    @inlinable public func callAsFunction<Value: NetworkValue>(_ x: Value, training: Bool, crossReplicaSum: CrossReplicaSum? = nil) -> Value {
        x.applying(self, training: training, crossReplicaSum: crossReplicaSum)
    }

    /// `conv` followed by this layer at inference, as one convolution: with the moving statistics fixed, the
    /// normalisation is an affine map per output channel, folded into the kernel (scaled by gamma / sqrt(var + eps))
    /// and the bias ((b - mean) * that scale + beta).
    public func folded(into conv: Conv2D) -> (kernel: Tensor, bias: Tensor) {
        folded(kernel: conv.kernel.value, bias: conv.bias.value)
    }

    /// A convolution's `kernel` [Cout, ...] and `bias` [Cout] with this layer folded in (see `folded(into:)`).
    public func folded(kernel w: Tensor, bias b: Tensor) -> (kernel: Tensor, bias: Tensor) {
        let cout = w.shape[0], perChannel = w.count / cout
        let kernel = FloatStorage(uninitializedCount: w.count), bias = FloatStorage(uninitializedCount: cout)
        let (g, bt, mean, variance) = (gamma.value.data, beta.value.data, movingMean.value.data, movingVariance.value.data)
        let (source, sourceBias) = (w.data, b.data)
        for c in 0..<cout {
            let scale = g[c] * (1 / (variance[c] + epsilon).squareRoot())
            let src = source + c * perChannel, dst = kernel.pointer + c * perChannel
            for i in 0..<perChannel { dst[i] = src[i] * scale }
            bias.pointer[c] = (sourceBias[c] - mean[c]) * scale + bt[c]
        }
        return (Tensor(shape: w.shape, storage: kernel), Tensor(shape: [cout], storage: bias))
    }

    /// The layer on `x` in `layout` (`Tensor.batchNorm`). `updatingRunningStatistics: false` runs it on copies of the
    /// moving statistics, as `withLeakyReLU`'s.
    public func normalizing(_ x: Tensor, training: Bool, crossReplicaSum: CrossReplicaSum?, layout: ChannelLayout,
                            updatingRunningStatistics: Bool = true) -> Tensor {
        let (mean, variance) = updatingRunningStatistics ? (movingMean.value, movingVariance.value)
                                                         : (movingMean.value.detached(), movingVariance.value.detached())
        return x.batchNorm(gamma: gamma.value, beta: beta.value, runningMean: mean, runningVar: variance,
                           training: training, momentum: momentum, epsilon: epsilon, crossReplicaSum: crossReplicaSum, layout: layout)
    }

    /// The layer, an ELU and 2x2 max-pooling as one op in the blocked layout (`Tensor.batchNormELUMaxPool2x2Blocked`),
    /// for a block whose normalised output feeds only the pooling. `moments`: x's statistics from the convolution
    /// that wrote it, when it computed them (`ChannelMoments`).
    public func withELUAndMaxPool2x2(_ x: Tensor, training: Bool, crossReplicaSum: CrossReplicaSum? = nil, alpha: Float = 1,
                                     moments: ChannelMoments? = nil) -> Tensor {
        x.batchNormELUMaxPool2x2Blocked(gamma: gamma.value, beta: beta.value, runningMean: movingMean.value,
                                        runningVar: movingVariance.value, training: training, momentum: momentum, epsilon: epsilon,
                                        crossReplicaSum: crossReplicaSum, alpha: alpha, moments: moments)
    }

    /// The layer, a leaky ReLU and 2x2 max-pooling as one op in the blocked layout
    /// (`Tensor.batchNormLeakyReLUMaxPool2x2Blocked`), as `withELUAndMaxPool2x2`.
    public func withLeakyReLUAndMaxPool2x2(_ x: Tensor, training: Bool, crossReplicaSum: CrossReplicaSum? = nil, slope: Float,
                                           moments: ChannelMoments? = nil) -> Tensor {
        x.batchNormLeakyReLUMaxPool2x2Blocked(gamma: gamma.value, beta: beta.value, runningMean: movingMean.value,
                                              runningVar: movingVariance.value, training: training, momentum: momentum, epsilon: epsilon,
                                              crossReplicaSum: crossReplicaSum, slope: slope, moments: moments)
    }

    /// The layer followed by a leaky ReLU, as one op that keeps no normalised copy (`Tensor.batchNormLeakyReLU`).
    /// `updatingRunningStatistics: false` runs it on copies of the moving statistics (for a second run over the same
    /// batch, whose first run updated them). `keepingInput: false`: x's values are given back after forward and
    /// backward recovers them from the output (in-place activated batch norm; the caller promises no later reader).
    /// `recomputingInput`: x given back after forward and computed again in backward (`Tensor.batchNormLeakyReLU`).
    public func withLeakyReLU(_ x: Tensor, training: Bool, crossReplicaSum: CrossReplicaSum? = nil, slope: Float,
                              layout: ChannelLayout = .planar, moments: ChannelMoments? = nil,
                              updatingRunningStatistics: Bool = true, keepingInput: Bool = true,
                              recomputingInput: (() -> FloatStorage)? = nil) -> Tensor {
        let (mean, variance) = updatingRunningStatistics ? (movingMean.value, movingVariance.value)
                                                         : (movingMean.value.detached(), movingVariance.value.detached())
        return x.batchNormLeakyReLU(gamma: gamma.value, beta: beta.value, runningMean: mean, runningVar: variance,
                                    training: training, momentum: momentum, epsilon: epsilon, crossReplicaSum: crossReplicaSum, slope: slope,
                                    layout: layout, moments: moments, keepingInput: keepingInput, recomputingInput: recomputingInput)
    }

    /// `residual` plus the layer followed by a leaky ReLU, as one op that keeps neither the normalised nor the activated
    /// values (`Tensor.batchNormLeakyReLUAdding`): a darknet shortcut's last block.
    public func withLeakyReLUAdding(_ residual: Tensor, to x: Tensor, training: Bool, crossReplicaSum: CrossReplicaSum? = nil, slope: Float,
                                    layout: ChannelLayout = .planar, moments: ChannelMoments? = nil, keepingInput: Bool = true) -> Tensor {
        x.batchNormLeakyReLUAdding(residual, gamma: gamma.value, beta: beta.value, runningMean: movingMean.value, runningVar: movingVariance.value,
                                   training: training, momentum: momentum, epsilon: epsilon, crossReplicaSum: crossReplicaSum, slope: slope,
                                   layout: layout, moments: moments, keepingInput: keepingInput)
    }

    /// The layer followed by an ELU, as one op that keeps no normalised copy (`Tensor.batchNormELU`).
    public func withELU(_ x: Tensor, training: Bool, crossReplicaSum: CrossReplicaSum? = nil, alpha: Float = 1,
                        layout: ChannelLayout = .planar, moments: ChannelMoments? = nil) -> Tensor {
        x.batchNormELU(gamma: gamma.value, beta: beta.value, runningMean: movingMean.value, runningVar: movingVariance.value,
                       training: training, momentum: momentum, epsilon: epsilon, crossReplicaSum: crossReplicaSum, alpha: alpha,
                       layout: layout, moments: moments)
    }
}
