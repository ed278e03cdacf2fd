import Foundation
import StarlingCore
import StarlingDistributed
import StarlingNN
import StarlingData
import StarlingDetection
import StarlingONNX

/// `starling bench --suite` (issue 18): every family's training step and inference at the course's batch size in this
/// process's layout (its threads, and its ranks under mpirun), one entry at a time, with the step's breakdown, peak
/// memory, achieved FLOP/s against sgemm measured in the same run, and a JSON row per entry that
/// `Launch/bench-suite.sh` joins with the PyTorch peer's rows (Launch/peer_suite.py) into one table (`SuiteTable`).
public enum BenchmarkSuite {
    /// One model at one batch size and input size.
    public struct Entry: Sendable {
        public let name: String
        public let family: String
        /// The global batch (split over ranks).
        public let batch: Int
        /// In `--quick` (a few minutes on 2 cores over the three layouts).
        public let quick: Bool
        /// What the row says about the setting, beside the family's name.
        public let note: String
        let configure: @Sendable () throws -> ModelConfig

        init(_ name: String, family: String? = nil, batch: Int, quick: Bool, note: String = "",
             configure: (@Sendable () throws -> ModelConfig)? = nil) {
            self.name = name
            self.family = family ?? name
            self.batch = batch
            self.quick = quick
            self.note = note
            let family = self.family
            self.configure = configure ?? { try ModelRegistry.defaultConfig(family: family) }
        }

        public func configuration() throws -> ModelConfig { try configure() }
    }

    static func unet(size: (Int, Int), width: Double, classes: Int, levels: Int = 5) -> @Sendable () throws -> ModelConfig {
        { ModelConfig(family: "unet", inputShape: [3, size.0, size.1], options: ["width": width, "levels": Double(levels), "valid": 0],
                      classNames: (0..<classes).map { "class\($0)" }) }
    }

    /// The course's batch sizes (issue 18's table; Launch/bench-autoencoders.sh) at each family's default input; the
    /// detectors at their papers' inputs and the YOLO comparison's batch 8 (issue 20); the region detectors at Fast
    /// R-CNN's 2 images of 2,000 proposals; U-Net at issue 19's 128 x 128 batch 8 (the paper's width, a quarter and an
    /// eighth of it) and at the membrane (512 x 512) size and CamVid's (Launch/configs/unet-camvid.yaml: 180 x 240, four levels,
    /// 11 classes) at the configs' width 0.25 and batch 4.
    public static let entries: [Entry] = [
        Entry("fc-ae", batch: 256, quick: true),
        Entry("sparse-ae", batch: 256, quick: true),
        Entry("deep-ae", batch: 256, quick: true),
        Entry("conv-ae", batch: 128, quick: true),
        Entry("denoising-ae", batch: 128, quick: true),
        Entry("seq2seq-ae", batch: 128, quick: false),
        Entry("vae", batch: 32, quick: true),
        Entry("conv-vae", batch: 128, quick: false),
        Entry("ssd7", batch: 16, quick: true, note: "300x480"),
        Entry("yolov3-tiny", batch: 8, quick: true, note: "416x416"),
        Entry("unet-128-w0.25", family: "unet", batch: 8, quick: true, note: "128x128, width 0.25",
              configure: unet(size: (128, 128), width: 0.25, classes: 2)),
        Entry("unet-128-w0.125", family: "unet", batch: 8, quick: false, note: "128x128, width 0.125",
              configure: unet(size: (128, 128), width: 0.125, classes: 2)),
        Entry("unet-128", family: "unet", batch: 8, quick: false, note: "128x128, width 1", configure: unet(size: (128, 128), width: 1, classes: 2)),
        Entry("unet-membrane", family: "unet", batch: 4, quick: false, note: "512x512, width 0.25",
              configure: unet(size: (512, 512), width: 0.25, classes: 2)),
        Entry("unet-camvid", family: "unet", batch: 4, quick: false, note: "180x240, width 0.25, 4 levels, 11 classes",
              configure: unet(size: (180, 240), width: 0.25, classes: 11, levels: 4)),
        Entry("ssd300", batch: 8, quick: false, note: "300x300"),
        Entry("yolov2", batch: 8, quick: false, note: "416x416"),
        Entry("yolov1", batch: 8, quick: false, note: "448x448"),
        Entry("yolov3", batch: 8, quick: false, note: "416x416"),
        Entry("faster-rcnn", batch: 2, quick: false, note: "its own proposals"),
        Entry("fast-rcnn", batch: 2, quick: false, note: "2,000 random proposals an image"),
        Entry("rcnn", batch: 2, quick: false, note: "2,000 random proposals an image"),
        Entry("mask-rcnn", batch: 2, quick: false, note: "192x256, its own proposals, three elliptic instances an image", configure: maskRCNN),
    ]

