#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Optimizers that update a model's flat parameter buffer from its flat gradient buffer in one pass.
/// Their state (moments, velocities) lives in flat buffers of the same layout, so it checkpoints and
/// broadcasts as one block per state, like the parameters.
public protocol Optimizer: AnyObject {
    var learningRate: Float { get set }
    /// Number of updates applied so far (Adam's bias correction depends on it; checkpointed).
    var stepCount: Int { get set }
    /// Named state buffers of the parameter layout, for checkpoints.
    var state: [(name: String, storage: FloatStorage)] { get }
    /// Applies one update to `store.values` from `gradientScale * store.gradients`. The scale lets a data-parallel
    /// trainer turn summed gradients into their average inside this pass instead of a separate one over memory.
    func step(_ store: ParameterStore, gradientScale: Float)
}

extension Optimizer {
    public func step(_ store: ParameterStore) { step(store, gradientScale: 1) }
}

/// Stochastic gradient descent with momentum and L2 weight decay, as PyTorch's SGD:
/// g' = g + wd w; v = momentum v + g'; w -= lr v (Nesterov: w -= lr (g' + momentum v)).
public final class SGD: Optimizer {
    public var learningRate: Float
    public let momentum: Float
    public let weightDecay: Float
    public let nesterov: Bool
    public var stepCount = 0
    private let velocity: FloatStorage

    public init(parameterCount: Int, learningRate: Float, momentum: Float = 0, weightDecay: Float = 0, nesterov: Bool = false) {
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.nesterov = nesterov
        velocity = FloatStorage(count: parameterCount)
    }

    public var state: [(name: String, storage: FloatStorage)] { [("velocity", velocity)] }

    public func step(_ store: ParameterStore, gradientScale: Float) {
        precondition(store.count == velocity.count, "optimizer built for another parameter layout")
        let w = store.values.pointer, g = store.gradients.pointer, v = velocity.pointer
        let (lr, mu, wd, nesterov) = (learningRate, momentum, weightDecay, nesterov)
        Parallel.forEachAlignedChunk(of: store.count, work: 3 * store.count) { r in
            for i in r {
                let grad = gradientScale * g[i] + wd * w[i]
                let vel = mu * v[i] + grad
                v[i] = vel
                w[i] -= lr * (nesterov ? grad + mu * vel : vel)
            }
        }
        stepCount += 1
    }
}

/// Adam (Kingma & Ba 2015) in the form Keras uses, with epsilon outside the bias-corrected square root:
/// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; w -= lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps).
/// `weightDecay` adds wd w to the gradient (L2, coupled). With `decoupled` it is AdamW (Loshchilov & Hutter
/// 2019): w -= lr wd w, separately from the adaptive step.
public final class Adam: Optimizer {
    public var learningRate: Float
    public let beta1: Float, beta2: Float, epsilon: Float
    public let weightDecay: Float
    public let decoupled: Bool
    public var stepCount = 0
    /// Which build of the update loop runs (`KernelDispatch`); tests pin it to compare the two.
    public var kernels = KernelDispatch.current
    private let m: FloatStorage, v: FloatStorage

    /// Keras's epsilon for Adam and AdamW alike (PyTorch's is 1e-8): the one value both of Starling's variants
    /// default to, so `adam` and `adamw` differ only in how they apply weight decay.
    public static let kerasEpsilon: Float = 1e-7

    /// Keras's defaults: beta1 0.9, beta2 0.999, epsilon 1e-7.
    public init(parameterCount: Int, learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999,
                epsilon: Float = Adam.kerasEpsilon, weightDecay: Float = 0, decoupled: Bool = false) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decoupled = decoupled
        m = FloatStorage(count: parameterCount)
        v = FloatStorage(count: parameterCount)
    }

    /// AdamW with Keras's epsilon, as `starling train --optimizer adamw` builds it.
    public static func adamW(parameterCount: Int, learningRate: Float = 1e-3, weightDecay: Float = 1e-2) -> Adam {
        Adam(parameterCount: parameterCount, learningRate: learningRate, epsilon: kerasEpsilon, weightDecay: weightDecay, decoupled: true)
    }

    public var state: [(name: String, storage: FloatStorage)] { [("m", m), ("v", v)] }

    public func step(_ store: ParameterStore, gradientScale: Float) {
        precondition(store.count == m.count, "optimizer built for another parameter layout")
        stepCount += 1
        let t = Double(stepCount)
        let correction = Float((1 - pow(Double(beta2), t)).squareRoot() / (1 - pow(Double(beta1), t)))
        let lrT = learningRate * correction
        let w = store.values.pointer, g = store.gradients.pointer, mp = m.pointer, vp = v.pointer
        let (b1, b2, eps, wd, lr) = (beta1, beta2, epsilon, weightDecay, learningRate)
        let coupledDecay: Float = decoupled ? 0 : wd
        let decoupledDecay: Float = decoupled ? lr * wd : 0
        // Parameter by parameter, so over the process's threads in aligned ranges (the same bits for any count).
        let kernels = kernels
        Parallel.forEachAlignedChunk(of: store.count, work: 4 * store.count) { r in
            let o = r.lowerBound
            KernelDispatch.adam(r.count, weights: w + o, gradients: g + o, m: mp + o, v: vp + o, gradientScale: gradientScale,
                                beta1: b1, beta2: b2, epsilon: eps, correctedRate: lrT, coupledDecay: coupledDecay,
                                decoupledDecay: decoupledDecay, kernels: kernels)
        }
    }
}
