import Foundation
import ArgumentParser
import StarlingCore
import StarlingDistributed
import StarlingIO
import StarlingModels

/// Flags every model family shares. Their defaults are read from `TrainingOptions` (and the optimizer's and the
/// plateau's named constants), never repeated here, so the library and the command line cannot drift apart.
/// Flags for settings `TrainingOptions` does not hold (optimizer, plateau factor and floor, threads) own theirs.
struct TrainingFlags: ParsableArguments {
    private static let defaults = TrainingOptions()
    private static let scheduleDefaults = defaults.schedule

    @Option(help: "Passes over the training set.") var epochs: Int = TrainingFlags.defaults.epochs
    @Option(help: "Images per optimizer step.") var batchSize: Int = TrainingFlags.defaults.batchSize
    @Option(help: "Base learning rate: plateaus lower it, --lr-schedule shapes it step by step.") var lr: Float = TrainingFlags.defaults.learningRate
    @Option(help: "Learning-rate schedule: constant, step (--step-every, --step-factor) or cosine (--cosine-min-lr). It is applied every optimizer step, from the global step, to the base rate; --plateau-patience lowers that base at epoch ends, and the schedule shapes the lowered base from the next step on.")
    var lrSchedule: String = TrainingFlags.scheduleDefaults.shape.rawValue
    @Option(help: "Ramp the rate up linearly over the first X epochs' worth of optimizer steps (Goyal et al. 2017; X may be fractional, rounded to whole steps): step s of W runs at (s+1)/W of the scheduled rate; a cosine starts after the warmup.")
    var warmupEpochs: Double = TrainingFlags.scheduleDefaults.warmupEpochs
    @Option(help: "Step schedule: multiply the rate by --step-factor every N epochs, as PyTorch's StepLR (default: \(TrainingFlags.scheduleDefaults.stepEveryEpochs)).")
    var stepEvery: Int?
    @Option(help: "Step schedule: the factor applied every --step-every epochs (default: \(TrainingFlags.scheduleDefaults.stepFactor)).")
    var stepFactor: Float?
    @Option(help: "Cosine schedule: the rate at the run's last step, the cosine running over epochs x steps per epoch (capped by --max-steps, as the run starts; a resumed run keeps its checkpoint's schedule) (default: \(TrainingFlags.scheduleDefaults.cosineMinimum)).")
    var cosineMinLr: Float?
    @Option(help: "Optimizer: adam (Keras's defaults), adamw (decoupled weight decay, Keras's epsilon) or sgd (with --momentum).") var optimizer: String = "adam"
    @Option(help: "Momentum for sgd.") var momentum: Float = 0.9
    @Option(help: "Weight decay: L2 added to the gradient for adam and sgd, decoupled for adamw.") var weightDecay: Float = 0
    @Option(help: "Seed for weights, shuffling and noise: the same seed gives the same run.") var seed: UInt64 = TrainingFlags.defaults.seed
    @Option(help: "Cap the steps of an epoch (default: a full pass).") var stepsPerEpoch: Int?
    @Option(help: "Cap the validation images scored each epoch (default: the whole split).") var valLimit: Int?
    @Option(help: "Output folder for checkpoints and logs.") var out: String = TrainingFlags.defaults.outputDirectory
    @Option(help: "Also write the last checkpoint every N steps within an epoch.") var checkpointEvery: Int?
    @Option(help: "Epoch checkpoints (<model>-epochNNNN.h5) to keep beside -last.h5 and -best.h5.") var keepCheckpoints: Int = TrainingFlags.defaults.keepCheckpoints
    @Option(help: "Stop after this many optimizer steps in total (with a checkpoint to resume from).") var maxSteps: Int?
    @Option(help: "Warn (naming the missing ranks) when a collective has waited this many seconds.") var watchdogSeconds: Double = TrainingFlags.defaults.watchdogSeconds
    @Option(help: "Abort the whole job (exit code 3, the last good checkpoint named) when a collective is still waiting this many seconds after the watchdog's warning.")
    var watchdogAbortSeconds: Double = TrainingFlags.defaults.watchdogAbortSeconds
    @Option(help: "Skip up to N steps whose loss or gradient is NaN or infinite (no update, on every rank alike) before stopping; 0 stops at the first.")
    var skipNonfinite: Int = TrainingFlags.defaults.skipNonFinite
    @Option(help: "Number format of gradients between ranks: fp32, bf16 or fp16 (half the bytes; weights stay float32).")
    var gradientPrecision: String = TrainingFlags.defaults.gradientWire.rawValue
    @Option(help: "Gradient allreduce bucket size in MB.") var bucketMb: Double = Double(TrainingFlags.defaults.bucketBytes) / 1_048_576
    @Flag(inversion: .prefixedNo, help: "Batch norm statistics over the global batch across ranks (default: each rank's own slice).") var syncBn = TrainingFlags.defaults.synchronizeBatchNorm
    @Flag(inversion: .prefixedNo, help: "ZeRO stage 1: each rank keeps the optimizer state (Adam's moments, SGD's velocity) of 1/N of the parameters; gradients are reduce-scattered and the updated weights allgathered. Checkpoints are the same as without it. Not with --gradient-precision fp16. Replicas on threads (--replicas) always share one copy of the weights and of the optimizer state.")
    var shardOptimizer = TrainingFlags.defaults.shardOptimizer
    @Option(help: "Stop after N epochs without improvement of the validation loss (Keras EarlyStopping).") var earlyStopping: Int?
    @Option(help: "Improvement smaller than this does not count (early stopping: default \(TrainingFlags.defaults.minDelta); plateaus: Keras's default \(ReduceOnPlateau.kerasMinDelta) when unset).") var minDelta: Double?
    @Option(help: "Multiply the base learning rate by --plateau-factor after N epochs without improvement (Keras ReduceLROnPlateau); any --lr-schedule and --warmup-epochs then shape the lowered base.") var plateauPatience: Int?
    @Option(help: "Learning-rate factor on a plateau.") var plateauFactor: Float = 0.2
    @Option(help: "Lowest base learning rate on plateaus (a schedule can still take the applied rate below it).") var minLr: Float = 1e-5
    @Option(help: "Write TensorBoard event files into this folder (rank 0): losses, learning rate, images/s, and at each validation the validation loss, figures (detectors: mAP; unet: mean IoU, Dice, pixel accuracy; mask-rcnn: box and mask AP) and pictures (reconstructions, drawn detections, segmentations, drawn instances).") var tensorboard: String?
    @Option(help: "OpenBLAS, oneDNN and Starling threads per rank, fixed for the run (default: 1 under mpirun, as the native-stack notes measured best; otherwise all cores, or OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when set, timed against one thread over the first steps and the faster kept).") var blasThreads: Int?

