import Foundation
import Testing
@testable import StarlingCore

/// The element-wise ops and the optimizers share their loops over the process's threads (`Parallel`); one thread
/// and two give the same bits. Sizes are odd and above `Parallel.minimumElementwiseWork` so that the ranges split and
/// end mid-vector.
@Suite(.serialized) struct ThreadCountTests {
    static let count = Parallel.minimumElementwiseWork + 37

    /// Runs `body` on one thread, then on two, and returns both results.
    func onOneAndTwoThreads<T>(_ body: () -> T) -> (T, T) {
        (BLAS.withThreadCount(1, body), BLAS.withThreadCount(2, body))
    }

    @Test func alignedChunksCoverEveryElementOnce() {
        BLAS.withThreadCount(2) { alignedChunksCoverEveryElementOnTwoThreads() }
    }

    func alignedChunksCoverEveryElementOnTwoThreads() {
        let n = Self.count
        let hits = UnsafeMutablePointer<Int32>.allocate(capacity: n)
        defer { hits.deallocate() }
        hits.initialize(repeating: 0, count: n)
        nonisolated(unsafe) var starts: [Int] = []
        Parallel.forEachAlignedChunk(of: n, alignment: 64) { r in
            for i in r { hits[i] += 1 }
            if r.lowerBound % 64 != 0 { starts.append(r.lowerBound) }
        }
        #expect((0..<n).allSatisfy { hits[$0] == 1 })
        #expect(starts.isEmpty)
    }

    @Test func unaryOpsForwardAndBackward() {
        func run() -> [[Float]] {
            let shape = [Self.count]
            var results: [[Float]] = []
            for op in 0..<4 {
                let x = randomVariable(shape, seed: 70 + UInt64(op), -4, 4)
                let y: Tensor
                switch op {
                case 0: y = x.elu()
                case 1: y = x.sigmoid()
                case 2: y = x.relu()
                default: y = x.exp()
                }
                (y * randomVariable(shape, seed: 80)).sum().backward()
                results += [y.toArray(), x.gradArray ?? []]
            }
            return results
        }
        let (one, two) = onOneAndTwoThreads(run)
        #expect(one == two)
        #expect(one[0].count == Self.count && one[1].contains { $0 != 0 })
    }

    @Test func binaryOpsWithAndWithoutBroadcast() {
        func run() -> [[Float]] {
            var results: [[Float]] = []
            for rowWidth in [Self.count, 301] {
                let rows = rowWidth == Self.count ? 1 : Self.count / rowWidth
                let shape = rows == 1 ? [rowWidth] : [rows, rowWidth]
                let a = randomVariable(shape, seed: 90, -2, 2), b = randomVariable([rowWidth], seed: 91, 0.5, 2)
                let y = (a * b) / b + a - b
                (y * randomVariable(shape, seed: 92)).sum().backward()
                results += [y.toArray(), a.gradArray ?? [], b.gradArray ?? []]
            }
            return results
        }
        let (one, two) = onOneAndTwoThreads(run)
        #expect(one == two)
    }

    @Test func binaryCrossEntropyOnLogits() {
        func run() -> [[Float]] {
            let z = randomVariable([Self.count], seed: 60, -6, 6), t = randomVariable([Self.count], seed: 61, 0, 1)
            let loss = z.binaryCrossEntropy(logits: t)
            loss.backward()
            return [loss.toArray(), z.gradArray ?? []]
        }
        let (one, two) = onOneAndTwoThreads(run)
        #expect(one == two)
        // The pieces' sum against one sum in Double over the stable form.
        let z = randomValues(Self.count, seed: 60, -6, 6), t = randomValues(Self.count, seed: 61, 0, 1)
        var expected = 0.0
        for i in 0..<Self.count {
            let (zd, td) = (Double(z[i]), Double(t[i]))
            expected += Swift.max(zd, 0) - zd * td + Foundation.log(1 + Foundation.exp(-abs(zd)))
        }
        expected /= Double(Self.count)
        #expect(abs(Double(one[0][0]) - expected) < 1e-6 * (1 + abs(expected)))
    }

