import Testing
@testable import StarlingCore

@Suite struct DropoutTests {
    private func drop(_ x: Tensor, rate: Float, seed: UInt64) -> Tensor {
        var rng = RandomGenerator(seed: seed)
        return x.dropout(rate: rate, rng: &rng, training: true)
    }

    @Test func sameSeedSameMaskOtherSeedOtherMask() {
        let x = Tensor(shape: [1000], values: Array(repeating: 1, count: 1000))
        #expect(drop(x, rate: 0.5, seed: 3).toArray() == drop(x, rate: 0.5, seed: 3).toArray())
        #expect(drop(x, rate: 0.5, seed: 3).toArray() != drop(x, rate: 0.5, seed: 4).toArray())
    }

    @Test func keptValuesAreScaledAndTheRateIsRespected() {
        let n = 20_000, rate: Float = 0.3
        let values = randomValues(n, seed: 1, 0.5, 1.5)
        let y = drop(Tensor(shape: [n], values: values), rate: rate, seed: 2).toArray()
        var dropped = 0
        for i in 0..<n {
            if y[i] == 0 { dropped += 1 } else { #expect(abs(y[i] - values[i] / 0.7) < 1e-6) }
        }
        // Binomial(20000, 0.3): standard deviation ~65, so +-300 is over 4.5 sigma.
        #expect(abs(dropped - 6000) < 300)
        // The expectation is unchanged: the mean of dropout(ones) is ~1.
        let ones = drop(Tensor(shape: [n], values: Array(repeating: 1, count: n)), rate: rate, seed: 5).toArray()
        #expect(abs(ones.reduce(0, +) / Float(n) - 1) < 0.03)
    }

    @Test func identityOutOfTrainingAndAtRateZero() {
        let x = randomVariable([4, 5], seed: 6)
        var rng = RandomGenerator(seed: 7)
        let before = rng
        #expect(x.dropout(rate: 0.5, rng: &rng, training: false) === x)
        #expect(x.dropout(rate: 0, rng: &rng, training: true) === x)
        var a = rng, b = before
        #expect(a.next() == b.next())   // no numbers were drawn
    }

    @Test func gradientIsTheMask() {
        let x = randomVariable([50], seed: 8, 0.5, 1.5)
        let y = drop(x, rate: 0.4, seed: 9)
        y.sum().backward()
        let g = x.gradArray ?? [], yv = y.toArray(), xv = x.toArray()
        for i in 0..<50 { #expect(abs(g[i] - yv[i] / xv[i]) < 1e-5) }
        checkGradients([randomVariable([3, 7], seed: 10)]) { drop($0[0], rate: 0.5, seed: 11) }
    }
}
