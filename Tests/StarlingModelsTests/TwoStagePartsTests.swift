import Foundation
import Testing
import StarlingCore
import StarlingNN
@testable import StarlingDetection

@Suite struct TwoStagePartsTests {
    // MARK: Matcher

    @Test func matcherBandsAndLowQualityMatches() {
        let quality: [[Float]] = [[0.7, 0.2, 0.1, 0.00],
                                  [0.1, 0.4, 0.4, 0.05]]
        // >= 0.5 matched, [0.3, 0.5) between, < 0.3 below.
        #expect(Matcher(high: 0.5, low: 0.3)(quality: quality, predictions: 4) == [.matched(0), .between, .between, .below])
        // Box 1's best quality, 0.4, is shared by predictions 1 and 2: both become its matches.
        #expect(Matcher(high: 0.5, low: 0.3, allowLowQualityMatches: true)(quality: quality, predictions: 4)
                == [.matched(0), .matched(1), .matched(1), .below])
        // A prediction that is some box's best but overlaps another more is matched to the other (torchvision's rule).
        let crossed: [[Float]] = [[0.30, 0.1], [0.35, 0.2]]
        #expect(Matcher(high: 0.5, low: 0.3, allowLowQualityMatches: true)(quality: crossed, predictions: 2) == [.matched(1), .below])
        // Fast R-CNN's bands: [0.1, 0.5) between (its background), quality exactly at a threshold goes up.
        #expect(Matcher(high: 0.5, low: 0.1)(quality: [[0.5, 0.1, 0.0999]], predictions: 3) == [.matched(0), .between, .below])
        #expect(Matcher(high: 0.5, low: 0.1)(quality: [], predictions: 2) == [.below, .below])
        // By boxes: a proposal equal to the box matches it; one half over it has IoU 1/3.
        let truth = BoxCorners(xmin: 0, ymin: 0, xmax: 10, ymax: 10)
        let proposals = [truth, BoxCorners(xmin: 5, ymin: 0, xmax: 15, ymax: 10), BoxCorners(xmin: 50, ymin: 50, xmax: 60, ymax: 60)]
        #expect(Matcher(high: 0.5, low: 0.1)(truths: [truth], predictions: proposals) == [.matched(0), .between, .below])
    }

    // MARK: Sampler

    @Test func samplerKeepsTheFractionAndIsDeterministic() {
        func labels(positives: Int, negatives: Int, ignored: Int) -> [BalancedSampler.Label] {
            var rng = RandomGenerator(seed: 3)
            var l = [BalancedSampler.Label](repeating: .positive, count: positives) + Array(repeating: .negative, count: negatives)
                + Array(repeating: .ignored, count: ignored)
            l.shuffle(using: &rng)
            return l
        }
        let sampler = BalancedSampler(size: 64, positiveFraction: 0.25)
        // Few positives: all of them, negatives fill the rest.
        let few = labels(positives: 10, negatives: 100, ignored: 20)
        var rng = RandomGenerator(seed: 1)
        let a = sampler.sample(few, using: &rng)
        #expect(a.positives.count == 10 && a.negatives.count == 54)
        #expect(a.positives.allSatisfy { few[$0] == .positive } && a.negatives.allSatisfy { few[$0] == .negative })
        #expect(Set(a.negatives).count == 54 && a.negatives == a.negatives.sorted())
        // Many positives: 16 (25 % of 64) and 48 negatives; too few negatives: what there is.
        let many = labels(positives: 30, negatives: 100, ignored: 0)
        let b = sampler.sample(many, using: &rng)
        #expect(b.positives.count == 16 && b.negatives.count == 48)
        let scarce = sampler.sample(labels(positives: 30, negatives: 5, ignored: 3), using: &rng)
        #expect(scarce.positives.count == 16 && scarce.negatives.count == 5)
        // Per (seed, epoch, sample): the same draw for the same sample, another for another epoch.
        var batch = Batch(images: Tensor(zeros: [2, 1]), indices: [7, 8], epoch: 3, seed: 11)
        let first = sampler.sample(many, batch: batch, sample: 0, training: true)
        #expect(sampler.sample(many, batch: batch, sample: 0, training: true) == first)
        #expect(sampler.sample(many, batch: batch, sample: 1, training: true) != first)
        batch.epoch = 4
        #expect(sampler.sample(many, batch: batch, sample: 0, training: true) != first)
    }

    // MARK: Box coder

    @Test func boxCoderOnWorkedBoxes() {
        let coder = BoxCoder()
        let reference = BoxCorners(xmin: 0, ymin: 0, xmax: 10, ymax: 20)   // centre (5, 10), 10 x 20
        // Shifted by (2, 4): dx = 10 x 2 / 10, dy = 10 x 4 / 20, sizes equal.
        #expect(coder.encode(BoxCorners(xmin: 2, ymin: 4, xmax: 12, ymax: 24), reference: reference) == SIMD4(2, 2, 0, 0))
        // 20 x 10 at (10, 5): dx = 10 x 5 / 10, dy = 10 x (-5) / 20, dw = 5 ln 2, dh = 5 ln(1/2).
        let wide = BoxCorners(xmin: 0, ymin: 0, xmax: 20, ymax: 10)
        let d = coder.encode(wide, reference: reference)
        let expected = SIMD4<Float>(5, -2.5, 5 * Float(log(2.0)), -5 * Float(log(2.0)))
        #expect((0..<4).allSatisfy { abs(d[$0] - expected[$0]) < 1e-6 })
        let back = coder.decode(d, reference: reference)
        #expect(abs(back.xmin) < 1e-5 && abs(back.ymin) < 1e-5 && abs(back.xmax - 20) < 1e-5 && abs(back.ymax - 10) < 1e-5)
        // Unit weights (the RPN's): plain offsets and log ratios.
        #expect(BoxCoder(weights: (1, 1, 1, 1)).encode(wide, reference: reference) == SIMD4(0.5, -0.25, Float(log(2.0)), Float(log(0.5))))
        // Growth is clamped at 1000/16 times.
        let huge = coder.decode(SIMD4(0, 0, 100, 0), reference: reference)
        #expect(abs(huge.width - 625) < 1e-2 && huge.height == 20)
    }
}