    @Test func optimizersStepTheSameBits() {
        func run() -> [[Float]] {
            var results: [[Float]] = []
            for optimizer in 0..<3 {
                let store = ParameterStore()
                store.declare("w", shape: [Self.count], initializer: .uniform(low: -1, high: 1))
                var rng = RandomGenerator(seed: 5)
                store.allocate(rng: &rng)
                let step: (ParameterStore) -> Void
                switch optimizer {
                case 0: let o = Adam(parameterCount: store.count, learningRate: 0.01); step = { o.step($0, gradientScale: 0.5) }
                case 1: let o = Adam.adamW(parameterCount: store.count); step = { o.step($0) }
                default: let o = SGD(parameterCount: store.count, learningRate: 0.1, momentum: 0.9, weightDecay: 0.01, nesterov: true); step = { o.step($0) }
                }
                for s in 0..<3 {
                    let g = randomValues(store.count, seed: 100 + UInt64(s))
                    for i in 0..<store.count { store.gradients.pointer[i] = g[i] }
                    step(store)
                }
                results.append(Array(UnsafeBufferPointer(start: store.values.pointer, count: store.count)))
            }
            return results
        }
        let (one, two) = onOneAndTwoThreads(run)
        #expect(one == two)
    }

    /// The test on the bits flags infinities and NaNs of either sign and any payload, and nothing finite: the largest
    /// floats, subnormals and zeros of either sign, in the 16-lane loop and in the tail, at every kernel level the CPU runs.
    @Test func firstNonFiniteIndexOnTheEdges() {
        // Every kernel level this CPU runs (the exponent test is a kernel of each level's module).
        let levels = KernelDispatch.supported
        let finite: [Float] = [.greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, -.leastNonzeroMagnitude,
                               .leastNormalMagnitude, 0, -0.0, 1, -1, Float(bitPattern: 0x7f7f_ffff), Float(bitPattern: 0xff7f_ffff)]
        let bad: [Float] = [.infinity, -.infinity, .nan, -.nan, .signalingNaN, Float(bitPattern: 0x7fff_ffff), Float(bitPattern: 0xff80_0001)]
        for count in [16, 37, 1 << 14 + 5] {
            var values = (0..<count).map { finite[$0 % finite.count] }
            #expect(values.withUnsafeBufferPointer { p in levels.map { firstNonFiniteIndex(p.baseAddress!, count: count, kernels: $0) } } == levels.map { _ in nil })
            for (k, x) in bad.enumerated() {
                let at = (k * 7 + 3) % count
                values[at] = x
                if count > 20 { values[count - 1] = .nan }   // the tail's, after it
                #expect(values.withUnsafeBufferPointer { p in levels.map { firstNonFiniteIndex(p.baseAddress!, count: count, kernels: $0) } } == levels.map { _ in at },
                        "\(x) at \(at) of \(count)")
                values = (0..<count).map { finite[$0 % finite.count] }
            }
        }
    }

    /// The bound test on the exponent bits: below 2^k passes (the largest float under it, subnormals, zeros), 2^k and
    /// up, infinities and NaNs fail, in the vector loop and the tail, on one thread and two, at every kernel level the
    /// CPU runs; and the bound for n terms
    /// is one whose largest value, added n times in order, stays finite, where twice the bound's power does not for 2.
    @Test func allFiniteBelowAPowerOfTwo() {
        let levels = KernelDispatch.supported
        for power in [1, 60, 125, 126, 127, 128] {
            let under = Float(sign: .plus, exponent: power, significand: 1).nextDown
            let passing: [Float] = [under, -under, .leastNonzeroMagnitude, 0, -0.0, 1e-30, Float(power <= 1 ? 1 : 2)]
            let failing: [Float] = (power < 128 ? [Float(sign: .plus, exponent: power, significand: 1), -Float(sign: .plus, exponent: power, significand: 1)] : [])
                + [.infinity, -.infinity, .nan, .greatestFiniteMagnitude].filter { !$0.isFinite || power < 128 }
            // The threaded size once (a debug build's scan of it is slow).
            for count in [16, 37, 1 << 14 + 5] + (power == 126 ? [Self.count] : []) {
                var values = (0..<count).map { passing[$0 % passing.count] }
                for threads in [1, 2] {
                    #expect(BLAS.withThreadCount(threads) { values.withUnsafeBufferPointer { p in levels.allSatisfy { allFinite(p.baseAddress!, count: count, below: power, kernels: $0) } } },
                            "2^\(power), \(count) values, \(threads) thread(s)")
                }
                for (k, x) in failing.enumerated() {
                    let at = [count - 1, (k * 7 + 3) % count][k % 2]
                    values[at] = x
                    #expect(values.withUnsafeBufferPointer { p in levels.allSatisfy { !allFinite(p.baseAddress!, count: count, below: power, kernels: $0) } }, "\(x) at \(at) of \(count), 2^\(power)")
                    values[at] = passing[at % passing.count]
                }
            }
        }
        #expect(allFinite([Float](), count: 0, below: 1))
        for terms in 1...9 {
            let power = summableWithoutOverflow(terms: terms)
            let largest = Float(sign: .plus, exponent: power, significand: 1).nextDown
            var sum: Float = 0
            for _ in 0..<terms { sum += largest }
            #expect(sum.isFinite, "\(terms) terms below 2^\(power)")
        }
        #expect(summableWithoutOverflow(terms: 2) == 126 && summableWithoutOverflow(terms: 3) == 125 && summableWithoutOverflow(terms: 4) == 125)
        let twice = Float(sign: .plus, exponent: 127, significand: 1)
        #expect(!(twice + twice).isFinite, "2^127 + 2^127 overflows: two terms need the bound below it")
    }

    /// The parallel search finds the first non-finite value a plain scan finds, wherever it is and whatever follows.
    @Test func firstNonFiniteIndexMatchesAScan() {
        let n = Self.count
        let values = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { values.deallocate() }
        let clean = randomValues(n, seed: 3, -1e30, 1e30)
        for threads in [1, 2] {
            BLAS.withThreadCount(threads) {
                for i in 0..<n { values[i] = clean[i] }
                #expect(firstNonFiniteIndex(values, count: n) == nil)
                #expect(firstNonFiniteIndex(values, count: 0) == nil)
                for (at, bad) in [(0, Float.nan), (n - 1, .infinity), (40_000, -.infinity), (1 << 14, .nan), (700_001, .nan)] {
                    values[at] = bad
                    values[n - 2] = .nan   // a later one must not win
                    #expect(firstNonFiniteIndex(values, count: n) == Swift.min(at, n - 2), "\(bad) at \(at), \(threads) thread(s)")
                    for i in 0..<n { values[i] = clean[i] }
                }
            }
        }
    }

    /// The thread count is the process's, and tests run in parallel in one process: stretches that hold a count
    /// (`BLAS.withThreadCount`) on two threads never overlap, so neither sees the other's count. (With
    /// `setThreadCount` and a restore, one test's count landed inside another's stretch: the fixed run of
    /// ThreadCalibrationTests took steps 370-374 of 465 on two threads.) A stretch nested on one thread is let in.
    @Test func stretchesOnTwoThreadsNeverOverlap() {
        final class Census: @unchecked Sendable {
            let lock = NSLock()
            var inside = 0, most = 0, nested = 0
            func enter() { lock.withLock { inside += 1; most = Swift.max(most, inside) } }
            func leave() { lock.withLock { inside -= 1 } }
        }
        let census = Census()
        let finished = DispatchSemaphore(value: 0)
        @Sendable func stretches(_ count: Int) {
            for _ in 0..<300 {
                BLAS.withThreadCount(count) {
                    census.enter()
                    usleep(20)
                    BLAS.withThreadCount(count) { census.lock.withLock { census.nested += 1 } }
                    census.leave()
                }
            }
        }
        Thread { stretches(2); finished.signal() }.start()
        stretches(1)
        finished.wait()
        #expect(census.most == 1, "two stretches were open at once")
        #expect(census.nested == 600)
    }
}
