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
    /// Named state buffers of the parameter layout, for checkpoints: each holds `shard.count` values, those of the
    /// parameters in `shard`.
    var state: [(name: String, storage: FloatStorage)] { get }
    /// The range of the flat parameter layout this optimizer keeps state for and updates: all of it, or one rank's
    /// part under ZeRO stage 1 (`OptimizerShards`, `--shard-optimizer`).
    var shard: Range<Int> { get }
    /// Applies one update to `store.values[shard]` from `gradientScale * store.gradients[shard]`. The scale lets a
    /// data-parallel trainer turn summed gradients into their average inside this pass instead of a separate one over memory.
    func step(_ store: ParameterStore, gradientScale: Float)
}

/// ZeRO stage 1's partition of the flat parameter layout (Rajbhandari et al. 2020; DeepSpeed flattens and partitions
/// alike): rank r of n owns one contiguous range, keeps the optimizer state of that range only and updates only its
/// weights. The ranges are as equal as blocks of `alignment` elements allow, whatever the parameters' boundaries:
/// Starling's optimizers are element-wise over flat buffers, so a range may cut a tensor anywhere, and a model whose
/// one layer holds most of the weights (yolov1's 205 M-weight fully connected layer of 269 M) still splits evenly,
/// where PyTorch's ZeroRedundancyOptimizer, which hands out whole parameters, would leave one rank most of the state.
/// Ranges start at multiples of 64 elements, as `Parallel.forEachAlignedChunk`'s do, so every element is updated in
/// the same vector lane and loop part as on one rank: a sharded step gives the same bits as an unsharded one.
public enum OptimizerShards {
    public static let alignment = 64

    /// The n ranges, in rank order, end to end over 0..<parameterCount (a range is empty when there are fewer blocks than ranks).
    public static func ranges(parameterCount: Int, ranks: Int) -> [Range<Int>] {
        precondition(parameterCount >= 0 && ranks > 0, "a parameter count and at least one rank")
        let blocks = (parameterCount + alignment - 1) / alignment
        return (0..<ranks).map { r in
            let lower = min(parameterCount, r * blocks / ranks * alignment)
            let upper = min(parameterCount, (r + 1) * blocks / ranks * alignment)
            return lower..<upper
        }
    }
}

extension Optimizer {
    public func step(_ store: ParameterStore) { step(store, gradientScale: 1) }
}

/// Stochastic gradient descent with momentum and L2 weight decay, as PyTorch's SGD:
/// g' = g + wd w; v = momentum v + g'; w -= lr v (Nesterov: w -= lr (g' + momentum v)). Its pass runs with
/// subnormals flushed to zero (`KernelDispatch.withSubnormalsFlushed`).
public final class SGD: Optimizer {
    public var learningRate: Float
    public let momentum: Float
    public let weightDecay: Float
    public let nesterov: Bool
    public var stepCount = 0
    public let parameterCount: Int
    public let shard: Range<Int>
    private let velocity: FloatStorage

    /// `shard` (default: every parameter) is the range this optimizer keeps velocities for and updates.
    public init(parameterCount: Int, learningRate: Float, momentum: Float = 0, weightDecay: Float = 0, nesterov: Bool = false,
                shard: Range<Int>? = nil) {
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.nesterov = nesterov
        self.parameterCount = parameterCount
        self.shard = shard ?? 0..<parameterCount
        precondition(self.shard.lowerBound >= 0 && self.shard.upperBound <= parameterCount, "shard outside the parameters")
        velocity = FloatStorage(count: self.shard.count)
    }

    public var state: [(name: String, storage: FloatStorage)] { [("velocity", velocity)] }

    public func step(_ store: ParameterStore, gradientScale: Float) {
        precondition(store.count == parameterCount, "optimizer built for another parameter layout")
        let w = store.values.pointer + shard.lowerBound, g = store.gradients.pointer + shard.lowerBound, v = velocity.pointer
        let (lr, mu, wd, nesterov) = (learningRate, momentum, weightDecay, nesterov)
        // Velocities decay by the momentum where gradients stay zero, into the subnormal range: flushed, as Adam's moments.
        Parallel.forEachAlignedChunk(of: shard.count, work: 3 * shard.count) { r in
            KernelDispatch.withSubnormalsFlushed {
                for i in r {
                    let grad = gradientScale * g[i] + wd * w[i]
                    let vel = mu * v[i] + grad
                    v[i] = vel
                    w[i] -= lr * (nesterov ? grad + mu * vel : vel)
                }
            }
        }
        stepCount += 1
    }
}

