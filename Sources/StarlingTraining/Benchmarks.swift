import StarlingCore
import StarlingDistributed
import StarlingNN
import StarlingData
import StarlingDetection
import StarlingAutoencoders
import StarlingSegmentation
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Measurements behind `starling bench` and BENCHMARKS.md.
public enum Benchmarks {
    public struct TrainingThroughput {
        public var imagesPerSecond: Double
        public var secondsPerStep: Double
        /// Fraction of the step spent outside sgemm (elementwise ops, loss, optimizer, data).
        public var shareOutsideBLAS: Double
    }

    /// Training steps of the FC autoencoder (784-32-784, Adam) at `batchSize`, on real data when a path is given.
    public static func fcAutoencoderTraining(dataPath: String?, batchSize: Int, steps: Int) throws -> TrainingThroughput {
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 1)
        let adam = Adam(parameterCount: model.parameters.count)
        let data = try dataPath.map { try ImageDataset(path: $0, split: "train") }
        if let data, data.count < batchSize { throw TrainingError("\(data.path): fewer than \(batchSize) training images") }
        var rng = RandomGenerator(seed: 2)
        let synthetic = Tensor(zeros: [batchSize, 784])
        for i in 0..<synthetic.count { synthetic.data[i] = rng.uniform() }
        // Real data flows as in training: shuffled batches read on the prefetch thread.
        let order = rng.permutation(data?.count ?? batchSize)
        let total = 10 + steps
        let reader = data.map { data in
            Prefetcher(source: data, steps: (0..<total).map { s in
                let start = (s * batchSize) % (data.count - batchSize + 1)
                return Array(order[start..<(start + batchSize)])
            }, epoch: 0, config: model.config, targetEncoder: model.targetEncoder)
        }
        defer { reader?.finish() }
        func step() throws {
            let batch = try reader?.next() ?? Batch(images: synthetic)
            model.parameters.deferGradientZeroing()
            let loss = model.loss(batch, training: true)
            loss.backward()
            model.parameters.settleGradients()
            adam.step(model.parameters)
        }
        for _ in 0..<10 { try step() }
        BLAS.secondsInside = 0
        BLAS.profiling = true
        defer { BLAS.profiling = false }
        let start = monotonicSeconds()
        for _ in 0..<steps { try step() }
        let elapsed = monotonicSeconds() - start
        return TrainingThroughput(imagesPerSecond: Double(steps * batchSize) / elapsed, secondsPerStep: elapsed / Double(steps),
                                  shareOutsideBLAS: 1 - BLAS.secondsInside / elapsed)
    }

    public struct DistributedThroughput {
        public var imagesPerSecond: Double
        /// Seconds per step spent waiting for gradient allreduces after backward (this rank).
        public var exposedCommunicationPerStep: Double
    }

    /// Data-parallel training throughput of a model family on this job's ranks, from the second of two epochs
    /// of `steps` steps (the first warms up), global batch `batchSize`, nothing written to disk.
    public static func distributedTraining(family: String, dataPath: String, batchSize: Int, steps: Int,
                                           world: Communicator, overlap: Bool = true, bucketBytes: Int = 25 << 20,
                                           wire: GradientWire = .float32) throws -> DistributedThroughput {
        let model = try ModelRegistry.build(try ModelRegistry.defaultConfig(family: family), seed: 1)
        var options = TrainingOptions()
        options.epochs = 2
        options.batchSize = batchSize
        options.stepsPerEpoch = steps
        options.writeOutputs = false
        options.progress = false
        options.overlapCommunication = overlap
        options.bucketBytes = bucketBytes
        options.gradientWire = wire
        let trainer = try Trainer(model: model, optimizer: Adam(parameterCount: model.parameters.count),
                                  train: try ImageDataset(path: dataPath, split: "train"), validation: nil,
                                  options: options, world: world, log: { _ in })
        let history = try trainer.run()
        return DistributedThroughput(imagesPerSecond: history[1].imagesPerSecond,
                                     exposedCommunicationPerStep: trainer.exposedCommunicationSeconds / Double(2 * steps))
    }

    /// Allreduce bandwidth (bytes reduced per second) of `megabytes` of floats: a plain MPI_Allreduce of the
    /// whole buffer against Starling's gradient path (25 MB buckets started non-blocking, waited, averaged).
    public static func allreduceBandwidth(world: Communicator, megabytes: Double, iterations: Int) throws -> (raw: Double, starling: Double) {
        let store = ParameterStore()
        let count = Int(megabytes * 1_048_576 / 4)
        // Layers of 1 M floats, like a model's parameter list.
        var left = count, k = 0
        while left > 0 { let n = min(left, 1 << 20); store.declare("layer\(k)/w", shape: [n], initializer: .zeros); left -= n; k += 1 }
        var rng = RandomGenerator(seed: 1)
        store.allocate(rng: &rng)
        let buffer = store.gradients.pointer
        for i in 0..<count { buffer[i] = 1 }
        let sync = GradientSynchronizer(store: store, communicator: world, overlap: false)
        func time(_ body: () throws -> Void) throws -> Double {
            try body()   // warm-up
            try world.barrier()
            let start = monotonicSeconds()
            for _ in 0..<iterations { try body() }
            let elapsed = try world.allreduce(monotonicSeconds() - start, .max)
            return Double(count * 4 * iterations) / elapsed
        }
        let raw = try time { try world.allreduce(buffer, count: count) }
        let ours = try time { sync.beginStep(); try sync.finish() }
        return (raw, ours)
    }

    public struct DetectorThroughput {
        public var trainImagesPerSecond: Double
        public var inferenceFPS: [Int: Double]
        /// The network alone (no softmax, no decoding): what a framework's forward-pass benchmark times.
        public var forwardFPS: [Int: Double]
    }

    /// SSD7 at the project's 300 x 480 on synthetic frames (random pixels, three boxes each): training steps at
    /// `batchSize` (forward, loss, backward, Adam) and inference (forward, softmax, decoding with NMS; and the forward
    /// pass alone) at each of `inferenceBatches`.
    public static func ssd7(batchSize: Int, steps: Int, inferenceBatches: [Int] = [1, 8]) throws -> DetectorThroughput {
        try detector(SSD7.defaultConfig(), batchSize: batchSize, steps: steps, inferenceBatches: inferenceBatches)
    }

    /// Any detector family on synthetic frames of its input size (random pixels, three boxes each, targets from its own
    /// head): training steps at `batchSize` (forward, loss, backward, Adam) and inference (forward, decoding with NMS;
    /// and the network alone) at each of `inferenceBatches`.
    /// U-Net's training steps (Adam) at `batchSize` on random images with random disc-shaped class maps (targets encoded
    /// once, outside the timing, as the data thread does it beside training), then inference (`predictClasses`) at
    /// batch 1 and 8, each the best of three rounds.
    /// Images per second over `steps` training steps (forward, loss, backward, Adam) on one batch, after one untimed.
    static func trainingImagesPerSecond(_ model: any Model, _ adam: Adam, _ batch: Batch, steps: Int) -> Double {
        func step() {
            model.parameters.deferGradientZeroing()
            let loss = model.loss(batch, training: true)
            loss.backward()
            model.parameters.settleGradients()
            adam.step(model.parameters)
        }
        step()
        let start = monotonicSeconds()
        for _ in 0..<steps { step() }
        return Double(steps * batch.size) / (monotonicSeconds() - start)
    }

    public static func segmentation(_ config: ModelConfig, batchSize: Int, steps: Int) throws -> DetectorThroughput {
        guard let model = try ModelRegistry.build(config, seed: 1) as? UNet, config.inputShape.count == 3 else {
            throw TrainingError("model \(config.family) is not a segmentation model")
        }
        let (height, width) = (config.inputShape[1], config.inputShape[2])
        let adam = Adam(parameterCount: model.parameters.count)
        var rng = RandomGenerator(seed: 5)
        func frames(_ n: Int) -> Batch {
            let images = Tensor(zeros: [n, 3, height, width])
            for i in 0..<images.count { images.data[i] = Float(rng.next() % 256) }
            var classes = [UInt8](repeating: 0, count: n * height * width)
            for image in 0..<n {
                for _ in 0..<6 {
                    let (cx, cy, r) = (rng.uniform(0, Float(width)), rng.uniform(0, Float(height)), rng.uniform(4, Float(min(height, width)) / 4))
                    let c = UInt8(1 + Int(rng.next() % UInt64(model.classCount - 1)))
                    for y in 0..<height { for x in 0..<width where (Float(x) - cx) * (Float(x) - cx) + (Float(y) - cy) * (Float(y) - cy) < r * r {
                        classes[(image * height + y) * width + x] = c
                    } }
                }
            }
            var batch = Batch(images: images)
            batch.segmentation = SegmentationMaps(classes: classes, height: height, width: width)
            model.targetEncoder?.encodeTargets(into: &batch)
            return batch
        }
        let train = trainingImagesPerSecond(model, adam, frames(batchSize), steps: steps)
        var fps: [Int: Double] = [:]
        for n in [1, 8] {
            let images = frames(n).images
            _ = model.predictClasses(images)
            let repeats = max(2, 16 / n)
            var best = Double.infinity
            for _ in 0..<3 {
                let start = monotonicSeconds()
                for _ in 0..<repeats { _ = model.predictClasses(images) }
                best = min(best, monotonicSeconds() - start)
            }
            fps[n] = Double(repeats * n) / best
        }
        return DetectorThroughput(trainImagesPerSecond: train, inferenceFPS: fps, forwardFPS: fps)
    }

    public static func detector(_ config: ModelConfig, batchSize: Int, steps: Int, inferenceBatches: [Int] = [1, 8]) throws -> DetectorThroughput {
        guard let model = try ModelRegistry.build(config, seed: 1) as? any Detector, config.inputShape.count == 3 else {
            throw TrainingError("model \(config.family) is not a detector")
        }
        let (height, width) = (config.inputShape[1], config.inputShape[2])
        let adam = Adam(parameterCount: model.parameters.count)
        var rng = RandomGenerator(seed: 5)
        func frames(_ n: Int) -> Batch {
            let images = Tensor(zeros: [n, 3, height, width])
            for i in 0..<images.count { images.data[i] = Float(rng.next() % 256) }
            var batch = Batch(images: images)
            batch.objects = (0..<n).map { _ in
                (0..<3).map { k in
                    let x = rng.uniform(0, Float(width) - 80), y = rng.uniform(0, Float(height) - 80)
                    return Object(box: BoxCorners(xmin: x, ymin: y, xmax: x + rng.uniform(10, 80), ymax: y + rng.uniform(10, 80)), classID: 1 + k % (model.classCount - 1))
                }
            }
            model.targetEncoder?.encodeTargets(into: &batch)
            return batch
        }
        let train = trainingImagesPerSecond(model, adam, frames(batchSize), steps: steps)
        var fps: [Int: Double] = [:], forward: [Int: Double] = [:]
        for n in inferenceBatches {
            let images = frames(n).images
            // The best of three rounds of 16 images, as the machine is shared (single rounds varied by 15 %).
            let repeats = max(2, 16 / n)
            fps[n] = imagesPerSecond(n, repeats: repeats) { _ = model.detect(images, decoding: .display) }
            forward[n] = imagesPerSecond(n, repeats: repeats) { _ = GradMode.disabled { model.headOutputs(images, training: false) } }
        }
        return DetectorThroughput(trainImagesPerSecond: train, inferenceFPS: fps, forwardFPS: forward)
    }

    /// Mask R-CNN at the configuration's input size on synthetic frames (random pixels, three elliptic instances each,
    /// their boxes and masks): training steps at `batchSize` (backbone, RPN, box and mask heads, backward, Adam), and
    /// inference as `eval` runs it (RPN, box head, NMS, mask head, paste) at batch 1 and `batchSize`.
    public static func maskRCNN(_ config: ModelConfig, batchSize: Int, steps: Int) throws -> DetectorThroughput {
        guard let model = try ModelRegistry.build(config, seed: 1) as? MaskRCNN, config.inputShape.count == 3 else {
            throw TrainingError("model \(config.family) is not mask-rcnn")
        }
        let (height, width) = (config.inputShape[1], config.inputShape[2])
        let adam = Adam(parameterCount: model.parameters.count)
        var rng = RandomGenerator(seed: 5)
        func frames(_ n: Int) -> Batch {
            let images = Tensor(zeros: [n] + config.inputShape)
            for i in 0..<images.count { images.data[i] = Float(rng.next() % 256) }
            var batch = Batch(images: images, indices: Array(0..<n), epoch: 0, seed: 1)
            var objects: [[Object]] = [], masks: [[[UInt8]]] = []
            for _ in 0..<n {
                var mine: [Object] = [], theirs: [[UInt8]] = []
                for k in 0..<3 {
                    let (w, h) = (rng.uniform(16, Float(width) / 2), rng.uniform(16, Float(height) / 2))
                    let (x, y) = (rng.uniform(0, Float(width) - w), rng.uniform(0, Float(height) - h))
                    let (cx, cy) = (x + w / 2, y + h / 2)
                    theirs.append((0..<(height * width)).map { p in
                        let (dx, dy) = ((Float(p % width) + 0.5 - cx) / (w / 2), (Float(p / width) + 0.5 - cy) / (h / 2))
                        return dx * dx + dy * dy <= 1 ? 1 : 0
                    })
                    mine.append(Object(box: BoxCorners(xmin: x, ymin: y, xmax: x + w, ymax: y + h), classID: 1 + k % (model.classCount - 1)))
                }
                objects.append(mine)
                masks.append(theirs)
            }
            batch.objects = objects
            batch.segmentation = SegmentationMaps(classes: [UInt8](repeating: 0, count: n * height * width), height: height, width: width,
                                                  instanceMasks: masks)
            return batch
        }
        let train = trainingImagesPerSecond(model, adam, frames(batchSize), steps: steps)
        var fps: [Int: Double] = [:], forward: [Int: Double] = [:]
        for n in Set([1, batchSize]).sorted() {
            let batch = frames(n)
            fps[n] = imagesPerSecond(n) { _ = model.detectInstances(batch, decoding: .evaluation) }
            forward[n] = imagesPerSecond(n) { _ = GradMode.disabled { model.network(LayoutTensor(batch.images), training: false) } }
        }
        return DetectorThroughput(trainImagesPerSecond: train, inferenceFPS: fps, forwardFPS: forward)
    }

    /// Images a second of `body` on a batch of `n`: one warm-up call, then the best of three rounds of `repeats` calls.
    static func imagesPerSecond(_ n: Int, repeats: Int = 2, _ body: () -> Void) -> Double {
        body()
        var best = Double.infinity
        for _ in 0..<3 {
            let start = monotonicSeconds()
            for _ in 0..<repeats { body() }
            best = min(best, monotonicSeconds() - start)
        }
        return Double(repeats * n) / best
    }

    /// A two-stage detector on synthetic frames of its input size (random pixels, three boxes each, `proposals` random
    /// regions per image standing in for selective search's, whose own time `starling proposals` reports): training
    /// steps at `batchSize` (Fast R-CNN's 2 images: forward, RoI sampling, loss, backward, Adam) and inference
    /// (backbone, the RoI head on every proposal, decoding with NMS) at each of `inferenceBatches`, the best of three
    /// rounds.
    public static func twoStageDetector(_ config: ModelConfig, batchSize: Int, steps: Int, proposals: Int = 2000,
                                        inferenceBatches: [Int] = [1, 2]) throws -> DetectorThroughput {
        guard let model = try ModelRegistry.build(config, seed: 1) as? any RegionDetector, config.inputShape.count == 3 else {
            throw TrainingError("model \(config.family) is not a region detector")
        }
        let (height, width) = (Float(config.inputShape[1]), Float(config.inputShape[2]))
        let adam = Adam(parameterCount: model.parameters.count)
        var rng = RandomGenerator(seed: 5)
        func region(largest: Float) -> BoxCorners {
            let w = rng.uniform(8, min(largest, width)), h = rng.uniform(8, min(largest, height))
            let x = rng.uniform(0, width - w), y = rng.uniform(0, height - h)
            return BoxCorners(xmin: x, ymin: y, xmax: x + w, ymax: y + h)
        }
        func frames(_ n: Int) -> Batch {
            let images = Tensor(zeros: [n] + config.inputShape)
            for i in 0..<images.count { images.data[i] = Float(rng.next() % 256) }
            var batch = Batch(images: images, indices: Array(0..<n), epoch: 0, seed: 1)
            batch.objects = (0..<n).map { _ in (0..<3).map { k in Object(box: region(largest: 120), classID: 1 + k % (model.classCount - 1)) } }
            batch.proposals = (0..<n).map { _ in (0..<proposals).map { _ in region(largest: max(width, height)) } }
            return batch
        }
        let train = trainingImagesPerSecond(model, adam, frames(batchSize), steps: steps)
        var fps: [Int: Double] = [:], forward: [Int: Double] = [:]
        for n in inferenceBatches {
            let batch = frames(n)
            fps[n] = imagesPerSecond(n) { _ = model.detect(batch, decoding: .evaluation) }
            // R-CNN has no shared backbone pass: its network runs on each warped proposal, inside `detect`.
            if let twoStage = model as? any TwoStageDetector {
                forward[n] = imagesPerSecond(n) { _ = GradMode.disabled { twoStage.features(batch.images, training: false) } }
            }
        }
        return DetectorThroughput(trainImagesPerSecond: train, inferenceFPS: fps, forwardFPS: forward)
    }

    /// The SSD input pipeline alone, as training runs it: read frames from the HDF5 file, augment (ssd_keras's chain),
    /// convert to floats and encode the anchor targets; images per second on one thread.
    public static func detectionPipeline(dataPath: String, batchSize: Int, batches: Int) throws -> Double {
        let dataset = try DetectionDataset(path: dataPath, split: "train")
        let config = try SSD7.configuration(for: DetectionSource(dataset: dataset).datasetDescription)
        let model = try ModelRegistry.build(config, seed: 1)
        let augmentation = DetectionAugmentation()
        let (h, w) = (dataset.imageHeight, dataset.imageWidth)
        let source = DetectionSource(dataset: dataset) { pixels, objects, epoch, index in
            augmentation.apply(pixels: pixels, objects: objects, height: h, width: w, seed: 1, epoch: epoch, sampleIndex: index)
        }
        func batch(_ indices: [Int], epoch: Int) throws -> Batch {
            try source.batch(indices: indices, epoch: epoch, training: true, for: model)
        }
        _ = try batch(Array(0..<min(batchSize, dataset.count)), epoch: 0)
        let start = monotonicSeconds()
        var images = 0
        for b in 0..<batches {
            let indices = (0..<batchSize).map { (b * batchSize + $0) % dataset.count }
            images += try batch(indices, epoch: 1).size
        }
        return Double(images) / (monotonicSeconds() - start)
    }

    /// Peak resident set size of this process so far.
    public static func peakResidentBytes() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Int(usage.ru_maxrss) * 1024
    }

    /// CPU seconds this process has run so far, user and system, over all its threads.
    public static func processCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) * 1e-6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }
}