@Suite struct FastRCNNPartsTests {
    /// Box A (class 2): proposal 0 is A (IoU 1), 1 its top half (IoU 0.5), 2 half over it (IoU 1/3), 3 far away (0);
    /// A itself joins as a candidate. Foreground {0, 1, A}, background {2}, 3 ignored.
    @Test func roiMinibatchOnWorkedBoxes() {
        let a = BoxCorners(xmin: 0, ymin: 0, xmax: 10, ymax: 10)
        let top = BoxCorners(xmin: 0, ymin: 0, xmax: 10, ymax: 5), side = BoxCorners(xmin: 5, ymin: 0, xmax: 15, ymax: 10)
        let far = BoxCorners(xmin: 50, ymin: 50, xmax: 60, ymax: 60)
        let objects = [Object(box: a, classID: 2)]
        var rng = RandomGenerator(seed: 5)
        // 4 RoIs at 50 %: 2 of the 3 foreground, the 1 background.
        let small = FastRCNNTargets(roisPerImage: 4, foregroundFraction: 0.5).sample(proposals: [a, top, side, far], objects: objects, using: &rng)
        #expect(small.labels == [2, 2, 0] && small.rois.last == side && !small.rois.contains(far))
        // All of them (64 at 25 %: 16 foreground allowed): the top half regresses by dy = 10 x 2.5 / 5, dh = 5 ln 2.
        let all = FastRCNNTargets().sample(proposals: [a, top, side, far], objects: objects, using: &rng)
        #expect(all.rois == [a, top, a, side] && all.labels == [2, 2, 2, 0] && all.foregroundCount == 3)
        #expect(all.targets[0] == .zero && all.targets[3] == .zero)
        #expect(abs(all.targets[1][1] - 5) < 1e-5 && all.targets[1][0] == 0 && abs(all.targets[1][3] - 5 * Float(log(2.0))) < 1e-5)
        // A difficult box's overlaps are neither; no boxes at all, no RoIs.
        let hard = FastRCNNTargets().sample(proposals: [a, side], objects: [Object(box: a, classID: 1, difficult: true)], using: &rng)
        #expect(hard.rois.isEmpty)
        #expect(FastRCNNTargets().sample(proposals: [a, side], objects: [], using: &rng).rois.isEmpty)
    }

