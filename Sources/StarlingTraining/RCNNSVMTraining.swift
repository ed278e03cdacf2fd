import Foundation
import StarlingCore
import StarlingData
import StarlingDetection
import StarlingNN

/// R-CNN's second stage (`starling rcnn-svm`; Girshick et al., CVPR 2014, section 2.3 and appendix C): on the
/// fine-tuned CNN's features of a training split, one linear SVM per class with hard negative mining and one ridge box
/// regressor per class, installed in the model (`RCNN.installSVMs`). The order of the released code's `rcnn_train`:
///
/// 1. A first pass: the fc7 features of every ground-truth box (the positives; difficult ones left out), and the mean
///    L2 norm of fc7 over up to 200 proposals from each of up to 200 images spread over the split (`rcnn_feature_stats`),
///    by which every feature is scaled to a mean norm of 20 (`feat_norm_mean`).
/// 2. The mining pass, image by image in dataset order: negatives are the proposals overlapping every box of the class
///    by IoU < 0.3, mined by `HardNegativeMiner` starting from every positive (a machine that saw only the first images'
///    positives would evict negatives the final machine needs, and on a small set few solves follow to find them again).
///    Regressors on pool5 (the paper's choice): proposals whose best IoU with any box is > 0.6 regress to that box, in
///    its class, lambda = 1,000.
///
/// Data-parallel: images are taken in rounds of `imagesPerRound` in dataset order; within a round rank r computes the
/// features of images first + r, first + r + ranks, ...; then, image by image in dataset order, the image's rank finds
/// its hard negatives under the current machines and every rank adds them (gathered) to its miners, so every rank keeps
/// the same caches and solves the same machines as one process does, at any `imagesPerRound` (which only sets how many
/// images' features a rank holds at once). The positives are gathered and sorted by (image, box); the regression sums
/// are added over ranks once at the end. One rank and N give the same SVMs up to the rounding of the feature norm's and
/// the regression sums' additions.
public enum RCNNSVMTraining {
    public struct Settings: Sendable {
        public var solver = LinearSVM.Solver()
        public var retrainLimit = 2000
        public var negativeIoU: Float = 0.3
        public var regressionIoU: Float = 0.6
        public var lambda = 1000.0
        public var imagesPerRound = 16
        public var featureNorm: Float = 20
        /// `rcnn_feature_stats`: images and proposals an image whose fc7 norms set the feature scale.
        public var normImages = 200
        public var normProposalsPerImage = 200
        public init() {}
    }

    public struct Report: Sendable {
        public var images = 0
        public var positives: [Int] = []
        public var cachedNegatives: [Int] = []
        public var solves: [Int] = []
        public var regressionSamples: [Int] = []
        public var featureScale: Float = 1
        public var seconds = 0.0
    }

    /// Up to `limit` of `0 ..< count`, evenly spread (all of them when `count <= limit`).
    static func spread(_ count: Int, limit: Int) -> [Int] {
        count <= limit ? Array(0..<count) : (0..<limit).map { $0 * count / limit }
    }

