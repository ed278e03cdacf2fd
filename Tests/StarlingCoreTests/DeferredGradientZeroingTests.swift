import Testing
@testable import StarlingCore

/// `ParameterStore.deferGradientZeroing()`: the step's first write of each gradient stores instead of adding, and
/// `settleGradients()` zeroes what no op wrote. Checked against the zero-filled buffer (`zeroGradients()`), with the
/// last step's gradients (and a NaN) left in the buffer where the fill used to clear them.
@Suite struct DeferredGradientZeroingTests {
    /// A store of: a dense layer's weight and bias (sgemm with beta 0 and the bias's first row on the first write), a
    /// second dense layer's weight used twice (the second use adds), a matmul's weight, a scale that only an
    /// element-wise op adds into (zeroed when first read), and a parameter no op uses (zeroed by `settleGradients`).
    private static func model(rows: Int) -> (ParameterStore, (Tensor) -> Tensor, Tensor) {
        let s = ParameterStore()
        let w1 = s.declare("w1", shape: [5, 7], initializer: .glorotUniform(fanIn: 5, fanOut: 7))
        let b1 = s.declare("b1", shape: [7], initializer: .uniform(low: -0.5, high: 0.5))
        let w2 = s.declare("w2", shape: [7, 7], initializer: .glorotUniform(fanIn: 7, fanOut: 7))
        let scale = s.declare("scale", shape: [7], initializer: .uniform(low: 0.5, high: 1.5))
        let w3 = s.declare("w3", shape: [7, 3], initializer: .glorotUniform(fanIn: 7, fanOut: 3))
        s.declare("unused", shape: [9], initializer: .ones)
        var rng = RandomGenerator(seed: 3)
        s.allocate(rng: &rng)
        var values: [Float] = []
        for _ in 0..<(rows * 5) { values.append(rng.uniform(-1, 1)) }
        let x = Tensor(shape: [rows, 5], values: values)
        let loss = { (x: Tensor) -> Tensor in
            let h = x.linearReLU(w1.value, b1.value)
            let g = h.linear(w2.value, nil).linear(w2.value, nil) * scale.value
            return g.matmul(w3.value).square().mean()
        }
        return (s, loss, x)
    }

    /// Rows 3 and 70: dense layers under 64 rows and from 64 (which may run on another GEMM library).
    @Test(arguments: [3, 70]) func givesTheZeroFilledGradients(rows: Int) {
        let (s, loss, x) = Self.model(rows: rows)
        s.zeroGradients()
        loss(x).backward()
        let reference = s.gradients.toArray()
        #expect(reference.allSatisfy { $0.isFinite } && reference.contains { $0 != 0 })
        for round in 0..<2 {
            // The last step's gradients stay in the buffer; a NaN shows any that a write did not replace.
            for i in 0..<s.count { s.gradients.pointer[i] = i % 5 == 0 ? .nan : Float(i + round) }
            s.deferGradientZeroing()
            loss(x).backward()
            s.settleGradients()
            let deferred = s.gradients.toArray()
            // == rather than bits: the sign of a zero may differ (a first write of -0 stays -0).
            let differ = zip(reference, deferred).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            #expect(differ.isEmpty, "round \(round): gradients \(differ.prefix(8)) differ")
            let unused = s["unused"]!
            #expect(deferred[unused.offset..<(unused.offset + unused.count)].allSatisfy { $0 == 0 })
        }
    }

    /// A backward's leaf hook sees each parameter's gradient complete, as a synchronizer's bucket reads it.
    @Test func leavesAreCompleteWhenReported() {
        let (s, loss, x) = Self.model(rows: 4)
        s.zeroGradients()
        loss(x).backward()
        let reference = s.gradients.toArray()
        for i in 0..<s.count { s.gradients.pointer[i] = .nan }
        s.deferGradientZeroing()
        var seen: [String: [Float]] = [:]
        loss(x).backward(onLeafReady: { leaf in seen[leaf.name ?? ""] = leaf.gradArray })
        for p in s.parameters where p.name != "unused" {
            #expect(seen[p.name] == Array(reference[p.offset..<(p.offset + p.count)]), "\(p.name)")
        }
    }

    /// Adam's weights stored in bursts through a private block (replicas) give the in-place update's bits: a range
    /// of several bursts and a tail, each kernel level.
    @Test(arguments: KernelDispatch.supported) func adamInBurstsGivesTheSameBits(_ level: KernelDispatch.Level) {
        let count = 3 * Adam.burst + 77
        func make() -> ParameterStore {
            let s = ParameterStore()
            s.declare("w", shape: [count], initializer: .uniform(low: -1, high: 1))
            var rng = RandomGenerator(seed: 11)
            s.allocate(rng: &rng)
            return s
        }
        let (a, b) = (make(), make())
        let shard = 64..<count
        let (plain, bursts) = (Adam(parameterCount: count, learningRate: 0.01, weightDecay: 1e-3, shard: shard),
                               Adam(parameterCount: count, learningRate: 0.01, weightDecay: 1e-3, shard: shard))
        (plain.kernels, bursts.kernels) = (level, level)
        bursts.storesWeightsInBursts = true
        var rng = RandomGenerator(seed: 12)
        for _ in 0..<3 {
            for i in 0..<count { let g = rng.uniform(-2, 2); a.gradients.pointer[i] = g; b.gradients.pointer[i] = g }
            plain.step(a, gradientScale: 0.5)
            bursts.step(b, gradientScale: 0.5)
        }
        #expect(a.values.toArray().map(\.bitPattern) == b.values.toArray().map(\.bitPattern))
        for (x, y) in zip(plain.state, bursts.state) {
            #expect(x.storage.toArray().map(\.bitPattern) == y.storage.toArray().map(\.bitPattern), "\(x.name)")
        }
    }
}
