import Testing
@testable import StarlingCore

/// x's values through an op whose backward reads only its gradient, as a convolution's output is: the kind of input
/// in-place activated batch norm may give back (`batchNormLeakyReLU(..., keepingInput: false)`).
private func gradientOnlyCopy(_ x: Tensor) -> Tensor {
    let s = FloatStorage(count: x.count)
    s.copy(from: x.storage)
    return Tensor.result(shape: x.shape, storage: s, inputs: [x], backwardReadsResult: false) { out in
        let (g, dx) = (out.grad, x.grad)
        for i in 0..<x.count { dx[i] += g[i] }
    }
}

/// Largest |a - b| over the largest |b| (at least `floor`).
private func relativeDifference(_ a: [Float], _ b: [Float], floor: Float = 1e-3) -> Float {
    guard a.count == b.count else { return .infinity }
    let scale = max(b.map(abs).max() ?? 0, floor)
    return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
}

/// Each leaf's gradient against the reference, relative to its largest, but the convolution bias's (leaf 2), which is
/// zero up to rounding in front of a batch norm in training (the normalisation removes the mean): relative to the
/// largest gradient of any leaf.
private func gradientDifferences(_ a: [[Float]], _ b: [[Float]]) -> [Float] {
    let largest = b.joined().map(abs).max() ?? 1
    return a.indices.map { k in relativeDifference(a[k], b[k], floor: k == 2 ? largest : 1e-3) }
}

