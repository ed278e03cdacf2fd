import Testing
@testable import StarlingCore
#if canImport(Glibc)
import Glibc
#endif

@Suite struct LinearTests {
    @Test func matmulMatchesNaiveLoopsAtOddSizes() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 9, 13), (64, 33, 5)] {
            let a = randomValues(m * k, seed: 1), b = randomValues(k * n, seed: 2)
            let c = Tensor(shape: [m, k], values: a).matmul(Tensor(shape: [k, n], values: b))
            expectClose(c.toArray(), referenceMatmul(a, b, m: m, k: k, n: n))
        }
    }

    @Test func matmulGradient() {
        checkGradients([randomVariable([3, 4], seed: 1), randomVariable([4, 5], seed: 2)]) { $0[0].matmul($0[1]) }
    }

    @Test func linearGradientAndBias() {
        let x = randomVariable([5, 3], seed: 3), w = randomVariable([3, 4], seed: 4), b = randomVariable([4], seed: 5)
        checkGradients([x, w, b]) { $0[0].linear($0[1], $0[2]) }
        let y = x.linear(w, b).toArray()
        let ref = referenceMatmul(x.toArray(), w.toArray(), m: 5, k: 3, n: 4)
        expectClose(y, ref.enumerated().map { $0.element + b.toArray()[$0.offset % 4] })
    }

    @Test func linearReLUGradient() {
        // Random x and W; each output's bias is shifted so that no pre-activation lies within 0.05 of the kink, where a
        // finite difference of eps 0.01 would straddle it.
        let (rows, n) = (6, 7)
        let x = randomVariable([rows, 5], seed: 6), w = randomVariable([5, n], seed: 7)
        let product = GradMode.disabled { x.matmul(w) }.toArray()
        var bias = randomValues(n, seed: 8)
        for j in 0..<n {
            let shifts: [Float] = [0, 0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.4, -0.4]
            bias[j] += shifts.first { s in (0..<rows).allSatisfy { abs(product[$0 * n + j] + bias[j] + s) >= 0.05 } } ?? 0
        }
        let b = Tensor.variable(shape: [n], values: bias)
        let z = GradMode.disabled { x.linear(w, b) }.toArray()
        #expect(z.contains { $0 < -0.05 } && z.contains { $0 > 0.05 })
        #expect(!z.contains { abs($0) < 0.05 })
        checkGradients([x, w, b]) { $0[0].linearReLU($0[1], $0[2]) }
    }

    /// The fused op against the two ops it replaces: the same values and the same gradients, bit for bit, with a
    /// second user of the result (sparse-ae's penalty on the code) adding to its gradient first.
    @Test func linearReLUMatchesLinearThenReLU() {
        func run(fused: Bool) -> [[Float]] {
            let x = randomVariable([9, 6], seed: 9), w = randomVariable([6, 11], seed: 10), b = randomVariable([11], seed: 11)
            let y = fused ? x.linearReLU(w, b) : x.linear(w, b).relu()
            let loss = (y * y).sum() + y.sum() * 0.5
            loss.backward()
            return [y.toArray(), x.gradArray ?? [], w.gradArray ?? [], b.gradArray ?? []]
        }
        let (fused, separate) = (run(fused: true), run(fused: false))
        #expect(fused[0].contains(0) && fused[0].contains { $0 > 0 })
        for k in 0..<4 { #expect(fused[k] == separate[k], "output \(k)") }
    }

    @Test func reshapeToItsOwnShapeIsTheTensorItself() {
        let x = randomVariable([4, 3], seed: 12)
        let y = x.reshaped([4, -1])
        #expect(y === x)
        let z = x.reshaped([3, 4])
        #expect(z !== x && z.toArray() == x.toArray())
        checkGradients([x]) { ($0[0].reshaped([4, 3]) * $0[0]).reshaped([2, 6]) }
    }
}

@Suite struct ElementwiseTests {
    @Test func binaryOpsSameShapeAndBroadcast() {
        checkGradients([randomVariable([2, 3], seed: 1), randomVariable([2, 3], seed: 2, 0.5, 2)]) { ($0[0] + $0[1]) * $0[0] / $0[1] - $0[1] }
        checkGradients([randomVariable([4, 3], seed: 3), randomVariable([3], seed: 4, 0.5, 2)]) { ($0[0] * $0[1] + $0[1]) / $0[1] }
        checkGradients([randomVariable([4, 3], seed: 3), randomVariable([1], seed: 4, 0.5, 2)]) { $0[0] * $0[1] - $0[1] }
    }

