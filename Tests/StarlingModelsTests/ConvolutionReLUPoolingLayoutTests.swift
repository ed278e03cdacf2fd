import Testing
import StarlingCore
@testable import StarlingNN

/// A blocked training convolution whose ReLU a 2x2/2 max-pooling reads first runs the three as one op
/// (`DeferredConvolution.rectifiedPooled`, `conv2dBlockedReLUMaxPool2x2`): the values and every gradient to the bit as
/// the ops on blocked Tensors. Read again after the pooling (here the rectified map itself), the convolution + ReLU runs
/// a second time for that reader, a node of its own, and the gradients add up as the one convolution's (to rounding).
/// An odd map under "valid" pooling runs fused too (its last row in no window, no gradient there).
struct ConvolutionReLUPoolingLayoutTests {
    @Test(arguments: [8, 16]) func poolingReadsTheDeferredReLU(width: Int) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let store = ParameterStore()
        let conv = Conv2D(store, name: "conv", inputs: 16, outputs: 32)
        var rng = RandomGenerator(seed: 62)
        store.allocate(rng: &rng)
        for i in 0..<conv.bias.count { conv.bias.value.data[i] = 0.2 * rng.normal() }
        func pass(laidOut: Bool, readAgain: Bool, height: Int = 6) -> (values: [Float], gradients: [[Float]], census: LayoutCensus) {
            store.zeroGradients()
            var values = RandomGenerator(seed: 63)
            let x = Tensor.variable(shape: [2, 16, height, 10], values: (0..<(2 * 16 * height * 10)).map { _ in values.uniform(-1, 1) })
            let census = LayoutCensus()
            let outputs: [Tensor] = LayoutTensor.$census.withValue(census) {
                if laidOut {
                    let a = LayoutTensor(.blocked(x.blocked(width: width), moments: nil)).applying(conv).relu()
                    let pooled = a.maxPool2d(kernel: (2, 2), stride: nil, padding: .valid)
                    return readAgain ? [pooled.tensor, a.tensor] : [pooled.tensor]
                }
                let a = x.blocked(width: width).conv2dBlocked(conv.kernel.value, bias: conv.bias.value, stride: (1, 1), padding: .same,
                                                              width: width).relu()
                let pooled = a.maxPool2x2Blocked().unblocked()
                return readAgain ? [pooled, a.unblocked()] : [pooled]
            }
            weightedSum(outputs).backward()
            return (outputs.flatMap { $0.toArray() }, [x.gradArray ?? [], conv.kernel.value.gradArray ?? [], conv.bias.value.gradArray ?? []],
                    census)
        }
        let (fused, twoOps) = (pass(laidOut: true, readAgain: false), pass(laidOut: false, readAgain: false))
        #expect(fused.census.pooledConvolutions == 1 && fused.census.convolutionsReadAfterPooling == 0 && fused.census.convolutionsWithReLU == 0)
        #expect(fused.values == twoOps.values && fused.values.contains { $0 > 0 } && fused.values.contains { $0 == 0 })
        for k in 0..<3 { #expect(fused.gradients[k] == twoOps.gradients[k] && !fused.gradients[k].isEmpty, "gradient \(k)") }

        let (again, reference) = (pass(laidOut: true, readAgain: true), pass(laidOut: false, readAgain: true))
        #expect(again.census.pooledConvolutions == 1 && again.census.convolutionsReadAfterPooling == 1)
        #expect(again.values == reference.values)
        for k in 0..<3 {
            let worst = worstDifference(again.gradients[k], reference.gradients[k])
            #expect(worst.value < 1e-5, "gradient \(k): worst difference \(worst.value) at \(worst.at)")
        }

        let (odd, oddReference) = (pass(laidOut: true, readAgain: false, height: 5), pass(laidOut: false, readAgain: false, height: 5))
        #expect(odd.census.pooledConvolutions == 1 && odd.census.convolutionsWithReLU == 0)
        #expect(odd.values == oddReference.values)
        for k in 0..<3 { #expect(odd.gradients[k] == oddReference.gradients[k], "odd map, gradient \(k)") }
    }
}
