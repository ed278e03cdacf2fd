import Testing
@testable import StarlingCore
#if canImport(Glibc)
import Glibc
#endif

private func isClose(_ a: Float, _ b: Double, _ tolerance: Double = 1e-6) -> Bool {
    abs(Double(a) - b) <= tolerance * max(1, abs(b))
}

@Suite struct BinaryCrossEntropyProbabilitiesTests {
    @Test func handComputedValuesAndReductions() {
        // Per element: p 0.5 t 1: ln 2; p 0.9 t 0: -ln 0.1; p 0.2 t 0.25: -(0.25 ln 0.2 + 0.75 ln 0.8);
        // p 0.6 t 1: -ln 0.6.
        let p = Tensor(shape: [2, 2], values: [0.5, 0.9, 0.2, 0.6]), t = Tensor(shape: [2, 2], values: [1, 0, 0.25, 1])
        let e = [log(2.0), -log(0.1), -(0.25 * log(0.2) + 0.75 * log(0.8)), -log(0.6)]
        #expect(isClose(p.binaryCrossEntropy(probabilities: t).item, e.reduce(0, +) / 4))
        #expect(isClose(p.binaryCrossEntropy(probabilities: t, reduction: .sum).item, e.reduce(0, +)))
        #expect(isClose(p.binaryCrossEntropy(probabilities: t, reduction: .meanOfSampleSums).item, e.reduce(0, +) / 2))
        let each = p.binaryCrossEntropy(probabilities: t, reduction: .unreduced)
        #expect(each.shape == [2, 2])
        for i in 0..<4 { #expect(isClose(each.toArray()[i], e[i])) }
    }

    @Test func vectorBlocksMatchDoubleReference() {
        let p = randomValues(21, seed: 1, 0.01, 0.99), t = randomValues(21, seed: 2, 0, 1)
        let expected = zip(p, t).map { p, t in -(Double(t) * log(Double(p)) + (1 - Double(t)) * log(1 - Double(p))) }
        let each = Tensor(shape: [21], values: p).binaryCrossEntropy(probabilities: Tensor(shape: [21], values: t), reduction: .unreduced)
        expectClose(each.toArray(), expected.map { Float($0) }, tolerance: 1e-5)
    }

    @Test func clippedAtKerasEpsilon() {
        // p = 0 with t = 1 is clipped to 1e-7: -ln(1e-7) = 16.1181; p = 1 with t = 0 to 1 - 1e-7 in Float
        // (0.99999988, 1 - 2^-23): -ln(2^-23) = 15.9424.
        let p = Tensor.variable(shape: [3], values: [0, 1, 1]), t = Tensor(shape: [3], values: [1, 0, 1])
        let each = p.binaryCrossEntropy(probabilities: t, reduction: .unreduced)
        #expect(each.toArray().allSatisfy { $0.isFinite })
        #expect(isClose(each.toArray()[0], -log(Double(Float(1e-7))), 1e-5))
        #expect(isClose(each.toArray()[1], 23 * log(2.0), 1e-5))
        #expect(each.toArray()[2] < 2e-7)
        // No gradient flows through a clipped probability.
        each.sum().backward()
        #expect(p.gradArray == [0, 0, 0])
    }

    @Test func gradients() {
        let t = randomVariable([3, 5], seed: 3, 0, 1)
        for reduction in [LossReduction.mean, .sum, .meanOfSampleSums, .unreduced] {
            checkGradients([randomVariable([3, 5], seed: 4, 0.1, 0.9), t], eps: 1e-3) {
                $0[0].binaryCrossEntropy(probabilities: $0[1], reduction: reduction)
            }
        }
    }
}

/// -log softmax(z)[label] in Double for logits seen as [outer, C, inner], labels in (outer, inner) order.
private func naiveSparseCrossEntropy(_ z: [Float], _ labels: [Int32], outer: Int, classes: Int, inner: Int) -> [Double] {
    var losses: [Double] = []
    for o in 0..<outer {
        for i in 0..<inner {
            let row = (0..<classes).map { Double(z[(o * classes + $0) * inner + i]) }
            let m = row.max() ?? 0
            let lse = m + log(row.map { exp($0 - m) }.reduce(0, +))
            losses.append(lse - row[Int(labels[o * inner + i])])
        }
    }
    return losses
}

@Suite struct SoftmaxCrossEntropyTests {
    @Test func labelsOverRowsMatchReference() {
        let z = randomVariable([5, 11], seed: 1, -3, 3)
        let labels: [Int32] = [0, 10, 3, 3, 7]
        let expected = naiveSparseCrossEntropy(z.toArray(), labels, outer: 5, classes: 11, inner: 1)
        #expect(isClose(z.softmaxCrossEntropy(labels: labels).item, expected.reduce(0, +) / 5, 1e-5))
        let each = z.softmaxCrossEntropy(labels: labels, reduction: .unreduced)
        #expect(each.shape == [5])
        expectClose(each.toArray(), expected.map { Float($0) }, tolerance: 1e-5)
        // Class indices held in a tensor give the same loss.
        let asTensor = Tensor(shape: [5], values: labels.map(Float.init))
        #expect(z.softmaxCrossEntropy(labels: asTensor).item == z.softmaxCrossEntropy(labels: labels).item)
    }