    @Test func unaryOps() {
        checkGradients([randomVariable([7], seed: 1)]) { $0[0].exp() }
        checkGradients([randomVariable([7], seed: 1, 0.5, 3)]) { $0[0].log() }
        checkGradients([randomVariable([7], seed: 1, 0.5, 3)]) { $0[0].sqrt() }
        checkGradients([randomVariable([7], seed: 1)]) { $0[0].square() * 3 + 1 }
        checkGradients([Tensor.variable(shape: [4], values: [-2, -0.3, 0.4, 2])]) { $0[0].clamp(-1, 1) }
        checkGradients([randomVariable([3, 5], seed: 2)]) { $0[0].sum() }
        checkGradients([randomVariable([3, 5], seed: 2)]) { $0[0].mean() }
        checkGradients([randomVariable([3, 5], seed: 2)]) { $0[0].reshaped([5, -1]).matmul(Tensor(shape: [3, 2], values: randomValues(6, seed: 8))) }
    }

    @Test func activations() {
        checkGradients([Tensor.variable(shape: [6], values: [-2, -1, -0.2, 0.3, 1, 2])]) { $0[0].relu() }
        checkGradients([randomVariable([11], seed: 1, -6, 6)]) { $0[0].sigmoid() }
        checkGradients([randomVariable([11], seed: 1, -3, 3)]) { $0[0].tanh() }
        let s = Tensor(shape: [5], values: [-100, -3, 0, 3, 100]).sigmoid().toArray()
        expectClose(s, [-100, -3, 0, 3, 100].map { Float(1 / (1 + Foundation_exp(-Double($0)))) }, tolerance: 1e-6)
    }

    @Test func reusedValueAccumulatesGradient() {
        let x = Tensor.variable(shape: [1], values: [3])
        let y = x * x + x   // dy/dx = 2x + 1 = 7
        y.backward()
        #expect(x.gradArray == [7])
    }

    @Test func vectorMathMatchesLibm() {
        var worstExp: Float = 0, worstLog: Float = 0
        for i in 0..<20_000 {
            let x = -87 + Float(i) * (87.0 + 88) / 20_000
            worstExp = max(worstExp, abs(VectorMath.exp(x) - expf(x)) / expf(x))
            let y = Float(i + 1) * 1e-3 + 1e-30 * Float(i)
            worstLog = max(worstLog, abs(VectorMath.log(y) - logf(y)) / max(1e-3, abs(logf(y))))
        }
        #expect(worstExp < 3e-7)
        #expect(worstLog < 3e-7)
        #expect(VectorMath.sigmoid(-100) > 0 && VectorMath.sigmoid(100) == 1 && VectorMath.sigmoid(0) == 0.5)
    }
}

func Foundation_exp(_ x: Double) -> Double { exp(x) }

@Suite struct LossTests {
    @Test func bceOnLogitsMatchesHandComputedValues() {
        // z = 0, t = 1: log 2; z = 2, t = 0: 2 + log(1 + e^-2); z = -1, t = 0.25: 0.25 + log(1 + e^-1)
        let z = Tensor(shape: [3], values: [0, 2, -1]), t = Tensor(shape: [3], values: [1, 0, 0.25])
        let expected = (log(2.0) + (2 + log(1 + exp(-2.0))) + (0.25 + log(1 + exp(-1.0)))) / 3
        #expect(abs(Double(z.binaryCrossEntropy(logits: t).item) - expected) < 1e-6)
        // Stable at extreme logits where sigmoid then log would give inf.
        let far = Tensor(shape: [2], values: [200, -200]).binaryCrossEntropy(logits: Tensor(shape: [2], values: [0, 1]))
        #expect(abs(far.item - 200) < 1e-3)
    }

