#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// A learning rate as a function of the global step (0-based) and epoch, given the base rate.
public protocol LearningRateSchedule: Sendable {
    func rate(base: Float, step: Int, epoch: Int) -> Float
}

/// The base rate throughout.
public struct ConstantRate: LearningRateSchedule {
    public init() {}
    public func rate(base: Float, step: Int, epoch: Int) -> Float { base }
}

/// base * factor^(epoch / every), as Keras's step decay and PyTorch's StepLR.
public struct StepDecay: LearningRateSchedule {
    public let factor: Float, everyEpochs: Int
    public init(factor: Float, everyEpochs: Int) {
        precondition(everyEpochs > 0, "step decay period must be positive")
        self.factor = factor
        self.everyEpochs = everyEpochs
    }
    public func rate(base: Float, step: Int, epoch: Int) -> Float {
        base * Float(pow(Double(factor), Double(epoch / everyEpochs)))
    }
}

/// Cosine annealing from base to `minimum` over `totalSteps` (Loshchilov & Hutter 2017, without restarts).
public struct CosineDecay: LearningRateSchedule {
    public let totalSteps: Int, minimum: Float
    public init(totalSteps: Int, minimum: Float = 0) {
        precondition(totalSteps > 0, "cosine decay needs a positive step count")
        self.totalSteps = totalSteps
        self.minimum = minimum
    }
    public func rate(base: Float, step: Int, epoch: Int) -> Float {
        let progress = Double(min(step, totalSteps)) / Double(totalSteps)
        return minimum + (base - minimum) * Float(0.5 * (1 + cos(Double.pi * progress)))
    }
}

/// Linear ramp from 0 to the wrapped schedule's rate over the first `warmupSteps` steps (Goyal et al. 2017),
/// the usual companion of large data-parallel batches.
public struct LinearWarmup: LearningRateSchedule {
    public let warmupSteps: Int
    public let after: any LearningRateSchedule
    public init(warmupSteps: Int, then after: any LearningRateSchedule = ConstantRate()) {
        self.warmupSteps = warmupSteps
        self.after = after
    }
    public func rate(base: Float, step: Int, epoch: Int) -> Float {
        let target = after.rate(base: base, step: step, epoch: epoch)
        guard step < warmupSteps else { return target }
        return target * Float(step + 1) / Float(warmupSteps)
    }
}

/// Keras's ReduceLROnPlateau: when the monitored value has not improved by more than `minDelta` for `patience`
/// epochs, multiply the rate by `factor`, not below `minimum`, then wait `cooldown` epochs.
/// It is fed values every rank agrees on (averaged over ranks), so every rank changes its rate together.
public struct ReduceOnPlateau: Sendable, Codable, Equatable {
    public let factor: Float, patience: Int, minimum: Float, minDelta: Float, cooldown: Int
    public private(set) var best: Float = .infinity
    public private(set) var wait = 0
    public private(set) var cooldownLeft = 0

    /// Keras's min_delta: the improvement that counts when none is given.
    public static let kerasMinDelta: Float = 1e-4

    public init(factor: Float = 0.1, patience: Int = 10, minimum: Float = 0, minDelta: Float = kerasMinDelta, cooldown: Int = 0) {
        precondition(factor > 0 && factor < 1, "plateau factor must lie in (0, 1)")
        self.factor = factor
        self.patience = patience
        self.minimum = minimum
        self.minDelta = minDelta
        self.cooldown = cooldown
    }

    /// Records an epoch's monitored value and returns the rate to use from now on.
    public mutating func observe(_ value: Float, currentRate: Float) -> Float {
        if cooldownLeft > 0 { cooldownLeft -= 1; wait = 0 }
        if value < best - minDelta {
            best = value
            wait = 0
            return currentRate
        }
        guard cooldownLeft == 0 else { return currentRate }
        wait += 1
        guard wait >= patience, currentRate > minimum else { return currentRate }
        wait = 0
        cooldownLeft = cooldown
        return max(currentRate * factor, minimum)
    }
}
