import ArgumentParser
import Foundation
import StarlingCore
import StarlingModels

extension SelectiveSearch.Mode: ExpressibleByArgument {}

/// `starling proposals`: selective search over a detection split, the recall of its boxes against the number of
/// proposals, and optionally the proposals stored in the file for R-CNN and Fast R-CNN.
struct ProposalsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proposals",
        abstract: "Selective search proposals for a detection split: recall of the ground-truth boxes at IoU 0.5 and 0.7 against the number of proposals, proposals and seconds per image; --store writes them into the file.")

    @Option(help: "Detection dataset (`starling data detection`).") var data: String
    @Option(help: "Split to search.") var split: String = "train"
    @Option(help: "Selective search's strategies: single (HSV, k = 100, all similarities), fast (8 strategies), quality (80).") var mode: SelectiveSearch.Mode = .fast
    @Option(help: "Search only the first N images (a quick measure; not with --store).") var limit: Int?
    @Option(help: "Proposals kept per image, best first (stored, and the 'all' row).") var keep: Int = 2000
    @Option(help: "Seed of the ranking's random numbers (image i uses seed and i).") var seed: UInt64 = 0
    @Flag(help: "Write the proposals into the dataset file (/<split>/proposals and proposal_offsets), atomically.") var store = false
    @Option(help: "Images searched at once, one a thread (the proposals do not depend on it).") var threads: Int = 1
    @Option(help: "Measure a faster-rcnn checkpoint's region proposal network instead of selective search: the recall of its test-time proposals (--keep of them after NMS, from at least its rpn_pre_nms_test anchors), and the RoI head's training minibatch drawn from its training-time proposals (foreground RoIs an image). Not with --store.") var checkpoint: String?

    func validate() throws {
        if let limit, limit <= 0 { throw ValidationError("--limit must be positive") }
        guard keep > 0 else { throw ValidationError("--keep must be positive") }
        guard threads > 0 else { throw ValidationError("--threads must be positive") }
        if store && limit != nil { throw ValidationError("--store writes proposals for every image of the split: drop --limit") }
        if store && checkpoint != nil { throw ValidationError("--store writes selective search's proposals: not with --checkpoint") }
    }

    func run() throws {
        try reportingErrors {
            let dataset = try DetectionDataset(path: data, split: split)
            guard dataset.count > 0 else { throw DataError(file: data, message: "/\(split) has no images") }
            let count = min(limit ?? dataset.count, dataset.count)
            if let checkpoint { return try measureRegionProposalNetwork(checkpoint, dataset: dataset, count: count) }
            let (h, w) = (dataset.imageHeight, dataset.imageWidth)
            let search = SelectiveSearch(mode: mode)
            print("selective search (\(mode.rawValue), \(search.strategies.count) strategies) on \(count) images of \(data) [\(split)], \(w)x\(h)")
            var recall = ProposalRecall()
            var stored: [[BoxCorners]] = []
            var seconds = 0.0
            let wallStart = DispatchTime.now().uptimeNanoseconds
            // Chunks of `threads` images: read one after another (HDF5 is serial), searched side by side.
            for chunk in stride(from: 0, to: count, by: threads) {
                let indices = Array(chunk..<min(chunk + threads, count))
                var pixels = [UInt8](repeating: 0, count: indices.count * h * w * 3)
                try pixels.withUnsafeMutableBufferPointer { try dataset.readImages(indices, into: $0) }
                let results = SearchResults(count: indices.count, pixels: pixels)
                let (keep, seed) = (keep, seed)
                DispatchQueue.concurrentPerform(iterations: indices.count) { k in
                    let start = DispatchTime.now().uptimeNanoseconds
                    let found = results.pixels.withUnsafeBufferPointer { all in
                        search.proposals(pixels: UnsafeBufferPointer(rebasing: all[(k * h * w * 3)..<((k + 1) * h * w * 3)]), height: h, width: w,
                                         seed: SelectiveSearch.imageSeed(seed, index: indices[k]))
                    }
                    results.set(k, Array(found.prefix(keep)), seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                }
                for (k, i) in indices.enumerated() {
                    let (proposals, time) = results.get(k)
                    seconds += time
                    let objects = dataset.objects(of: i).filter { !$0.difficult }
                    recall.add(proposals: proposals, truths: objects.map(\.box), classes: objects.map(\.classID))
                    if store { stored.append(proposals) }
                }
                let done = indices.last! + 1
                FileHandle.standardError.write(Data(String(format: "\r%d/%d images, %.2f s an image", done, count, seconds / Double(done)).utf8))
            }
            let wall = Double(DispatchTime.now().uptimeNanoseconds - wallStart) / 1e9
            FileHandle.standardError.write(Data("\n".utf8))
            printRecallTable(recall)
            print(String(format: "proposals per image: %.1f (at most %d kept); seconds per image: %.3f searching (one thread an image), %.3f of wall time on %d thread%@",
                         recall.proposalsPerImage, keep, seconds / Double(count), wall / Double(count), threads, threads == 1 ? "" : "s"))
            if store {
                let method = "selective search \(mode.rawValue), seed \(seed), at most \(keep) an image"
                try ProposalStore.write(stored, method: method, split: split, to: data)
                print("stored \(stored.map(\.count).reduce(0, +)) proposals in \(data) /\(split)/proposals (\(method))")
            }
        }
    }
}

