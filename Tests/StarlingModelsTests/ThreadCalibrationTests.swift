import Foundation
import Testing
import StarlingCore
import StarlingDistributed
@testable import StarlingModels

/// The trainer's choice of thread count from its steady steps (`ThreadCalibration`): the schedule of thread counts, the
/// decision from given step times, and a real run that ends on the chosen count.
@Suite(.serialized) struct ThreadCalibrationTests {
    /// Runs a calibration with a step time per thread count, as one process (the figures agreed as they are); returns
    /// the thread count of every step and the decision.
    func simulate(threads: Int = 2, plannedSteps: Int = 1000, rounds: Int = 3, seconds: (Int, Int) -> Double) -> (schedule: [Int], chosen: Int?, calibration: ThreadCalibration) {
        var calibration = ThreadCalibration(threads: threads, plannedSteps: plannedSteps, rounds: rounds)
        var schedule: [Int] = []
        while calibration.chosen == nil && schedule.count < 1000 {
            let t = calibration.threadsForNextStep
            schedule.append(t)
            if let figures = calibration.record(seconds: seconds(t, schedule.count - 1)) { calibration.agree(figures) }
        }
        return (schedule, calibration.chosen, calibration)
    }

    @Test func keepsOneThreadWhenTwoAreSlower() {
        // fc-ae's case: 1.2 ms a step on one thread, 2 ms on two, in a run of 1000 steps.
        let (schedule, chosen, calibration) = simulate { t, _ in t == 1 ? 0.0012 : 0.002 }
        #expect(chosen == 1)
        // Settling: 2 % of 1000 steps on one thread. Blocks: 30 ms / 1.2 ms wants 25 timed steps, but the rounds may
        // take 6 % of the run, 60 steps: 6 blocks of 10, each a switch step and 9 timed ones.
        #expect(calibration.settleSteps == 20 && calibration.budgetSteps == 60 && calibration.blockSteps == 9)
        #expect(Array(schedule.prefix(20)) == Array(repeating: 1, count: 20))
        // 2.0 / 1.2 = 1.67 > 1.5, but blocks of 9 steps of 1.2 ms are shorter than 30 ms, too short a sample to decide
        // on one round: all three rounds, 2,1 / 1,2 / 2,1.
        let blocks = Array(repeating: 2, count: 10) + Array(repeating: 1, count: 10)
        #expect(Array(schedule.dropFirst(20)) == blocks + blocks.reversed() + blocks)
        #expect(calibration.secondsPerStep.count == 3)
        #expect(calibration.steps == 80)

        // The same with 4 ms steps on one thread (blocks of 8 steps, 32 ms): decided after the first round.
        let (_, early, longer) = simulate { t, _ in t == 1 ? 0.004 : 0.0065 }
        #expect(early == 1 && longer.blockSteps == 8 && longer.secondsPerStep.count == 1 && longer.steps == 20 + 18)
    }

    @Test func keepsAllThreadsWhenTheyPay() {
        // SSD7's case: 1.3 s on one thread, 0.7 s on two, a run of 200 steps; blocks of one timed step.
        let (schedule, chosen, calibration) = simulate(plannedSteps: 200) { t, _ in t == 1 ? 1.3 : 0.7 }
        #expect(chosen == 2)
        #expect(calibration.settleSteps == 4 && calibration.blockSteps == 1)
        #expect(schedule == [1, 1, 1, 1, 2, 2, 1, 1])
    }

    @Test func closeCallsRunEveryRoundInAlternatingOrderAndTakeTheMedian() {
        // 1.1x apart: no early decision. The rounds alternate 2,1 / 1,2 / 2,1. One round's outlier (the first
        // 2-thread block stalled to 1.4 ms, which would tip a mean over the rounds to one thread) does not decide: the
        // median does.
        let (schedule, chosen, calibration) = simulate { t, step in
            let base = t == 1 ? 0.0011 : 0.0010
            return t == 2 && (20...29).contains(step) ? base * 1.4 : base
        }
        #expect(chosen == 2)
        #expect(calibration.blockSteps == 9)
        let rounds = Array(schedule.dropFirst(20))
        #expect(rounds.count == 60)
        let blocks = stride(from: 0, to: 60, by: 10).map { rounds[$0] }
        #expect(blocks == [2, 1, 1, 2, 2, 1])
        #expect(calibration.secondsPerStep.count == 3)
        let medians = calibration.medianSecondsPerStep
        #expect(abs(medians[0] - 0.0010) < 1e-12 && abs(medians[1] - 0.0011) < 1e-12)

        // The same with one thread faster by 8 %: one thread is kept.
        let (_, other, _) = simulate { t, _ in t == 1 ? 0.00092 : 0.0010 }
        #expect(other == 1)
    }