    @Test func handComputedValue() {
        // Logits [0, ln 3] with label 1: softmax [1/4, 3/4], loss -ln(3/4) = 0.28768207.
        #expect(isClose(Tensor(shape: [1, 2], values: [0, logf(3)]).softmaxCrossEntropy(labels: [1]).item, -log(0.75)))
    }

    @Test func perPixelOverChannelAxis() {
        // [N=2, C=4, H=2, W=3]: labels in N, H, W order; mean over all 12 pixels.
        let z = randomVariable([2, 4, 2, 3], seed: 2, -3, 3)
        let labels = (0..<12).map { Int32(($0 * 7) % 4) }
        let expected = naiveSparseCrossEntropy(z.toArray(), labels, outer: 2, classes: 4, inner: 6)
        #expect(isClose(z.softmaxCrossEntropy(labels: labels, axis: 1).item, expected.reduce(0, +) / 12, 1e-5))
        #expect(isClose(z.softmaxCrossEntropy(labels: labels, axis: 1, reduction: .meanOfSampleSums).item, expected.reduce(0, +) / 2, 1e-5))
        #expect(z.softmaxCrossEntropy(labels: labels, axis: 1, reduction: .unreduced).shape == [2, 2, 3])
        checkGradients([z]) { $0[0].softmaxCrossEntropy(labels: labels, axis: 1) }
        checkGradients([z]) { $0[0].softmaxCrossEntropy(labels: labels, axis: 1, reduction: .unreduced) }
    }

    @Test func extremeLogits() {
        // Right class at +1000: loss 0. Wrong class: 1000 - (-1000) = 2000.
        let z = Tensor(shape: [2, 3], values: [1000, -1000, -1000, 1000, -1000, -1000])
        let each = z.softmaxCrossEntropy(labels: [0, 1], reduction: .unreduced).toArray()
        #expect(each.allSatisfy { $0.isFinite })
        expectClose(each, [0, 2000], tolerance: 1e-6)
    }

    @Test func gradientIsSoftmaxMinusOneHot() {
        let z = randomVariable([3, 4], seed: 3)
        let labels: [Int32] = [2, 0, 3]
        z.softmaxCrossEntropy(labels: labels, reduction: .sum).backward()
        let p = z.softmax().toArray(), g = z.gradArray ?? []
        for r in 0..<3 { for c in 0..<4 {
            #expect(abs(g[r * 4 + c] - (p[r * 4 + c] - (c == Int(labels[r]) ? 1 : 0))) < 1e-6)
        } }
        checkGradients([randomVariable([3, 9], seed: 4, -2, 2)]) { $0[0].softmaxCrossEntropy(labels: [8, 0, 4]) }
    }