    /// Mask R-CNN as `train` runs it in Launch/configs/mask-rcnn-pennfudan.yaml: Penn-Fudan imported at 192 x 256
    /// (pedestrians and background), batch 2, the family's default widths.
    static let maskRCNN: @Sendable () throws -> ModelConfig = {
        try MaskRCNN.configuration(for: DatasetDescription(path: "synthetic mask-rcnn", sampleShape: [3, 192, 256],
                                                           classNames: ["background", "pedestrian"]))
    }

    /// Families the suite does not measure yet, and why (printed by `--suite-list`, stated in BENCHMARKS.md).
    public static let missing: [String] = []

    public static func entry(named name: String) throws -> Entry {
        guard let entry = entries.first(where: { $0.name == name }) else {
            throw TrainingError("suite entry \(name): not one of \(entries.map(\.name).joined(separator: ", "))")
        }
        return entry
    }

    /// Seconds per step spent in each part, averaged over the timed steps and the ranks.
    public struct Breakdown: Codable, Sendable, Equatable {
        /// `model.loss` (forward and loss).
        public var forward: Double
        public var backward: Double
        /// Waiting in the gradient allreduce after backward (what overlap did not hide).
        public var allreduce: Double
        public var optimizer: Double
        /// Blocked on the prefetch thread (synthetic samples drawn and targets encoded there, as training reads them).
        public var data: Double
        /// The process's CPU time (user and system, every thread) a timed step, averaged over the ranks: on a machine
        /// shared with other work the step's wall time measures the load, this what the step itself costs (one thread:
        /// its work; more: their work and their waiting at barriers). Nil in rows from before it was recorded.
        public var cpu: Double?
        public init(forward: Double, backward: Double, allreduce: Double, optimizer: Double, data: Double, cpu: Double? = nil) {
            (self.forward, self.backward, self.allreduce, self.optimizer, self.data, self.cpu) = (forward, backward, allreduce, optimizer, data, cpu)
        }
    }

    /// One measurement: a suite entry on one side (Starling or the PyTorch peer) in one layout. The JSON the two sides
    /// exchange (Launch/peer_suite.py writes the same keys).
    public struct Row: Codable, Sendable, Equatable {
        public var side: String
        public var entry: String
        public var batch: Int
        public var ranks: Int
        public var threads: Int
        /// Starling: replicas on threads of the one process (`bench --suite --replicas N`); nil: one replica a rank.
        public var replicas: Int?
        /// PyTorch: "NCHW" or "channels-last"; Starling: nil.
        public var layout: String?
        public var trainImagesPerSecond: Double
        /// Forward pass and loss without gradients at the training batch, over all ranks.
        public var inferenceImagesPerSecond: Double
        /// Peak resident memory summed over ranks (each process's ru_maxrss).
        public var peakMB: Double
        public var parameters: Int
        /// FLOPs of one image's training step (3 x 2 x the forward pass's multiply-adds); nil where not counted.
        public var trainFLOPsPerImage: Double?
        /// sgemm 1024^3 measured in the same process layout (all ranks at once, summed).
        public var sgemmGFLOPS: Double?
        public var breakdown: Breakdown?
        /// The CPU and kernels the row ran on.
        public var kernels: String?

        public init(side: String, entry: String, batch: Int, ranks: Int, threads: Int, layout: String? = nil, trainImagesPerSecond: Double,
                    inferenceImagesPerSecond: Double, peakMB: Double, parameters: Int, trainFLOPsPerImage: Double? = nil,
                    sgemmGFLOPS: Double? = nil, breakdown: Breakdown? = nil, kernels: String? = nil) {
            (self.side, self.entry, self.batch, self.ranks, self.threads, self.layout) = (side, entry, batch, ranks, threads, layout)
            (self.trainImagesPerSecond, self.inferenceImagesPerSecond, self.peakMB, self.parameters) = (trainImagesPerSecond, inferenceImagesPerSecond, peakMB, parameters)
            (self.trainFLOPsPerImage, self.sgemmGFLOPS, self.breakdown, self.kernels) = (trainFLOPsPerImage, sgemmGFLOPS, breakdown, kernels)
        }

