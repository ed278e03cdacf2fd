import Testing
@testable import StarlingCore

/// `--lr-schedule`, `--warmup-epochs` and friends as a run applies them: rates at chosen steps against values worked
/// out by hand (the cosines of pi/4, pi/6, 3 pi/4, ... written out as decimals).
@Suite struct ScheduleTests {
    private func schedule(_ shape: ScheduleShape, warmup: Int = 0, every: Int = 1, factor: Float = 1, total: Int = 1,
                          minimum: Float = 0) -> ResolvedSchedule {
        ResolvedSchedule(shape: shape, warmupSteps: warmup, stepEveryEpochs: every, stepFactor: factor, totalSteps: total,
                         cosineMinimum: minimum)
    }

    private func expectRates(_ s: ResolvedSchedule, base: Float, _ expected: [(step: Int, epoch: Int, rate: Float)],
                             sourceLocation: SourceLocation = #_sourceLocation) {
        for (step, epoch, rate) in expected {
            let got = s.rate(base: base, step: step, epoch: epoch)
            #expect(abs(got - rate) <= 1e-6 * max(abs(rate), 1e-3), "step \(step), epoch \(epoch): \(got), expected \(rate)",
                    sourceLocation: sourceLocation)
        }
    }

    /// The default is today's behaviour: the base rate itself, exactly, at every step.
    @Test func constantIsTheBaseExactly() {
        let resolved = ScheduleSettings().resolved(stepsPerEpoch: 7, totalSteps: 70)
        #expect(resolved == .constant && resolved.isConstant)
        for base: Float in [1e-3, 0.1, 3.7e-5] {
            #expect([0, 1, 69, 1000].allSatisfy { resolved.rate(base: base, step: $0, epoch: $0 / 7) == base })
        }
    }

    /// Goyal et al.'s ramp over W = 4 steps: step s runs at (s + 1) / 4 of the base, then the base.
    @Test func warmupRampsToTheBase() {
        expectRates(schedule(.constant, warmup: 4), base: 0.1,
                    [(0, 0, 0.025), (1, 0, 0.05), (2, 0, 0.075), (3, 0, 0.1), (4, 1, 0.1), (40, 10, 0.1)])
    }

    /// PyTorch's StepLR(step_size=2, gamma=0.5): epochs 0-1 at the base, 2-3 at half, 4-5 at a quarter.
    @Test func stepDecayByEpoch() {
        expectRates(schedule(.step, every: 2, factor: 0.5), base: 0.1,
                    [(0, 0, 0.1), (5, 1, 0.1), (6, 2, 0.05), (11, 3, 0.05), (12, 4, 0.025), (18, 6, 0.0125)])
    }

    /// Cosine from 0.1 to 0.01 over 100 steps: 0.01 + 0.09 (1 + cos(pi s / 100)) / 2.
    @Test func cosineEndPointsAndMidpoint() {
        expectRates(schedule(.cosine, total: 100, minimum: 0.01), base: 0.1,
                    [(0, 0, 0.1), (25, 0, 0.0868198052),   // cos(pi/4) = 0.7071067812
                     (50, 0, 0.055), (100, 0, 0.01), (150, 0, 0.01)])
    }

    /// A warmup of 10 steps, then a cosine from the base (1) to 0 over the remaining 100 of 110 steps.
    @Test func warmupThenCosine() {
        expectRates(schedule(.cosine, warmup: 10, total: 110), base: 1,
                    [(0, 0, 0.1), (4, 0, 0.5), (9, 0, 1), (10, 0, 1), (60, 0, 0.5),
                     (85, 0, 0.1464466094),   // (1 + cos(3 pi / 4)) / 2
                     (110, 0, 0), (200, 0, 0)])
    }

    /// The warmup ramps towards the decayed rate when a step decay falls inside it (3 warmup steps, 2 per epoch).
    @Test func warmupThenStepDecay() {
        expectRates(schedule(.step, warmup: 3, every: 1, factor: 0.5), base: 1,
                    [(0, 0, 1.0 / 3), (1, 0, 2.0 / 3), (2, 1, 0.5), (3, 1, 0.5), (4, 2, 0.25)])
    }

    /// The plateau lowers the base; the schedule shapes whatever base it gets. A cosine never raises a base that a
    /// plateau took below its floor.
    @Test func scheduleShapesTheBaseAPlateauLowered() {
        let cosine = schedule(.cosine, total: 100, minimum: 0.01)
        expectRates(cosine, base: 0.05, [(0, 0, 0.05), (50, 0, 0.03), (100, 0, 0.01)])   // 0.01 + 0.04 / 2 midway
        expectRates(cosine, base: 0.004, [(0, 0, 0.004), (50, 0, 0.004), (100, 0, 0.004)])
        // A plateau's reduction carries through the warmup and the step decay alike.
        var plateau = ReduceOnPlateau(factor: 0.5, patience: 1, minimum: 1e-4, minDelta: 0)
        var base: Float = 0.1
        for loss: Float in [1, 1] { base = plateau.observe(loss, currentRate: base) }
        #expect(base == 0.05)
        expectRates(schedule(.step, warmup: 4, every: 2, factor: 0.5), base: base, [(1, 0, 0.025), (6, 2, 0.025), (8, 4, 0.0125)])
    }

    /// Warmup epochs become whole steps, rounded to the nearest (0.28 x 25 is 7.000000000000001 in Double), and
    /// any positive warmup lasts at least one step; settings a shape does not use drop out of the resolved form.
    @Test func settingsResolveToSteps() {
        var settings = ScheduleSettings()
        for (epochs, perEpoch, steps) in [(1.5, 3, 5), (0.28, 25, 7), (0.01, 3, 1), (0.0, 3, 0), (2.0, 250, 500)] {
            settings.warmupEpochs = epochs
            #expect(settings.resolved(stepsPerEpoch: perEpoch, totalSteps: 1000).warmupSteps == steps, "\(epochs) x \(perEpoch)")
        }
        settings.shape = .step
        settings.stepEveryEpochs = 3
        settings.stepFactor = 0.25
        settings.cosineMinimum = 0.5
        #expect(settings.resolved(stepsPerEpoch: 10, totalSteps: 40) == schedule(.step, warmup: 20, every: 3, factor: 0.25))
        settings.shape = .cosine
        #expect(settings.resolved(stepsPerEpoch: 10, totalSteps: 40) == schedule(.cosine, warmup: 20, total: 40, minimum: 0.5))
    }

    /// Settings no schedule can follow are named by their flag, in one line.
    @Test func unusableSettingsAreNamed() {
        #expect(ScheduleSettings().problem == nil)
        func problem(_ change: (inout ScheduleSettings) -> Void) -> String {
            var settings = ScheduleSettings()
            change(&settings)
            return settings.problem ?? "none"
        }
        #expect(problem { $0.warmupEpochs = -0.5 }.hasPrefix("--warmup-epochs must be"))
        #expect(problem { $0.warmupEpochs = .nan }.hasPrefix("--warmup-epochs must be"))
        #expect(problem { $0.stepEveryEpochs = 0 }.hasPrefix("--step-every must be"))
        #expect(problem { $0.stepFactor = 1 }.hasPrefix("--step-factor must"))
        #expect(problem { $0.cosineMinimum = -1e-3 }.hasPrefix("--cosine-min-lr must be"))
        #expect(!problem { $0.warmupEpochs = -1 }.contains("\n"))
        // What a checkpoint could hold but no run writes.
        #expect(schedule(.step, every: 0, factor: 0.5).problem != nil)
        #expect(schedule(.constant, warmup: -3).problem != nil)
        #expect(ResolvedSchedule.constant.problem == nil)
    }
}
