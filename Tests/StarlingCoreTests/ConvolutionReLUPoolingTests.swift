import Testing
@testable import StarlingCore

/// The convolution, its ReLU and 2x2/2 max-pooling as one op (`conv2dBlockedReLUMaxPool2x2`: the pooled values and 2-bit
/// window indices kept instead of the full-size rectified output) against the two ops it replaces
/// (`conv2dBlockedReLU(...).maxPool2x2Blocked()`): the same convolution and the same first maximum in row-major order,
/// so values and every gradient to the bit; and against finite differences.
@Suite struct ConvolutionReLUPoolingTests {
    private func side(_ channels: Int, _ preferred: Int) -> Int { channels % preferred == 0 ? preferred : 8 }

    /// Runs `f` on fresh copies of `inputs`, back-propagates fixed random weights, and returns the output (NCHW values)
    /// and each input's gradient.
    private func run(_ inputs: [Tensor], _ f: ([Tensor]) -> Tensor) -> (output: [Float], gradients: [[Float]]) {
        let copies = inputs.map { Tensor.variable(shape: $0.shape, values: $0.toArray()) }
        let out = f(copies)
        out.backward(seed: randomValues(out.count, seed: 78, 0.5, 1.5))
        return (out.toArray(), copies.map { $0.gradArray ?? [] })
    }