    func validate() throws {
        guard epochs > 0 else { throw ValidationError("--epochs must be positive") }
        guard batchSize > 0 else { throw ValidationError("--batch-size must be positive") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number") }
        guard ["adam", "adamw", "sgd"].contains(optimizer) else { throw ValidationError("--optimizer must be adam, adamw or sgd, not '\(optimizer)'") }
        guard weightDecay >= 0, momentum >= 0, momentum < 1 else { throw ValidationError("--weight-decay must be >= 0 and --momentum in [0, 1)") }
        guard let shape = ScheduleShape(rawValue: lrSchedule) else {
            let names = ScheduleShape.allCases.map(\.rawValue)
            throw ValidationError("--lr-schedule must be \(names.dropLast().joined(separator: ", ")) or \(names.last ?? ""), not '\(lrSchedule)'")
        }
        // A decay flag without its schedule would be silently ignored.
        if shape != .step, stepEvery != nil || stepFactor != nil { throw ValidationError("--step-every and --step-factor apply to --lr-schedule step only") }
        if shape != .cosine, cosineMinLr != nil { throw ValidationError("--cosine-min-lr applies to --lr-schedule cosine only") }
        if let problem = options.schedule.problem { throw ValidationError(problem) }
        if let minimum = cosineMinLr, minimum >= lr { throw ValidationError("--cosine-min-lr must lie below --lr (\(lr)), not \(minimum)") }
        if let s = stepsPerEpoch, s <= 0 { throw ValidationError("--steps-per-epoch must be positive") }
        if let v = valLimit, v <= 0 { throw ValidationError("--val-limit must be positive") }
        if let c = checkpointEvery, c <= 0 { throw ValidationError("--checkpoint-every must be positive") }
        if let m = maxSteps, m <= 0 { throw ValidationError("--max-steps must be positive") }
        if let e = earlyStopping, e <= 0 { throw ValidationError("--early-stopping must be positive") }
        if let p = plateauPatience, p <= 0 { throw ValidationError("--plateau-patience must be positive") }
        guard plateauFactor > 0 && plateauFactor < 1 else { throw ValidationError("--plateau-factor must lie in (0, 1)") }
        guard keepCheckpoints >= 0 else { throw ValidationError("--keep-checkpoints cannot be negative") }
        guard watchdogSeconds > 0, watchdogSeconds.isFinite else { throw ValidationError("--watchdog-seconds must be positive") }
        guard watchdogAbortSeconds > 0, watchdogAbortSeconds.isFinite else { throw ValidationError("--watchdog-abort-seconds must be positive") }
        guard skipNonfinite >= 0 else { throw ValidationError("--skip-nonfinite cannot be negative") }
        guard bucketMb > 0 else { throw ValidationError("--bucket-mb must be positive") }
        guard let wire = GradientWire(rawValue: gradientPrecision) else {
            throw ValidationError("--gradient-precision must be fp32, bf16 or fp16, not '\(gradientPrecision)'")
        }
        if wire == .float16 && !GradientWire.float16Available { throw ValidationError("--gradient-precision fp16 needs Swift's Float16, which Intel Macs lack: use bf16") }
        if wire == .float16 && shardOptimizer {
            throw ValidationError("--shard-optimizer cannot send gradients as fp16 (its scale needs the whole summed gradient, which a sharded rank does not receive): use --gradient-precision bf16 or fp32")
        }
        if let t = blasThreads, t <= 0 { throw ValidationError("--blas-threads must be positive") }
    }

    /// The optimizer the flags name, over `count` parameters, keeping state for `shard` (default: all of them).
    func makeOptimizer(parameterCount count: Int, shard: Range<Int>? = nil) -> any Optimizer {
        switch optimizer {
        case "sgd": return SGD(parameterCount: count, learningRate: lr, momentum: momentum, weightDecay: weightDecay, shard: shard)
        case "adamw": return Adam.adamW(parameterCount: count, learningRate: lr, weightDecay: weightDecay, shard: shard)
        default: return Adam(parameterCount: count, learningRate: lr, weightDecay: weightDecay, shard: shard)
        }
    }

    var options: TrainingOptions {
        var o = TrainingOptions()
        o.epochs = epochs
        o.batchSize = batchSize
        o.learningRate = lr
        o.schedule.shape = ScheduleShape(rawValue: lrSchedule) ?? o.schedule.shape   // validate() refuses other names
        o.schedule.warmupEpochs = warmupEpochs
        if let stepEvery { o.schedule.stepEveryEpochs = stepEvery }
        if let stepFactor { o.schedule.stepFactor = stepFactor }
        if let cosineMinLr { o.schedule.cosineMinimum = cosineMinLr }
        o.seed = seed
        o.stepsPerEpoch = stepsPerEpoch
        o.validationLimit = valLimit
        o.outputDirectory = out
        o.checkpointEverySteps = checkpointEvery
        o.maxSteps = maxSteps
        o.watchdogSeconds = watchdogSeconds
        o.watchdogAbortSeconds = watchdogAbortSeconds
        o.skipNonFinite = skipNonfinite
        o.keepCheckpoints = keepCheckpoints
        o.synchronizeBatchNorm = syncBn
        o.shardOptimizer = shardOptimizer
        o.earlyStoppingPatience = earlyStopping
        o.minDelta = minDelta ?? o.minDelta
        o.reduceOnPlateau = plateauPatience.map {
            ReduceOnPlateau(factor: plateauFactor, patience: $0, minimum: minLr, minDelta: minDelta.map { Float($0) } ?? ReduceOnPlateau.kerasMinDelta)
        }
        o.bucketBytes = Int(bucketMb * 1_048_576)
        o.gradientWire = GradientWire(rawValue: gradientPrecision) ?? .float32
        o.tensorBoardDirectory = tensorboard
        return o
    }
}

struct TrainCommand: ParsableCommand {
    /// TensorBoard's validation mAP for detectors: eval's default protocol (VOC all-point AP at IoU 0.5, confidence
    /// 0.01, NMS 0.45, top 200) on the validation split, or its first --val-limit images.
    static func detectionMetrics(path: String, split: String, limit: Int?) -> @Sendable (any Model) throws -> [(name: String, value: Double)] {
        { model in
            guard let detector = model as? any Detector else { return [] }
            let dataset = try DetectionDataset(path: path, split: split)
            let truth = DetectorEvaluation.groundTruth(dataset, limit: limit)
            let found = try DetectorEvaluation.detect(detector, dataset: dataset, decoding: DetectionDecoding(confidenceThreshold: 0.01),
                                                      batchSize: 8, limit: limit)
            let report = try DetectionEvaluationReport.evaluate(groundTruth: truth, detections: found, mode: .voc, iouThreshold: 0.5)
            return report.summary.mAP.map { [(name: "mAP_voc_iou0.5", value: $0)] } ?? []
        }
    }