        public var trainGFLOPS: Double? { trainFLOPsPerImage.map { $0 * trainImagesPerSecond / 1e9 } }
    }

    /// FLOPs of one image's training step: the forward pass's multiply-adds (from the network's ONNX description, at
    /// the config's input size) x 2 FLOPs x 3 for forward and backward (backward computes two products per forward
    /// one). Nil for the region detectors and Mask R-CNN, whose heads run on a sampled number of regions the export
    /// does not fix.
    public static func trainFLOPsPerImage(_ model: any Model) -> Double? {
        guard let exportable = model as? any ONNXExportable, !(model is any RegionDetector), !(model is MaskRCNN) else { return nil }
        return 6 * forwardMultiplyAdds(exportable)
    }

    public static func forwardMultiplyAdds(_ model: any ONNXExportable) -> Double {
        let graph = ONNXGraph()
        let images = graph.input("images", shape: [-1] + model.config.inputShape)
        _ = GradMode.disabled { model.onnxOutputs(images) }
        return graph.multiplyAddsPerImage
    }

    /// The CPU's model name, family and model as Linux reports them (/proc/cpuinfo), for the table's header.
    public static var cpuModel: String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "CPU model unknown" }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            if line.isEmpty { break }
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2, fields[parts[0]] == nil { fields[parts[0]] = parts[1] }
        }
        let name = fields["model name"] ?? "CPU model unknown"
        return "\(name) (family \(fields["cpu family"] ?? "?") model \(fields["model"] ?? "?"), \(ProcessInfo.processInfo.activeProcessorCount) cores)"
    }

    /// sgemm 1024^3 on every rank at once, summed: the machine's measured peak in this layout.
    public static func sgemmPeak(world: any Collective) throws -> Double {
        _ = ConvBenchmark.sgemmGFLOPS(size: 1024, iterations: 1)
        try world.barrier()
        return try world.allreduce(ConvBenchmark.sgemmGFLOPS(size: 1024, iterations: 4), .sum)
    }

    /// Measures `entry` on this job's ranks with this process's threads: warm-up steps, then timed steps for about
    /// `seconds` (the count agreed by all ranks from the slowest warm-up), then inference for a third of that.
    /// `steps` fixes the timed steps' count instead (for profiles and comparisons on a loaded machine).
    /// Over an `InProcessCollective` (called on each replica's thread) the row is one process's: replicas, not ranks,
    /// and the process's peak memory once.
    /// `shardOptimizer` (MPI ranks or replicas on threads): ZeRO stage 1 as `train --shard-optimizer` runs it (Adam's moments for this
    /// rank's range, gradients reduce-scattered, weights allgathered after the step; the allgather counts as communication).
    public static func measure(_ entry: Entry, world: any Collective, seconds: Double, steps fixedSteps: Int? = nil, sgemm: Double?,
                               kernels: String, shardOptimizer: Bool = false, memoryBreakdown: ((String) -> Void)? = nil) throws -> Row {
        let residentAtStart = MemoryLedger.residentBytes().now
        let config = try entry.configuration()
        guard entry.batch % world.size == 0 else {
            throw TrainingError("suite entry \(entry.name): batch \(entry.batch) does not split over \(world.size) ranks")
        }
        let family = try ModelRegistry.family(named: config.family)
        let model = try family.build(config, seed: 1)
        let aware = model as? CrossReplicaAware
        aware?.crossReplica = CrossReplica(world)
        let sharding = world as? any ShardingCollective
        if shardOptimizer && world.size > 1 && sharding == nil { throw TrainingError("--shard-optimizer needs a reduce-scatter, which \(type(of: world)) lacks") }
        // Replicas share one copy of the weights and of Adam's moments, as `train --replicas` runs them (`Trainer`).
        let replicas = world.size > 1 ? world as? InProcessCollective : nil
        if let replicas { model.parameters.shareValues(of: try replicas.allgatherObjects(model.parameters)[0]) }
        let shards = (shardOptimizer || replicas != nil) && world.size > 1
            ? OptimizerShards.ranges(parameterCount: model.parameters.count, ranks: world.size) : nil
        let adam = Adam(parameterCount: model.parameters.count, shard: shards?[world.rank])
        let sync = GradientSynchronizer(store: model.parameters, communicator: world, shards: shards)
        /// After the update: the ranks' allgather of the weights, or the replicas' barrier (no replica reads the shared
        /// weights of the next step before every range is updated).
        func gatherWeights() throws {
            if replicas != nil { try world.barrier() } else if let shards, let sharding { try sharding.allgather(model.parameters.values.pointer, counts: shards.map(\.count)) }
        }
        let local = entry.batch / world.size
        // A pool of one local batch: the peer, too, keeps one batch of data.
        let source = SyntheticSource(kind: family.dataKind, config: config, classCount: config.classNames?.count ?? 2, poolSize: local)
        func slices(_ steps: Int, from first: Int) -> [[Int]] {
            (first..<(first + steps)).map { s in Array((s * entry.batch + world.rank * local)..<(s * entry.batch + (world.rank + 1) * local)) }
        }
        var sums = [Double](repeating: 0, count: 5)   // forward, backward, allreduce, optimizer, data
        var lastBatch: Batch?
        func run(_ reader: Prefetcher, steps: Int, epoch: Int) throws {
            for _ in 0..<steps {
                let t0 = monotonicSeconds()
                // Only the run's last batch is kept for the inference rounds: the one before is not held through a step.
                lastBatch = nil
                var batch = try reader.next()
                let t1 = monotonicSeconds()
                (batch.epoch, batch.seed) = (epoch, 1)
                // As `train` runs a step: no pass over the gradients, the first write of each stores (pages given
                // back after a sum stay so until written).
                model.parameters.deferGradientZeroing()
                sync.beginStep()
                let t2 = monotonicSeconds()
                let loss = model.loss(batch, training: true)
                let t3 = monotonicSeconds()
                loss.backward(onLeafReady: sync.parameterReady)
                model.parameters.settleGradients()
                let t4 = monotonicSeconds()
                if sync.foldsStepScalars {
                    // As `train --replicas` rounds a step: the bound test, then the reduce-scatter that ends after the sum.
                    _ = try sync.finish(posting: [], skipsAfterSum: sync.ownGradientsSumWithoutOverflow) { [] }
                } else {
                    try sync.finish()
                }
                let t5 = monotonicSeconds()
                adam.step(model.parameters, gradientScale: sync.averagingScale)
                let t6 = monotonicSeconds()
                try gatherWeights()
                let t7 = monotonicSeconds()
                for (k, d) in [t3 - t2, t4 - t3, t5 - t4 + t7 - t6, t6 - t5, t1 - t0].enumerated() { sums[k] += d }
                lastBatch = batch
            }
        }
        let residentWithModel = MemoryLedger.residentBytes().now
        // Warm-up: two steps (the first allocates), the second timed to size the run.
        let warmup = Prefetcher(source: source, steps: slices(2, from: 0), epoch: 0, config: config, targetEncoder: model.targetEncoder)
        try run(warmup, steps: 1, epoch: 0)
        let before = monotonicSeconds()
        try run(warmup, steps: 1, epoch: 0)
        warmup.finish()
        if let memoryBreakdown {
            let reader = Prefetcher(source: source, steps: slices(1, from: 0), epoch: 0, config: config, targetEncoder: model.targetEncoder)
            defer { reader.finish() }
            for line in try MemoryBreakdown.step(model: model, adam: adam, sync: sync, reader: reader, residentAtStart: residentAtStart,
                                                 residentWithModel: residentWithModel) {
                memoryBreakdown("\(entry.name) rank \(world.rank): " + line)
            }
            try gatherWeights()
        }
        let stepSeconds = try world.allreduce(monotonicSeconds() - before, .max)
        let steps = fixedSteps ?? max(2, min(500, Int(seconds / max(stepSeconds, 1e-6))))
        sums = [Double](repeating: 0, count: 5)
        let reader = Prefetcher(source: source, steps: slices(steps, from: 2), epoch: 1, config: config, targetEncoder: model.targetEncoder)
        try world.barrier()
        let ledgerBeforeSteps = memoryBreakdown == nil ? nil : MemoryLedger.snapshot()
        let start = monotonicSeconds(), cpuStart = Benchmarks.processCPUSeconds()
        do {
            defer { reader.finish() }
            try run(reader, steps: steps, epoch: 1)
        }
        let cpuPerStep = try world.allreduce((Benchmarks.processCPUSeconds() - cpuStart) / Double(steps), .sum) / Double(world.size)
        let elapsed = try world.allreduce(monotonicSeconds() - start, .max)
        let peakAfterTraining = MemoryLedger.residentBytes().peak
        if let memoryBreakdown, let before = ledgerBeforeSteps {
            let after = MemoryLedger.snapshot()
            memoryBreakdown(String(format: "%@ rank %d: over the %d timed steps, large blocks' pages given back %d time(s), %.1f MB; blocks placed on pages not resident %.1f MB; minor faults of the process %d",
                                   entry.name, world.rank, steps, after.largeReleases - before.largeReleases,
                                   Double(after.largeReleasedBytes - before.largeReleasedBytes) / 1_048_576,
                                   Double(after.largeFaultedBytes - before.largeFaultedBytes) / 1_048_576, after.minorFaults - before.minorFaults))
        }
        var perStep = sums.map { $0 / Double(steps) }
        try world.allreduce(&perStep, .sum)
        perStep = perStep.map { $0 / Double(world.size) }

        // Inference: every rank on its own slice, the best of three rounds; images/s summed over ranks.
        guard var batch = lastBatch else { throw TrainingError("suite entry \(entry.name): no step ran") }
        batch.epoch = nil
        aware?.crossReplica = .single
        let repeats = max(1, Int(seconds / 3 / max(perStep[0], 1e-6) / 3))
        let rate = Benchmarks.imagesPerSecond(local, repeats: repeats) { _ = GradMode.disabled { model.loss(batch, training: false) } }
        let inference = try world.allreduce(rate, .sum)
        if let memoryBreakdown {
            let ledger = MemoryLedger.snapshot()
            memoryBreakdown(String(format: "%@ rank %d: resident peak after the timed training steps %.1f MB, after inference %.1f MB (scratch arenas mapped %.1f MB, large blocks mapped %.1f MB)",
                                   entry.name, world.rank, Double(peakAfterTraining) / 1_048_576, Double(ledger.residentPeak) / 1_048_576,
                                   Double(ledger.scratchMapped) / 1_048_576, Double(ledger.largeMapped) / 1_048_576))
        }
        // Peak memory before anything else allocates (the FLOP count copies the weights into an ONNX graph).
        let inProcess = world is InProcessCollective
        let peak = try world.allreduce(Double(Benchmarks.peakResidentBytes()) / 1_048_576, inProcess ? .max : .sum)
        var row = Row(side: "starling", entry: entry.name, batch: entry.batch, ranks: inProcess ? 1 : world.size, threads: BLAS.threadCount,
                   trainImagesPerSecond: Double(steps * entry.batch) / elapsed, inferenceImagesPerSecond: inference, peakMB: peak,
                   parameters: model.parameters.count, trainFLOPsPerImage: trainFLOPsPerImage(model), sgemmGFLOPS: sgemm,
                   breakdown: Breakdown(forward: perStep[0], backward: perStep[1], allreduce: perStep[2], optimizer: perStep[3], data: perStep[4],
                                        cpu: cpuPerStep),
                   kernels: kernels)
        row.replicas = inProcess ? world.size : nil
        return row
    }
}

