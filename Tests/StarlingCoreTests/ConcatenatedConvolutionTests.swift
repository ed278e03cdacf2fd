import Testing
@testable import StarlingCore

/// The convolution + ReLU over two inputs' channel concatenation without the concatenation
/// (`conv2dBlockedReLU(concatenating:...)`, U-Net's decoder) against the planar ops it replaces (concat, conv2d, relu) and
/// against finite differences, for every input, the weights and the bias; inputs blocked 8 or 16 wide, of different
/// widths, or planar.
@Suite struct ConcatenatedConvolutionTests {
    private func side(_ channels: Int, _ preferred: Int) -> Int { channels % preferred == 0 ? preferred : 8 }

    /// Fresh copies of `inputs`, `f` on them, fixed random weights back-propagated: the output (NCHW) and each gradient.
    private func run(_ inputs: [Tensor], _ f: ([Tensor]) -> Tensor) -> (output: [Float], gradients: [[Float]]) {
        let copies = inputs.map { Tensor.variable(shape: $0.shape, values: $0.toArray()) }
        let out = f(copies)
        out.backward(seed: randomValues(out.count, seed: 79, 0.5, 1.5))
        return (out.toArray(), copies.map { $0.gradArray ?? [] })
    }

    /// Against `concat(a, b).conv2d(w, b).relu()` on planar Tensors: U-Net's levels at widths 1/4 (16 + 16 -> 16, 32 + 32
    /// -> 32) and 1/8 (8 + 8 -> 8: 8-channel blocks in a 16-wide pass), inputs of unequal channels and block widths, a
    /// planar second input (an odd map's padded up-convolution), "valid" padding; the first input is also read by a ReLU
    /// whose gradient reaches it after this op's (U-Net's pooling), so its gradient is added to one already there.
    @Test(arguments: [8, 16]) func matchesConcatenationAndConvolution(preferred: Int) throws {
        let cases: [(ca: Int, cb: Int, cout: Int, h: Int, w: Int, planarB: Bool, padding: Padding)] = [
            (16, 16, 16, 6, 9, false, .same), (32, 32, 32, 5, 4, false, .same), (8, 8, 8, 7, 10, false, .same),
            (16, 8, 16, 4, 7, false, .same), (24, 16, 8, 5, 5, false, .valid), (16, 16, 16, 5, 6, true, .same)]
        for c in cases {
            let a = randomVariable([3, c.ca, c.h, c.w], seed: 90), b = randomVariable([3, c.cb, c.h, c.w], seed: 91)
            let weight = randomVariable([c.cout, c.ca + c.cb, 3, 3], seed: 92, -0.3, 0.3), bias = randomVariable([c.cout], seed: 93, -0.2, 0.2)
            let (wa, wb, wy) = (side(c.ca, preferred), c.planarB ? nil : side(c.cb, preferred), side(c.cout, preferred))
            try #require(Tensor.canConvolveBlockedReLU(concatenating: a.shape, b.shape, weight: weight.shape, padding: c.padding, width: wy,
                                                       firstWidth: wa, secondWidth: wb))
            let reference = run([a, b, weight, bias]) { t in
                let y = Tensor.concat([t[0], t[1]], axis: 1).conv2d(t[2], bias: t[3], padding: c.padding).relu()
                return Tensor.concat([y.reshaped([-1]), t[0].relu().reshaped([-1])], axis: 0)
            }
            let fused = run([a, b, weight, bias]) { t in
                let (ab, bb) = (t[0].blocked(width: wa), wb.map { t[1].blocked(width: $0) } ?? t[1])
                let y = ab.conv2dBlockedReLU(concatenating: bb, t[2], bias: t[3], padding: c.padding, width: wy)
                #expect(y.rank == 5 && y.shape[4] == wy)
                return Tensor.concat([y.unblocked().reshaped([-1]), ab.relu().unblocked().reshaped([-1])], axis: 0)
            }
            #expect(reference.output.contains { $0 == 0 } && reference.output.contains { $0 > 0 })
            expectClose(fused.output, reference.output, tolerance: 1e-4)
            for k in 0..<4 {
                #expect(!fused.gradients[k].isEmpty)
                expectClose(fused.gradients[k], reference.gradients[k], tolerance: 1e-4)
            }
        }
    }

    /// Not offered where a half has no plan or the inputs do not line up: other maps, other images, channels that do not
    /// add up to the kernel's, a blocked width that does not divide the channels.
    @Test func refusesInputsThatDoNotLineUp() {
        let w = [16, 32, 3, 3]
        #expect(Tensor.canConvolveBlockedReLU(concatenating: [2, 16, 6, 6], [2, 16, 6, 6], weight: w, padding: .same, width: 16, firstWidth: 16, secondWidth: 16))
        #expect(!Tensor.canConvolveBlockedReLU(concatenating: [2, 16, 6, 6], [2, 16, 6, 7], weight: w, padding: .same, width: 16, firstWidth: 16, secondWidth: 16))
        #expect(!Tensor.canConvolveBlockedReLU(concatenating: [2, 16, 6, 6], [1, 16, 6, 6], weight: w, padding: .same, width: 16, firstWidth: 16, secondWidth: 16))
        #expect(!Tensor.canConvolveBlockedReLU(concatenating: [2, 16, 6, 6], [2, 8, 6, 6], weight: w, padding: .same, width: 16, firstWidth: 16, secondWidth: 8))
        #expect(!Tensor.canConvolveBlockedReLU(concatenating: [2, 8, 6, 6], [2, 24, 6, 6], weight: w, padding: .same, width: 16, firstWidth: 16, secondWidth: 8))
    }

    @Test func finiteDifferences() {
        // Two 8-wide inputs into 8 channels.
        checkGradients([randomVariable([2, 1, 4, 3, 8], seed: 94), randomVariable([2, 1, 4, 3, 8], seed: 95),
                        randomVariable([8, 16, 3, 3], seed: 96), randomVariable([8], seed: 97)], eps: 1e-3) {
            $0[0].conv2dBlockedReLU(concatenating: $0[1], $0[2], bias: $0[3], padding: .same, width: 8)
        }
        // A 16-wide input and an 8-wide one into 16 channels.
        checkGradients([randomVariable([1, 1, 3, 3, 16], seed: 98), randomVariable([1, 1, 3, 3, 8], seed: 99),
                        randomVariable([16, 24, 3, 3], seed: 100), randomVariable([16], seed: 101)], eps: 1e-3) {
            $0[0].conv2dBlockedReLU(concatenating: $0[1], $0[2], bias: $0[3], padding: .same, width: 16)
        }
        // A blocked input and a planar one, "valid".
        checkGradients([randomVariable([1, 1, 4, 5, 8], seed: 102), randomVariable([1, 4, 4, 5], seed: 103),
                        randomVariable([8, 12, 3, 3], seed: 104), randomVariable([8], seed: 105)], eps: 1e-3) {
            $0[0].conv2dBlockedReLU(concatenating: $0[1], $0[2], bias: $0[3], padding: .valid, width: 8)
        }
    }
}
