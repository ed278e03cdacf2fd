import Testing
@testable import StarlingCore
#if canImport(Glibc)
import Glibc
#endif

/// A store with one parameter holding `values`, its gradient set to `grads`.
private func store(_ values: [Float], grads: [Float]) -> ParameterStore {
    let s = ParameterStore()
    s.declare("w", shape: [values.count], initializer: .zeros)
    var rng = RandomGenerator(seed: 0)
    s.allocate(rng: &rng)
    for i in values.indices { s.values.pointer[i] = values[i]; s.gradients.pointer[i] = grads[i] }
    return s
}

/// x / 2 where the compiler cannot fold it: a subnormal result unless this thread flushes them.
@inline(never) private func halved(_ x: Float) -> Float { x * 0.5 }

@Suite struct OptimizerTests {
    @Test func sgdMomentumAndWeightDecayByHand() {
        let s = store([1, -2], grads: [0.5, 0.25])
        let sgd = SGD(parameterCount: 2, learningRate: 0.1, momentum: 0.9, weightDecay: 0.01)
        sgd.step(s)
        // g' = g + 0.01 w = [0.51, 0.23]; v = g'; w = [1 - 0.051, -2 - 0.023]
        expectClose(s.values.toArray(), [0.949, -2.023], tolerance: 1e-6)
        sgd.step(s)   // same gradient: g' = [0.5 + 0.00949, 0.25 - 0.02023]; v = 0.9 v + g'
        let v = [0.9 * 0.51 + 0.50949, 0.9 * 0.23 + 0.22977]
        expectClose(s.values.toArray(), [Float(0.949 - 0.1 * v[0]), Float(-2.023 - 0.1 * v[1])], tolerance: 1e-6)
    }