/// Adam (Kingma & Ba 2015) in the form Keras uses, with epsilon outside the bias-corrected square root:
/// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; w -= lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps).
/// `weightDecay` adds wd w to the gradient (L2, coupled). With `decoupled` it is AdamW (Loshchilov & Hutter
/// 2019): w -= lr wd w, separately from the adaptive step. Subnormal moments are flushed to zero
/// (`KernelDispatch.withSubnormalsFlushed`), as in SGD.
public final class Adam: Optimizer {
    public var learningRate: Float
    public let beta1: Float, beta2: Float, epsilon: Float
    public let weightDecay: Float
    public let decoupled: Bool
    public var stepCount = 0
    /// Which build of the update loop runs (`KernelDispatch`); tests pin it to compare the two.
    public var kernels = KernelDispatch.current
    public let parameterCount: Int
    public let shard: Range<Int>
    /// Set where other threads read the weights this optimizer updates (replicas sharing one copy, `train
    /// --replicas`): each block of weights is then updated in a small private buffer and stored back in one burst.
    /// A store into a line another core has read waits for that core's copy to be invalidated. In the one loop those
    /// waits queue behind and among the m and v stores (bound vae replicas: Adam 2.2-2.4x the one thread's samples for
    /// the same elements); as a burst of weights alone they cost less (Adam and its bursts' copies ~0.75x the in-place
    /// pass's samples, BENCHMARKS.md, "Two replicas through `train`: no zero fill of the gradients"; likely more of
    /// them in flight at once: no counters in that VM to show it). The same bits: the update is element-wise.
    public var storesWeightsInBursts = false
    private let m: FloatStorage, v: FloatStorage

    /// Keras's epsilon for Adam and AdamW alike (PyTorch's is 1e-8): the one value both of Starling's variants
    /// default to, so `adam` and `adamw` differ only in how they apply weight decay.
    public static let kerasEpsilon: Float = 1e-7

    /// Keras's defaults: beta1 0.9, beta2 0.999, epsilon 1e-7. `shard` (default: every parameter) is the range this
    /// optimizer keeps moments for and updates.
    public init(parameterCount: Int, learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999,
                epsilon: Float = Adam.kerasEpsilon, weightDecay: Float = 0, decoupled: Bool = false, shard: Range<Int>? = nil) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decoupled = decoupled
        self.parameterCount = parameterCount
        self.shard = shard ?? 0..<parameterCount
        precondition(self.shard.lowerBound >= 0 && self.shard.upperBound <= parameterCount, "shard outside the parameters")
        m = FloatStorage(count: self.shard.count)
        v = FloatStorage(count: self.shard.count)
    }

    /// AdamW with Keras's epsilon, as `starling train --optimizer adamw` builds it.
    public static func adamW(parameterCount: Int, learningRate: Float = 1e-3, weightDecay: Float = 1e-2, shard: Range<Int>? = nil) -> Adam {
        Adam(parameterCount: parameterCount, learningRate: learningRate, epsilon: kerasEpsilon, weightDecay: weightDecay, decoupled: true, shard: shard)
    }

    public var state: [(name: String, storage: FloatStorage)] { [("m", m), ("v", v)] }

    /// Weights a burst (`storesWeightsInBursts`): 4 KB, 64 cache lines, about a Zen 4 store queue's depth (not tuned).
    static let burst = 1024

    public func step(_ store: ParameterStore, gradientScale: Float) {
        precondition(store.count == parameterCount, "optimizer built for another parameter layout")
        stepCount += 1
        let t = Double(stepCount)
        let correction = Float((1 - pow(Double(beta2), t)).squareRoot() / (1 - pow(Double(beta1), t)))
        let lrT = learningRate * correction
        let w = store.values.pointer + shard.lowerBound, g = store.gradients.pointer + shard.lowerBound, mp = m.pointer, vp = v.pointer
        let (b1, b2, eps, wd, lr) = (beta1, beta2, epsilon, weightDecay, learningRate)
        let coupledDecay: Float = decoupled ? 0 : wd
        let decoupledDecay: Float = decoupled ? lr * wd : 0
        // Parameter by parameter, so over the process's threads in aligned ranges (the same bits for any count).
        let kernels = kernels
        let bursts = storesWeightsInBursts
        Parallel.forEachAlignedChunk(of: shard.count, work: 4 * shard.count) { r in
            guard bursts else {
                let o = r.lowerBound
                KernelDispatch.adam(r.count, weights: w + o, gradients: g + o, m: mp + o, v: vp + o, gradientScale: gradientScale,
                                    beta1: b1, beta2: b2, epsilon: eps, correctedRate: lrT, coupledDecay: coupledDecay,
                                    decoupledDecay: decoupledDecay, kernels: kernels)
                return
            }
            // Blocks of a multiple of 64 from an aligned start: every element in the lane and loop part of one call.
            withUnsafeTemporaryAllocation(of: Float.self, capacity: Self.burst) { scratch in
                let block = scratch.baseAddress!
                var o = r.lowerBound
                while o < r.upperBound {
                    let n = min(Self.burst, r.upperBound - o)
                    block.update(from: w + o, count: n)
                    KernelDispatch.adam(n, weights: block, gradients: g + o, m: mp + o, v: vp + o, gradientScale: gradientScale,
                                        beta1: b1, beta2: b2, epsilon: eps, correctedRate: lrT, coupledDecay: coupledDecay,
                                        decoupledDecay: decoupledDecay, kernels: kernels)
                    (w + o).update(from: block, count: n)
                    o += n
                }
            }
        }
    }
}