/// Batch norm + leaky ReLU with its input given back after forward, backward recovering x - mean from the output
/// (Rota Bulo et al., CVPR 2018): against the same op keeping its input, and by finite differences.
@Suite struct InPlaceActivatedBatchNormTests {
    /// Planar (width 0, behind an op that reads only its gradient) and in 8- and 16-channel blocks behind a blocked
    /// convolution, training and evaluation: the same output bits and running statistics, the input's values released,
    /// and every gradient (x, the convolution's weights and bias, gamma, beta) within 1e-5 of its largest: the inverted
    /// form computes z = y / slope and (z - beta) / scale where the kept form reads x, so they agree to rounding, not bits.
    @Test(arguments: [0, 8, 16], [true, false]) func matchesTheKeptInput(width: Int, training: Bool) {
        let x = randomVariable([2, 16, 6, 10], seed: 90, -1, 2), w = randomVariable([32, 16, 3, 3], seed: 91), b = randomVariable([32], seed: 92)
        let gamma = randomVariable([32], seed: 93, 0.5, 1.5), beta = randomVariable([32], seed: 94)
        for k in stride(from: 0, to: 32, by: 3) { gamma.data[k] = -gamma.data[k] }    // negative gammas invert too
        let leaves = [x, w, b, gamma, beta]
        func pass(keepingInput: Bool) -> (values: [Float], gradients: [[Float]], statistics: [Float], released: Bool) {
            for leaf in leaves { leaf.clearGrad() }
            let mean = Tensor(shape: [32], values: randomValues(32, seed: 95))
            let variance = Tensor(shape: [32], values: randomValues(32, seed: 96, 0.5, 2))
            let input = width == 0
                ? gradientOnlyCopy(x.conv2d(w, bias: b, padding: .same))
                : x.blocked(width: width).conv2dBlocked(w, bias: b, stride: (1, 1), padding: .same, width: width)
            let y = input.batchNormLeakyReLU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training, slope: 0.1,
                                             layout: width == 0 ? .planar : .blocked, keepingInput: keepingInput)
            let released = input.valuesReleased
            let planar = width == 0 ? y : y.unblocked()
            (planar * Tensor(shape: planar.shape, values: randomValues(planar.count, seed: 97))).sum().backward()
            return (planar.toArray(), leaves.map { $0.gradArray ?? [] }, mean.toArray() + variance.toArray(), released)
        }
        let (inverted, kept) = (pass(keepingInput: false), pass(keepingInput: true))
        #expect(inverted.released && !kept.released)
        #expect(inverted.values == kept.values && inverted.values.contains { $0 < 0 } && inverted.values.contains { $0 > 0 })
        #expect(inverted.statistics == kept.statistics)
        for (k, d) in gradientDifferences(inverted.gradients, kept.gradients).enumerated() {
            #expect(!inverted.gradients[k].isEmpty)
            #expect(d < 1e-5, "gradient \(k): \(d) of its largest")
        }
    }

    /// Slope 0 is batch norm then ReLU (VGG's blocks) as one op: the two ops' output values, running statistics and
    /// every gradient to the bit (planar and in 8- and 16-channel blocks, training and evaluation), with the input kept
    /// even when offered (`keepingInput: false`: a ReLU's output does not determine the values it zeroed). With
    /// `recomputingInput` (the convolution run again in backward) the input is given back after forward, and the
    /// gradients are still the two ops' to the bit.
    @Test(arguments: [0, 8, 16], [true, false]) func reluIsBatchNormThenReLU(width: Int, training: Bool) {
        let x = randomVariable([2, 16, 6, 10], seed: 130, -1, 2), w = randomVariable([16, 16, 3, 3], seed: 131), b = randomVariable([16], seed: 132)
        let gamma = randomVariable([16], seed: 133, 0.5, 1.5), beta = randomVariable([16], seed: 134)
        for k in stride(from: 0, to: 16, by: 3) { gamma.data[k] = -gamma.data[k] }
        let leaves = [x, w, b, gamma, beta]
        func convolution() -> Tensor {
            width == 0 ? gradientOnlyCopy(x.conv2d(w, bias: b, padding: .same))
                       : x.blocked(width: width).conv2dBlocked(w, bias: b, stride: (1, 1), padding: .same, width: width)
        }
        func pass(fused: Bool, recomputing: Bool = false) -> (values: [Float], gradients: [[Float]], statistics: [Float], released: Bool) {
            for leaf in leaves { leaf.clearGrad() }
            let mean = Tensor(shape: [16], values: randomValues(16, seed: 135))
            let variance = Tensor(shape: [16], values: randomValues(16, seed: 136, 0.5, 2))
            let input = convolution()
            let layout: ChannelLayout = width == 0 ? .planar : .blocked
            let y = fused
                ? input.batchNormLeakyReLU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training, slope: 0,
                                           layout: layout, keepingInput: false,
                                           recomputingInput: recomputing ? { GradMode.disabled { convolution() }.storage } : nil)
                : input.batchNorm(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training, layout: layout).relu()
            let released = input.valuesReleased
            let planar = width == 0 ? y : y.unblocked()
            (planar * Tensor(shape: planar.shape, values: randomValues(planar.count, seed: 137))).sum().backward()
            return (planar.toArray(), leaves.map { $0.gradArray ?? [] }, mean.toArray() + variance.toArray(), released)
        }
        let (fused, twoOps, recomputed) = (pass(fused: true), pass(fused: false), pass(fused: true, recomputing: true))
        #expect(!fused.released && recomputed.released)
        #expect(fused.values == twoOps.values && fused.values.contains(0) && fused.values.contains { $0 > 0 })
        #expect(fused.statistics == twoOps.statistics && recomputed.values == twoOps.values && recomputed.statistics == twoOps.statistics)
        for k in leaves.indices {
            #expect(!fused.gradients[k].isEmpty && fused.gradients[k] == twoOps.gradients[k], "gradient \(k)")
            #expect(recomputed.gradients[k] == twoOps.gradients[k], "gradient \(k), the input computed again")
        }
    }

    /// The residual form (`batchNormLeakyReLUAdding`, darknet's shortcut), y recovered as the sum minus the residual:
    /// the same output bits, the input released, every gradient (the residual's included) within 1e-5 of its largest.
    @Test(arguments: [0, 8]) func residualFormMatchesTheKeptInput(width: Int) {
        let x = randomVariable([2, 16, 6, 10], seed: 120, -1, 2), w = randomVariable([16, 16, 3, 3], seed: 121)
        let b = randomVariable([16], seed: 122), h = randomVariable([2, 16, 6, 10], seed: 123)
        let gamma = randomVariable([16], seed: 124, 0.5, 1.5), beta = randomVariable([16], seed: 125)
        let leaves = [x, w, b, h, gamma, beta]
        func pass(keepingInput: Bool) -> (values: [Float], gradients: [[Float]], released: Bool) {
            for leaf in leaves { leaf.clearGrad() }
            let input = width == 0
                ? gradientOnlyCopy(x.conv2d(w, bias: b, padding: .same))
                : x.blocked(width: width).conv2dBlocked(w, bias: b, stride: (1, 1), padding: .same, width: width)
            let residual = width == 0 ? h * 1 : h.blocked(width: width)
            let y = input.batchNormLeakyReLUAdding(residual, gamma: gamma, beta: beta, runningMean: Tensor(zeros: [16]),
                                                   runningVar: Tensor(shape: [16], values: [Float](repeating: 1, count: 16)), training: true,
                                                   slope: 0.1, layout: width == 0 ? .planar : .blocked, keepingInput: keepingInput)
            let released = input.valuesReleased
            let planar = width == 0 ? y : y.unblocked()
            (planar * Tensor(shape: planar.shape, values: randomValues(planar.count, seed: 126))).sum().backward()
            return (planar.toArray(), leaves.map { $0.gradArray ?? [] }, released)
        }
        let (inverted, kept) = (pass(keepingInput: false), pass(keepingInput: true))
        #expect(inverted.released && !kept.released && inverted.values == kept.values)
        for (k, d) in gradientDifferences(inverted.gradients, kept.gradients).enumerated() {
            #expect(!inverted.gradients[k].isEmpty)
            #expect(d < 1e-5, "gradient \(k): \(d) of its largest")
        }
    }

    /// The inverted backward against central finite differences, in x, gamma and beta (beta large against gamma in one
    /// channel, still above the guard: the cancellation in z - beta the guard bounds). A step of 1e-3, so that few
    /// differences straddle the leaky ReLU's kink (1e-2 did, at one input in evaluation).
    @Test(arguments: [true, false]) func finiteDifferences(training: Bool) {
        let x = randomVariable([3, 4, 3, 5], seed: 100, -1, 2)
        let gamma = Tensor.variable(shape: [4], values: [1.2, -0.7, 0.3, 0.9]), beta = Tensor.variable(shape: [4], values: [0.1, -0.4, 2.5, 0])
        checkGradients([x, gamma, beta], eps: 1e-3, rtol: 2e-2, atol: 2e-3) {
            let input = gradientOnlyCopy($0[0])
            let y = input.batchNormLeakyReLU(gamma: $0[1], beta: $0[2], runningMean: Tensor(shape: [4], values: [0.1, 0, -0.2, 0.3]),
                                             runningVar: Tensor(shape: [4], values: [1.5, 0.8, 1, 2]), training: training, slope: 0.1,
                                             keepingInput: false)
            if GradMode.isEnabled { #expect(input.valuesReleased) }
            return y
        }
        // Slope 0 (ReLU), which keeps its input.
        checkGradients([x, gamma, beta], eps: 1e-3, rtol: 2e-2, atol: 2e-3) {
            $0[0].batchNormLeakyReLU(gamma: $0[1], beta: $0[2], runningMean: Tensor(shape: [4], values: [0.1, 0, -0.2, 0.3]),
                                     runningVar: Tensor(shape: [4], values: [1.5, 0.8, 1, 2]), training: training, slope: 0, keepingInput: false)
        }
        // The residual form, in x, the residual, gamma and beta.
        let h = randomVariable([3, 4, 3, 5], seed: 101)
        checkGradients([x, h, gamma, beta], eps: 1e-3, rtol: 2e-2, atol: 2e-3) {
            let input = gradientOnlyCopy($0[0])
            let y = input.batchNormLeakyReLUAdding($0[1] * 1, gamma: $0[2], beta: $0[3], runningMean: Tensor(shape: [4], values: [0.1, 0, -0.2, 0.3]),
                                                   runningVar: Tensor(shape: [4], values: [1.5, 0.8, 1, 2]), training: training, slope: 0.1,
                                                   keepingInput: false)
            if GradMode.isEnabled { #expect(input.valuesReleased) }
            return y
        }
    }

    /// A channel whose gamma is too small to invert (here 1e-4, beta 0.5) keeps the input: the kept form's gradients to
    /// the bit. So does an input that is a leaf or whose own op reads its values in backward.
    @Test func keepsTheInputWhereItCannotInvert() {
        let x = randomVariable([2, 8, 4, 4], seed: 110, -1, 2)
        var gammas = randomValues(8, seed: 111, 0.5, 1.5)
        gammas[3] = 1e-4
        let gamma = Tensor.variable(shape: [8], values: gammas), beta = Tensor.variable(shape: [8], values: [Float](repeating: 0.5, count: 8))
        func pass(keepingInput: Bool, producer: (Tensor) -> Tensor) -> (gradients: [[Float]], released: Bool) {
            for leaf in [x, gamma, beta] { leaf.clearGrad() }
            let input = producer(x)
            let y = input.batchNormLeakyReLU(gamma: gamma, beta: beta, runningMean: Tensor(zeros: [8]), runningVar: Tensor(shape: [8], values: [Float](repeating: 1, count: 8)),
                                             training: true, slope: 0.1, keepingInput: keepingInput)
            (y * Tensor(shape: y.shape, values: randomValues(y.count, seed: 112))).sum().backward()
            return ([x, gamma, beta].map { $0.gradArray ?? [] }, input.valuesReleased)
        }
        let tiny = pass(keepingInput: false, producer: gradientOnlyCopy), kept = pass(keepingInput: true, producer: gradientOnlyCopy)
        #expect(!tiny.released && tiny.gradients == kept.gradients)
        gammas[3] = 0.8
        gamma.data[3] = 0.8
        #expect(pass(keepingInput: false, producer: gradientOnlyCopy).released)
        #expect(!pass(keepingInput: false, producer: { $0 }).released)            // a leaf
        #expect(!pass(keepingInput: false, producer: { $0 * 1 }).released)        // an op that may read its output
    }
}