extension ProposalsCommand {
    /// The recall of the ground-truth boxes at IoU 0.5 and 0.7 against the number of proposals kept, and MABO.
    func printRecallTable(_ recall: ProposalRecall) {
        print("\(recall.truths) ground-truth boxes (difficult ones left out)")
        print("proposals  recall@0.5  recall@0.7")
        for b in 0...recall.budgets.count {
            let label = b < recall.budgets.count ? String(recall.budgets[b]) : "all"
            let padded = label.count < 9 ? String(repeating: " ", count: 9 - label.count) + label : label
            print(padded + String(format: "  %10.4f  %10.4f", recall.recall(budget: b, threshold: 0), recall.recall(budget: b, threshold: 1)))
        }
        print(String(format: "MABO (mean over classes of each box's best IoU with the kept proposals): %.4f", recall.meanAverageBestOverlap))
    }

    /// A Faster R-CNN checkpoint's RPN on the first `count` images of `dataset`, two at a time, batch norm in inference
    /// mode: the recall of its test-time proposals against their number, and the RoI minibatch its RoI head would
    /// sample from its training-time proposals (the ground-truth boxes added, as in training) without augmentation.
    func measureRegionProposalNetwork(_ path: String, dataset: DetectionDataset, count: Int) throws {
        let loaded = try Checkpoint.load(from: path)
        guard let model = loaded.model as? FasterRCNN else {
            throw EvalError("\(path): model \(loaded.model.config.family), not faster-rcnn (--checkpoint measures a region proposal network)")
        }
        let source = DetectionSource(dataset: dataset)
        try source.checkCompatible(with: model.config)
        let test = model.testingProposals
        let layer = ProposalLayer(preNMSTopN: max(test.preNMSTopN, keep), postNMSTopN: keep, nmsThreshold: test.nmsThreshold, minimumSize: test.minimumSize)
        let (h, w) = (dataset.imageHeight, dataset.imageWidth)
        print("\(path)'s region proposal network on \(count) images of \(data) [\(split)], \(w)x\(h): \(model.anchors.count) anchors; "
              + "test time \(layer.preNMSTopN) before NMS at \(layer.nmsThreshold), at most \(layer.postNMSTopN) kept; "
              + "training time \(model.trainingProposals.preNMSTopN) / \(model.trainingProposals.postNMSTopN)")
        var recall = ProposalRecall(budgets: [100, 300, 1000, 2000])
        var seconds = 0.0
        let sampling = model.roiHeads.sampling
        var (rois, foreground, truthsInBatch, foregroundProposals, images) = (0, 0, 0, 0, 0)
        for chunk in stride(from: 0, to: count, by: 2) {
            let indices = Array(chunk..<min(chunk + 2, count))
            let batch = try source.batch(indices: indices, epoch: 0, training: false, config: model.config)
            let start = DispatchTime.now().uptimeNanoseconds
            let features = GradMode.disabled { model.features(batch.images, training: false) }
            let found = model.proposals(features: features, layer: layer, imageHeight: h, imageWidth: w)
            seconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            let forTraining = model.proposals(features: features, layer: model.trainingProposals, imageHeight: h, imageWidth: w)
            for (k, i) in indices.enumerated() {
                let objects = batch.objects?[k] ?? []
                let truths = objects.filter { !$0.difficult }
                recall.add(proposals: found[k].map(\.box), truths: truths.map(\.box), classes: truths.map(\.classID))
                // Sample i's draw at epoch 0 with seed 1 (`RoIHeads.sample`'s stream in training).
                var rng = RandomGenerator(seed: 1, stream: RoIHeads.samplingPurpose, 0, UInt64(i))
                let sample = sampling.sample(proposals: forTraining[k].map(\.box), objects: objects, using: &rng)
                rois += sample.rois.count
                foreground += sample.foregroundCount
                truthsInBatch += sample.rois.filter { roi in truths.contains { $0.box == roi } }.count
                foregroundProposals += forTraining[k].filter { p in truths.contains { iou($0.box, p.box) >= sampling.matcher.high } }.count
                images += 1
            }
            FileHandle.standardError.write(Data(String(format: "\r%d/%d images, %.2f s an image", images, count, seconds / Double(images)).utf8))
        }
        FileHandle.standardError.write(Data("\n".utf8))
        printRecallTable(recall)
        print(String(format: "proposals per image: %.1f (at most %d kept); seconds per image: %.3f (backbone, RPN and proposal layer, batch 2)",
                     recall.proposalsPerImage, keep, seconds / Double(max(images, 1))))
        let n = Double(max(images, 1))
        print(String(format: "RoI head's training minibatch (training-time proposals and the ground truths, no augmentation): %.1f RoIs an image, "
                     + "%.2f foreground (at most %.0f: %d x %g), %.2f of them ground-truth boxes; %.1f training-time proposals an image at IoU >= %g with a box",
                     Double(rois) / n, Double(foreground) / n, (Float(sampling.roisPerImage) * sampling.foregroundFraction).rounded(.down),
                     sampling.roisPerImage, sampling.foregroundFraction, Double(truthsInBatch) / n, Double(foregroundProposals) / n, sampling.matcher.high))
    }
}

/// A chunk's pixels (read only) and each image's proposals and search time, written by the threads of the chunk (each
/// its own slot).
private final class SearchResults: @unchecked Sendable {
    let pixels: [UInt8]
    private var slots: [([BoxCorners], Double)]
    private let lock = NSLock()
    init(count: Int, pixels: [UInt8]) {
        self.pixels = pixels
        slots = Array(repeating: ([], 0), count: count)
    }
    func set(_ k: Int, _ proposals: [BoxCorners], seconds: Double) { lock.withLock { slots[k] = (proposals, seconds) } }
    func get(_ k: Int) -> ([BoxCorners], Double) { lock.withLock { slots[k] } }
}