    /// TensorBoard's validation figures for U-Net, as `eval` computes them: mean IoU, mean Dice, pixel accuracy (and the
    /// ISBI pixel error on the membranes).
    static func segmentationMetrics(path: String, split: String, limit: Int?) -> @Sendable (any Model) throws -> [(name: String, value: Double)] {
        { model in
            guard let unet = model as? UNet else { return [] }
            let report = try SegmentationEvaluation.evaluate(unet, data: try SegmentationDataset(path: path, split: split), batchSize: 4, limit: limit)
            return [("mean_iou", report.meanIoU), ("mean_dice", report.meanDice), ("pixel_accuracy", report.pixelAccuracy),
                    ("isbi_pixel_error", report.isbiPixelError)].compactMap { name, value in value.map { (name: name, value: $0) } }
        }
    }

    /// The first four validation images as image | truth | prediction in the class palette, as `eval` draws them.
    static func segmentationPictures(path: String, split: String) -> @Sendable (any Model) throws -> [(name: String, png: [UInt8], width: Int, height: Int)] {
        { model in
            guard let unet = model as? UNet else { return [] }
            let dataset = try SegmentationDataset(path: path, split: split)
            guard dataset.count > 0 else { return [] }
            let canvas = try SegmentationEvaluation.picture(unet, data: dataset, indices: Array(0..<min(4, dataset.count)))
            return [("segmentation", try PNGImage.encode(width: canvas.width, height: canvas.height, channels: 3, pixels: canvas.pixels), canvas.width, canvas.height)]
        }
    }

