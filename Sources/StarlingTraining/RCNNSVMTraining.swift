import Foundation
import StarlingCore
import StarlingData
import StarlingDetection
import StarlingNN

/// R-CNN's second stage (`starling rcnn-svm`; Girshick et al., CVPR 2014, section 2.3 and appendix C): on the
/// fine-tuned CNN's features of a training split, one linear SVM per class with hard negative mining and one ridge box
/// regressor per class, installed in the model (`RCNN.installSVMs`).
///
/// - SVMs on fc7, scaled so that the features of the first round's proposals have a mean L2 norm of 20 (the released
///   code's `feat_norm_mean`): positives are the class's ground-truth boxes (difficult ones left out), negatives the
///   proposals overlapping every box of the class by IoU < 0.3; mined by `HardNegativeMiner` in one pass.
/// - Regressors on pool5 (the paper's choice): proposals whose best IoU with any box is > 0.6 regress to that box, in
///   its class, lambda = 1,000.
///
/// Data-parallel: the images are visited in rounds of `imagesPerRound` in dataset order; within a round rank r computes
/// the features of images first + r, first + r + ranks, ...; the round's positives and hard negatives are gathered
/// from every rank and handed to the miners sorted by (image, proposal), so every rank keeps the same caches and solves
/// the same machines as one process does; the regression sums are added over ranks once at the end. One rank and N
/// give the same SVMs (the solver sees the same samples in the same order) up to the rounding of the feature scale's
/// and the regression sums' additions.
public enum RCNNSVMTraining {
    public struct Settings: Sendable {
        public var solver = LinearSVM.Solver()
        public var retrainLimit = 2000
        public var negativeIoU: Float = 0.3
        public var regressionIoU: Float = 0.6
        public var lambda = 1000.0
        public var imagesPerRound = 16
        public var featureNorm: Float = 20
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

    /// Trains and installs the SVMs and regressors of `model` on `source`'s images and stored proposals (read without
    /// augmentation). Every rank calls it with the same arguments; `crossReplica` joins them.
    public static func train(_ model: RCNN, source: DetectionSource, settings: Settings = Settings(), crossReplica: CrossReplica = .single,
                             rank: Int = 0, progress: (String) -> Void = { _ in }) throws -> Report {
        let start = monotonicSeconds()
        let objects = model.classCount - 1, d5 = model.pool5Dimension, d7 = model.fc7Dimension
        var miners = (0..<objects).map { _ in HardNegativeMiner(dimension: d7, solver: settings.solver, retrainLimit: settings.retrainLimit) }
        var regression = (0..<objects).map { _ in RidgeBoxRegressor.Statistics(dimension: d5) }
        var scale: Float?
        let ranks = crossReplica.size
        for first in stride(from: 0, to: source.count, by: settings.imagesPerRound) {
            let round = Array(first..<min(first + settings.imagesPerRound, source.count))
            let mine = round.enumerated().filter { $0.offset % ranks == rank }.map(\.element)
            // This rank's images: fc7 of boxes and proposals, pool5 of proposals, per image.
            var computed: [(index: Int, objects: [Object], proposals: [BoxCorners], truthFeatures: [Float], proposalFeatures: [Float])] = []
            var normSum = 0.0, normCount = 0.0
            for i in mine {
                let batch = try source.batch(indices: [i], epoch: 0, training: false, config: model.config)
                let truths = (batch.objects?[0] ?? []).filter { !$0.difficult && $0.classID >= 1 && $0.classID < model.classCount }
                let proposals = Array((batch.proposals?[0] ?? []).prefix(model.testProposals))
                let truthFeatures = model.regionFeatures(batch.images, image: 0, boxes: truths.map(\.box)).fc7
                let (pool5, fc7) = model.regionFeatures(batch.images, image: 0, boxes: proposals)
                for (p, proposal) in proposals.enumerated() {
                    var best: Float = 0, bestTruth = -1
                    for (g, truth) in truths.enumerated() {
                        let overlap = iou(proposal, truth.box)
                        if overlap > best { (best, bestTruth) = (overlap, g) }
                    }
                    guard bestTruth >= 0, best > settings.regressionIoU else { continue }
                    let truth = truths[bestTruth]
                    pool5.withUnsafeBufferPointer { f in
                        regression[truth.classID - 1].add(f.baseAddress! + p * d5, rows: 1,
                                                          targets: [RCNN.regressionCoder.encode(truth.box, reference: proposal)])
                    }
                }
                if scale == nil {
                    for p in proposals.indices {
                        var s = 0.0
                        for j in 0..<d7 { s += Double(fc7[p * d7 + j]) * Double(fc7[p * d7 + j]) }
                        normSum += s.squareRoot()
                        normCount += 1
                    }
                }
                computed.append((i, truths, proposals, truthFeatures, fc7))
            }
            if scale == nil {
                var sums = [normSum, normCount]
                sums.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
                scale = sums[1] > 0 && sums[0] > 0 ? settings.featureNorm / Float(sums[0] / sums[1]) : 1
            }
            let featureScale = scale ?? 1
            // Per class: this rank's positives and hard negatives, as rows (class, image, proposal, features...).
            var rows: [Double] = []
            for image in computed {
                for (g, truth) in image.objects.enumerated() {
                    rows += [Double(truth.classID - 1), Double(image.index), Double(-1 - g)]
                    rows += image.truthFeatures[g * d7 ..< (g + 1) * d7].map { Double($0 * featureScale) }
                }
                for c in 0..<objects {
                    let boxes = image.objects.filter { $0.classID == c + 1 }.map(\.box)
                    let candidates: [(key: HardNegativeMiner.NegativeKey, features: [Float])] = image.proposals.indices.compactMap { p in
                        guard boxes.allSatisfy({ iou(image.proposals[p], $0) < settings.negativeIoU }) else { return nil }
                        return (HardNegativeMiner.NegativeKey(image: image.index, proposal: p),
                                image.proposalFeatures[p * d7 ..< (p + 1) * d7].map { $0 * featureScale })
                    }
                    for found in miners[c].hard(candidates) {
                        rows += [Double(c), Double(found.key.image), Double(found.key.proposal)] + found.features.map(Double.init)
                    }
                }
            }
            // Every rank's rows, then each class's positives (by image, box) and hard negatives (by key) to its miner.
            let width = 3 + d7
            let all = gather(rows, crossReplica: crossReplica)
            var positives = Array(repeating: [(key: HardNegativeMiner.NegativeKey, features: [Float])](), count: objects)
            var negatives = positives
            for r in stride(from: 0, to: all.count, by: width) {
                let c = Int(all[r]), proposal = Int(all[r + 2])
                let entry = (key: HardNegativeMiner.NegativeKey(image: Int(all[r + 1]), proposal: proposal),
                             features: all[(r + 3)..<(r + width)].map { Float($0) })
                if proposal < 0 { positives[c].append(entry) } else { negatives[c].append(entry) }
            }
            for c in 0..<objects {
                miners[c].add(positives: positives[c].sorted { $0.key < $1.key }.map(\.features), hardNegatives: negatives[c])
            }
            progress("images \(round.last.map { $0 + 1 } ?? 0)/\(source.count): cached negatives \(miners.map(\.negativeCount))")
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
        model.installSVMs(miners.map(\.svm), featureScale: scale ?? 1, regressors: regressors)
        report.images = source.count
        report.positives = miners.map(\.positiveCount)
        report.cachedNegatives = miners.map(\.negativeCount)
        report.solves = miners.map(\.solves)
        report.featureScale = scale ?? 1
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