    @Test func neitherTheFirstStepsNorTheSwitchStepsAreTimed() {
        // Two threads lose in the steady state (1.5 ms against 1.2 ms), but the first ten steps are slow on one thread
        // (allocation, page faults) and the first step after each switch to one thread takes 20 ms: timed, those would
        // make one thread look the slower (a block of nine with one such step averages 3.3 ms against 1.5).
        let (schedule, chosen, calibration) = simulate { t, step in
            if step < 10 { return 0.005 }
            let switched = step > 0 && step >= 20 && (step - 20) % 10 == 0 && t == 1
            return switched ? 0.02 : (t == 1 ? 0.0012 : 0.0015)
        }
        #expect(chosen == 1)
        #expect(schedule.count == 80)
        let medians = calibration.medianSecondsPerStep
        #expect(abs(medians[0] - 0.0015) < 1e-12 && abs(medians[1] - 0.0012) < 1e-12)
        // The block length comes from the settling's second half only (1.2 ms): 25 wanted, 9 affordable.
        #expect(calibration.blockSteps == 9)
    }

    @Test func theSettlingAndTheBudgetAreSharesOfTheRun() {
        func blocks(_ planned: Int, stepSeconds: Double) -> (settle: Int, block: Int?) {
            var c = ThreadCalibration(threads: 2, plannedSteps: planned)
            while c.blockSteps == nil { if let f = c.record(seconds: stepSeconds) { c.agree(f) } }
            return (c.settleSteps, c.blockSteps)
        }
        // A short run: the shortest settling (4 steps) and blocks of one timed step (12 steps in the rounds).
        #expect(blocks(100, stepSeconds: 0.001) == (4, 1))
        // fc-ae's 400-step epoch: 8 steps, 24 in the rounds: 3 timed steps a block.
        #expect(blocks(400, stepSeconds: 0.001) == (8, 3))
        // A long run: the longest settling, and blocks of 30 ms, at most 32 steps.
        #expect(blocks(100_000, stepSeconds: 0.002) == (40, 15))
        #expect(blocks(100_000, stepSeconds: 1e-6) == (40, ThreadCalibration.maximumBlockSteps))
        // Long steps: one timed step a block.
        #expect(blocks(100_000, stepSeconds: 3.0) == (40, 1))
    }

    @Test func oneThreadNeedsNoCalibration() {
        let calibration = ThreadCalibration(threads: 1, plannedSteps: 1000)
        #expect(calibration.chosen == 1 && calibration.threadsForNextStep == 1)
        var copy = calibration
        #expect(copy.record(seconds: 1) == nil && copy.steps == 0)
    }

