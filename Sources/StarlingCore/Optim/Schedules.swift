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
/// Steps before `startStep` hold the base rate, so a warmup can come first and the cosine still ends at
/// `totalSteps`. Should the base lie below `minimum` (a plateau lowered it), the rate stays at the base: the
/// annealing never raises a rate.
public struct CosineDecay: LearningRateSchedule {
    public let totalSteps: Int, minimum: Float, startStep: Int
    public init(totalSteps: Int, minimum: Float = 0, startStep: Int = 0) {
        precondition(startStep >= 0 && totalSteps > startStep, "cosine decay needs a positive step count")
        self.totalSteps = totalSteps
        self.minimum = minimum
        self.startStep = startStep
    }
    public func rate(base: Float, step: Int, epoch: Int) -> Float {
        let span = totalSteps - startStep
        let progress = Double(min(max(step - startStep, 0), span)) / Double(span)
        let floor = min(minimum, base)
        return floor + (base - floor) * Float(0.5 * (1 + cos(Double.pi * progress)))
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

/// The shapes `starling train --lr-schedule` offers.
public enum ScheduleShape: String, Codable, CaseIterable, Sendable {
    case constant, step, cosine
}

/// The learning-rate schedule a run asks for, in epochs as `starling train` takes it (`--lr-schedule`,
/// `--warmup-epochs`, `--step-every`, `--step-factor`, `--cosine-min-lr`). The defaults here are the flags'.
/// A run turns it into optimizer steps once, when it starts (`resolved`), and keeps that in its checkpoints.
public struct ScheduleSettings: Equatable, Sendable {
    public var shape = ScheduleShape.constant
    /// Epochs' worth of optimizer steps over which the rate ramps up linearly (Goyal et al. 2017); fractional
    /// values are rounded to whole steps, and any positive value warms up for at least one step.
    public var warmupEpochs = 0.0
    /// Step decay's period and factor, as PyTorch's StepLR (step_size, gamma): base * factor^(epoch / every).
    public var stepEveryEpochs = 30
    public var stepFactor: Float = 0.1
    /// Where the cosine ends (PyTorch's CosineAnnealingLR eta_min).
    public var cosineMinimum: Float = 0
    public init() {}

    /// The first setting that cannot make a schedule, as one line naming its flag (nil: all usable). Checked by
    /// the command line and again by the trainer, so a library caller gets the same message instead of a trap.
    public var problem: String? {
        if !warmupEpochs.isFinite || warmupEpochs < 0 { return "--warmup-epochs must be a number >= 0, not \(warmupEpochs)" }
        if stepEveryEpochs <= 0 { return "--step-every must be a positive number of epochs, not \(stepEveryEpochs)" }
        if !(stepFactor > 0 && stepFactor < 1) { return "--step-factor must lie in (0, 1), not \(stepFactor)" }
        if !cosineMinimum.isFinite || cosineMinimum < 0 { return "--cosine-min-lr must be a number >= 0, not \(cosineMinimum)" }
        return nil
    }

    /// Every setting, in one canonical line (the ranks compare it before training).
    public var summary: String {
        "\(shape.rawValue) warmup-epochs=\(warmupEpochs) step-every=\(stepEveryEpochs) step-factor=\(stepFactor) cosine-min-lr=\(cosineMinimum)"
    }

    /// The schedule in optimizer steps for a run of `stepsPerEpoch` steps per epoch and `totalSteps` steps in all
    /// (the cosine's horizon). Call only when `problem` is nil.
    public func resolved(stepsPerEpoch: Int, totalSteps: Int) -> ResolvedSchedule {
        // Rounded to the nearest step rather than up: 0.28 epochs of 25 steps is 7.000000000000001 steps in Double.
        var schedule = ResolvedSchedule.constant
        schedule.shape = shape
        schedule.warmupSteps = warmupEpochs > 0 ? max(1, Int(min((warmupEpochs * Double(stepsPerEpoch)).rounded(), 1e15))) : 0
        if shape == .step { (schedule.stepEveryEpochs, schedule.stepFactor) = (stepEveryEpochs, stepFactor) }
        if shape == .cosine { (schedule.totalSteps, schedule.cosineMinimum) = (max(1, totalSteps), cosineMinimum) }
        return schedule
    }
}

/// A run's learning-rate schedule in optimizer steps, as its checkpoints record it (inside the `callbacks`
/// attribute) so that a resumed run continues it exactly, whatever its own flags say.
///
/// The rate of global step s (0-based) in epoch e, for the base rate b (the --lr, lowered by plateaus):
///     shaped = b                                          constant
///              b * stepFactor^(e / stepEveryEpochs)        step (integer division)
///              m + (b - m) (1 + cos(pi p)) / 2             cosine, m = min(cosineMinimum, b),
///                                                          p = clamp((s - W) / (totalSteps - W), 0, 1)
///     rate   = shaped * (s + 1) / W  for s < W (the warmup of W = warmupSteps steps), shaped afterwards.
/// The cosine thus starts after the warmup and ends at the run's last step. Fields another shape does not use
/// hold `constant`'s values, so two schedules are equal exactly when they give the same rates.
public struct ResolvedSchedule: LearningRateSchedule, Codable, Equatable, CustomStringConvertible {
    public var shape: ScheduleShape
    public var warmupSteps: Int
    public var stepEveryEpochs: Int
    public var stepFactor: Float
    /// The cosine's horizon: the run's total optimizer steps when it started.
    public var totalSteps: Int
    public var cosineMinimum: Float

    public init(shape: ScheduleShape, warmupSteps: Int, stepEveryEpochs: Int, stepFactor: Float, totalSteps: Int, cosineMinimum: Float) {
        self.shape = shape
        self.warmupSteps = warmupSteps
        self.stepEveryEpochs = stepEveryEpochs
        self.stepFactor = stepFactor
        self.totalSteps = totalSteps
        self.cosineMinimum = cosineMinimum
    }

    /// The base rate at every step: what runs from checkpoints written before schedules existed continue with.
    public static let constant = ResolvedSchedule(shape: .constant, warmupSteps: 0, stepEveryEpochs: 1, stepFactor: 1,
                                                  totalSteps: 1, cosineMinimum: 0)

    /// True when every step runs at the base rate.
    public var isConstant: Bool { shape == .constant && warmupSteps == 0 }

    /// What a checkpoint's values cannot be for `rate` to work (nil: usable); checked when a checkpoint is read.
    public var problem: String? {
        if warmupSteps < 0 || warmupSteps > 1 << 50 { return "warmup of \(warmupSteps) steps" }
        if shape == .step && (stepEveryEpochs <= 0 || !(stepFactor > 0 && stepFactor.isFinite)) {
            return "step decay every \(stepEveryEpochs) epochs by \(stepFactor)"
        }
        if shape == .cosine && (totalSteps <= 0 || !cosineMinimum.isFinite) { return "cosine over \(totalSteps) steps to \(cosineMinimum)" }
        return nil
    }

    public func rate(base: Float, step: Int, epoch: Int) -> Float {
        let shaped: any LearningRateSchedule
        switch shape {
        case .constant: shaped = ConstantRate()
        case .step: shaped = StepDecay(factor: stepFactor, everyEpochs: stepEveryEpochs)
        case .cosine: shaped = CosineDecay(totalSteps: max(totalSteps, warmupSteps + 1), minimum: cosineMinimum, startStep: warmupSteps)
        }
        return LinearWarmup(warmupSteps: warmupSteps, then: shaped).rate(base: base, step: step, epoch: epoch)
    }

    /// For the log: "cosine over 600 steps to 0.0, after a linear warmup of 30 steps".
    public var description: String {
        var text: String
        switch shape {
        case .constant: text = "constant"
        case .step: text = "step decay by \(stepFactor) every \(stepEveryEpochs) epochs"
        case .cosine: text = "cosine over \(totalSteps) steps to \(cosineMinimum)"
        }
        if warmupSteps > 0 { text += ", after a linear warmup of \(warmupSteps) step\(warmupSteps == 1 ? "" : "s")" }
        return text
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
