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

    public func callAsFunction(_ x: Tensor, training: Bool, crossReplicaSum: CrossReplicaSum? = nil) -> Tensor {
        x.batchNorm(gamma: gamma.value, beta: beta.value, runningMean: movingMean.value, runningVar: movingVariance.value,
                    training: training, momentum: momentum, epsilon: epsilon, crossReplicaSum: crossReplicaSum)
    }

    /// The layer followed by an ELU, as one op that keeps no normalised copy (`Tensor.batchNormELU`).
    public func withELU(_ x: Tensor, training: Bool, crossReplicaSum: CrossReplicaSum? = nil, alpha: Float = 1) -> Tensor {
        x.batchNormELU(gamma: gamma.value, beta: beta.value, runningMean: movingMean.value, runningVar: movingVariance.value,
                       training: training, momentum: momentum, epsilon: epsilon, crossReplicaSum: crossReplicaSum, alpha: alpha)
    }
}