    /// TensorBoard's validation figures for Mask R-CNN, as `eval` computes them: box and mask AP (COCO, IoU
    /// 0.50:0.95) and AP50.
    static func instanceMetrics(path: String, split: String, limit: Int?) -> @Sendable (any Model) throws -> [(name: String, value: Double)] {
        { model in
            guard let maskRCNN = model as? MaskRCNN else { return [] }
            let report = try InstanceEvaluation.evaluate(maskRCNN, data: try SegmentationDataset(path: path, split: split), batchSize: 2, limit: limit).report
            return [("box_AP", report.boxStats[0]), ("box_AP50", report.boxStats[1]), ("mask_AP", report.maskStats[0]), ("mask_AP50", report.maskStats[1])]
        }
    }

    /// The first two validation images with their instances drawn (masks in colour, the truth's outlines in white).
    static func instancePictures(path: String, split: String) -> @Sendable (any Model) throws -> [(name: String, png: [UInt8], width: Int, height: Int)] {
        { model in
            guard let maskRCNN = model as? MaskRCNN else { return [] }
            let source = SegmentationSource(dataset: try SegmentationDataset(path: path, split: split))
            let (h, w) = (maskRCNN.config.inputShape[1], maskRCNN.config.inputShape[2])
            return try (0..<min(2, source.count)).map { k in
                let batch = try source.batch(indices: [k], epoch: 0, training: false, config: maskRCNN.config)
                let rgb = (0..<(h * w * 3)).map { UInt8(max(0, min(255, batch.images.data[($0 % 3) * h * w + $0 / 3]))) }
                let found = maskRCNN.detectInstances(batch, decoding: .display)[0].map { ($0.detection, $0.mask) }
                let canvas = DetectionDrawing.draw(rgb: rgb, width: w, height: h, instances: found,
                                                   truthMasks: batch.segmentation?.instanceMasks?[0] ?? [], classNames: maskRCNN.config.classNames ?? [])
                return ("instances_\(k)", try PNGImage.encode(width: w, height: h, channels: 3, pixels: canvas.pixels), w, h)
            }
        }
    }