    /// SSD300's conv1_2 (a blocked input, same padding) and its first layer's NCHW input of 3 channels, 16 -> 32 into
    /// 16-wide blocks, a strided valid convolution, 8 output channels in a 16-wide pass; and a constant input under valid
    /// padding, whose convolution is constant over each map: every window's four inputs tie, positive in some channels
    /// and zero after the ReLU in others (the first of the four takes the gradient, as `maxPool2d`'s argmax).
    @Test(arguments: [8, 16]) func matchesTheTwoOps(preferred: Int) throws {
        for (cin, cout, stride, padding, h, w, constant) in [(16, 16, 1, Padding.same, 6, 26, false), (3, 16, 1, Padding.same, 8, 10, false),
                                                             (16, 32, 1, Padding.same, 4, 6, false), (8, 16, 2, Padding.valid, 9, 13, false),
                                                             (16, 8, 1, Padding.same, 6, 4, false), (8, 16, 1, Padding.valid, 6, 8, true)] {
            let blockedInput = cin % 8 == 0
            let x = constant ? Tensor.variable(shape: [2, cin, h, w], values: [Float](repeating: 0.5, count: 2 * cin * h * w))
                             : randomVariable([2, cin, h, w], seed: 91)
            let weight = randomVariable([cout, cin, 3, 3], seed: 92), b = randomVariable([cout], seed: 93)
            let (inWidth, outWidth) = (side(cin, preferred), side(cout, preferred))
            try #require(Tensor.canConvolveBlocked(input: x.shape, weight: weight.shape, stride: (stride, stride), padding: padding,
                                                   blockedInput: blockedInput, blockedOutput: true, width: outWidth, inputWidth: inWidth))
            func input(_ t: Tensor) -> Tensor { blockedInput ? t.blocked(width: inWidth) : t }
            let twoOps = run([x, weight, b]) {
                input($0[0]).conv2dBlockedReLU($0[1], bias: $0[2], stride: (stride, stride), padding: padding, width: outWidth)
                    .maxPool2x2Blocked().unblocked()
            }
            let fused = run([x, weight, b]) {
                let y = input($0[0]).conv2dBlockedReLUMaxPool2x2($0[1], bias: $0[2], stride: (stride, stride), padding: padding, width: outWidth)
                #expect(y.shape[4] == outWidth)
                return y.unblocked()
            }
            let what = "\(cin) -> \(cout), stride \(stride), \(h) x \(w)\(constant ? ", constant" : ""), width \(preferred)"
            #expect(twoOps.output.contains { $0 == 0 } && twoOps.output.contains { $0 > 0 }, "\(what): both sides of the ReLU")
            #expect(fused.output == twoOps.output, "\(what): values")
            for k in 0..<3 {
                #expect(fused.gradients[k] == twoOps.gradients[k] && !fused.gradients[k].isEmpty, "\(what): gradient \(k)")
            }
        }
    }

    /// Odd maps: `.valid` drops the last row or column (no gradient there), `.same` pools it in windows of its own (SSD300's
    /// 75 x 75 conv3_3), against the convolution + ReLU and the NCHW `maxPool2d`, whose argmax takes the first maximum too.
    @Test(arguments: [8, 16]) func oddMapsMatchTheTwoOps(preferred: Int) throws {
        for (h, w, pooling) in [(5, 7, Padding.valid), (5, 7, Padding.same), (6, 9, Padding.same), (7, 4, Padding.same), (3, 3, Padding.same),
                                (7, 6, Padding.valid)] {
            let x = randomVariable([2, 16, h, w], seed: 103), weight = randomVariable([16, 16, 3, 3], seed: 104), b = randomVariable([16], seed: 105)
            let twoOps = run([x, weight, b]) {
                $0[0].blocked(width: preferred).conv2dBlockedReLU($0[1], bias: $0[2], stride: (1, 1), padding: .same, width: preferred)
                    .unblocked().maxPool2d(kernel: (2, 2), padding: pooling)
            }
            let fused = run([x, weight, b]) {
                $0[0].blocked(width: preferred).conv2dBlockedReLUMaxPool2x2($0[1], bias: $0[2], stride: (1, 1), padding: .same, width: preferred,
                                                                           pooling: pooling).unblocked()
            }
            let what = "\(h) x \(w), \(pooling), width \(preferred)"
            #expect(fused.output == twoOps.output && !fused.output.isEmpty, "\(what): values")
            for k in 0..<3 { #expect(fused.gradients[k] == twoOps.gradients[k], "\(what): gradient \(k)") }
        }
    }

    /// Without gradients recorded no indices are kept: the same pooled values.
    /// SSD300's conv1_1 -> conv1_2: a rectified convolution's output declared `recomputable(alsoInBackward: true)` and read
    /// by the pooled op. Given back after forward, computed again before the pooled op's backward, given back between that
    /// op's weight gradient and its input gradient (`blockedConvolutionBackward`), and computed a second time for its own
    /// op's backward: two runs of the recomputation, and the values and every gradient those of the pass that keeps it, to
    /// the bit.
    @Test func recomputedInputGivenBackBetweenTheGradients() throws {
        let inputs = [randomVariable([2, 3, 10, 12], seed: 103), randomVariable([16, 3, 3, 3], seed: 104), randomVariable([16], seed: 105),
                      randomVariable([16, 16, 3, 3], seed: 106), randomVariable([16], seed: 107)]
        try #require(Tensor.canConvolveBlocked(input: [2, 3, 10, 12], weight: [16, 3, 3, 3], stride: (1, 1), padding: .same,
                                               blockedInput: false, blockedOutput: true, width: 8))
        try #require(Tensor.canConvolveBlocked(input: [2, 16, 10, 12], weight: [16, 16, 3, 3], stride: (1, 1), padding: .same,
                                               blockedInput: true, blockedOutput: true, width: 8))
        final class Runs: @unchecked Sendable { var count = 0 }
        func pass(recomputing: Bool) -> (result: (output: [Float], gradients: [[Float]]), runs: Int, released: Bool) {
            let runs = Runs()
            var released = false
            let result = run(inputs) { t in
                let first = t[0].conv2dBlockedReLU(t[1], bias: t[2], stride: (1, 1), padding: .same, width: 8)
                if recomputing {
                    first.recomputable(alsoInBackward: true) {
                        runs.count += 1
                        return GradMode.disabled { t[0].conv2dBlockedReLU(t[1], bias: t[2], stride: (1, 1), padding: .same, width: 8) }.storage
                    }
                }
                let pooled = first.conv2dBlockedReLUMaxPool2x2(t[3], bias: t[4], stride: (1, 1), padding: .same, width: 8)
                first.releaseRecomputableValues()
                released = first.valuesReleased
                return pooled.unblocked()
            }
            return (result, runs.count, released)
        }
        let (given, kept) = (pass(recomputing: true), pass(recomputing: false))
        #expect(given.released && !kept.released)
        #expect(given.runs == 2 && kept.runs == 0, "the recomputation ran \(given.runs) times")
        #expect(given.result.output == kept.result.output && !kept.result.output.isEmpty)
        for k in 0..<5 { #expect(given.result.gradients[k] == kept.result.gradients[k] && !kept.result.gradients[k].isEmpty, "gradient \(k)") }
    }

    @Test func inferenceKeepsTheValues() {
        let x = randomVariable([2, 8, 6, 10], seed: 94).blocked8(), weight = randomVariable([16, 8, 3, 3], seed: 95)
        let b = randomVariable([16], seed: 96)
        let (fused, twoOps) = GradMode.disabled {
            (x.conv2dBlockedReLUMaxPool2x2(weight, bias: b, stride: (1, 1), padding: .same, width: 8).toArray(),
             x.conv2dBlockedReLU(weight, bias: b, stride: (1, 1), padding: .same, width: 8).maxPool2x2Blocked().toArray())
        }
        #expect(fused == twoOps && !fused.isEmpty)
    }

    @Test func finiteDifferences() {
        checkGradients([randomVariable([2, 1, 4, 6, 8], seed: 97), randomVariable([8, 8, 3, 3], seed: 98), randomVariable([8], seed: 99)],
                       eps: 1e-3) {
            $0[0].conv2dBlockedReLUMaxPool2x2($0[1], bias: $0[2], stride: (1, 1), padding: .same)
        }
        checkGradients([randomVariable([1, 1, 4, 4, 16], seed: 100), randomVariable([16, 16, 3, 3], seed: 101), randomVariable([16], seed: 102)],
                       eps: 1e-3) {
            $0[0].conv2dBlockedReLUMaxPool2x2($0[1], bias: $0[2], stride: (1, 1), padding: .same, width: 16)
        }
        checkGradients([randomVariable([1, 1, 5, 3, 8], seed: 106), randomVariable([8, 8, 3, 3], seed: 107), randomVariable([8], seed: 108)],
                       eps: 1e-3) {
            $0[0].conv2dBlockedReLUMaxPool2x2($0[1], bias: $0[2], stride: (1, 1), padding: .same, pooling: .same)
        }
    }
}
