import Testing
@testable import StarlingCore

/// Per-channel batch mean and biased variance in Double of x [N, C, inner...].
private func channelMoments(_ x: [Float], n: Int, c: Int) -> (mean: [Double], variance: [Double]) {
    let inner = x.count / (n * c)
    var mean = [Double](repeating: 0, count: c), variance = [Double](repeating: 0, count: c)
    for k in 0..<c {
        var values: [Double] = []
        for s in 0..<n { for i in 0..<inner { values.append(Double(x[(s * c + k) * inner + i])) } }
        mean[k] = values.reduce(0, +) / Double(values.count)
        variance[k] = values.map { ($0 - mean[k]) * ($0 - mean[k]) }.reduce(0, +) / Double(values.count)
    }
    return (mean, variance)
}

/// gamma (x - mean) / sqrt(variance + eps) + beta in Double.
private func naiveNormalize(_ x: [Float], n: Int, c: Int, mean: [Double], variance: [Double],
                            gamma: [Float], beta: [Float], epsilon: Double) -> [Float] {
    let inner = x.count / (n * c)
    return x.indices.map { j in
        let k = (j / inner) % c
        return Float(Double(gamma[k]) * (Double(x[j]) - mean[k]) / (variance[k] + epsilon).squareRoot() + Double(beta[k]))
    }
}

private func constants(_ values: [Float]) -> Tensor { Tensor(shape: [values.count], values: values) }

@Suite struct BatchNormTests {
    @Test func trainingNormalisesEachChannel() {
        // Channel k of x has mean 3k - 2 and a spread that grows with k.
        let (n, c, inner) = (4, 3, 10)
        let noise = randomValues(n * c * inner, seed: 1)
        let values = noise.indices.map { j -> Float in let k = (j / inner) % c; return Float(3 * k - 2) + Float(k + 1) * noise[j] }
        let x = Tensor(shape: [n, c, 2, 5], values: values)
        let y = x.batchNorm(gamma: constants([1, 1, 1]), beta: constants([0, 0, 0]),
                            runningMean: Tensor(zeros: [c]), runningVar: constants([1, 1, 1]), training: true)
        let (mean, variance) = channelMoments(y.toArray(), n: n, c: c)
        let (_, inputVariance) = channelMoments(values, n: n, c: c)
        for k in 0..<c {
            #expect(abs(mean[k]) < 1e-6)
            // Exactly var / (var + eps) with eps = 1e-3.
            #expect(abs(variance[k] - inputVariance[k] / (inputVariance[k] + 1e-3)) < 1e-5)
            #expect(abs(variance[k] - 1) < 1e-2)
        }
    }

    @Test func trainingMatchesDoubleReferenceAndUpdatesRunningStatistics() {
        let (n, c) = (3, 4)
        let x = randomVariable([n, c, 3, 3], seed: 2, -2, 3)
        let gamma = randomValues(c, seed: 3, 0.5, 2), beta = randomValues(c, seed: 4)
        let rm0 = randomValues(c, seed: 5), rv0 = randomValues(c, seed: 6, 0.5, 2)
        let runningMean = constants(rm0), runningVar = constants(rv0)
        let y = x.batchNorm(gamma: constants(gamma), beta: constants(beta), runningMean: runningMean,
                            runningVar: runningVar, training: true, momentum: 0.9, epsilon: 1e-3)
        let (mean, variance) = channelMoments(x.toArray(), n: n, c: c)
        expectClose(y.toArray(), naiveNormalize(x.toArray(), n: n, c: c, mean: mean, variance: variance,
                                                gamma: gamma, beta: beta, epsilon: 1e-3), tolerance: 1e-5)
        // m = 3 * 9 = 27 values per channel; the running variance averages the unbiased 27/26 * variance.
        expectClose(runningMean.toArray(), (0..<c).map { Float(Double(rm0[$0]) * 0.9 + mean[$0] * 0.1) }, tolerance: 1e-6)
        expectClose(runningVar.toArray(), (0..<c).map { Float(Double(rv0[$0]) * 0.9 + variance[$0] * 27 / 26 * 0.1) }, tolerance: 1e-6)

        // Keras 3's convention: the biased variance.
        let rvBiased = constants(rv0)
        _ = x.batchNorm(gamma: constants(gamma), beta: constants(beta), runningMean: constants(rm0), runningVar: rvBiased,
                        training: true, momentum: 0.9, runningVarianceEstimator: .biased)
        expectClose(rvBiased.toArray(), (0..<c).map { Float(Double(rv0[$0]) * 0.9 + variance[$0] * 0.1) }, tolerance: 1e-6)
    }