    /// Adam against the textbook formula evaluated in Double, three steps with changing gradients.
    /// Each build of the update loop this CPU runs (`KernelDispatch`).
    @Test(arguments: KernelDispatch.supported) func adamMatchesReferenceFormula(_ level: KernelDispatch.Level) {
        let grads: [[Double]] = [[0.3, -1.0, 1e-3], [0.1, -0.5, 2e-3], [-0.2, 0.4, 0]]
        var w: [Double] = [0.5, -0.25, 2], m = [0.0, 0, 0], v = [0.0, 0, 0]
        let s = store(w.map(Float.init), grads: [0, 0, 0])
        let adam = Adam(parameterCount: 3, learningRate: 0.01)
        adam.kernels = level
        for (t, g) in grads.enumerated() {
            for i in 0..<3 { s.gradients.pointer[i] = Float(g[i]) }
            adam.step(s)
            let step = Double(t + 1)
            let lrT = 0.01 * (1 - pow(0.999, step)).squareRoot() / (1 - pow(0.9, step))
            for i in 0..<3 {
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i]
                w[i] -= lrT * m[i] / (v[i].squareRoot() + 1e-7)
            }
        }
        expectClose(s.values.toArray(), w.map(Float.init), tolerance: 1e-6)
        #expect(adam.stepCount == 3)
    }

    /// ZeRO's ranges: end to end, as equal as 64-element blocks allow, starting at multiples of 64, empty ones last.
    @Test func shardRangesCoverTheLayout() {
        #expect(OptimizerShards.ranges(parameterCount: 1000, ranks: 3) == [0..<320, 320..<640, 640..<1000])
        #expect(OptimizerShards.ranges(parameterCount: 100, ranks: 3) == [0..<0, 0..<64, 64..<100])
        #expect(OptimizerShards.ranges(parameterCount: 0, ranks: 2) == [0..<0, 0..<0])
        for (count, ranks) in [(268_718_623, 2), (12_345, 3), (63, 4), (64 * 7, 7)] {
            let ranges = OptimizerShards.ranges(parameterCount: count, ranks: ranks)
            #expect(ranges.first?.lowerBound == 0 && ranges.last?.upperBound == count)
            for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(a.upperBound == b.lowerBound) }
            #expect(ranges.allSatisfy { $0.lowerBound % 64 == 0 })
            let sizes = ranges.map(\.count)
            #expect((sizes.max() ?? 0) - (sizes.min() ?? 0) <= 64 + count % 64)
        }
    }

    /// Optimizers over the shards of 3 ranks, each stepping its range with its own state, give the bits one optimizer
    /// over every parameter gives (SGD with Nesterov momentum and weight decay, Adam with coupled decay, AdamW), with
    /// each build of the update loop this CPU runs; the other ranks' ranges are left untouched.
    @Test(arguments: KernelDispatch.supported) func shardedStepsGiveTheUnshardedBits(_ level: KernelDispatch.Level) {
        let count = 64 * 37 + 29
        let initial = (0..<count).map { Float(sin(Double($0) * 0.37)) }
        for kind in 0..<3 {
            func make(_ shard: Range<Int>?) -> any Optimizer {
                switch kind {
                case 0: return SGD(parameterCount: count, learningRate: 0.1, momentum: 0.9, weightDecay: 0.01, nesterov: true, shard: shard)
                case 1: let a = Adam(parameterCount: count, learningRate: 0.01, weightDecay: 0.02, shard: shard); a.kernels = level; return a
                default: let a = Adam.adamW(parameterCount: count, learningRate: 0.01, shard: shard); a.kernels = level; return a
                }
            }
            let whole = store(initial, grads: initial)
            let reference = make(nil)
            let ranges = OptimizerShards.ranges(parameterCount: count, ranks: 3)
            let parts = ranges.map { (store: store(initial, grads: initial), optimizer: make($0)) }
            for step in 0..<4 {
                let g = (0..<count).map { Float(cos(Double($0 * (step + 1)) * 0.11)) }
                for i in 0..<count { whole.gradients.pointer[i] = g[i] }
                reference.step(whole, gradientScale: 0.5)
                for part in parts {
                    for i in 0..<count { part.store.gradients.pointer[i] = g[i] }
                    part.optimizer.step(part.store, gradientScale: 0.5)
                }
            }
            let expected = whole.values.toArray()
            for (range, part) in zip(ranges, parts) {
                let got = part.store.values.toArray()
                #expect(Array(got[range]) == Array(expected[range]), "optimizer \(kind), shard \(range)")
                #expect(Array(got[..<range.lowerBound]) == Array(initial[..<range.lowerBound]))
                #expect(Array(got[range.upperBound...]) == Array(initial[range.upperBound...]))
                for ((_, mine), (_, all)) in zip(part.optimizer.state, reference.state) {
                    #expect(mine.toArray() == Array(all.toArray()[range]))
                }
            }
        }
    }

    #if arch(x86_64)
    /// Adam's moments and SGD's velocities that decay into float32's subnormal range are flushed to zero
    /// (`KernelDispatch.withSubnormalsFlushed`) on every kernel level: one below the smallest normal float after the
    /// multiply by beta1 (FTZ), one subnormal on input (DAZ). The weights keep the bits an unflushed update leaves them
    /// (its step, ~1e-35, is far below their last place), and the thread's own arithmetic is not flushed afterwards.
    /// (x86 only: elsewhere there is no MXCSR and nothing is flushed.)
    @Test(arguments: KernelDispatch.supported) func subnormalMomentsAreFlushedToZero(_ level: KernelDispatch.Level) {
        let n = 37   // the vector loops and a tail
        let weights = (0..<n).map { Float($0 + 1) * 0.01 }
        let s = store(weights, grads: [Float](repeating: 0, count: n))
        let adam = Adam(parameterCount: n, learningRate: 0.01)
        adam.kernels = level
        let (m, v) = (adam.state[0].storage.pointer, adam.state[1].storage.pointer)
        for i in 0..<n { m[i] = i % 2 == 0 ? 1.25e-38 : -Float.leastNormalMagnitude / 8; v[i] = 1e-6 }
        #expect((0..<n).allSatisfy { m[$0] != 0 })
        adam.step(s)
        #expect((0..<n).allSatisfy { m[$0] == 0 }, "moments left subnormal at \(level)")
        #expect((0..<n).allSatisfy { v[$0] == Float(0.999) * Float(1e-6) })
        #expect(s.values.toArray() == weights)

        let sgd = SGD(parameterCount: n, learningRate: 0.1, momentum: 0.9)
        let velocity = sgd.state[0].storage.pointer
        for i in 0..<n { velocity[i] = i % 2 == 0 ? 1.25e-38 : -Float.leastNormalMagnitude / 8 }
        sgd.step(s)
        #expect((0..<n).allSatisfy { velocity[$0] == 0 })
        #expect(s.values.toArray() == weights)
        #expect(halved(Float.leastNormalMagnitude) > 0, "MXCSR not restored after the optimizer's pass")
    }
    #endif

    @Test func adamWDecaysDecoupled() {
        let s = store([1], grads: [0])
        let adamw = Adam.adamW(parameterCount: 1, learningRate: 0.1, weightDecay: 0.5)
        adamw.step(s)   // zero gradient: only the decay acts, w -= lr * wd * w
        expectClose(s.values.toArray(), [0.95], tolerance: 1e-6)
    }

    /// adam and adamw both take Keras's epsilon, from one constant (the library's adamW once used PyTorch's 1e-8
    /// while `train --optimizer adamw` passed 1e-7).
    @Test func adamAndAdamWShareKerasEpsilon() {
        #expect(Adam.kerasEpsilon == 1e-7)
        #expect(Adam(parameterCount: 1).epsilon == 1e-7)
        #expect(Adam.adamW(parameterCount: 1).epsilon == 1e-7)
    }

    @Test func schedules() {
        #expect(StepDecay(factor: 0.5, everyEpochs: 2).rate(base: 1, step: 0, epoch: 5) == 0.25)
        let cosine = CosineDecay(totalSteps: 100, minimum: 0.1)
        #expect(abs(cosine.rate(base: 1, step: 0, epoch: 0) - 1) < 1e-6)
        #expect(abs(cosine.rate(base: 1, step: 50, epoch: 0) - 0.55) < 1e-6)
        #expect(abs(cosine.rate(base: 1, step: 100, epoch: 0) - 0.1) < 1e-6)
        let warm = LinearWarmup(warmupSteps: 4)
        #expect([0, 1, 2, 3, 4].map { warm.rate(base: 1, step: $0, epoch: 0) } == [0.25, 0.5, 0.75, 1, 1])
    }

    @Test func reduceOnPlateauFollowsKeras() {
        var plateau = ReduceOnPlateau(factor: 0.2, patience: 2, minimum: 1e-3)
        var lr: Float = 0.1
        for loss: Float in [1.0, 0.9, 0.95, 0.92] { lr = plateau.observe(loss, currentRate: lr) }
        #expect(abs(lr - 0.02) < 1e-7)      // two epochs without improvement on 0.9
        for loss: Float in [0.91, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98] { lr = plateau.observe(loss, currentRate: lr) }
        #expect(lr == 1e-3)                 // floored at the minimum
    }
}