/// One training step with the memory ledger read around each phase (`bench --suite --memory-breakdown`): the
/// parameters, gradients and Adam's moments, the values the graph holds at the end of forward grouped by shape, what
/// the ops keep beside the graph (closures' captures), the peak of live blocks during backward, oneDNN's scratch, the
/// allocators' mappings against their live peak (what they retain), glibc's heap and the runtime's resident baseline.
enum MemoryBreakdown {
    static func step(model: any Model, adam: Adam, sync: GradientSynchronizer, reader: Prefetcher,
                     residentAtStart: Int, residentWithModel: Int) throws -> [String] {
        func mb(_ bytes: Int) -> String { String(format: "%.1f MB", Double(bytes) / 1_048_576) }
        var lines: [String] = []
        var batch = try reader.next()
        (batch.epoch, batch.seed) = (0, 1)
        model.parameters.deferGradientZeroing()
        sync.beginStep()
        MemoryLedger.resetPeaks()
        let start = MemoryLedger.snapshot()
        let loss = model.loss(batch, training: true)
        let forward = MemoryLedger.snapshot()
        let excluded = [model.parameters.values, model.parameters.gradients] + [model.buffers?.values].compactMap { $0 }
        let tape = loss.tapeValues(excluding: excluded)
        let tapeBytes = tape.reduce(0) { $0 + $1.bytes }
        // The peak of live blocks node by node in backward: which node's backward holds the most (the forward's peak is
        // read at its end, where the graph is whole).
        let forwardPeak = forward.largePeak + forward.mediumPeak
        let sweep = SweepPeaks()
        MemoryLedger.resetBlockPeaks()
        loss.backward(onLeafReady: sync.parameterReady, afterEachNode: sweep.note)
        model.parameters.settleGradients()
        try sync.finish()
        var backward = MemoryLedger.snapshot()
        let afterSweep = backward.largePeak + backward.mediumPeak
        if sweep.peak >= max(afterSweep, forwardPeak) {
            (backward.largePeak, backward.mediumPeak) = (sweep.peakLarge, sweep.peak - sweep.peakLarge)
        } else if forwardPeak >= afterSweep {
            (backward.largePeak, backward.mediumPeak) = (forward.largePeak, forward.mediumPeak)
        }
        adam.step(model.parameters, gradientScale: sync.averagingScale)
        let end = MemoryLedger.snapshot()
        let parameters = model.parameters.count * 4
        let live = { (s: MemoryLedger.Snapshot) in s.largeLive + s.mediumLive }
        lines.append("process before the model (runtime, libraries, MPI, earlier entries): resident \(mb(residentAtStart))")
        lines.append("model built (weights, gradients, Adam's moments: \(mb(parameters)) each, \(mb(4 * parameters)) in all): resident \(mb(residentWithModel))")
        lines.append("between steps (warm): blocks live \(mb(live(start))); resident \(mb(start.resident))")
        lines.append("forward: blocks live \(mb(live(forward))) (+\(mb(live(forward) - live(start)))); the graph holds \(mb(tapeBytes)) in \(tape.reduce(0) { $0 + $1.blocks }) blocks; ops' captures beside the graph \(mb(live(forward) - live(start) - tapeBytes))")
        for group in tape.prefix(12) {
            lines.append("  graph values \(group.shape.map(String.init).joined(separator: "x")): \(group.blocks) block(s), \(mb(group.bytes))")
        }
        if tape.count > 12 { lines.append("  graph values, \(tape.count - 12) more shapes: \(mb(tape.dropFirst(12).reduce(0) { $0 + $1.bytes }))") }
        lines.append("step peak of live blocks: \(mb(backward.largePeak + backward.mediumPeak)) (large \(mb(backward.largePeak)), medium \(mb(backward.mediumPeak))); after backward \(mb(live(backward))), after the optimizer \(mb(live(end)))")
        if sweep.peak > forwardPeak {
            lines.append("  in backward, at the backward of node \(sweep.peakIndex) of \(sweep.nodes) (counted from the loss), output \(sweep.peakShape.map(String.init).joined(separator: "x")), inputs \(sweep.peakInputs.map { $0.map(String.init).joined(separator: "x") }.joined(separator: ", ")); live after it \(mb(sweep.peakLiveAfter))")
        } else {
            lines.append("  at the end of forward (the sweep's highest \(mb(sweep.peak)), at node \(sweep.peakIndex), output \(sweep.peakShape.map(String.init).joined(separator: "x")))")
        }
        lines.append("allocators' mappings: large \(mb(end.largeMapped)), medium \(mb(end.mediumMapped)) (retained beyond this step's peak: \(mb(end.largeMapped + end.mediumMapped - backward.largePeak - backward.mediumPeak)))")
        lines.append("large blocks' pages: resident \(mb(end.largeResident)) by their count (" + (MemoryLedger.largeGivesBackFreePages ? "free pages past the most bytes ever live + \(mb(MemoryLedger.largeResidentSlack)) given back" : "free pages kept; STARLING_GIVE_BACK_FREE_PAGES=1 gives them back") + "); this step: given back \(end.largeReleases - start.largeReleases) time(s), \(mb(end.largeReleasedBytes - start.largeReleasedBytes)); blocks placed on pages not resident \(mb(end.largeFaultedBytes - start.largeFaultedBytes)); minor faults of the process \(end.minorFaults - start.minorFaults)")
        lines.append("oneDNN scratch arenas: mapped \(mb(end.scratchMapped)); the largest call this step \(mb(end.scratchPeakCall)); blocks of \(mb(MemoryLedger.scratchUnkeptBytes)) and more not kept: \(end.scratchLent) from free extents of the large blocks (\(mb(end.scratchLentBytes))), \(end.scratchTaken) beyond them (\(mb(end.scratchTakenBytes)))")
        for call in ConvolutionCalls.largest(8) { lines.append("  oneDNN convolution " + call) }
        lines.append("resident now \(mb(end.resident)), peak \(mb(end.residentPeak)); resident beyond Starling's mappings (runtime, libraries, glibc's heap, oneDNN's primitives): \(mb(end.resident - end.mapped)) (less any mapped page never touched)")
        return lines
    }
}

