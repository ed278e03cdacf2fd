import Foundation
import Testing
import StarlingCore
import StarlingNN
@testable import StarlingDetection

private func box(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float) -> BoxCorners { BoxCorners(xmin: x0, ymin: y0, xmax: x1, ymax: y1) }

@Suite struct RegionProposalTests {
    // MARK: Anchors

    /// Size 32 at ratios 0.5, 1, 2: widths 32 / sqrt(r) = 45.25, 32, 22.63 and heights 22.63, 32, 45.25, halves rounded
    /// (torchvision's base anchors for size 32); size 5 at ratio 1 has halves 2.5, rounded to even: 2.
    @Test func baseAnchorsByHand() {
        let level = AnchorGenerator.Level(sizes: [32], stride: 16)
        #expect(level.baseAnchors == [box(-23, -11, 23, 11), box(-16, -16, 16, 16), box(-11, -23, 11, 23)])
        #expect(AnchorGenerator.Level(sizes: [5, 7], aspectRatios: [1], stride: 4).baseAnchors == [box(-2, -2, 2, 2), box(-4, -4, 4, 4)])
        // Ratio-major, size-minor: (0.5, 16), (0.5, 32), (2, 16), (2, 32).
        let two = AnchorGenerator.Level(sizes: [16, 32], aspectRatios: [0.5, 2], stride: 8).baseAnchors
        #expect(two == [box(-11, -6, 11, 6), box(-23, -11, 23, 11), box(-6, -11, 6, 11), box(-11, -23, 11, 23)])
    }

    /// Shifted by x stride, y stride, cell (0, 0) at the origin, location-major; levels concatenated in order.
    @Test func anchorsOverMapsByHand() {
        let generator = AnchorGenerator(levels: [AnchorGenerator.Level(sizes: [32], stride: 16),
                                                 AnchorGenerator.Level(sizes: [64], aspectRatios: [1], stride: 32)])
        let first = generator.anchors(level: 0, height: 2, width: 3)
        #expect(first.count == 18)
        // Location (y 1, x 2) is the sixth, its ratio-1 anchor centred on (32, 16).
        #expect(first[(1 * 3 + 2) * 3 + 1] == box(16, 0, 48, 32))
        #expect(first[0] == box(-23, -11, 23, 11) && first[3] == box(-7, -11, 39, 11))
        let all = generator.anchors(featureSizes: [(2, 3), (1, 2)])
        #expect(all.count == 20 && Array(all.prefix(18)) == first)
        #expect(all[18] == box(-32, -32, 32, 32) && all[19] == box(0, -32, 64, 32))
    }

    /// Anchors a (0, 0, 10, 10) and b (20, 0, 40, 20). Boxes: a itself (best IoU 1), a's top half (50 / 100 = 0.5),
    /// (25, 5, 35, 15) inside b (100 / 400 = 0.25) and one far from both (0): three under 0.7, two under 0.5 and 0.3,
    /// mean 1.75 / 4, median (0.25 + 0.5) / 2.
    @Test func anchorCoverageByHand() {
        let coverage = AnchorCoverage(boxes: [box(0, 0, 10, 10), box(0, 0, 10, 5), box(25, 5, 35, 15), box(100, 100, 110, 110)],
                                      anchors: [box(0, 0, 10, 10), box(20, 0, 40, 20)])
        #expect(coverage.bestIoU == [1, 0.5, 0.25, 0])
        #expect(coverage.count(below: 0.7) == 3 && coverage.count(below: 0.5) == 2 && coverage.count(below: 0.3) == 2)
        #expect(coverage.meanBestIoU == 0.4375 && coverage.medianBestIoU == 0.375)
        #expect(AnchorCoverage(boxes: [], anchors: [box(0, 0, 1, 1)]).meanBestIoU == 0)
    }

    // MARK: Targets and sampling

