import ArgumentParser
import Foundation
import StarlingCore
import StarlingDistributed
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
    @Option(help: "What to measure: all, gemm (not in all: sgemm on both GEMMs over the models' shapes), gemm-deep-ae (not in all: every product of deep-ae's training step at batch 128 and 256, both GEMMs), fc-ae, conv, conv-algorithms (not in all: every 3x3 layer of the suite's conv models, direct against Winograd, pass by pass), conv-accuracy (not in all: those layers' errors against a float64 reference, both algorithms), ssd7, ssd7-layers, pipeline (needs --detection-data), map, unet (U-Net at 128x128, batch 8), kernels (the element-wise kernels at every build this CPU runs), or a detection family (\(ModelRegistry.names(trainingOn: .detection).filter { $0 != "ssd7" }.joined(separator: ", ")): its paper's input size, batch 8; \(ModelRegistry.names(trainingOn: .detectionProposals).joined(separator: ", ")): 375x500, batch 2, 2,000 random proposals an image; mask-rcnn: its Penn-Fudan 320x416, batch 2).") var only: String = "all"
    @Option(help: "With --only FAMILY: its width multiplier (default: the paper's network).") var widthMultiplier: Double?
    @Option(help: "A detection dataset at 300x480 for the SSD input-pipeline figure.") var detectionData: String?
    @Option(help: "With --only conv-algorithms: these models' layers only (unet-w1, unet-w0.25, yolov3-tiny, ssd7, denoising-ae).")
    var layers: [String] = []
    @Option(help: "With --only conv-algorithms: rounds of each pass and algorithm, interleaved; with --only gemm-deep-ae, of each product and GEMM.") var rounds: Int = 3
    @Option(help: "With --only conv-algorithms: wall or cpu (the process's CPU time: on one thread, what a loaded machine disturbs least).")
    var clock: String = "wall"

    @Flag(help: "Data-parallel figures for this job's ranks (run under mpirun; see Launch/bench-distributed.sh).")
    var distributed = false
    @Option(help: "Model families for --distributed.") var models: [String] = ["fc-ae", "conv-ae"]
    @Option(help: "Global batch for --distributed, per model family in --models order.") var batchSizes: [Int] = [256, 128]
    @Option(help: "Gradient bucket size in MB for --distributed (small buckets show the overlap on small models).") var bucketMb: Double = 25

    @Flag(help: "The suite (issue 18): every family's training step and inference at the course's batch size in this process's layout (--threads; the ranks of mpirun), one JSON row each. Peak memory is the process's: Launch/bench-suite.sh runs one entry a process, beside the PyTorch peer, and prints the table.")
    var suite = false
    @Flag(help: "With --suite: the quick entries (\(BenchmarkSuite.entries.filter(\.quick).map(\.name).joined(separator: ", "))) and about 1.5 s of steps each.")
    var quick = false
    @Option(help: "With --suite: this many timed steps an entry instead of about 6 s (1.5 s with --quick) of them (profiles; a loaded machine, where the line's CPU ms a step is the figure to compare).") var suiteSteps: Int?
    @Option(help: "With --suite: replicas of each model on threads of this one process, one thread each (the layout `train --replicas N` runs), instead of one replica on --threads threads.") var replicas: Int?
    @Option(help: "With --suite: these entries only (\(BenchmarkSuite.entries.map(\.name).joined(separator: ", "))).") var entries: [String] = []
    @Flag(help: "With --suite: before the timed steps, one step with the memory ledger read around each phase: weights, gradients and Adam's moments, the values the graph holds after forward by shape, what ops keep beside it, the peak of live blocks, oneDNN's scratch, the allocators' retained mappings, glibc's heap and the runtime's baseline (every rank prints its own).")
    var memoryBreakdown = false
    @Flag(help: "With --suite on several ranks or --replicas: ZeRO stage 1 as train --shard-optimizer runs it (Adam's moments for each rank's or replica's range, gradients reduce-scattered, weights allgathered; the allgather counts in the allreduce wait).")
    var shardOptimizer = false
    @Flag(help: "Print the suite's entries (name, family, batch, quick or full) and the families it leaves out.") var suiteList = false
    @Option(help: "Print the Markdown table of the suite rows in this file (Starling's and the peer's JSON lines).") var suiteTable: String?

    func run() throws {
        if distributed { return try runDistributed() }
        if suiteList {
            for entry in BenchmarkSuite.entries { print("\(entry.name) \(entry.family) \(entry.batch) \(entry.quick ? "quick" : "full")") }
            for family in BenchmarkSuite.missing { print("# not measured: \(family)") }
            return
        }
        if let suiteTable {
            try reportingErrors {
                let text: String
                do { text = try String(contentsOfFile: suiteTable, encoding: .utf8) } catch {
                    throw ValidationError("\(suiteTable): cannot read (\(error.localizedDescription))")
                }
                print(SuiteTable.markdown(try SuiteTable.rows(parsing: text, file: suiteTable)), terminator: "")
            }
            return
        }
        if suite { return try runSuite() }
        if let threads { BLAS.setThreadCount(threads) }
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores; OpenBLAS core \(BLAS.coreName), \(BLAS.threadCount) threads; oneDNN \(DNNLActivation.instructionSet); element-wise kernels \(KernelDispatch.current.rawValue) of \(KernelDispatch.supported.map(\.rawValue).joined(separator: ", ")) (STARLING_KERNELS=baseline, avx2 or avx512 for another); blocked layout \(ChannelLayout.blockWidth) channels wide (STARLING_BLOCK=8 or 16); \(GEMMSelection.summary); \(WinogradSetting.summary)")
        try reportingErrors {
            if only == "all" || only == "fc-ae" {
                // The training run first, so the process's peak RSS is that run's.
                let fc = try Benchmarks.fcAutoencoderTraining(dataPath: data, batchSize: 256, steps: steps)
                let rssMB = Double(Benchmarks.peakResidentBytes()) / 1_048_576
                print(String(format: "fc-ae training, batch 256: %.0f images/s (%.2f ms/step), outside BLAS %.1f%% of the step, peak RSS %.0f MB%@",
                             fc.imagesPerSecond, fc.secondsPerStep * 1000, fc.shareOutsideBLAS * 100, rssMB, data.map { " (reading \($0))" } ?? " (synthetic data)"))
            }
            if only == "gemm" { printGEMMTable() }
            if only == "gemm-deep-ae" {
                guard rounds >= 1 else { throw ValidationError("--rounds \(rounds): at least 1") }
                let sizes = [784, 128, 64, 32, 64, 128, 784]
                printGEMMTable(GEMMBenchmark.denseStep(name: "deep-ae", sizes: sizes, batch: 128)
                               + GEMMBenchmark.denseStep(name: "deep-ae", sizes: sizes, batch: 256), rounds: rounds)
            }
            if only == "conv-algorithms" { try printConvAlgorithms() }
            if only == "conv-accuracy" { try printConvAccuracy() }
            if only == "all" || only == "conv" {
                let conv = ConvBenchmark.run(batch: 16, channels: 64, size: 56, iterations: 3)
                print(String(format: "sgemm 1024x1024x1024: %.1f GFLOP/s", conv.sgemmGFLOPS))
                print(String(format: "conv2d 3x3 64->64 56x56 batch 16, forward+backward: %.1f GFLOP/s (forward %.1f ms, backward %.1f ms), %.0f%% of sgemm",
                             conv.convGFLOPS, conv.forwardSeconds * 1000, conv.backwardSeconds * 1000, conv.ratio * 100))
            }
            if only == "all" || only == "kernels" {
                print("element-wise kernels on \(KernelDispatch.cpuDescription), every build interleaved, 7 rounds (median rate; speed-up against avx2: median, lowest-highest):")
                for line in KernelBenchmark.run() {
                    let rates = line.rates.map { String(format: "%@ %.2f G/s", $0.level.rawValue, $0.elementsPerSecond / 1e9) }
                    let ratios = line.againstAVX2.map { String(format: "%@/avx2 %.2fx (%.2f-%.2f)", $0.level.rawValue, $0.median, $0.low, $0.high) }
                    print("  \(line.kernel), \(line.floats) floats: " + (rates + ratios).joined(separator: "; "))
                }
            }
            if only == "all" || only == "map" {
                for mode in [APMode.voc07, .voc, .coco] {
                    let seconds = try DetectionEvaluationBenchmark.run(mode: mode)
                    print(String(format: "mAP scoring, 5,000 images x 100 detections, %@: %.2f s", mode.rawValue, seconds))
                }
            }
            if let detectionData, only == "all" || only == "pipeline" {
                let rate = try Benchmarks.detectionPipeline(dataPath: detectionData, batchSize: 16, batches: 8)
                print(String(format: "ssd7 input pipeline (read, augment, encode), one thread: %.1f images/s", rate))
            }
            if only == "all" || only == "ssd7-layers" {
                print("ssd7 convolutions, batch 16, blocked layout, \(SSD7LayerBenchmark.ownKernels ? "Starling's kernels where they apply" : "every pass on oneDNN"):")
                for layer in SSD7LayerBenchmark.run() {
                    print(String(format: "  %@: forward %.1f ms (%.0f GFLOP/s), backward %.1f ms (%.0f GFLOP/s)", layer.name,
                                 layer.forwardSeconds * 1000, layer.forwardGFLOPS, layer.backwardSeconds * 1000, layer.backwardGFLOPS))
                }
            }
            if only == "all" || only == "ssd7" {
                let ssd = try Benchmarks.ssd7(batchSize: 16, steps: max(2, steps / 50))
                print(String(format: "ssd7 300x480: training %.1f images/s at batch 16; inference %.1f FPS at batch 1, %.1f FPS at batch 8 (forward pass alone %.1f / %.1f); peak RSS %.0f MB",
                             ssd.trainImagesPerSecond, ssd.inferenceFPS[1] ?? 0, ssd.inferenceFPS[8] ?? 0,
                             ssd.forwardFPS[1] ?? 0, ssd.forwardFPS[8] ?? 0, Double(Benchmarks.peakResidentBytes()) / 1_048_576))
            }
            // Any other detection family (all: yolov3-tiny) at its paper's input size and the batch of the PyTorch
            // comparison (issue 20), on synthetic frames.
            let detectors = ModelRegistry.names(trainingOn: .detection).filter { $0 != "ssd7" }
            if only == "all" || detectors.contains(only) {
                let family = try ModelRegistry.family(named: only == "all" ? "yolov3-tiny" : only)
                var config = try family.configuration()
                if let widthMultiplier { config = try family.setting("width", to: widthMultiplier, in: config, flag: "--width-multiplier") }
                let width = widthMultiplier.map { String(format: " (width %g)", $0) } ?? ""
                if try ModelRegistry.build(config, seed: 1) is any RegionDetector {
                    // A two-stage family that proposes its own regions (faster-rcnn): Fast R-CNN's 2 images a step.
                    let result = try Benchmarks.twoStageDetector(config, batchSize: 2, steps: max(2, steps / 50))
                    print("\(family.name)\(width) \(config.inputShape[1])x\(config.inputShape[2]), its own proposals: "
                          + String(format: "training %.2f images/s at batch 2; inference %.2f FPS at batch 1, %.2f FPS at batch 2 (backbone alone %.1f / %.1f); peak RSS %.0f MB",
                                   result.trainImagesPerSecond, result.inferenceFPS[1] ?? 0, result.inferenceFPS[2] ?? 0,
                                   result.forwardFPS[1] ?? 0, result.forwardFPS[2] ?? 0, Double(Benchmarks.peakResidentBytes()) / 1_048_576))
                    return
                }
                let result = try Benchmarks.detector(config, batchSize: 8, steps: max(2, steps / 25))
                print("\(family.name)\(width) \(config.inputShape[1])x\(config.inputShape[2]): " + String(format: "training %.1f images/s at batch 8; inference %.1f FPS at batch 1, %.1f FPS at batch 8 (forward pass alone %.1f / %.1f); peak RSS %.0f MB",
                             result.trainImagesPerSecond, result.inferenceFPS[1] ?? 0, result.inferenceFPS[8] ?? 0,
                             result.forwardFPS[1] ?? 0, result.forwardFPS[8] ?? 0, Double(Benchmarks.peakResidentBytes()) / 1_048_576))
            } else if ModelRegistry.names(trainingOn: .detectionProposals).contains(only) {
                // Two-stage families that read stored proposals (not in `all`): the data's default size (VOC's 375 x 500),
                // the paper's 2 images a step.
                let family = try ModelRegistry.family(named: only)
                var config = try family.configuration()
                if let widthMultiplier { config = try family.setting("width", to: widthMultiplier, in: config, flag: "--width-multiplier") }
                let result = try Benchmarks.twoStageDetector(config, batchSize: 2, steps: max(2, steps / 50))
                let backbone = result.forwardFPS.isEmpty ? "" : String(format: " (backbone alone %.1f / %.1f)", result.forwardFPS[1] ?? 0, result.forwardFPS[2] ?? 0)
                print("\(family.name) (width \(config.option("width", default: 1))) \(config.inputShape[1])x\(config.inputShape[2]), 2,000 random proposals an image: "
                      + String(format: "training %.2f images/s at batch 2; inference %.2f FPS at batch 1, %.2f FPS at batch 2", result.trainImagesPerSecond,
                               result.inferenceFPS[1] ?? 0, result.inferenceFPS[2] ?? 0)
                      + backbone + String(format: "; peak RSS %.0f MB", Double(Benchmarks.peakResidentBytes()) / 1_048_576))
            } else if only == MaskRCNN.family {
                // Mask R-CNN (not in `all`): the configuration's Penn-Fudan input, the paper's 2 images a step.
                let family = try ModelRegistry.family(named: only)
                var config = try family.configuration()
                if let widthMultiplier { config = try family.setting("width", to: widthMultiplier, in: config, flag: "--width-multiplier") }
                let result = try Benchmarks.maskRCNN(config, batchSize: 2, steps: max(2, steps / 50))
                print("mask-rcnn (width \(config.option("width", default: 1)), depth \(config.option("depth", default: 1))) \(config.inputShape[1])x\(config.inputShape[2]), its own proposals: "
                      + String(format: "training %.2f images/s at batch 2; inference %.2f FPS at batch 1, %.2f FPS at batch 2, masks pasted (backbone and RPN alone %.1f / %.1f); peak RSS %.0f MB",
                               result.trainImagesPerSecond, result.inferenceFPS[1] ?? 0, result.inferenceFPS[2] ?? 0,
                               result.forwardFPS[1] ?? 0, result.forwardFPS[2] ?? 0, Double(Benchmarks.peakResidentBytes()) / 1_048_576))
            } else if !["gemm", "gemm-deep-ae", "fc-ae", "conv", "conv-algorithms", "conv-accuracy", "ssd7", "ssd7-layers", "pipeline", "map", "unet", "kernels"].contains(only) {
                throw ValidationError("--only \(only): not something bench measures (see --help)")
            }
            if only == "all" || only == "unet" {
                // The paper's network (width 1, five levels) at issue 19's 128 x 128, batch 8, same padding, two classes.
                // And a quarter of its width (16 ... 256 channels), the size that trains on a CPU.
                for width in [1.0, 0.25] {
                    let config = ModelConfig(family: "unet", inputShape: [3, 128, 128], options: ["width": width, "levels": 5, "valid": 0],
                                             classNames: ["membrane", "cell"])
                    let unet = try Benchmarks.segmentation(config, batchSize: 8, steps: max(2, steps / (width == 1 ? 25 : 5)))
                    print(String(format: "unet 128x128 (width %.2f, 5 levels, 2 classes): training %.1f images/s at batch 8; inference %.1f FPS at batch 1, %.1f FPS at batch 8; peak RSS %.0f MB",
                                 width, unet.trainImagesPerSecond, unet.inferenceFPS[1] ?? 0, unet.inferenceFPS[8] ?? 0, Double(Benchmarks.peakResidentBytes()) / 1_048_576))
                }
            }
        }
    }

    /// `--only conv-algorithms`: each layer's passes, direct against Winograd, and what the rule runs.
    func printConvAlgorithms() throws {
        guard let clock = ConvAlgorithmBenchmark.Clock(rawValue: clock) else { throw ValidationError("--clock \(clock): expected wall or cpu") }
        let models = Set(ConvAlgorithmBenchmark.layers.map(\.model))
        if let unknown = layers.first(where: { !models.contains($0) }) {
            throw ValidationError("--layers \(unknown): expected one of \(models.sorted().joined(separator: ", "))")
        }
        let algorithms = DNNLActivation.instructionSet.hasPrefix("avx512") ? "oneDNN direct against Winograd F(4x4, 3x3)"
            : "the direct path against Starling's Winograd F(2x2, 3x3) (forward and input gradient)"
        print("3x3 convolutions, \(algorithms), \(rounds) rounds interleaved, \(clock == .cpu ? "process CPU time" : "wall time"), median ms (GFLOP/s), speed-up median (lowest-highest round); \(BLAS.threadCount) thread(s), \(BenchmarkSuite.cpuModel)")
        for layer in ConvAlgorithmBenchmark.layers where layers.isEmpty || layers.contains(layer.model) {
            guard let passes = ConvAlgorithmBenchmark.run(layer, rounds: rounds, clock: clock) else {
                print("  \(layer.description): no Winograd here")
                continue
            }
            let text = passes.map { p in
                let (d, w) = (ConvAlgorithmBenchmark.median(p.direct), ConvAlgorithmBenchmark.median(p.winograd))
                let s = p.speedup
                return String(format: "%@ %.1f (%.0f) / %.1f (%.0f) %.2fx (%.2f-%.2f) rule %@", p.pass.rawValue, d * 1000, p.flops / d / 1e9,
                              w * 1000, p.flops / w / 1e9, s.median, s.low, s.high, p.rule.rawValue)
            }
            let names = Set(passes.flatMap { [$0.directImplementation, $0.winogradImplementation] }).sorted().joined(separator: ", ")
            print("  \(layer.description): " + text.joined(separator: "; ") + " [\(names)]")
            fflush(nil)
        }
    }

    /// `--only conv-accuracy`: each layer's passes by both algorithms against float64 at sampled points.
    func printConvAccuracy() throws {
        let models = Set(ConvAlgorithmBenchmark.layers.map(\.model))
        if let unknown = layers.first(where: { !models.contains($0) }) {
            throw ValidationError("--layers \(unknown): expected one of \(models.sorted().joined(separator: ", "))")
        }
        print("3x3 convolutions against a float64 reference at 400 sampled outputs (50 weights of the weight gradient): largest error over the result's largest magnitude, direct / Winograd; oneDNN \(DNNLActivation.instructionSet), \(BenchmarkSuite.cpuModel)")
        for layer in ConvAlgorithmBenchmark.layers where layers.isEmpty || layers.contains(layer.model) {
            let direct = ConvolutionAccuracy.measure(layer, setting: .never), winograd = ConvolutionAccuracy.measure(layer, setting: .always)
            let text = ConvolutionPass.allCases.map { pass in
                String(format: "%@ %.1e / %.1e (%@)", pass.rawValue, direct.relative[pass] ?? .nan, winograd.relative[pass] ?? .nan,
                       winograd.algorithms[pass]?.rawValue ?? "?")
            }
            print("  \(layer.description): " + text.joined(separator: "; "))
            fflush(nil)
        }
    }

    /// The suite's entries one at a time on this job's ranks: a line for people and a JSON row for the table (rank 0).
    func runSuite() throws {
        if let suiteSteps, suiteSteps < 1 { throw ValidationError("--suite-steps \(suiteSteps): at least 1") }
        let world = try reportingErrors { try Communicator() }
        defer { world.finalize() }
        if let replicas {
            guard replicas >= 1 else { throw ValidationError("--replicas \(replicas): at least 1") }
            guard world.size == 1 || replicas == 1 else { throw ValidationError("--replicas runs replicas on threads of one process: not under mpirun") }
            guard threads == nil || threads == 1 || replicas == 1 else { throw ValidationError("--replicas \(replicas) runs each replica on one thread; drop --threads") }
        }
        let group = (replicas ?? 1) > 1 ? InProcessGroup(size: replicas ?? 1) : nil
        if group != nil { BLAS.setThreadCount(1) } else if let threads { BLAS.setThreadCount(threads) } else if world.size > 1 { BLAS.setThreadCount(1) }
        /// Runs `body` on this rank, or on every replica's thread (one thread each) and returns replica 0's result.
        func onEveryMember<T>(_ body: @escaping (any Collective) throws -> T) throws -> T {
            guard let group else { return try body(world) }
            return try group.run(prepare: { BLAS.setThreadCount(1) }) { try body($0) }[0].get()
        }
        try reportingErrors {
            let chosen = try entries.isEmpty ? BenchmarkSuite.entries.filter { !quick || $0.quick } : entries.map { try BenchmarkSuite.entry(named: $0) }
            let cpu = BenchmarkSuite.cpuModel
            let kernels = "\(cpu); OpenBLAS \(BLAS.coreName); GEMM \(GEMMSelection.shortName); oneDNN \(DNNLActivation.instructionSet); Starling kernels \(KernelDispatch.current.rawValue); \(WinogradSetting.summary)"
            func say(_ line: String) { if world.isRoot { print(line); fflush(nil) } }
            let sharded = shardOptimizer && world.size > 1 ? ", optimizer state sharded (ZeRO stage 1)" : ""
            say(group.map { "suite: 1 process x \($0.size) replicas x 1 thread, one copy of the weights and optimizer state shared; \(kernels)" }
                ?? "suite: \(world.size) rank(s) x \(BLAS.threadCount) thread(s)\(sharded); \(kernels)")
            let sgemm = try onEveryMember { try BenchmarkSuite.sgemmPeak(world: $0) }
            say(String(format: "sgemm 1024^3 on every %@ at once: %.1f GFLOP/s", group == nil ? "rank" : "replica", sgemm))
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            for entry in chosen {
                let (seconds, steps, breakdown, shard) = (quick ? 1.5 : 6, suiteSteps, memoryBreakdown, shardOptimizer)
                let row = try onEveryMember { member in
                    try BenchmarkSuite.measure(entry, world: member, seconds: seconds, steps: steps, sgemm: sgemm, kernels: kernels,
                                               shardOptimizer: shard, memoryBreakdown: breakdown ? { print("memory: " + $0); fflush(nil) } : nil)
                }
                let gflops = row.trainGFLOPS.map { String(format: ", %.1f GFLOP/s (%.0f%% of sgemm)", $0, 100 * $0 / sgemm) } ?? ""
                let b = row.breakdown
                say(String(format: "%@ batch %d%@: training %.1f images/s%@; step %.1f ms forward, %.1f backward, %.1f allreduce wait, %.1f optimizer, %.1f data wait, %.1f ms of CPU a rank; inference %.1f images/s; peak RSS %.0f MB over %@",
                           entry.name, entry.batch, entry.note.isEmpty ? "" : " (\(entry.note))", row.trainImagesPerSecond, gflops,
                           (b?.forward ?? 0) * 1000, (b?.backward ?? 0) * 1000, (b?.allreduce ?? 0) * 1000, (b?.optimizer ?? 0) * 1000,
                           (b?.data ?? 0) * 1000, (b?.cpu ?? 0) * 1000, row.inferenceImagesPerSecond, row.peakMB,
                           group.map { "1 process of \($0.size) replicas" } ?? "\(world.size) rank(s)"))
                say("suite-row " + String(decoding: try encoder.encode(row), as: UTF8.self))
            }
        }
    }

    /// One line per model: images/s on this job's ranks and the communication left exposed after backward, with
    /// and without overlap; then allreduce bandwidth against a raw MPI_Allreduce. Rank 0 prints.
    func runDistributed() throws {
        let world = try reportingErrors { try Communicator() }
        defer { world.finalize() }
        BLAS.setThreadCount(threads ?? 1)
        guard let data else { throw ValidationError("--distributed needs --data MNIST.h5") }
        guard batchSizes.count == models.count else { throw ValidationError("give one --batch-sizes value per --models entry") }
        try reportingErrors {
            func say(_ line: String) { if world.isRoot { print(line); fflush(nil) } }
            say("ranks \(world.size) x \(BLAS.threadCount) OpenBLAS thread(s), core \(BLAS.coreName); \(GEMMSelection.summary)")
            for (family, batch) in zip(models, batchSizes) {
                let bucket = Int(bucketMb * 1_048_576)
                let overlapped = try Benchmarks.distributedTraining(family: family, dataPath: data, batchSize: batch, steps: steps,
                                                                    world: world, bucketBytes: bucket)
                let blocking = try Benchmarks.distributedTraining(family: family, dataPath: data, batchSize: batch, steps: steps,
                                                                  world: world, overlap: false, bucketBytes: bucket)
                let exposed = try world.allreduce(overlapped.exposedCommunicationPerStep, .max)
                let baseline = try world.allreduce(blocking.exposedCommunicationPerStep, .max)
                let hidden = baseline > 0 ? max(0, 1 - exposed / baseline) : 0
                say(String(format: "%@ batch %d, %@ MB buckets: %.0f images/s; allreduce wait after backward %.2f ms/step (%.2f ms without overlap, %.0f%% hidden)",
                           family, batch, "\(bucketMb)", overlapped.imagesPerSecond, exposed * 1000, baseline * 1000, hidden * 100))
            }
            if world.size > 1 {
                for mb in [1.0, 25.0, 100.0] {
                    let bw = try Benchmarks.allreduceBandwidth(world: world, megabytes: mb, iterations: mb > 50 ? 5 : 20)
                    say(String(format: "allreduce %.0f MB: raw MPI_Allreduce %.2f GB/s, Starling buckets %.2f GB/s (%.0f%%)",
                               mb, bw.raw / 1e9, bw.starling / 1e9, bw.starling / bw.raw * 100))
                }
            }
        }
    }

    /// `--only gemm`: GFLOP/s of OpenBLAS (with the core it runs, OPENBLAS_CORETYPE honoured) and oneDNN's sgemm on
    /// each shape, three interleaved rounds each: the best and the spread (min-max).
    func printGEMMTable(_ shapes: [GEMMBenchmark.Shape] = GEMMBenchmark.shapes, rounds: Int = 3) {
        print("sgemm GFLOP/s (wall clock, then over the process CPU time), \(BLAS.threadCount) thread(s), best of \(rounds) interleaved rounds [min-max]; OpenBLAS core \(BLAS.coreName), oneDNN \(DNNLActivation.instructionSet), CPU \(VectorISA.thisCPU):")
        print("| shape | OpenBLAS \(BLAS.coreName) | dnnl_sgemm | dnnl / OpenBLAS | over CPU time: OpenBLAS | dnnl_sgemm | dnnl / OpenBLAS |")
        print("|---|---|---|---|---|---|---|")
        for row in GEMMBenchmark.run(shapes: shapes, rounds: rounds) {
            let open = row.rounds[.openblas] ?? [], dnnl = row.rounds[.dnnl] ?? []
            let openCPU = row.cpuRounds[.openblas] ?? [], dnnlCPU = row.cpuRounds[.dnnl] ?? []
            func cell(_ v: [Double]) -> String { String(format: "%.1f [%.1f-%.1f]", v.max() ?? 0, v.min() ?? 0, v.max() ?? 0) }
            func ratio(_ b: [Double], _ a: [Double]) -> String { String(format: "%.2f", (b.max() ?? 0) / max(a.max() ?? 1, 1e-9)) }
            print("| \(row.shape.label) | \(cell(open)) | \(cell(dnnl)) | \(ratio(dnnl, open)) | \(cell(openCPU)) | \(cell(dnnlCPU)) | \(ratio(dnnlCPU, openCPU)) |")
            fflush(nil)
        }
    }
}