/// The backward sweep's peak of live blocks node by node (`Tensor.backward`'s `afterEachNode`), for the memory breakdown.
private final class SweepPeaks {
    private(set) var peak = 0, peakLarge = 0, peakIndex = 0, nodes = 0, peakLiveAfter = 0
    private(set) var peakShape: [Int] = [], peakInputs: [[Int]] = []
    func note(_ node: Tensor) {
        nodes += 1
        let s = MemoryLedger.snapshot()
        if s.largePeak + s.mediumPeak > peak {
            (peak, peakLarge, peakIndex, peakShape) = (s.largePeak + s.mediumPeak, s.largePeak, nodes, node.shape)
            peakInputs = node.inputShapes
            peakLiveAfter = s.largeLive + s.mediumLive
        }
        MemoryLedger.resetBlockPeaks()
    }
}

/// Deterministic random samples of a family's kind of data: images in [0, 1] (MNIST-like) or pixels in 0...255 with
/// three boxes each (detection), 2,000 random proposals (region detectors), six discs of random classes
/// (segmentation), three boxes each with the ellipse inscribed in it as its instance mask (instances). A pool of `poolSize` samples is drawn once; a batch copies its samples out of the pool (index modulo
/// the pool) on the prefetch thread, where the model's targets are then encoded, as training reads decoded samples.
/// Drawing every pixel anew per step would cost more than reading one (fc-ae: 12 ms a batch of 256).
final class SyntheticSource: TrainingSource {
    let kind: DataKind
    let config: ModelConfig
    let classCount: Int
    let poolSize: Int
    private let poolImages: Tensor
    private let poolObjects: [[Object]]?
    private let poolProposals: [[BoxCorners]]?
    private let poolMaps: SegmentationMaps?
    /// Per pool sample, one H x W mask per object (instances).
    private let poolInstanceMasks: [[[UInt8]]]?
    init(kind: DataKind, config: ModelConfig, classCount: Int, poolSize: Int) {
        self.kind = kind
        self.config = config
        self.classCount = max(2, classCount)
        self.poolSize = max(1, poolSize)
        let pool = Self.draw(indices: Array(0..<max(1, poolSize)), kind: kind, config: config, classCount: max(2, classCount))
        (poolImages, poolObjects, poolProposals, poolMaps) = (pool.images, pool.objects, pool.proposals, pool.segmentation)
        poolInstanceMasks = pool.segmentation?.instanceMasks
    }