@Suite struct TrainingSmokeTests {
    /// A 2-8-1 MLP learns XOR: the classic proof that forward, backward and the optimizer fit together.
    @Test func mlpLearnsXOR() {
        let params = ParameterStore()
        let w1 = params.declare("h/kernel", shape: [2, 8], initializer: .glorotUniform(fanIn: 2, fanOut: 8))
        let b1 = params.declare("h/bias", shape: [8], initializer: .zeros)
        let w2 = params.declare("out/kernel", shape: [8, 1], initializer: .glorotUniform(fanIn: 8, fanOut: 1))
        let b2 = params.declare("out/bias", shape: [1], initializer: .zeros)
        var rng = RandomGenerator(seed: 42)
        params.allocate(rng: &rng)
        let x = Tensor(shape: [4, 2], values: [0, 0, 0, 1, 1, 0, 1, 1])
        let y = Tensor(shape: [4, 1], values: [0, 1, 1, 0])
        let adam = Adam(parameterCount: params.count, learningRate: 0.05)
        var loss: Float = .infinity
        for _ in 0..<500 {
            params.zeroGradients()
            let l = x.linear(w1.value, b1.value).tanh().linear(w2.value, b2.value).binaryCrossEntropy(logits: y)
            l.backward()
            adam.step(params)
            loss = l.item
        }
        #expect(loss < 0.01)
        let p = GradMode.disabled { x.linear(w1.value, b1.value).tanh().linear(w2.value, b2.value).sigmoid().toArray() }
        #expect(p[0] < 0.05 && p[1] > 0.95 && p[2] > 0.95 && p[3] < 0.05)
    }

    /// The checker itself must catch a wrong gradient, or every gradient test above proves nothing.
    @Test func gradientCheckerCatchesAWrongBackward() {
        let x = randomVariable([5], seed: 1)
        withKnownIssue {
            checkGradients([x]) { inputs in
                inputs[0].unary({ n, x, y in for i in 0..<n { y[i] = x[i] * x[i] } },
                                backward: { n, x, _, dy, dx in for i in 0..<n { dx[i] += dy[i] * x[i] } })   // should be 2x
            }
        }
    }
}
