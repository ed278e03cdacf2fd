import Testing
@testable import StarlingCore
#if canImport(Glibc)
import Glibc
#endif

@Suite struct MoreActivationsTests {
    @Test func eluMatchesDoubleReference() {
        // 19 values: two full vector blocks and a tail.
        let x = randomValues(19, seed: 1, -6, 3)
        for alpha: Float in [1, 0.5] {
            let y = Tensor(shape: [19], values: x).elu(alpha: alpha).toArray()
            expectClose(y, x.map { $0 > 0 ? $0 : Float(Double(alpha) * (exp(Double($0)) - 1)) }, tolerance: 1e-6)
        }
        // elu(-1) = e^-1 - 1 = -0.63212056
        #expect(abs(Tensor(shape: [1], values: [-1]).elu().item + 0.63212056) < 1e-6)
    }

    @Test func leakyReluDefaultsToKerasSlope() {
        let y = Tensor(shape: [4], values: [-2, -0.5, 0.5, 3]).leakyRelu().toArray()
        expectClose(y, [-0.6, -0.15, 0.5, 3], tolerance: 1e-7)
        expectClose(Tensor(shape: [2], values: [-2, 1]).leakyRelu(slope: 0.1).toArray(), [-0.2, 1], tolerance: 1e-7)
    }

    @Test func gradients() {
        let awayFromZero = Tensor.variable(shape: [8], values: [-3, -1.2, -0.5, -0.1, 0.2, 0.7, 1.5, 4])
        checkGradients([awayFromZero]) { $0[0].elu() }
        checkGradients([awayFromZero]) { $0[0].elu(alpha: 0.7) }
        checkGradients([awayFromZero]) { $0[0].leakyRelu() }
        checkGradients([awayFromZero]) { $0[0].leakyRelu(slope: 0.01) }
    }
}

@Suite struct PenaltyTests {
    @Test func kerasRegularizerValues() {
        // l1: 0.01 * (1 + 2 + 0.5 + 0) = 0.035; l2: 0.01 * (1 + 4 + 0.25 + 0) = 0.0525.
        let w = Tensor(shape: [4], values: [1, -2, 0.5, 0])
        #expect(abs(w.l1Penalty(0.01).item - 0.035) < 1e-7)
        #expect(abs(w.l2Penalty(0.01).item - 0.0525) < 1e-7)
        #expect(w.l2Penalty(0.01).shape == [1])
    }

    @Test func gradients() {
        let w = Tensor.variable(shape: [2, 3], values: [0.3, -0.7, 1.2, -0.05, 0.5, -2])
        checkGradients([w]) { $0[0].l1Penalty(0.3) }
        checkGradients([w]) { $0[0].l2Penalty(0.3) }
        // The l1 subgradient at exactly 0 is 0.
        let z = Tensor.variable(shape: [2], values: [0, -1])
        z.l1Penalty(2).backward()
        #expect(z.gradArray == [0, -2])
    }
}