    @Test func distributionTargets() {
        let z = randomVariable([2, 3, 5], seed: 5, -2, 2)
        // One-hot targets along the last axis equal the sparse version.
        let labels: [Int32] = [4, 0, 2, 2, 1, 3]
        let oneHot = Tensor(shape: [2, 3, 5], values: (0..<30).map { $0 % 5 == Int(labels[$0 / 5]) ? 1 : 0 })
        #expect(isClose(z.softmaxCrossEntropy(targets: oneHot).item, Double(z.softmaxCrossEntropy(labels: labels).item), 1e-6))
        // Soft targets over the channel axis against -sum t log softmax in Double.
        let t = Tensor(shape: [2, 3, 5], values: randomValues(30, seed: 6, 0, 1))
        let logP = z.logSoftmax(axis: 1).toArray().map(Double.init), tv = t.toArray()
        var expected = 0.0
        for i in 0..<30 { expected -= Double(tv[i]) * logP[i] }
        #expect(isClose(z.softmaxCrossEntropy(targets: t, axis: 1).item, expected / 10, 1e-5))
        checkGradients([z, randomVariable([2, 3, 5], seed: 7, 0, 1)]) { $0[0].softmaxCrossEntropy(targets: $0[1], axis: 1) }
        checkGradients([z, randomVariable([2, 3, 5], seed: 8, 0, 1)]) { $0[0].softmaxCrossEntropy(targets: $0[1], reduction: .unreduced) }
    }
}

@Suite struct SmoothL1Tests {
    @Test func handComputedValues() {
        // d = [0.5, -2, 1.5, -0.2]: 0.125, 1.5, 1.0, 0.02; mean 2.645 / 4 = 0.66125.
        let x = Tensor(shape: [2, 2], values: [1.5, -1, 2, 0.3]), t = Tensor(shape: [2, 2], values: [1, 1, 0.5, 0.5])
        #expect(isClose(x.smoothL1(t).item, 0.66125))
        expectClose(x.smoothL1(t, reduction: .unreduced).toArray(), [0.125, 1.5, 1.0, 0.02], tolerance: 1e-6)
        #expect(isClose(x.smoothL1(t, reduction: .meanOfSampleSums).item, 2.645 / 2))
    }

    @Test func gradients() {
        // Differences kept away from the kinks at +-1.
        let x = Tensor.variable(shape: [2, 4], values: [-3, -1.5, -0.6, -0.1, 0.2, 0.8, 1.3, 2.5])
        let t = Tensor.variable(shape: [2, 4], values: [0, 0.1, 0, 0.2, -0.1, 0, 0.1, 0])
        checkGradients([x, t]) { $0[0].smoothL1($0[1]) }
        checkGradients([x, t]) { $0[0].smoothL1($0[1], reduction: .unreduced) }
    }
}

@Suite struct KLDivergenceTests {
    @Test func standardNormalHandComputed() {
        // m = 0, lv = 0: 0. m = 1, lv = ln 2: -0.5 (1 + ln 2 - 1 - 2) = 1 - 0.5 ln 2 = 0.65342641.
        // Two samples [[0, 1], [0, 1]]: per-sample sums 0.6534, mean over the batch 0.6534.
        let m = Tensor(shape: [2, 2], values: [0, 1, 0, 1]), lv = Tensor(shape: [2, 2], values: [0, logf(2), 0, logf(2)])
        #expect(isClose(Tensor.klDivergenceStandardNormal(mean: m, logVariance: lv).item, 1 - 0.5 * log(2.0)))
        #expect(isClose(Tensor.klDivergenceStandardNormal(mean: m, logVariance: lv, reduction: .mean).item, (1 - 0.5 * log(2.0)) / 2))
        #expect(isClose(Tensor.klDivergenceStandardNormal(mean: m, logVariance: lv, reduction: .sum).item, 2 - log(2.0)))
    }