    /// Trains and installs the SVMs and regressors of `model` on `source`'s images and stored proposals (read without
    /// augmentation). Every rank calls it with the same arguments; `crossReplica` joins them.
    public static func train(_ model: RCNN, source: DetectionSource, settings: Settings = Settings(), crossReplica: CrossReplica = .single,
                             rank: Int = 0, progress: (String) -> Void = { _ in }) throws -> Report {
        let start = monotonicSeconds()
        let objects = model.classCount - 1, d5 = model.pool5Dimension, d7 = model.fc7Dimension
        let ranks = crossReplica.size
        func truths(_ batch: Batch) -> [Object] {
            (batch.objects?[0] ?? []).filter { !$0.difficult && $0.classID >= 1 && $0.classID < model.classCount }
        }
        func proposals(_ batch: Batch) -> [BoxCorners] { Array((batch.proposals?[0] ?? []).prefix(model.testProposals)) }

        // 1. Positives of the whole split, rows (class, image, box, features...), and the feature norm's sums.
        let normImages = Set(spread(source.count, limit: settings.normImages))
        var positiveRows: [Double] = []
        var norms = [0.0, 0.0]
        for i in stride(from: rank, to: source.count, by: ranks) {
            let batch = try source.batch(indices: [i], epoch: 0, training: false, config: model.config)
            let boxes = truths(batch)
            let fc7 = model.regionFeatures(batch.images, image: 0, boxes: boxes.map(\.box)).fc7
            for (g, truth) in boxes.enumerated() {
                positiveRows += [Double(truth.classID - 1), Double(i), Double(g)] + fc7[g * d7 ..< (g + 1) * d7].map(Double.init)
            }
            if normImages.contains(i) {
                let all = proposals(batch)
                let sample = spread(all.count, limit: settings.normProposalsPerImage).map { all[$0] }
                let features = model.regionFeatures(batch.images, image: 0, boxes: sample).fc7
                for p in sample.indices {
                    var s = 0.0
                    for j in 0..<d7 { s += Double(features[p * d7 + j]) * Double(features[p * d7 + j]) }
                    norms[0] += s.squareRoot()
                    norms[1] += 1
                }
            }
        }
        norms.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
        let scale = norms[0] > 0 && norms[1] > 0 ? settings.featureNorm / Float(norms[0] / norms[1]) : 1
        var miners = (0..<objects).map { _ in HardNegativeMiner(dimension: d7, solver: settings.solver, retrainLimit: settings.retrainLimit) }
        let width = 3 + d7
        let gatheredPositives = gather(positiveRows, crossReplica: crossReplica)
        let positiveOrder = stride(from: 0, to: gatheredPositives.count, by: width).sorted {
            (gatheredPositives[$0 + 1], gatheredPositives[$0 + 2]) < (gatheredPositives[$1 + 1], gatheredPositives[$1 + 2])
        }
        var positives = Array(repeating: [[Float]](), count: objects)
        for r in positiveOrder {
            positives[Int(gatheredPositives[r])].append(gatheredPositives[(r + 3)..<(r + width)].map { Float($0) * scale })
        }
        for c in 0..<objects { miners[c].add(positives: positives[c], hardNegatives: []) }
        progress("positives \(positives.map(\.count)) from \(source.count) images; fc7 scaled by \(scale)")

        // 2. The mining pass.
        var regression = (0..<objects).map { _ in RidgeBoxRegressor.Statistics(dimension: d5) }
        for first in stride(from: 0, to: source.count, by: settings.imagesPerRound) {
            let round = Array(first..<min(first + settings.imagesPerRound, source.count))
            // This rank's images of the round: boxes, proposals and the proposals' scaled fc7.
            var computed: [Int: (objects: [Object], proposals: [BoxCorners], features: [Float])] = [:]
            for (offset, i) in round.enumerated() where offset % ranks == rank {
                let batch = try source.batch(indices: [i], epoch: 0, training: false, config: model.config)
                let boxes = truths(batch), rois = proposals(batch)
                let (pool5, fc7) = model.regionFeatures(batch.images, image: 0, boxes: rois)
                for (p, proposal) in rois.enumerated() {
                    var best: Float = 0, bestTruth = -1
                    for (g, truth) in boxes.enumerated() {
                        let overlap = iou(proposal, truth.box)
                        if overlap > best { (best, bestTruth) = (overlap, g) }
                    }
                    guard bestTruth >= 0, best > settings.regressionIoU else { continue }
                    let truth = boxes[bestTruth]
                    pool5.withUnsafeBufferPointer { f in
                        regression[truth.classID - 1].add(f.baseAddress! + p * d5, rows: 1,
                                                          targets: [RCNN.regressionCoder.encode(truth.box, reference: proposal)])
                    }
                }
                computed[i] = (boxes, rois, fc7.map { $0 * scale })
            }
            // Image by image: its rank's hard negatives under the current machines, rows (class, image, proposal,
            // features...), to every rank's miners; a miner may solve after any image, as the released code's.
            for i in round {
                var rows: [Double] = []
                if let image = computed[i] {
                    for c in 0..<objects {
                        let boxes = image.objects.filter { $0.classID == c + 1 }.map(\.box)
                        let candidates: [(key: HardNegativeMiner.NegativeKey, features: [Float])] = image.proposals.indices.compactMap { p in
                            guard boxes.allSatisfy({ iou(image.proposals[p], $0) < settings.negativeIoU }) else { return nil }
                            return (HardNegativeMiner.NegativeKey(image: i, proposal: p), Array(image.features[p * d7 ..< (p + 1) * d7]))
                        }
                        for found in miners[c].hard(candidates) {
                            rows += [Double(c), Double(i), Double(found.key.proposal)] + found.features.map(Double.init)
                        }
                    }
                }
                let all = gather(rows, crossReplica: crossReplica)
                var negatives = Array(repeating: [(key: HardNegativeMiner.NegativeKey, features: [Float])](), count: objects)
                for r in stride(from: 0, to: all.count, by: width) {
                    negatives[Int(all[r])].append((key: HardNegativeMiner.NegativeKey(image: Int(all[r + 1]), proposal: Int(all[r + 2])),
                                                   features: all[(r + 3)..<(r + width)].map { Float($0) }))
                }
                for c in 0..<objects { miners[c].add(positives: [], hardNegatives: negatives[c]) }
            }
            progress("images \(round.last.map { $0 + 1 } ?? 0)/\(source.count): cached negatives \(miners.map(\.negativeCount)), solves \(miners.map(\.solves))")
        }
        for c in 0..<objects { miners[c].finish() }
        var regressors: [RidgeBoxRegressor] = []
        var report = Report()
        for c in 0..<objects {
            var flat = regression[c].flat
            flat.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
            let sums = RidgeBoxRegressor.Statistics(dimension: d5, flat: flat)
            regressors.append(RidgeBoxRegressor.fit(sums, lambda: settings.lambda))
            report.regressionSamples.append(Int(sums.count))
        }
        model.installSVMs(miners.map(\.svm), featureScale: scale, regressors: regressors)
        report.images = source.count
        report.positives = miners.map(\.positiveCount)
        report.cachedNegatives = miners.map(\.negativeCount)
        report.solves = miners.map(\.solves)
        report.featureScale = scale
        report.seconds = monotonicSeconds() - start
        return report
    }

    /// Every rank's `values` (any count), concatenated in rank order: counts first, then the values padded to the
    /// longest, through `crossReplica.allgather` (which takes the same count from every rank).
    static func gather(_ values: [Double], crossReplica: CrossReplica) -> [Double] {
        guard crossReplica.size > 1 else { return values }
        let counts = crossReplica.allgather([Double(values.count)]).map { Int($0) }
        let longest = counts.max() ?? 0
        let padded = values + Array(repeating: 0, count: longest - values.count)
        let all = crossReplica.allgather(padded)
        return counts.enumerated().flatMap { r, n in all[(r * longest)..<(r * longest + n)] }
    }
}
