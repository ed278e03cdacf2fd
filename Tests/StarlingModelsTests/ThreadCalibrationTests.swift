import Foundation
import Testing
import StarlingCore
import StarlingDistributed
@testable import StarlingModels

/// The trainer's choice of thread count from its first steps (`ThreadCalibration`): the schedule of thread counts, the
/// decision from given step times, and a real run that ends on the chosen count.
@Suite(.serialized) struct ThreadCalibrationTests {
    /// Runs a calibration with a step time per thread count, as one process (the figures agreed as they are); returns
    /// the thread count of every step and the decision.
    func simulate(threads: Int = 2, rounds: Int = 3, seconds: (Int, Int) -> Double) -> (schedule: [Int], chosen: Int?, calibration: ThreadCalibration) {
        var calibration = ThreadCalibration(threads: threads, rounds: rounds, targetBlockSeconds: 0.0095)
        var schedule: [Int] = []
        while calibration.chosen == nil && schedule.count < 1000 {
            let t = calibration.threadsForNextStep
            schedule.append(t)
            if let figures = calibration.record(seconds: seconds(t, schedule.count - 1)) { calibration.agree(figures) }
        }
        return (schedule, calibration.chosen, calibration)
    }

    @Test func keepsOneThreadWhenTwoAreSlower() {
        // fc-ae's case: 1.2 ms a step on one thread, 2 ms on two.
        let (schedule, chosen, calibration) = simulate { t, _ in t == 1 ? 0.0012 : 0.002 }
        #expect(chosen == 1)
        // Warm-up 2, 1, 2; the last 2-thread step (2 ms) sets blocks of 9.5 ms / 2 ms, rounded up: 5 steps.
        #expect(Array(schedule.prefix(3)) == [2, 1, 2])
        #expect(calibration.blockSteps == 5)
        // 2.0 / 1.2 = 1.67 > 1.5: decided after the first round, 2 then 1.
        #expect(Array(schedule.dropFirst(3)) == Array(repeating: 2, count: 5) + Array(repeating: 1, count: 5))
        #expect(calibration.secondsPerStep.count == 1)
        #expect(calibration.steps == 13)
    }

    @Test func keepsAllThreadsWhenTheyPay() {
        // SSD7's case: 1.3 s on one thread, 0.7 s on two; blocks of one step.
        let (schedule, chosen, calibration) = simulate { t, _ in t == 1 ? 1.3 : 0.7 }
        #expect(chosen == 2)
        #expect(schedule == [2, 1, 2, 2, 1])
        #expect(calibration.blockSteps == 1)
    }

    @Test func closeCallsRunEveryRoundInAlternatingOrderAndTakeTheMedian() {
        // 1.1x apart: no early decision. The rounds alternate 2,1 / 1,2 / 2,1. One round's outlier (the first
        // 2-thread block stalled to 1.4 ms, which would tip a mean over the rounds to one thread) does not decide: the
        // median does.
        let (schedule, chosen, calibration) = simulate { t, step in
            let base = t == 1 ? 0.0011 : 0.0010
            return t == 2 && (3...12).contains(step) ? base * 1.4 : base
        }
        #expect(chosen == 2)
        #expect(calibration.blockSteps == 10)
        let rounds = Array(schedule.dropFirst(3))
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

    @Test func oneThreadNeedsNoCalibration() {
        let calibration = ThreadCalibration(threads: 1)
        #expect(calibration.chosen == 1 && calibration.threadsForNextStep == 1)
        var copy = calibration
        #expect(copy.record(seconds: 1) == nil && copy.steps == 0)
    }

    @Test func longStepsKeepBlocksOfOneAndShortOnesAreCapped() {
        let (_, _, slow) = simulate { t, _ in t == 1 ? 5.0 : 3.0 }
        #expect(slow.blockSteps == 1)
        var fast = ThreadCalibration(threads: 2, targetBlockSeconds: 0.05)
        for _ in 0..<3 { if let f = fast.record(seconds: 1e-6) { fast.agree(f) } }
        #expect(fast.blockSteps == ThreadCalibration.maximumBlockSteps)
    }

    /// A real run: fc-ae trained with the calibration on. It ends on the thread count it chose, says so once in the
    /// log, and trains to the same loss (to rounding) as a run fixed at one thread: the calibration changes the speed,
    /// not the optimisation.
    @Test func trainerEndsOnTheChosenCountAndTrainsAsAFixedRun() throws {
        let saved = BLAS.threadCount
        defer { BLAS.setThreadCount(saved) }
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
        func run(calibrate: Int?) throws -> (lines: [String], trainer: Trainer, weights: [Float]) {
            BLAS.setThreadCount(calibrate ?? 1)
            var o = TrainingOptions()
            // 5 epochs of 93 steps: room for the longest calibration (3 + 3 rounds x 2 blocks x 64 steps = 387).
            (o.epochs, o.batchSize, o.seed) = (5, 32, 5)
            o.outputDirectory = Fixture.temporaryDirectory("calibrate-\(calibrate ?? 1)")
            o.writeOutputs = false
            o.progress = false
            o.calibrateThreads = calibrate
            let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 5)
            let lines = LockedLines()
            let trainer = try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count), train: data,
                                      validation: nil, options: o, world: try Communicator(), log: { lines.append($0) })
            try trainer.run()
            return (lines.all, trainer, model.parameters.values.toArray())
        }
        let calibrated = try run(calibrate: 2)
        let calibration = try #require(calibrated.trainer.threadCalibration)
        let chosen = try #require(calibration.chosen)
        #expect([1, 2].contains(chosen))
        #expect(BLAS.threadCount == chosen)
        #expect(calibration.steps <= 387 && calibration.secondsPerStep.count >= 1)
        let said = calibrated.lines.filter { $0.hasPrefix("threads: ") }
        #expect(said.count == 1 && said[0].hasPrefix("threads: \(chosen), the faster over the first \(calibration.steps) steps"), "\(said)")
        let fixed = try run(calibrate: nil)
        #expect(fixed.trainer.threadCalibration == nil)
        #expect(!fixed.lines.contains { $0.hasPrefix("threads: ") })
        #expect(maxRelativeDifference(["w": calibrated.weights], ["w": fixed.weights]) < 1e-4)
    }

    /// `train` on one process calibrates when `--blas-threads` is not given and there is more than one thread to try,
    /// and says what it chose; `--blas-threads N` fixes the count and nothing is timed.
    @Test func trainCalibratesOnlyWithoutBlasThreads() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("calibrate-cli")
        let base = ["train", "--model", "fc-ae", "--data", data, "--epochs", "5", "--batch-size", "32", "--val-split", "none"]
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

/// Log lines collected from the trainer.
final class LockedLines: @unchecked Sendable {
    private var lines: [String] = []
    private let lock = NSLock()
    func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}