    static let configuration = CommandConfiguration(commandName: "train", abstract: "Train a model (under mpirun: on every rank).")

    @Option(help: "Model family: \(ModelRegistry.familyNames.joined(separator: ", ")).") var model: String
    @Option(help: "Dataset in Starling's HDF5 layout (e.g. from `starling data mnist`).") var data: String
    @Option(help: "Split to train on.") var trainSplit: String = "train"
    @Option(help: "Split for the validation loss ('none' to skip). Default: 'test' for MNIST (as the Keras tutorial), 'val' for detection sets.") var valSplit: String?
    @Option(help: "Continue from this checkpoint (weights, optimizer state, step, epoch, data cursor).") var resume: String?
    @Flag(inversion: .prefixedNo, help: "Detection data: ssd_keras's photometric and geometric augmentation of training images; segmentation data: flips, zoom and crop moving the masks with the images.") var augment = true
    @Flag(inversion: .prefixedNo, help: "Segmentation data: add the U-Net paper's elastic deformation (3x3 grid, 10 px) to the augmentation (membranes).") var elastic = false
    @Flag(inversion: .prefixedNo, help: "Segmentation data: add SSD's photometric distortions of the image (brightness, contrast, saturation, hue; the labels untouched) to the augmentation.") var photometric = false
    @Option(help: "Anchor sizes for the families that take them (YOLO), as `starling anchors --out` writes them.") var anchorsFrom: String?
    @Option(help: "The network's input, HEIGHTxWIDTH, for the families that letterbox into it (YOLO: multiples of 32; default: the data's size rounded up to them).") var networkSize: String?
    @Option(help: "Multiply every layer's channels, for families that take it (ssd300: 1 is the paper's network; 0.25 or less trains on a CPU).") var widthMultiplier: Double?
    @Option(help: "Multiply every stage's residual blocks (rounded, at least one each), for families that take it (yolov3: 1 is darknet's Darknet-53).") var depthMultiplier: Double?
    @Option(name: .customLong("option"), help: "A family's configuration option, NAME=VALUE, repeatable (unet: levels, valid, sigmoid, border_weight, border_sigma, class_weight_<c>; fast-rcnn: hidden, rois_per_image, foreground_fraction, test_proposals; faster-rcnn: hidden, rois_per_image, foreground_fraction, anchor_size, anchor_octaves, anchor_scales_per_octave, rpn_batch, rpn_positive_fraction, rpn_nms, rpn_pre_nms_train, rpn_post_nms_train, rpn_pre_nms_test, rpn_post_nms_test; see the README).")
    var familyOptions: [String] = []
    @Flag(inversion: .prefixedNo, help: "yolov2: the passthrough layer from the stride-16 features (darknet's reorg; default on, as yolov2.cfg).") var passthrough: Bool?
    @Option(help: "A run configuration (YAML, e.g. Launch/configs/fc-ae.yaml): model, data, optimizer, schedule, callbacks, checkpoints, launch. Flags on the command line override it.") var config: String?
    @Option(help: "MPI ranks to start (with mpirun) when not already running under mpirun.") var ranks: Int?
    @Option(help: "Replicas of the model on threads of this one process, each on one thread with its slice of every global batch, gradients summed in memory (as --ranks N does across processes). Default without mpirun: replicas on every core where a measurement of the first steps finds them faster than one replica on every core's threads; 1 turns replicas off.")
    var replicas: Int?
    @OptionGroup var flags: TrainingFlags

