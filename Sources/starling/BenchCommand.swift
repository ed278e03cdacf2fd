import ArgumentParser
import Foundation
import StarlingCore
import StarlingModels

/// `starling bench`: the numbers in BENCHMARKS.md. Build in release first (`swift build -c release`).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure sgemm, conv2d and FC-autoencoder training throughput (use a release build).")

    @Option(help: "MNIST HDF5 file to train the FC-autoencoder benchmark on (default: synthetic images; real reads include HDF5 time).")
    var data: String?
    @Option(help: "Timed training steps.") var steps: Int = 100
    @Option(help: "BLAS threads (default: OpenBLAS's own choice).") var threads: Int?

    func run() throws {
        if let threads { BLAS.setThreadCount(threads) }
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores; OpenBLAS core \(BLAS.coreName), \(BLAS.threadCount) threads")
        try reportingErrors {
            // The training run first, so the process's peak RSS is that run's.
            let fc = try Benchmarks.fcAutoencoderTraining(dataPath: data, batchSize: 256, steps: steps)
            let rssMB = Double(Benchmarks.peakResidentBytes()) / 1_048_576
            print(String(format: "fc-ae training, batch 256: %.0f images/s (%.2f ms/step), outside BLAS %.1f%% of the step, peak RSS %.0f MB%@",
                         fc.imagesPerSecond, fc.secondsPerStep * 1000, fc.shareOutsideBLAS * 100, rssMB, data == nil ? " (synthetic data)" : " (reading \(data!))"))
            let conv = ConvBenchmark.run(batch: 16, channels: 64, size: 56, iterations: 3)
            print(String(format: "sgemm 1024x1024x1024: %.1f GFLOP/s", conv.sgemmGFLOPS))
            print(String(format: "conv2d 3x3 64->64 56x56 batch 16, forward+backward: %.1f GFLOP/s (forward %.1f ms, backward %.1f ms), %.0f%% of sgemm",
                         conv.convGFLOPS, conv.forwardSeconds * 1000, conv.backwardSeconds * 1000, conv.ratio * 100))
        }
    }
}