    @Test func generalFormMatchesTextbookAndReducesToStandardNormal() {
        let (m1, lv1, m2, lv2) = (randomVariable([3, 4], seed: 1), randomVariable([3, 4], seed: 2),
                                  randomVariable([3, 4], seed: 3), randomVariable([3, 4], seed: 4))
        // KL = ln(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2 with s = e^(lv / 2).
        var expected = 0.0
        for i in 0..<12 {
            let s1 = exp(Double(lv1.toArray()[i]) / 2), s2 = exp(Double(lv2.toArray()[i]) / 2)
            let d = Double(m1.toArray()[i] - m2.toArray()[i])
            expected += log(s2 / s1) + (s1 * s1 + d * d) / (2 * s2 * s2) - 0.5
        }
        let kl = Tensor.klDivergenceDiagonalGaussians(mean1: m1, logVariance1: lv1, mean2: m2, logVariance2: lv2)
        #expect(isClose(kl.item, expected / 3, 1e-5))
        let zero = Tensor(zeros: [3, 4])
        #expect(isClose(Tensor.klDivergenceDiagonalGaussians(mean1: m1, logVariance1: lv1, mean2: zero, logVariance2: zero).item,
                        Double(Tensor.klDivergenceStandardNormal(mean: m1, logVariance: lv1).item), 1e-6))
        // Non-negative, and 0 between identical distributions.
        #expect(Tensor.klDivergenceDiagonalGaussians(mean1: m1, logVariance1: lv1, mean2: m2, logVariance2: lv2,
                                                     reduction: .unreduced).toArray().allSatisfy { $0 >= 0 })
        #expect(abs(Tensor.klDivergenceDiagonalGaussians(mean1: m1, logVariance1: lv1, mean2: m1, logVariance2: lv1).item) < 1e-6)
    }

    @Test func gradients() {
        checkGradients([randomVariable([2, 3], seed: 5), randomVariable([2, 3], seed: 6)]) {
            Tensor.klDivergenceStandardNormal(mean: $0[0], logVariance: $0[1])
        }
        checkGradients([randomVariable([2, 3], seed: 5), randomVariable([2, 3], seed: 6)]) {
            Tensor.klDivergenceStandardNormal(mean: $0[0], logVariance: $0[1], reduction: .unreduced)
        }
        checkGradients([randomVariable([2, 3], seed: 7), randomVariable([2, 3], seed: 8),
                        randomVariable([2, 3], seed: 9), randomVariable([2, 3], seed: 10)]) {
            Tensor.klDivergenceDiagonalGaussians(mean1: $0[0], logVariance1: $0[1], mean2: $0[2], logVariance2: $0[3])
        }
    }
}

/// Mask R-CNN's L_mask before normalisation: only the RoI's own class's channel counts.
@Suite struct SelectedChannelBCETests {
    @Test func valueByHandAndOtherChannelsUntouched() {
        // Two RoIs, three classes, 2x2 masks; RoI 0 reads channel 2, RoI 1 channel 1.
        let z = randomVariable([2, 3, 2, 2], seed: 5, -3, 3)
        let t = Tensor(shape: [2, 2, 2], values: [1, 0, 0, 1, 1, 1, 0, 0])
        let classes: [Int32] = [2, 1]
        let loss = z.selectedChannelBCESum(classes: classes, targets: t)
        var expected = 0.0
        for r in 0..<2 {
            for j in 0..<4 {
                let x = Double(z.data[(r * 3 + Int(classes[r])) * 4 + j]), y = Double(t.data[r * 4 + j])
                let p = 1 / (1 + exp(-x))
                expected -= y * log(p) + (1 - y) * log(1 - p)
            }
        }
        #expect(isClose(loss.item, expected, 1e-5))
        loss.backward()
        let g = z.gradArray ?? []
        for r in 0..<2 {
            for c in 0..<3 where c != Int(classes[r]) {
                #expect((0..<4).allSatisfy { g[(r * 3 + c) * 4 + $0] == 0 }, "RoI \(r) channel \(c) received a gradient")
            }
        }
    }

    @Test func gradientMatchesFiniteDifferences() {
        let z = randomVariable([3, 4, 3, 3], seed: 8, -2, 2)
        let t = Tensor(shape: [3, 3, 3], values: randomValues(27, seed: 9, 0, 1).map { $0 < 0.5 ? 0 : 1 })
        checkGradients([z]) { $0[0].selectedChannelBCESum(classes: [3, 0, 1], targets: t) }
    }
}