    var path: String { "synthetic \(config.family)" }
    var split: String { "train" }
    var count: Int { Int.max / 2 }
    func checkCompatible(with config: ModelConfig) throws {}
    var datasetDescription: DatasetDescription { DatasetDescription(path: path, sampleShape: config.inputShape, classNames: config.classNames) }

    func batch(indices: [Int], epoch: Int, training: Bool, config: ModelConfig) throws -> Batch {
        let perImage = config.inputShape.reduce(1, *)
        let images = Tensor(shape: [indices.count] + config.inputShape, storage: FloatStorage(uninitializedCount: indices.count * perImage))
        let slots = indices.map { $0 % poolSize }
        for (n, slot) in slots.enumerated() { (images.data + n * perImage).update(from: poolImages.data + slot * perImage, count: perImage) }
        var batch = Batch(images: images, labels: [Int32](repeating: 0, count: indices.count), indices: indices, epoch: epoch, seed: 1)
        batch.objects = poolObjects.map { objects in slots.map { objects[$0] } }
        batch.proposals = poolProposals.map { proposals in slots.map { proposals[$0] } }
        if let maps = poolMaps {
            let plane = maps.height * maps.width
            batch.segmentation = SegmentationMaps(classes: slots.flatMap { maps.classes[($0 * plane)..<(($0 + 1) * plane)] }, height: maps.height, width: maps.width,
                                                  instanceMasks: poolInstanceMasks.map { masks in slots.map { masks[$0] } })
        }
        return batch
    }