    func validate() throws {
        if let r = ranks, r <= 0 { throw ValidationError("--ranks must be positive") }
        if let r = replicas, r <= 0 { throw ValidationError("--replicas must be positive") }
        if let r = replicas, r > 1, let t = flags.blasThreads, t > 1 {
            throw ValidationError("--replicas \(r) runs each replica on one thread; --blas-threads \(t) cannot apply (drop it, or use --replicas 1)")
        }
    }

    func run() throws {
        let world = try reportingErrors { try Communicator() }
        // Without mpirun: every core (OpenBLAS's count, which follows OPENBLAS_NUM_THREADS or OMP_NUM_THREADS when set),
        // given to oneDNN's pool and Starling's loops too, so that one count rules all three.
        BLAS.setThreadCount(flags.blasThreads ?? (world.size > 1 ? 1 : BLAS.threadCount))
        do {
            try reportingErrors {
                let family = try ModelRegistry.family(named: model)
                let (train, validation) = try TrainingData.open(family.dataKind, path: data, trainSplit: trainSplit, validationSplit: valSplit,
                                                                augment: augment, seed: flags.seed, elastic: elastic, photometric: photometric)
                var config = try family.configuration(for: train.datasetDescription)
                if let widthMultiplier {
                    config = try family.setting("width", to: widthMultiplier, in: config, flag: "--width-multiplier")
                }
                if let networkSize {
                    let sides = networkSize.lowercased().split(separator: "x").compactMap { Double($0) }
                    guard sides.count == 2 else { throw ValidationError("--network-size takes HEIGHTxWIDTH, e.g. 416x416, not '\(networkSize)'") }
                    config = try family.setting("network_height", to: sides[0], in: config, flag: "--network-size")
                    config = try family.setting("network_width", to: sides[1], in: config, flag: "--network-size")
                }
                if let depthMultiplier {
                    config = try family.setting("depth", to: depthMultiplier, in: config, flag: "--depth-multiplier")
                }
                for setting in familyOptions {
                    let parts = setting.split(separator: "=", maxSplits: 1).map(String.init)
                    guard parts.count == 2, let value = Double(parts[1]) else {
                        throw ValidationError("--option takes NAME=VALUE with a number, e.g. levels=4, not '\(setting)'")
                    }
                    config = try family.setting(parts[0], to: value, in: config, flag: "--option \(parts[0])")
                }
                if let passthrough {
                    config = try family.setting("passthrough", to: passthrough ? 1 : 0, in: config, flag: passthrough ? "--passthrough" : "--no-passthrough")
                }
                if let anchorsFrom {
                    guard let expected = config.anchorSizes?.count else { throw ModelError.unsupportedOption(family: model, flag: "--anchors-from") }
                    let sizes = try AnchorFile.read(anchorsFrom)
                    guard sizes.count == expected else {
                        throw DataError(file: anchorsFrom, message: "\(sizes.count) anchors; model \(model) takes \(expected)")
                    }
                    config.anchorSizes = sizes
                }
                let network = try family.build(config, seed: flags.seed)
                let parameterCount = network.parameters.count
                if let ranks, ranks != world.size, world.isRoot {
                    Trainer.printLine("note: --ranks \(ranks) asks for \(ranks) rank(s); running on the \(world.size) that started")
                }
                var options = flags.options
                if let replicas, replicas > 1, world.size > 1 {
                    throw ValidationError("--replicas \(replicas) runs replicas on threads of one process; under mpirun each rank is one replica (drop --replicas, or use --replicas 1)")
                }
                guard (replicas ?? 1) <= 1 || flags.batchSize % (replicas ?? 1) == 0 else {
                    throw ValidationError("global batch size \(flags.batchSize) does not split evenly over \(replicas ?? 1) replicas; use a multiple of \(replicas ?? 1)")
                }
                // One process with the default count: time it against one thread over the first steps (ThreadCalibration).
                if flags.blasThreads == nil && world.size == 1 && BLAS.threadCount > 1 { options.calibrateThreads = BLAS.threadCount }
                if flags.tensorboard != nil, let validation {
                    switch family.dataKind {
                    case .detection:
                        options.validationMetrics = Self.detectionMetrics(path: validation.path, split: validation.split, limit: flags.valLimit)
                    case .segmentation:
                        options.validationMetrics = Self.segmentationMetrics(path: validation.path, split: validation.split, limit: flags.valLimit)
                        options.validationPictures = Self.segmentationPictures(path: validation.path, split: validation.split)
                    case .instances:
                        options.validationMetrics = Self.instanceMetrics(path: validation.path, split: validation.split, limit: flags.valLimit)
                        options.validationPictures = Self.instancePictures(path: validation.path, split: validation.split)
                    case .images, .detectionProposals:
                        break
                    }
                }
                options.runConfiguration = try RunConfiguration.resolved(from: self, source: self.config)
                // Rank 0 reads the checkpoint; the trainer broadcasts what it holds to the other ranks. It is consumed by
                // the trainer that restores it (below), so its copy of the weights and optimizer state is not held for the run.
                let loaded = try resume.flatMap { world.isRoot ? try Checkpoint.load(from: $0) : nil }
                options.resumePath = resume
                var replicaCount = replicas ?? 1
                if let replicas, replicas > 1 {
                    Trainer.printLine("replicas: \(replicas) on threads of this process, one thread each (--replicas \(replicas))")
                } else if replicas == nil && world.size == 1 && flags.blasThreads == nil && BLAS.threadCount > 1
                            && flags.batchSize % BLAS.threadCount == 0 && flags.batchSize <= train.count
                            && ReplicaCalibration.copiesFit(parameters: parameterCount,
                                                            optimizerBuffers: flags.makeOptimizer(parameterCount: parameterCount, shard: 0..<0).state.count,
                                                            replicas: BLAS.threadCount) {
                    // One process with the default threads: one replica on every thread, or one replica a thread,
                    // whichever trains this model faster here (ReplicaCalibration), on epoch 0's first global batches.
                    let threads = BLAS.threadCount
                    let calibration = try ReplicaCalibration.measure(
                        replicas: threads, source: train, batchSize: flags.batchSize, seed: flags.seed,
                        stepsPerEpoch: options.stepsPerEpoch ?? train.count / flags.batchSize,
                        stopsIdleBLASThreads: true) { shard in
                        let copy = try family.build(config, seed: flags.seed)
                        return (copy, flags.makeOptimizer(parameterCount: copy.parameters.count, shard: shard))
                    }
                    Trainer.printLine(calibration.summary)
                    replicaCount = calibration.chosen
                    if replicaCount > 1 {
                        // The replicas run OpenBLAS on one thread: set it now and stop the pool that the calibration's
                        // end started again (restoring the count), so that the run does not start beside a worker
                        // polling for ~116 ms; the replica run's own setting of one thread then changes nothing.
                        BLAS.setThreadCount(1)
                        BLAS.stopIdleThreads()
                    }
                }
                if replicaCount > 1 {
                    let replicas = replicaCount
                    // Replicas share one copy of the weights and of the optimizer state: replica r's optimizer keeps
                    // and updates its range only (with or without --shard-optimizer). The copies' own weights are
                    // freed when their trainers take replica 0's.
                    let shards = OptimizerShards.ranges(parameterCount: parameterCount, ranks: replicas)
                    var models = [(model: network, optimizer: flags.makeOptimizer(parameterCount: parameterCount, shard: shards[0]))]
                    for r in 1..<replicas {
                        let copy = try family.build(config, seed: flags.seed)
                        models.append((copy, flags.makeOptimizer(parameterCount: copy.parameters.count, shard: shards[r])))
                    }
                    options.calibrateThreads = nil
                    try ReplicaTraining.run(models, train: train, validation: validation, options: options, resume: consume loaded)
                } else {
                    let optimizer = flags.makeOptimizer(parameterCount: parameterCount,
                                                        shard: Trainer.optimizerShard(parameterCount: parameterCount, world: world, options: flags.options))
                    let trainer = try Trainer(model: network, optimizer: optimizer, train: train, validation: validation,
                                              options: options, world: world, resume: consume loaded)
                    try trainer.run()
                }
                if let summary = try Timeline.finish(rank: world.rank, ranks: world.size) { print(summary) }
            }
        } catch {
            try endRanks(world, after: error)
        }
        world.finalize()
    }
}
