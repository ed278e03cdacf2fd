/// The dispatched element-wise kernels at every build this CPU runs (`KernelDispatch.supported`), timed in one process
/// with the builds interleaved round by round, so that load from other processes falls on all of them alike: each
/// figure is the median over the rounds, and each ratio (against the AVX2 build) the median of the per-round ratios
/// with their range. Two sizes: one that stays in L2 (where the vector width shows) and one that streams from memory.
public enum KernelBenchmark {
    public struct Line: Sendable {
        public let kernel: String
        public let floats: Int
        /// Elements a second, per build, in `KernelDispatch.supported` order.
        public let rates: [(level: KernelDispatch.Level, elementsPerSecond: Double)]
        /// Per build: (median, lowest, highest) of its time over the AVX2 build's time in the same round, inverted (a
        /// speed-up: above 1 is faster than AVX2). Empty where the CPU has no AVX2.
        public let againstAVX2: [(level: KernelDispatch.Level, median: Double, low: Double, high: Double)]
    }

    /// `rounds` rounds of every build; each measurement repeats the kernel until ~`seconds` have passed.
    public static func run(sizes: [Int] = [1 << 16, 1 << 23], rounds: Int = 7, seconds: Double = 0.02) -> [Line] {
        var lines: [Line] = []
        for n in sizes {
            let x = UnsafeMutablePointer<Float>.allocate(capacity: n), t = UnsafeMutablePointer<Float>.allocate(capacity: n)
            let y = UnsafeMutablePointer<Float>.allocate(capacity: n), p = UnsafeMutablePointer<Float>.allocate(capacity: n)
            let m = UnsafeMutablePointer<Float>.allocate(capacity: n), v = UnsafeMutablePointer<Float>.allocate(capacity: n)
            defer { for b in [x, t, y, p, m, v] { b.deallocate() } }
            var rng = RandomGenerator(seed: 7)
            for i in 0..<n {
                x[i] = rng.uniform(-4, 4); t[i] = rng.uniform(0, 1); y[i] = 0; p[i] = 0; m[i] = 0; v[i] = rng.uniform(0, 0.01)
            }
            // Per-channel constants of one block (16 channels; the 8-channel rows read the first 8).
            let half = [Float](repeating: 0.5, count: 16), shift = [Float](repeating: -0.1, count: 16)
            var sums = [Double](repeating: 0, count: 32)
            let kernels: [(String, (KernelDispatch.Level) -> Void)] = [
                ("elu", { KernelDispatch.elu(n, x, y, alpha: 1, kernels: $0) }),
                ("batch norm + ELU", { KernelDispatch.affineELU(n, x, y, mean: 0.1, scale: 0.9, shift: 0.05, alpha: 1, kernels: $0) }),
                ("BCE on logits (terms)", { KernelDispatch.bceLogitsTerms(n, logits: x, targets: t, probabilities: p, terms: y, kernels: $0) }),
                ("BCE on logits (fused sum)", { _ = KernelDispatch.bceLogitsSum(n, logits: x, targets: t, probabilities: p, kernels: $0) }),
                ("adam", {
                    KernelDispatch.adam(n, weights: y, gradients: x, m: m, v: v, gradientScale: 1, beta1: 0.9, beta2: 0.999, epsilon: 1e-7,
                                        correctedRate: 1e-9, coupledDecay: 0, decoupledDecay: 0, kernels: $0)
                }),
            ] + [8, 16].flatMap { width -> [(String, (KernelDispatch.Level) -> Void)] in
                [("blocked batch norm + ELU (\(width) channels)", { level in
                    KernelDispatch.affineELUBlocked(width: width, n / width, x, y, mean: shift, scale: half, shift: shift, alpha: 1, kernels: level)
                 }),
                 ("blocked batch norm sums (\(width) channels)", { level in
                    sums.withUnsafeMutableBufferPointer { s in
                        KernelDispatch.blockedSumAndDot(width: width, n / width, x, t, shift: shift, sums: s.baseAddress!,
                                                        products: s.baseAddress! + 16, kernels: level)
                    }
                 })]
            }
            for (name, body) in kernels {
                let levels = KernelDispatch.supported
                var times = [[Double]](repeating: [], count: levels.count)
                for level in levels { body(level) }   // warm-up: pages touched, caches filled
                for _ in 0..<rounds {
                    for (k, level) in levels.enumerated() {
                        var calls = 0
                        let start = monotonicSeconds()
                        var elapsed = 0.0
                        repeat { body(level); calls += 1; elapsed = monotonicSeconds() - start } while elapsed < seconds
                        times[k].append(elapsed / Double(calls))
                    }
                }
                func median(_ values: [Double]) -> Double { let s = values.sorted(); return s[s.count / 2] }
                let rates = levels.enumerated().map { (level: $0.element, elementsPerSecond: Double(n) / median(times[$0.offset])) }
                var ratios: [(level: KernelDispatch.Level, median: Double, low: Double, high: Double)] = []
                if let reference = levels.firstIndex(of: .avx2) {
                    for (k, level) in levels.enumerated() where k != reference {
                        let perRound = zip(times[reference], times[k]).map { $0 / $1 }
                        ratios.append((level, median(perRound), perRound.min() ?? 0, perRound.max() ?? 0))
                    }
                }
                lines.append(Line(kernel: name, floats: n, rates: rates, againstAVX2: ratios))
            }
        }
        return lines
    }
}