    /// A real run: fc-ae trained with the calibration on. It ends on the thread count it chose, says so once in the
    /// log, and trains to the same loss (to rounding) as a run fixed at one thread: the calibration changes the speed,
    /// not the optimisation.
    ///
    /// Both things that changed the rounding behind the test's back are held fixed. The step times are the test's (1.2
    /// ms a step on one thread, 2 ms on two), so the schedule is always the same 33 steps: timed by the real clock on a
    /// loaded machine, 2-thread steps of 96 ms gave blocks of one timed step and a decision after 21 steps, and that
    /// schedule (steps 9-10 and 15-18 on two threads) trains weights up to 0.475 apart (relative, element-wise) from
    /// the one-thread run, by rounding alone: a code unit's ReLU flips on a sample at step 75 and Adam carries it on
    /// (a run fixed at one thread but for those six steps gives the same 0.475). And each run holds the process's
    /// thread count (`BLAS.withThreadCount`): other tests of the process set it too, and one of them switched the
    /// fixed run to two threads for steps 370-374.
    @Test func trainerEndsOnTheChosenCountAndTrainsAsAFixedRun() throws {
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        func run(calibrate: Int?) throws -> (lines: [String], trainer: Trainer, weights: [Float], threadsAfter: Int) {
            try BLAS.withThreadCount(calibrate ?? 1) { try runHoldingTheCount(calibrate: calibrate) }
        }
        func runHoldingTheCount(calibrate: Int?) throws -> (lines: [String], trainer: Trainer, weights: [Float], threadsAfter: Int) {
            var o = TrainingOptions()
            // 5 epochs of 93 steps: 9 settling steps, at most 27 in the rounds (6 % of 465).
            (o.epochs, o.batchSize, o.seed) = (5, 32, 5)
            o.outputDirectory = Fixture.temporaryDirectory("calibrate-\(calibrate ?? 1)")
            o.writeOutputs = false
            o.progress = false
            o.calibrateThreads = calibrate
            let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 5)
            let lines = LockedLines()
            let trainer = try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count), train: data,
                                      validation: nil, options: o, world: try Communicator(), log: { lines.append($0) })
            trainer.calibrationClock = StepClock { threads in threads == 1 ? 0.0012 : 0.002 }.read
            try trainer.run()
            return (lines.all, trainer, model.parameters.values.toArray(), BLAS.threadCount)
        }
        let calibrated = try run(calibrate: 2)
        let calibration = try #require(calibrated.trainer.threadCalibration)
        let chosen = try #require(calibration.chosen)
        // 9 settling steps, then blocks of 3 timed steps (30 ms wants 25, the budget affords 3), too short to decide
        // early: three rounds of 2 x (1 + 3) steps, and one thread, the faster.
        #expect(chosen == 1)
        #expect(calibrated.threadsAfter == chosen)
        #expect(calibration.settleSteps == 9 && calibration.blockSteps == 3 && calibration.steps == 33 && calibration.secondsPerStep.count == 3)
        let said = calibrated.lines.filter { $0.hasPrefix("threads: ") }
        #expect(said.count == 1 && said[0].hasPrefix("threads: \(chosen), the faster over the first \(calibration.steps) steps"), "\(said)")
        let fixed = try run(calibrate: nil)
        #expect(fixed.trainer.threadCalibration == nil)
        #expect(!fixed.lines.contains { $0.hasPrefix("threads: ") })
        #expect(maxRelativeDifference(["w": calibrated.weights], ["w": fixed.weights]) < 1e-4)
    }

    /// `train` on one process calibrates when `--blas-threads` is not given and there is more than one thread to try,
    /// and says what it chose; `--blas-threads N` fixes the count and nothing is timed. (`--replicas 1`: one replica,
    /// whose threads are what this calibration chooses; `ReplicaTrainingTests` covers the choice of replicas.)
    @Test func trainCalibratesOnlyWithoutBlasThreads() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("calibrate-cli")
        let base = ["train", "--model", "fc-ae", "--data", data, "--epochs", "5", "--batch-size", "32", "--val-split", "none", "--replicas", "1"]
        let environment = ProcessInfo.processInfo.environment
        let threads = Int(environment["OPENBLAS_NUM_THREADS"] ?? environment["OMP_NUM_THREADS"] ?? "") ?? ProcessInfo.processInfo.activeProcessorCount
        let auto = try run(Fixture.starling, base + ["--out", dir + "/auto"])
        #expect(auto.status == 0, "\(auto.error)")
        let said = auto.output.split(separator: "\n").filter { $0.hasPrefix("threads: ") }
        if threads > 1 {
            #expect(said.count == 1 && (said[0].hasPrefix("threads: 1,") || said[0].hasPrefix("threads: \(threads),")), "\(said)")
        } else {
            #expect(said.isEmpty)
        }
        let fixed = try run(Fixture.starling, base + ["--out", dir + "/fixed", "--blas-threads", "2"])
        #expect(fixed.status == 0 && !fixed.output.split(separator: "\n").contains { $0.hasPrefix("threads: ") }, "\(fixed.error)")
    }
}

/// A clock for the thread calibration that moves on by a given step time at each reading: the trainer reads it at a
/// step's start and end, so a step lasts the time given for the thread count at its start (a timed step's count).
final class StepClock: @unchecked Sendable {
    private var now = 0.0
    private let seconds: (_ threads: Int) -> Double
    init(seconds: @escaping (_ threads: Int) -> Double) { self.seconds = seconds }
    func read() -> Double {
        defer { now += seconds(BLAS.threadCount) }
        return now
    }
}

/// Log lines collected from the trainer.
final class LockedLines: @unchecked Sendable {
    private var lines: [String] = []
    private let lock = NSLock()
    func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}
