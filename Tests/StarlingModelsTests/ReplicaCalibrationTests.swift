import Foundation
import Testing
import StarlingCore
@testable import StarlingModels

extension ThreadCalibrationTests {
    /// `ReplicaCalibration`'s decision between one replica on every thread and one replica a thread, on injected step
    /// times (the steps themselves run for real, fc-ae on the sample data, a few a block): the faster layout by the rounds'
    /// medians wins, one long sizing step beside a short one does not decide, and long steps far apart do.
    /// Inside `ThreadCalibrationTests`, whose `.serialized` covers it: its one-replica blocks set OpenBLAS's process-wide
    /// thread count to 2, which must not happen while that suite compares a calibrated run with a fixed one.
    @Suite struct ReplicaCalibrationTests {
        func calibrate(_ timer: @escaping ReplicaCalibration.BlockTimer) throws -> ReplicaCalibration {
            let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train")
            let previous = BLAS.threadCount
            defer { BLAS.setThreadCount(previous) }
            return try ReplicaCalibration.measure(replicas: 2, source: data, batchSize: 16, seed: 3, stepsPerEpoch: 4, timer: timer) { shard in
                let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 3)
                return (model, Adam(parameterCount: model.parameters.count, shard: shard ?? 0..<model.parameters.count))
            }
        }

        @Test func theFasterLayoutByTheRoundsWins() throws {
            let replicasFaster = try calibrate { layout, _, _ in layout == .replicas ? 0.03 : 0.04 }
            #expect(replicasFaster.chosen == 2)
            #expect(replicasFaster.replicaSeconds == [0.03, 0.03, 0.03] && replicasFaster.threadSeconds == [0.04, 0.04, 0.04])
            // Each layout's blocks sized on its own step: 0.08 s / 0.03 s and 0.08 s / 0.04 s.
            #expect(replicasFaster.blockSteps.thread == 2 && replicasFaster.blockSteps.replica == 2)
            let oneReplicaFaster = try calibrate { layout, _, _ in layout == .replicas ? 0.04 : 0.03 }
            #expect(oneReplicaFaster.chosen == 1)
            #expect(oneReplicaFaster.summary.hasPrefix("replicas: 1 (one replica on 2 threads)"), "\(oneReplicaFaster.summary)")
        }

        /// The sizing step of one layout descheduled (0.3 s where its steps take 0.03): the rounds decide, and the layout
        /// that step made look slow wins them. Before, a sizing step a block long and 1.5x the other's decided at once
        /// (and sized every block at one step).
        @Test func oneSlowSizingStepDoesNotDecide() throws {
            let calibration = try calibrate { layout, block, _ in
                switch (layout, block) {
                case (.oneReplica, 1): return 0.3
                case (.oneReplica, _): return 0.03
                case (.replicas, _): return 0.04
                }
            }
            #expect(calibration.threadSeconds.count == 3, "rounds run: \(calibration.summary)")
            #expect(calibration.chosen == 1, "\(calibration.summary)")
            #expect(calibration.blockSteps.thread == 2 && calibration.blockSteps.replica == 2, "\(calibration.summary)")
        }

        /// A layout six times slower than the other (two threads on a busy machine) keeps blocks of about 80 ms: one step,
        /// where sizing on the faster step would run it eight a block.
        @Test func aSlowLayoutKeepsShortBlocks() throws {
            let calibration = try calibrate { layout, _, _ in layout == .replicas ? 0.01 : 0.06 }
            #expect(calibration.blockSteps.thread == 1 && calibration.blockSteps.replica == 8, "\(calibration.summary)")
            #expect(calibration.chosen == 2 && calibration.replicaSeconds.count == 3)
            #expect(calibration.summary.contains("median of 3 round(s) of 8 and 1 step(s)"), "\(calibration.summary)")
        }

        /// Both layouts' steps a block long and 1.5x apart (a large model): decided on the sizing step, without rounds.
        @Test func longStepsFarApartDecideAtOnce() throws {
            let calibration = try calibrate { layout, _, _ in layout == .replicas ? 0.1 : 0.2 }
            #expect(calibration.chosen == 2)
            #expect(calibration.replicaSeconds == [0.1] && calibration.threadSeconds == [0.2] && calibration.blockSteps.thread == 1 && calibration.blockSteps.replica == 1)
            #expect(calibration.summary.contains("one step each, 1.5x apart"), "\(calibration.summary)")
        }
    }
}