    /// Box T (0, 0, 10, 10) and box U (100, 100, 110, 110). Anchors: 0 is T (IoU 1), 1 T stretched down (0.83), 2 twice
    /// T's height (0.5: ignored), 3 half over T (1/3: ignored), 4 and 5 far (negative), 6 U's best (IoU 0.25, positive as
    /// its best anchor), 7 on a difficult box (ignored, not negative), 8 next to U (IoU 0.1: negative).
    @Test func targetsOnWorkedAnchors() {
        let anchors = [box(0, 0, 10, 10), box(0, 0, 10, 12), box(0, 0, 10, 20), box(5, 0, 15, 10), box(20, 20, 30, 30),
                       box(40, 40, 50, 50), box(100, 100, 120, 120), box(200, 200, 210, 210), box(108, 100, 128, 120)]
        let objects = [Object(box: box(0, 0, 10, 10), classID: 1), Object(box: box(100, 100, 110, 110), classID: 2),
                       Object(box: box(200, 200, 210, 210), classID: 1, difficult: true)]
        var rng = RandomGenerator(seed: 1)
        let all = RPNTargets().sample(anchors: anchors, objects: objects, using: &rng)
        #expect(all.positives == [0, 1, 6] && all.negatives == [4, 5, 8])
        #expect(all.targets[0] == .zero)
        // Anchor 1 (centre 5, 6; 10 x 12): dy = (5 - 6) / 12, dh = ln(10 / 12).
        #expect(abs(all.targets[1][1] + 1 / 12) < 1e-6 && all.targets[1][0] == 0 && abs(all.targets[1][3] - Float(log(10.0 / 12))) < 1e-6)
        // Anchor 6 (centre 110, 110; 20 x 20) to U (centre 105, 105; 10 x 10): -0.25, -0.25, ln 0.5, ln 0.5.
        let expected = SIMD4<Float>(-0.25, -0.25, Float(log(0.5)), Float(log(0.5)))
        #expect((0..<4).allSatisfy { abs(all.targets[2][$0] - expected[$0]) < 1e-6 })
        // A minibatch of 4 at 1:1: two of the three positives, two of the three negatives, targets following them.
        let small = RPNTargets(batchSize: 4).sample(anchors: anchors, objects: objects, using: &rng)
        #expect(small.positives.count == 2 && Set(small.positives).isSubset(of: [0, 1, 6]))
        #expect(small.negatives.count == 2 && Set(small.negatives).isSubset(of: [4, 5, 8]))
        for (i, t) in zip(small.positives, small.targets) { #expect(t == all.targets[all.positives.firstIndex(of: i)!]) }
        // No boxes: every anchor negative.
        #expect(RPNTargets().sample(anchors: anchors, objects: [], using: &rng).negatives == Array(0..<9))
    }

    /// The 1:1 cap: 300 positives and 200 negatives give 128 + 128; 300 and 50 give 128 + 50; 20 and 500 give 20 + 236.
    /// The draw is the sample's own, and not the RoI head's.
    @Test func samplingCapAndStreams() {
        let truth = box(0, 0, 10, 10)
        func anchors(positives: Int, negatives: Int) -> [BoxCorners] {
            Array(repeating: truth, count: positives) + Array(repeating: box(50, 50, 60, 60), count: negatives)
        }
        let objects = [Object(box: truth, classID: 1)]
        var rng = RandomGenerator(seed: 2)
        for (p, n, expectedP, expectedN) in [(300, 200, 128, 128), (300, 50, 128, 50), (20, 500, 20, 236)] {
            let s = RPNTargets().sample(anchors: anchors(positives: p, negatives: n), objects: objects, using: &rng)
            #expect(s.positives.count == expectedP && s.negatives.count == expectedN && s.count == expectedP + expectedN)
            #expect(s.positives.allSatisfy { $0 < p } && s.negatives.allSatisfy { $0 >= p })
        }
        let many = anchors(positives: 300, negatives: 300)
        var batch = Batch(images: Tensor(zeros: [2, 1]), indices: [4, 9], epoch: 1, seed: 5)
        let first = RPNTargets().sample(anchors: many, objects: objects, batch: batch, sample: 0, training: true)
        #expect(RPNTargets().sample(anchors: many, objects: objects, batch: batch, sample: 0, training: true) == first)
        #expect(RPNTargets().sample(anchors: many, objects: objects, batch: batch, sample: 1, training: true) != first)
        var roiStream = batch.randomStream(sample: 0, purpose: RoIHeads.samplingPurpose, training: true)
        #expect(RPNTargets().sample(anchors: many, objects: objects, using: &roiStream) != first)
        batch.epoch = 2
        #expect(RPNTargets().sample(anchors: many, objects: objects, batch: batch, sample: 0, training: true) != first)
    }

    // MARK: Loss

    /// Two levels, two images, random outputs and samples: the loss equals a second computation that reorders the
    /// outputs to anchor rows ([N, H W A] and [N, H W A, 4], by transposes) and uses the library's mean BCE on logits and
    /// smooth L1 (beta b as b smoothL1(x / b)); with a second rank that sampled 40 anchors, each rank's share is
    /// 2 x its sum / (its count + 40).
    @Test func lossAgainstASecondComputation() {
        var rng = RandomGenerator(seed: 4)
        let shapes = [(a: 3, h: 2, w: 3), (a: 2, h: 1, w: 2)]
        let objectness = shapes.map { s in Tensor(shape: [2, s.a, s.h, s.w], values: (0..<(2 * s.a * s.h * s.w)).map { _ in rng.uniform(-3, 3) }) }
        let deltas = shapes.map { s in Tensor(shape: [2, 4 * s.a, s.h, s.w], values: (0..<(8 * s.a * s.h * s.w)).map { _ in rng.uniform(-0.5, 0.5) }) }
        let total = 18 + 4
        let samples = (0..<2).map { n -> RPNSample in
            var indices = Array(0..<total)
            indices.shuffle(using: &rng)
            let positives = Array(indices.prefix(3 + n)).sorted(), negatives = Array(indices[5...].prefix(6)).sorted()
            return RPNSample(positives: positives, negatives: negatives,
                             targets: positives.map { _ in SIMD4((0..<4).map { _ in rng.uniform(-0.4, 0.4) }) })
        }
        let loss = Tensor.rpnLoss(objectness: objectness, deltas: deltas, samples: samples).item
        // Second computation.
        let logitRows = Tensor.concat(objectness.map { $0.transposed([0, 2, 3, 1]).reshaped([2, -1]) }, axis: 1)
        let deltaRows = Tensor.concat(zip(deltas, shapes).map { d, s in
            d.reshaped([2, s.a, 4, s.h, s.w]).transposed([0, 3, 4, 1, 2]).reshaped([2, -1, 4])
        }, axis: 1)
        var logits: [Float] = [], labels: [Float] = [], predicted: [Float] = [], goals: [Float] = []
        for (n, s) in samples.enumerated() {
            for i in s.positives { logits.append(logitRows.data[n * total + i]); labels.append(1) }
            for i in s.negatives { logits.append(logitRows.data[n * total + i]); labels.append(0) }
            for (i, t) in zip(s.positives, s.targets) {
                for k in 0..<4 { predicted.append(deltaRows.data[(n * total + i) * 4 + k]); goals.append(t[k]) }
            }
        }
        let count = Float(logits.count), beta: Float = 1.0 / 9
        let bce = Tensor(shape: [logits.count], values: logits).binaryCrossEntropy(logits: Tensor(shape: [labels.count], values: labels)).item * count
        let l1 = Tensor(shape: [predicted.count], values: predicted.map { $0 / beta })
            .smoothL1(Tensor(shape: [goals.count], values: goals.map { $0 / beta }), reduction: .sum).item * beta
        #expect(abs(loss - (bce + l1) / count) < 1e-5 * max(1, loss), "\(loss) vs \((bce + l1) / count)")
        let twoRanks = CrossReplica(size: 2, sum: { $0[0] += 40 }, allgather: { $0 })
        let share = Tensor.rpnLoss(objectness: objectness, deltas: deltas, samples: samples, crossReplica: twoRanks).item
        #expect(abs(share - 2 * (bce + l1) / (count + 40)) < 1e-5 * max(1, share))
    }

    /// The RPN head's loss by central finite differences at a tiny size, with respect to every weight of the head and
    /// every feature: one 4-channel 3 x 4 map, three anchors a location (36 anchors), two images.
    @Test func headLossFiniteDifferences() {
        let store = ParameterStore()
        let head = RPNHead(store, channels: 4, anchorsPerLocation: 3)
        var rng = RandomGenerator(seed: 9)
        store.allocate(rng: &rng)
        for p in store.parameters { for i in 0..<p.count { p.value.data[i] = rng.uniform(-0.5, 0.5) } }
        let features = Tensor.variable(shape: [2, 4, 3, 4], values: (0..<96).map { _ in rng.uniform(-1, 1) })
        let anchors = AnchorGenerator.singleLevel(sizes: [8], stride: 4).anchors(level: 0, height: 3, width: 4)
        let objects = [[Object(box: box(1, 2, 9, 11), classID: 1)], [Object(box: box(4, 0, 14, 6), classID: 1), Object(box: box(0, 4, 5, 12), classID: 2)]]
        let samples = objects.map { o in RPNTargets(batchSize: 16).sample(anchors: anchors, objects: o, using: &rng) }
        #expect(samples.allSatisfy { !$0.positives.isEmpty && $0.count == 16 })
        func loss() -> Tensor {
            let outputs = head([features])
            return Tensor.rpnLoss(objectness: outputs.map(\.objectness), deltas: outputs.map(\.deltas), samples: samples)
        }
        store.zeroGradients()
        loss().backward()
        func value() -> Double { Double(GradMode.disabled { loss() }.item) }
        let eps: Float = 1e-3
        var worst = 0.0, checked = 0
        for tensor in store.parameters.map(\.value) + [features] {
            let analytic = tensor.gradArray ?? []
            #expect(analytic.count == tensor.count)
            for i in 0..<tensor.count {
                let saved = tensor.data[i]
                tensor.data[i] = saved + eps
                let plus = value()
                tensor.data[i] = saved - eps
                let minus = value()
                tensor.data[i] = saved
                let numeric = (plus - minus) / Double(2 * eps)
                worst = max(worst, abs(numeric - Double(analytic[i])) / max(1e-2, abs(numeric)))
                checked += 1
            }
        }
        #expect(checked > 300 && worst < 2e-2, "worst relative gradient error \(worst) over \(checked)")
    }

    // MARK: Proposal layer

    /// One level of six anchors on a 100 x 100 image. By logit: A0 (3), A1 (2) overlapping A0 by IoU 0.82 (suppressed
    /// at 0.7), A2 (1) moved right 10 pixels by dx 0.5, A3 (0) over the corner (clipped to 90 ... 100), A4 (-1) 0.0005
    /// wide (dropped as tiny), A5 (-5) past pre-NMS top 5. A second level's copy of A0 survives: levels are
    /// suppressed apart, as torchvision's batched NMS by level.
    @Test func proposalsOnWorkedAnchors() {
        let anchors = [box(10, 10, 30, 30), box(12, 10, 32, 30), box(60, 60, 80, 80), box(90, 90, 110, 110), box(50, 0, 50.0005, 10), box(0, 0, 20, 20)]
        let logits: [Float] = [3, 2, 1, 0, -1, -5]
        var deltas = [SIMD4<Float>](repeating: .zero, count: 6)
        deltas[2] = SIMD4(0.5, 0, 0, 0)
        let layer = ProposalLayer(preNMSTopN: 5, postNMSTopN: 10)
        let one = layer.proposals(levels: [(logits, deltas, anchors)], imageHeight: 100, imageWidth: 100)
        let sigmoid = { (z: Float) in 1 / (1 + expf(-z)) }
        #expect(one == [ScoredBox(box: anchors[0], score: sigmoid(3)), ScoredBox(box: box(70, 60, 90, 80), score: sigmoid(1)),
                        ScoredBox(box: box(90, 90, 100, 100), score: sigmoid(0))])
        // Post-NMS top 2; pre-NMS top 6 lets A5 in, at the end.
        #expect(ProposalLayer(preNMSTopN: 5, postNMSTopN: 2).proposals(levels: [(logits, deltas, anchors)], imageHeight: 100, imageWidth: 100)
                == Array(one.prefix(2)))
        #expect(ProposalLayer(preNMSTopN: 6, postNMSTopN: 10).proposals(levels: [(logits, deltas, anchors)], imageHeight: 100, imageWidth: 100).last
                == ScoredBox(box: anchors[5], score: sigmoid(-5)))
        let two = layer.proposals(levels: [(logits, deltas, anchors), ([2.5], [.zero], [anchors[0]])], imageHeight: 100, imageWidth: 100)
        #expect(two.map(\.box) == [anchors[0], anchors[0], box(70, 60, 90, 80), box(90, 90, 100, 100)])

        // The same anchors through the RPN's outputs: two anchors a location over a 1 x 3 map, logit of anchor i
        // (location i / 2, anchor i % 2) at channel i % 2, column i / 2; its deltas at channels 4 (i % 2) + k.
        let objectness = Tensor(zeros: [1, 2, 1, 3]), outputDeltas = Tensor(zeros: [1, 8, 1, 3])
        for i in 0..<6 {
            objectness.data[(i % 2) * 3 + i / 2] = logits[i]
            for k in 0..<4 { outputDeltas.data[(4 * (i % 2) + k) * 3 + i / 2] = deltas[i][k] }
        }
        #expect(layer.proposals(objectness: [objectness], deltas: [outputDeltas], anchors: [anchors], imageHeight: 100, imageWidth: 100) == [one])
    }
}