    /// Two RoIs, K = 1: logits (0, 0) for class 1 and (ln 3, 0) for background give ln 2 and ln(4/3), mean ln(8/3) / 2;
    /// the foreground RoI's class-1 deltas (0.5, 2, 0, 0) against zero targets give 0.125 + 1.5 over R = 2.
    @Test func multiTaskLossOnWorkedValues() {
        let logits = Tensor.variable(shape: [2, 2], values: [0, 0, Float(log(3.0)), 0])
        let deltas = Tensor.variable(shape: [2, 8], values: [9, 9, 9, 9, 0.5, 2, 0, 0,
                                                             7, 7, 7, 7, 7, 7, 7, 7])
        let loss = Tensor.fastRCNNLoss(classLogits: logits, boxDeltas: deltas, labels: [1, 0], targets: [.zero, .zero])
        #expect(abs(loss.item - (Float(log(8.0 / 3)) / 2 + 1.625 / 2)) < 1e-5)
        loss.backward()
        // Only the foreground RoI's own class columns move: d/dx = x / R inside |x| < 1, sign / R outside.
        #expect(deltas.gradArray == [0, 0, 0, 0, 0.25, 0.5, 0, 0,  0, 0, 0, 0, 0, 0, 0, 0])
        // d/dlogits = (softmax - onehot) / R.
        let g = logits.gradArray ?? []
        #expect(abs(g[0] - 0.25) < 1e-6 && abs(g[1] + 0.25) < 1e-6 && abs(g[2] + 0.125) < 1e-6 && abs(g[3] - 0.125) < 1e-6)
    }
}

@Suite struct FastRCNNPredictorTests {
    /// The predictor and the multi-task loss learn a fixed minibatch: three regions of one map (two foreground of
    /// classes 1 and 2, one background) with regression targets; 300 plain gradient steps take the loss below a tenth.
    @Test func predictorAndLossLearnAMinibatch() {
        let store = ParameterStore()
        let predictor = FastRCNNPredictor(store, channels: 4, hidden: 16, classCount: 3, spatialScale: 0.5, pooledSize: 2)
        var rng = RandomGenerator(seed: 3)
        store.allocate(rng: &rng)
        let features = Tensor(shape: [1, 4, 8, 8], values: (0..<256).map { _ in rng.uniform(0, 1) })
        let rois = Tensor(shape: [3, 5], values: [0, 0, 0, 8, 8, 0, 6, 4, 16, 14, 0, 2, 10, 7, 15])
        let labels: [Int32] = [1, 2, 0], targets: [SIMD4<Float>] = [SIMD4(0.5, -0.5, 0.2, 0), SIMD4(-1, 0.3, 0, 0.4), .zero]
        func loss() -> Tensor {
            let (logits, deltas) = predictor(features, rois: rois)
            #expect(logits.shape == [3, 3] && deltas.shape == [3, 12])
            return Tensor.fastRCNNLoss(classLogits: logits, boxDeltas: deltas, labels: labels, targets: targets)
        }
        let first = loss().item
        for _ in 0..<300 {
            store.zeroGradients()
            loss().backward()
            for p in store.parameters {
                let v = p.value, g = v.grad
                for i in 0..<p.count { v.data[i] -= 0.1 * g[i] }
            }
        }
        let last = GradMode.disabled { loss().item }
        #expect(first > 1 && last < first / 10, "loss \(first) -> \(last)")
    }

    /// Two regions, K = 2: region 0 is class 1 at 0.9 with zero deltas (its own box), class 2 at 0.05 (under the 0.1
    /// threshold); region 1 is class 1 at 0.6, shifted right by dx = 10 x 2 / 20 = 1 (2 pixels of its width 20),
    /// overlapping region 0 by IoU 0.81 > 0.45: suppressed. Region 1's class 2 at 0.3 decodes past the image's right
    /// edge and is clipped.
    @Test func decodingOnWorkedRegions() {
        let rois = [BoxCorners(xmin: 10, ymin: 10, xmax: 30, ymax: 30), BoxCorners(xmin: 10, ymin: 10, xmax: 30, ymax: 30)]
        let probabilities: [Float] = [0.05, 0.9, 0.05,
                                      0.1, 0.6, 0.3]
        var deltas = [Float](repeating: 0, count: 2 * 12)
        deltas[12 + 4] = 1                      // region 1, class 1: dx = 1 -> +2 pixels
        deltas[12 + 8] = 10                     // region 1, class 2: dx = 10 -> +20 pixels, to 30 ... 50, clipped at 40
        var decoding = DetectionDecoding(confidenceThreshold: 0.1)
        decoding.iouThreshold = 0.45
        let found = probabilities.withUnsafeBufferPointer { p in
            deltas.withUnsafeBufferPointer { d in
                decoding.decodeFastRCNN(probabilities: p.baseAddress!, deltas: d.baseAddress!, rois: rois, classCount: 3,
                                        imageHeight: 40, imageWidth: 40)
            }
        }
        #expect(found == [DetectedBox(box: rois[0], classID: 1, score: 0.9),
                          DetectedBox(box: BoxCorners(xmin: 30, ymin: 10, xmax: 40, ymax: 30), classID: 2, score: 0.3)])
    }
}