    @Test func bceOnLogitsGradient() {
        let t = Tensor(shape: [19], values: randomValues(19, seed: 7, 0, 1))
        checkGradients([randomVariable([19], seed: 3, -5, 5)]) { $0[0].binaryCrossEntropy(logits: t) }
        // The logits with another user: the loss's gradient is then added to theirs, whichever backward runs first.
        checkGradients([randomVariable([19], seed: 4, -5, 5)]) { $0[0].binaryCrossEntropy(logits: t) + ($0[0] * $0[0]).sum() * 0.01 }
        checkGradients([randomVariable([19], seed: 5, -5, 5)]) { ($0[0] * $0[0]).sum() * 0.01 + $0[0].binaryCrossEntropy(logits: t) }
    }

    /// The logits' gradient is the sigmoid's storage written over (usually) or added into an existing gradient: the
    /// same bits as g (sigmoid(z) - t) with the op's own sigmoid, in both cases.
    @Test func bceOnLogitsGradientBits() {
        let n = 5000
        let zv = randomValues(n, seed: 8, -9, 9), tv = randomValues(n, seed: 9, 0, 1)
        let g = 1 / Float(n)
        let sigmoid = (0..<n).map { i -> Float in
            let e = VectorMath.exp(-abs(zv[i])), r = 1 / (1 + e)
            return zv[i] < 0 ? e * r : r
        }
        let t = Tensor(shape: [n], values: tv)
        let alone = Tensor.variable(shape: [n], values: zv)
        alone.binaryCrossEntropy(logits: t).backward()
        // Every kernel build's sigmoid agrees with the scalar one to a few units in the last place; the gradient's
        // bits follow the build's own sigmoid, so compare with a tolerance of that size here and exactly in
        // KernelDispatchTests.bceGradientOverTheSigmoid.
        let got = alone.gradArray ?? []
        #expect(got.count == n)
        for i in 0..<n { #expect(abs(got[i] - g * (sigmoid[i] - tv[i])) <= 2e-6 * g, "element \(i)") }
        // With a gradient there first (the other user's backward runs first): added, g (p - t) + 0 = g (p - t).
        let shared = Tensor.variable(shape: [n], values: zv)
        (shared.sum() * 0 + shared.binaryCrossEntropy(logits: t)).backward()
        #expect(shared.gradArray == got)
    }

    @Test func mse() {
        let y = Tensor(shape: [2], values: [1, 3]), t = Tensor(shape: [2], values: [0, 1])
        #expect(y.meanSquaredError(t).item == 2.5)
        checkGradients([randomVariable([6], seed: 1), randomVariable([6], seed: 2)]) { $0[0].meanSquaredError($0[1]) }
    }
}

@Suite struct ParameterTests {
    @Test func sameSeedGivesBitIdenticalWeights() {
        func build(_ seed: UInt64) -> [Float] {
            let store = ParameterStore()
            store.declare("dense/kernel", shape: [784, 32], initializer: .glorotUniform(fanIn: 784, fanOut: 32))
            store.declare("dense/bias", shape: [32], initializer: .zeros)
            store.declare("lstm/recurrent_kernel", shape: [8, 32], initializer: .orthogonal(rows: 8, cols: 32))
            var rng = RandomGenerator(seed: seed)
            store.allocate(rng: &rng)
            return store.values.toArray()
        }
        #expect(build(1) == build(1))
        #expect(build(1) != build(2))
        let w = build(1)
        let limit = (6.0 / Float(784 + 32)).squareRoot()
        #expect(w[0..<(784 * 32)].allSatisfy { abs($0) <= limit })
    }

    @Test func parametersAreViewsIntoOneBuffer() {
        let store = ParameterStore()
        let a = store.declare("a", shape: [2, 3], initializer: .ones)
        let b = store.declare("b", shape: [4], initializer: .constant(2))
        var rng = RandomGenerator(seed: 0)
        store.allocate(rng: &rng)
        #expect(store.values.toArray() == [1, 1, 1, 1, 1, 1, 2, 2, 2, 2])
        (a.value.sum() + b.value.sum() * 3).backward()
        #expect(store.gradients.toArray() == [1, 1, 1, 1, 1, 1, 3, 3, 3, 3])
        store.zeroGradients()
        #expect(store.gradients.toArray().allSatisfy { $0 == 0 })
    }