    @Test func defaultMomentumIsKeras() {
        // One channel, values [1, 3]: mean 2, biased variance 1, unbiased 2.
        // running mean 0 -> 0 * 0.99 + 2 * 0.01 = 0.02; running variance 1 -> 0.99 + 2 * 0.01 = 1.01.
        let rm = Tensor(zeros: [1]), rv = constants([1])
        let y = Tensor(shape: [2, 1], values: [1, 3]).batchNorm(gamma: constants([1]), beta: constants([0]),
                                                                 runningMean: rm, runningVar: rv, training: true)
        #expect(abs(rm.item - 0.02) < 1e-7)
        #expect(abs(rv.item - 1.01) < 1e-6)
        // (1 - 2) / sqrt(1 + 0.001) = -0.9995003...
        expectClose(y.toArray(), [-0.99950037, 0.99950037], tolerance: 1e-6)
    }

    @Test func evaluationUsesRunningStatisticsAndLeavesThemAlone() {
        let (n, c) = (2, 3)
        let x = randomVariable([n, c, 4], seed: 7)
        let gamma = randomValues(c, seed: 8, 0.5, 2), beta = randomValues(c, seed: 9)
        let rm0: [Float] = [0.5, -1, 2], rv0: [Float] = [4, 0.25, 1]
        let runningMean = constants(rm0), runningVar = constants(rv0)
        let y = x.batchNorm(gamma: constants(gamma), beta: constants(beta), runningMean: runningMean,
                            runningVar: runningVar, training: false)
        expectClose(y.toArray(), naiveNormalize(x.toArray(), n: n, c: c, mean: rm0.map(Double.init), variance: rv0.map(Double.init),
                                                gamma: gamma, beta: beta, epsilon: 1e-3), tolerance: 1e-6)
        #expect(runningMean.toArray() == rm0)
        #expect(runningVar.toArray() == rv0)
    }

    @Test func trainingGradients() {
        for shape in [[5, 3], [3, 2, 3, 4], [2, 3, 9]] {
            let c = shape[1]
            checkGradients([randomVariable(shape, seed: 10, -2, 2), randomVariable([c], seed: 11, 0.5, 2), randomVariable([c], seed: 12)]) {
                $0[0].batchNorm(gamma: $0[1], beta: $0[2], runningMean: Tensor(zeros: [c]), runningVar: constants(Array(repeating: 1, count: c)),
                                training: true)
            }
        }
    }

    @Test func evaluationGradients() {
        checkGradients([randomVariable([2, 3, 5], seed: 13), randomVariable([3], seed: 14, 0.5, 2), randomVariable([3], seed: 15)]) {
            $0[0].batchNorm(gamma: $0[1], beta: $0[2], runningMean: constants([0.1, -0.2, 0.3]), runningVar: constants([0.5, 1, 2]),
                            training: false)
        }
    }

    @Test func fusedELUGradients() {
        for (shape, training) in [([3, 2, 3, 4], true), ([5, 3], true), ([2, 3, 5], false)] {
            let c = shape[1]
            checkGradients([randomVariable(shape, seed: 20, -2, 2), randomVariable([c], seed: 21, 0.5, 2), randomVariable([c], seed: 22)]) {
                $0[0].batchNormELU(gamma: $0[1], beta: $0[2], runningMean: constants(Array(repeating: 0.1, count: c)),
                                   runningVar: constants(Array(repeating: 1.5, count: c)), training: training)   // alpha 1: no kink at 0
            }
        }
    }

