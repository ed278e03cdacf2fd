import Foundation
import Testing
@testable import StarlingCore

/// The LSTM equations written out in Double, one sample, step and unit at a time (Keras's gate order i, f, c, o).
/// Returns the hidden states [N, T, H].
func referenceLSTM(_ x: [Float], batch: Int, steps: Int, features: Int, units: Int,
                   kernel: [Float], recurrent: [Float], bias: [Float], h0: [Float]? = nil, c0: [Float]? = nil) -> [Float] {
    func sigmoid(_ v: Double) -> Double { 1 / (1 + Foundation.exp(-v)) }
    var out = [Float](repeating: 0, count: batch * steps * units)
    for s in 0..<batch {
        var h = (0..<units).map { Double(h0?[s * units + $0] ?? 0) }
        var c = (0..<units).map { Double(c0?[s * units + $0] ?? 0) }
        for t in 0..<steps {
            // Pre-activation of gate column k: x_t W[:, k] + h_{t-1} U[:, k] + b[k].
            func z(_ k: Int) -> Double {
                var v = Double(bias[k])
                for i in 0..<features { v += Double(x[(s * steps + t) * features + i]) * Double(kernel[i * 4 * units + k]) }
                for j in 0..<units { v += h[j] * Double(recurrent[j * 4 * units + k]) }
                return v
            }
            var next = h
            for j in 0..<units {
                let i = sigmoid(z(j)), f = sigmoid(z(units + j)), g = Foundation.tanh(z(2 * units + j)), o = sigmoid(z(3 * units + j))
                c[j] = f * c[j] + i * g
                next[j] = o * Foundation.tanh(c[j])
                out[(s * steps + t) * units + j] = Float(next[j])
            }
            h = next
        }
    }
    return out
}

@Suite struct LSTMTests {
    struct Case {
        let n, t, f, h: Int
        let x, w, u, b, h0, c0: Tensor
        init(n: Int, t: Int, f: Int, h: Int, seed: UInt64) {
            (self.n, self.t, self.f, self.h) = (n, t, f, h)
            x = randomVariable([n, t, f], seed: seed)
            w = randomVariable([f, 4 * h], seed: seed + 1, -0.8, 0.8)
            u = randomVariable([h, 4 * h], seed: seed + 2, -0.8, 0.8)
            b = randomVariable([4 * h], seed: seed + 3, -0.5, 0.5)
            h0 = randomVariable([n, h], seed: seed + 4)
            c0 = randomVariable([n, h], seed: seed + 5)
        }
        func reference(initial: Bool) -> [Float] {
            referenceLSTM(x.toArray(), batch: n, steps: t, features: f, units: h, kernel: w.toArray(), recurrent: u.toArray(),
                          bias: b.toArray(), h0: initial ? h0.toArray() : nil, c0: initial ? c0.toArray() : nil)
        }
    }

    /// Forward against the Double loops, with and without an initial state, at sizes that leave vector remainders.
    @Test func forwardMatchesPlainDoubleLoops() {
        for (n, t, f, h) in [(3, 4, 5, 3), (2, 6, 3, 17), (1, 1, 2, 1)] {
            let c = Case(n: n, t: t, f: f, h: h, seed: UInt64(n * 100 + h))
            let plain = c.x.lstm(kernel: c.w, recurrentKernel: c.u, bias: c.b)
            #expect(plain.shape == [n, t, h])
            expectClose(plain.toArray(), c.reference(initial: false), tolerance: 2e-5)
            let started = c.x.lstm(kernel: c.w, recurrentKernel: c.u, bias: c.b, initialHidden: c.h0, initialCell: c.c0)
            expectClose(started.toArray(), c.reference(initial: true), tolerance: 2e-5)
            // The last hidden state is the sequence's final step.
            let last = started.lastTimestep().toArray(), all = started.toArray()
            expectClose(last, (0..<n).flatMap { s in (0..<h).map { all[(s * t + t - 1) * h + $0] } }, tolerance: 0)
        }
        // A zero initial state is the default state.
        let c = Case(n: 2, t: 3, f: 2, h: 2, seed: 5)
        let zero = Tensor(zeros: [2, 2])
        #expect(c.x.lstm(kernel: c.w, recurrentKernel: c.u, bias: c.b, initialHidden: zero, initialCell: zero).toArray()
                == c.x.lstm(kernel: c.w, recurrentKernel: c.u, bias: c.b).toArray())
    }

    /// Finite differences through time with respect to the input, both kernels, the bias and the initial state.
    @Test func gradientsThroughTime() {
        let c = Case(n: 2, t: 3, f: 3, h: 2, seed: 11)
        checkGradients([c.x, c.w, c.u, c.b, c.h0, c.c0]) {
            $0[0].lstm(kernel: $0[1], recurrentKernel: $0[2], bias: $0[3], initialHidden: $0[4], initialCell: $0[5])
        }
        let d = Case(n: 3, t: 4, f: 2, h: 3, seed: 21)
        checkGradients([d.x, d.w, d.u, d.b]) { $0[0].lstm(kernel: $0[1], recurrentKernel: $0[2], bias: $0[3]) }
        // Only the last state feeding the objective, as a recurrent encoder uses it.
        checkGradients([d.x, d.w, d.u, d.b]) { $0[0].lstm(kernel: $0[1], recurrentKernel: $0[2], bias: $0[3]).lastTimestep() }
    }
}