    @Test func orthogonalRowsAreOrthonormal() {
        var rng = RandomGenerator(seed: 5)
        let q = ParameterStore.orthogonalMatrix(rows: 4, cols: 6, rng: &rng)
        for i in 0..<4 { for j in 0..<4 {
            var d: Float = 0
            for k in 0..<6 { d += q[i * 6 + k] * q[j * 6 + k] }
            #expect(abs(d - (i == j ? 1 : 0)) < 1e-5)
        } }
    }

    @Test func graphIsFreedAfterBackward() {
        weak var intermediate: Tensor?
        let x = Tensor.variable(shape: [3], values: [1, 2, 3])
        do {
            let h = x.sigmoid()
            intermediate = h
            h.sum().backward()
        }
        #expect(intermediate == nil)
    }
}

@Suite struct BackwardHookTests {
    /// Each parameter is reported exactly once, and only after its gradient is final.
    @Test func leavesAreReportedOnceWhenComplete() {
        let store = ParameterStore()
        let w1 = store.declare("l1/kernel", shape: [3, 4], initializer: .glorotUniform(fanIn: 3, fanOut: 4))
        let w2 = store.declare("l2/kernel", shape: [4, 2], initializer: .glorotUniform(fanIn: 4, fanOut: 2))
        var rng = RandomGenerator(seed: 3)
        store.allocate(rng: &rng)
        let x = Tensor(shape: [2, 3], values: randomValues(6, seed: 4))
        // w1 is used twice (a residual-like reuse), so it is ready only after both uses pushed their gradients.
        let h = x.matmul(w1.value)
        let loss = (h + x.matmul(w1.value)).tanh().matmul(w2.value).sum()
        var reported: [(String, [Float])] = []
        loss.backward(onLeafReady: { leaf in reported.append((leaf.name ?? "?", leaf.gradArray ?? [])) })
        #expect(reported.map(\.0) == ["l2/kernel", "l1/kernel"])
        #expect(reported[1].1 == w1.value.gradArray)
        #expect(reported[0].1 == w2.value.gradArray)
    }
}

@Suite struct L2NormalizationTests {
    @Test func valuesAndGradient() {
        // One position, channels (3, 4): norm 5, so y = gamma * (0.6, 0.8).
        let y = Tensor(shape: [1, 2, 1, 1], values: [3, 4]).l2NormalizeChannels(gamma: Tensor(shape: [2], values: [20, 10]))
        expectClose(y.toArray(), [12, 8], tolerance: 1e-5)
        checkGradients([randomVariable([2, 3, 2, 3], seed: 4), randomVariable([3], seed: 5, 0.5, 2)]) {
            $0[0].l2NormalizeChannels(gamma: $0[1])
        }
    }

    /// The blocked op (SSD300's conv4_3 in a blocked training pass) against the planar one on the same values, 8 and 16
    /// channels wide and two blocks: values and both gradients to the bit (the same sums in the same order); and finite
    /// differences through it.
    @Test(arguments: [8, 16]) func blockedMatchesPlanar(width: Int) {
        let x = randomVariable([2, 2 * width, 3, 5], seed: 6), gamma = randomVariable([2 * width], seed: 7, 0.5, 2)
        func run(_ f: (Tensor, Tensor) -> Tensor) -> [[Float]] {
            let (xc, gc) = (Tensor.variable(shape: x.shape, values: x.toArray()), Tensor.variable(shape: gamma.shape, values: gamma.toArray()))
            let y = f(xc, gc)
            y.backward(seed: randomValues(y.count, seed: 8))
            return [y.toArray(), xc.gradArray ?? [], gc.gradArray ?? []]
        }
        let planar = run { $0.l2NormalizeChannels(gamma: $1) }
        let blocked = run { $0.blocked(width: width).l2NormalizeChannelsBlocked(gamma: $1).unblocked() }
        for k in 0..<3 { #expect(blocked[k] == planar[k] && !planar[k].isEmpty, "\(["values", "input gradient", "scale gradient"][k])") }
        checkGradients([randomVariable([1, 1, 2, 3, 8], seed: 9), randomVariable([8], seed: 10, 0.5, 2)]) {
            $0[0].l2NormalizeChannelsBlocked(gamma: $0[1])
        }
    }
}