    /// The fused op gives batchNorm followed by elu bit for bit: outputs, running statistics and all three gradients.
    @Test func fusedELUEqualsBatchNormThenELU() {
        for (training, alpha) in [(true, Float(1)), (false, 1), (true, 0.7)] {
            func run(fused: Bool) -> [[Float]] {
                let x = randomVariable([4, 3, 5, 6], seed: 30, -3, 3), gamma = randomVariable([3], seed: 31, 0.5, 2), beta = randomVariable([3], seed: 32)
                let mean = constants([0.2, -0.1, 0]), variance = constants([1, 2, 0.5])
                let y = fused
                    ? x.batchNormELU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training, alpha: alpha)
                    : x.batchNorm(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training).elu(alpha: alpha)
                let values = y.toArray()
                (y * randomVariable([4, 3, 5, 6], seed: 33)).sum().backward()
                return [values, mean.toArray(), variance.toArray(), x.gradArray ?? [], gamma.gradArray ?? [], beta.gradArray ?? []]
            }
            #expect(run(fused: true) == run(fused: false), "training \(training), alpha \(alpha)")
        }
    }

    /// The fused leaky ReLU (darknet's blocks) gives batchNorm followed by leakyRelu bit for bit, in NCHW and (against the
    /// blocked unfused pair) in the blocked layout, and its gradients pass finite differences.
    @Test func fusedLeakyReLUEqualsBatchNormThenLeakyReLU() {
        for training in [true, false] {
            for layout in [ChannelLayout.planar, .blocked] {
                func run(fused: Bool) -> [[Float]] {
                    let x = randomVariable([4, 8, 5, 6], seed: 34, -3, 3), gamma = randomVariable([8], seed: 35, 0.5, 2)
                    let beta = randomVariable([8], seed: 36)
                    let mean = constants([0.2, -0.1, 0, 0.3, 0.1, -0.2, 0, 0.05]), variance = constants([1, 2, 0.5, 1, 1.5, 0.7, 1, 2])
                    let input = layout == .blocked ? x.blocked8() : x
                    let y = fused
                        ? input.batchNormLeakyReLU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training,
                                                   slope: 0.1, layout: layout)
                        : input.batchNorm(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: training,
                                          layout: layout).leakyRelu(slope: 0.1)
                    let planar = layout == .blocked ? y.unblocked() : y
                    let values = planar.toArray()
                    (planar * randomVariable([4, 8, 5, 6], seed: 37)).sum().backward()
                    return [values, mean.toArray(), variance.toArray(), x.gradArray ?? [], gamma.gradArray ?? [], beta.gradArray ?? []]
                }
                #expect(run(fused: true) == run(fused: false), "training \(training), \(layout)")
            }
        }
        checkGradients([randomVariable([3, 2, 3, 4], seed: 38, -2, 2), randomVariable([2], seed: 39, 0.5, 2), randomVariable([2], seed: 40)]) {
            $0[0].batchNormLeakyReLU(gamma: $0[1], beta: $0[2], runningMean: constants([0.1, 0.1]), runningVar: constants([1.5, 1.5]),
                                     training: true, slope: 0.1)
        }
    }

    /// Channels are shared over the threads (`BLAS.setThreadCount`); each channel's sums keep their order, so one and
    /// two threads give the same outputs, statistics and gradients bit for bit. 4 x 6 x 60 x 50 is enough work to split.
    @Test func threadCountDoesNotChangeAnyBit() {
        func run() -> [[Float]] {
            let x = randomVariable([4, 6, 60, 50], seed: 40, -3, 3), gamma = randomVariable([6], seed: 41, 0.5, 2)
            let beta = randomVariable([6], seed: 42)
            let mean = constants(Array(repeating: 0.1, count: 6)), variance = constants(Array(repeating: 1.5, count: 6))
            let y = x.batchNormELU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: true)
            let values = y.toArray()
            (y * randomVariable([4, 6, 60, 50], seed: 43)).sum().backward()
            return [values, mean.toArray(), variance.toArray(), x.gradArray ?? [], gamma.gradArray ?? [], beta.gradArray ?? []]
        }
        let one = BLAS.withThreadCount(1, run)
        #expect(BLAS.withThreadCount(2, run) == one)
    }

    /// Two "ranks" each holding half of a batch, with a hook that adds the other half's statistics (recorded in a
    /// first pass), must reproduce the full batch's output, input gradient and (summed) gamma and beta gradients.
    @Test func crossReplicaHookReproducesTheFullBatch() {
        let (c, inner) = (3, 6)
        let full = randomValues(4 * c * inner, seed: 16, -2, 3)
        let weights = randomValues(full.count, seed: 17)
        let gammaValues = randomValues(c, seed: 18, 0.5, 2), betaValues = randomValues(c, seed: 19)
        let half = full.count / 2

        /// Runs batch norm on `values` and backpropagates sum(w * y); returns y, dx, dgamma, dbeta.
        func run(_ values: [Float], _ w: [Float], hook: CrossReplicaSum?) -> [[Float]] {
            let x = Tensor.variable(shape: [values.count / (c * inner), c, inner], values: values)
            let gamma = Tensor.variable(shape: [c], values: gammaValues), beta = Tensor.variable(shape: [c], values: betaValues)
            let y = x.batchNorm(gamma: gamma, beta: beta, runningMean: Tensor(zeros: [c]), runningVar: constants([1, 1, 1]),
                                training: true, crossReplicaSum: hook)
            y.backward(seed: w)
            return [y.toArray(), x.gradArray ?? [], gamma.gradArray ?? [], beta.gradArray ?? []]
        }
        let reference = run(full, weights, hook: nil)

        func part(_ a: [Float], _ r: Int) -> [Float] { Array(a[(r * half)..<(r * half + half)]) }
        func isForward(_ b: UnsafeMutableBufferPointer<Double>) -> Bool { b.count == 2 * c + 1 }

        // Pass 1: each half's local forward sums [sum x | sum x^2 | m].
        var forwardBuffers: [[Double]] = [[], []], backwardBuffers: [[Double]] = [[], []]
        for r in 0..<2 {
            _ = run(part(full, r), part(weights, r), hook: { b in if isForward(b) { forwardBuffers[r] = Array(b) } })
        }
        // Pass 2: global forward sums; record each half's local backward sums, which depend on the global statistics.
        for r in 0..<2 {
            _ = run(part(full, r), part(weights, r), hook: { b in
                if isForward(b) { for i in b.indices { b[i] += forwardBuffers[1 - r][i] } } else { backwardBuffers[r] = Array(b) }
            })
        }
        // Pass 3: global sums both ways, as an allreduce would give.
        var results: [[[Float]]] = []
        for r in 0..<2 {
            results.append(run(part(full, r), part(weights, r), hook: { b in
                let other = isForward(b) ? forwardBuffers[1 - r] : backwardBuffers[1 - r]
                for i in b.indices { b[i] += other[i] }
            }))
        }
        expectClose(results[0][0] + results[1][0], reference[0], tolerance: 1e-5)
        expectClose(results[0][1] + results[1][1], reference[1], tolerance: 1e-4)
        expectClose(zip(results[0][2], results[1][2]).map { $0 + $1 }, reference[2], tolerance: 1e-4)
        expectClose(zip(results[0][3], results[1][3]).map { $0 + $1 }, reference[3], tolerance: 1e-4)
        // Without the hook a half is normalised by its own statistics, which differ.
        let alone = run(part(full, 0), part(weights, 0), hook: nil)
        #expect(zip(alone[0], reference[0]).contains { abs($0 - $1) > 1e-2 })
    }
}