    static func draw(indices: [Int], kind: DataKind, config: ModelConfig, classCount: Int) -> Batch {
        let images = Tensor(zeros: [indices.count] + config.inputShape)
        let perImage = config.inputShape.reduce(1, *)
        var batch = Batch(images: images)
        let spatial = config.inputShape.count == 3
        let (height, width) = spatial ? (config.inputShape[1], config.inputShape[2]) : (1, 1)
        var objects: [[Object]] = [], proposals: [[BoxCorners]] = []
        var classes = [UInt8](repeating: 0, count: kind == .segmentation || kind == .instances ? indices.count * height * width : 0)
        var instanceMasks: [[[UInt8]]] = []
        let pixels = images.data
        for (n, index) in indices.enumerated() {
            var rng = RandomGenerator(seed: 0x5017E, stream: UInt64(index))
            let base = pixels + n * perImage
            if kind == .images {
                for i in 0..<perImage { base[i] = rng.uniform() }
            } else {
                for i in 0..<perImage { base[i] = Float(rng.next() % 256) }
            }
            func region(largest: Float) -> BoxCorners {
                let (fw, fh) = (Float(width), Float(height))
                let w = rng.uniform(8, min(largest, fw)), h = rng.uniform(8, min(largest, fh))
                let x = rng.uniform(0, fw - w), y = rng.uniform(0, fh - h)
                return BoxCorners(xmin: x, ymin: y, xmax: x + w, ymax: y + h)
            }
            switch kind {
            case .detection, .detectionProposals:
                objects.append((0..<3).map { k in Object(box: region(largest: 120), classID: 1 + k % (classCount - 1)) })
                if kind == .detectionProposals { proposals.append((0..<2000).map { _ in region(largest: Float(max(width, height))) }) }
            case .segmentation:
                for _ in 0..<6 {
                    let (cx, cy) = (rng.uniform(0, Float(width)), rng.uniform(0, Float(height)))
                    let r = rng.uniform(4, Float(min(height, width)) / 4)
                    let c = UInt8(1 + Int(rng.next() % UInt64(classCount - 1)))
                    for y in max(0, Int(cy - r))..<min(height, Int(cy + r) + 1) {
                        for x in max(0, Int(cx - r))..<min(width, Int(cx + r) + 1)
                        where (Float(x) - cx) * (Float(x) - cx) + (Float(y) - cy) * (Float(y) - cy) < r * r {
                            classes[(n * height + y) * width + x] = c
                        }
                    }
                }
            case .instances:
                // Each box's inscribed ellipse (pixel centres inside it) is the object's mask, and its class in the map.
                var mine: [Object] = [], masks: [[UInt8]] = []
                for k in 0..<3 {
                    let box = region(largest: 120)
                    let classID = 1 + k % (classCount - 1)
                    let (cx, cy, rx, ry) = ((box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2, box.width / 2, box.height / 2)
                    var mask = [UInt8](repeating: 0, count: height * width)
                    for y in max(0, Int(box.ymin))..<min(height, Int(box.ymax) + 1) {
                        for x in max(0, Int(box.xmin))..<min(width, Int(box.xmax) + 1) {
                            let (dx, dy) = ((Float(x) + 0.5 - cx) / rx, (Float(y) + 0.5 - cy) / ry)
                            if dx * dx + dy * dy <= 1 {
                                mask[y * width + x] = 1
                                classes[(n * height + y) * width + x] = UInt8(classID)
                            }
                        }
                    }
                    mine.append(Object(box: box, classID: classID))
                    masks.append(mask)
                }
                objects.append(mine)
                instanceMasks.append(masks)
            default:
                break
            }
        }
        switch kind {
        case .detection: batch.objects = objects
        case .detectionProposals: (batch.objects, batch.proposals) = (objects, proposals)
        case .segmentation: batch.segmentation = SegmentationMaps(classes: classes, height: height, width: width)
        case .instances:
            batch.objects = objects
            batch.segmentation = SegmentationMaps(classes: classes, height: height, width: width, instanceMasks: instanceMasks)
        default: break
        }
        return batch
    }
}
