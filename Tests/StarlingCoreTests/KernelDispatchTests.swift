import Foundation
import Testing
@testable import StarlingCore

extension KernelDispatch.Level: CustomTestStringConvertible {
    public var testDescription: String { rawValue }
}

/// Every build of the dispatched kernels this CPU can run, each against values computed in Double with libm.
@Suite struct KernelDispatchTests {
    /// cpuid's answer against the kernel's (/proc/cpuinfo), flag by flag.
    @Test func detectionAgreesWithProcCpuinfo() throws {
        #if os(Linux) && arch(x86_64)
        let text = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(line.split(separator: ":")[1].split(separator: " ").map(String.init))
        let needed = ["pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm"]
        #expect(KernelDispatch.supported.contains(.avx2) == needed.allSatisfy(flags.contains))
        // Linux lists the AVX-512 flags only where the OS saves the ZMM state too, as the dispatch asks of xgetbv.
        let avx512 = needed + ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"]
        #expect(KernelDispatch.supported.contains(.avx512) == avx512.allSatisfy(flags.contains))
        #endif
        #expect(KernelDispatch.supported.first == .baseline && KernelDispatch.supported.contains(KernelDispatch.current))
    }

    /// STARLING_KERNELS: a level the CPU runs is taken, anything else refused (the CLI then exits with the message).
    @Test func environmentOverrideIsCheckedAgainstTheCPU() {
        let avx2Only: [KernelDispatch.Level] = [.baseline, .avx2]
        #expect(KernelDispatch.level(named: nil, supported: avx2Only) == .success(nil))
        #expect(KernelDispatch.level(named: "", supported: avx2Only) == .success(nil))
        #expect(KernelDispatch.level(named: "baseline", supported: avx2Only) == .success(.baseline))
        #expect(KernelDispatch.level(named: "avx2", supported: avx2Only) == .success(.avx2))
        #expect(KernelDispatch.level(named: "avx512", supported: KernelDispatch.Level.allCases) == .success(.avx512))
        guard case .failure(let unsupported) = KernelDispatch.level(named: "avx512", supported: avx2Only),
              case .failure(let unknown) = KernelDispatch.level(named: "AVX2", supported: avx2Only),
              case .failure(let below) = KernelDispatch.level(named: "avx2", supported: [.baseline]) else {
            Issue.record("a bad value was accepted")
            return
        }
        #expect(unsupported.description == "STARLING_KERNELS=avx512: this CPU runs only baseline, avx2 (cpuid)")
        #expect(unknown.description == "STARLING_KERNELS=AVX2: expected baseline, avx2 or avx512")
        #expect(below.description == "STARLING_KERNELS=avx2: this CPU runs only baseline (cpuid)")
    }

    @Test(arguments: KernelDispatch.supported) func bceOnLogitsTerms(_ level: KernelDispatch.Level) {
        let n = 4099   // not a multiple of any vector width: the tail runs too
        var z = randomValues(n, seed: 11, -30, 30), t = randomValues(n, seed: 12, 0, 1)
        z[0] = 0; z[1] = 88; z[2] = -88; z[3] = 1e-30; t[0] = 1; t[1] = 0; t[2] = 1
        var p = [Float](repeating: .nan, count: n), l = p
        z.withUnsafeBufferPointer { zp in t.withUnsafeBufferPointer { tp in
            p.withUnsafeMutableBufferPointer { pp in l.withUnsafeMutableBufferPointer { lp in
                KernelDispatch.bceLogitsTerms(n, logits: zp.baseAddress!, targets: tp.baseAddress!, probabilities: pp.baseAddress!,
                                              terms: lp.baseAddress!, kernels: level)
            } }
        } }
        var worstTerm = 0.0, worstSigmoid = 0.0
        for i in 0..<n {
            let zi = Double(z[i]), ti = Double(t[i])
            let term = max(zi, 0) - zi * ti + log1p(exp(-abs(zi)))
            let sigmoid = 1 / (1 + exp(-zi))
            worstTerm = max(worstTerm, abs(Double(l[i]) - term) / max(1, abs(term)))
            worstSigmoid = max(worstSigmoid, abs(Double(p[i]) - sigmoid) / max(1e-30, sigmoid))
        }
        #expect(worstTerm < 2e-6)
        #expect(worstSigmoid < 1e-6)
    }

    /// The fused sum gives the stored terms' chunked sum bit for bit, and the same sigmoid.
    @Test(arguments: KernelDispatch.supported) func bceOnLogitsSumMatchesTheTerms(_ level: KernelDispatch.Level) {
        let n = 10_007   // two full chunks of 4096, a partial one and a tail that is no whole vector
        var z = randomValues(n, seed: 31, -40, 40)
        z[5] = -0.0; z[6] = 0; z[7] = 90
        let t = randomValues(n, seed: 32, 0, 1)
        var p = [Float](repeating: .nan, count: n), terms = p, q = p
        var fused = 0.0, reference = 0.0
        z.withUnsafeBufferPointer { zp in t.withUnsafeBufferPointer { tp in
            p.withUnsafeMutableBufferPointer { pp in
                fused = KernelDispatch.bceLogitsSum(n, logits: zp.baseAddress!, targets: tp.baseAddress!, probabilities: pp.baseAddress!,
                                                    kernels: level)
            }
            q.withUnsafeMutableBufferPointer { qp in terms.withUnsafeMutableBufferPointer { lp in
                KernelDispatch.bceLogitsTerms(n, logits: zp.baseAddress!, targets: tp.baseAddress!, probabilities: qp.baseAddress!,
                                              terms: lp.baseAddress!, kernels: level)
                var i = 0
                while i < n { let len = min(4096, n - i); reference += Double(VectorMath.sum(len, lp.baseAddress! + i)); i += len }
            } }
        } }
        #expect(fused == reference)
        #expect(p == q)
    }

    @Test(arguments: KernelDispatch.supported) func eluAndAffineELU(_ level: KernelDispatch.Level) {
        let n = 1031
        let x = randomValues(n, seed: 5, -20, 5)
        var y = [Float](repeating: .nan, count: n), affine = y
        let (mean, scale, shift, alpha): (Float, Float, Float, Float) = (0.25, 1.5, -0.5, 0.7)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { KernelDispatch.elu(n, xp.baseAddress!, $0.baseAddress!, alpha: alpha, kernels: level) }
            affine.withUnsafeMutableBufferPointer {
                KernelDispatch.affineELU(n, xp.baseAddress!, $0.baseAddress!, mean: mean, scale: scale, shift: shift, alpha: alpha, kernels: level)
            }
        }
        func elu(_ v: Double) -> Double { v > 0 ? v : Double(alpha) * expm1(v) }
        for i in 0..<n {
            let v = Double(x[i])
            #expect(abs(Double(y[i]) - elu(v)) <= 1e-6 * max(1, abs(elu(v))))
            // The affine part rounds in Float as batch norm does; the reference takes that Float value.
            let a = Double(scale * (x[i] - mean) + shift)
            #expect(abs(Double(affine[i]) - elu(a)) <= 1e-6 * max(1, abs(elu(a))))
        }
        // In place, as batch norm's 2-D path calls it.
        var inPlace = x
        inPlace.withUnsafeMutableBufferPointer { KernelDispatch.elu(n, $0.baseAddress!, $0.baseAddress!, alpha: alpha, kernels: level) }
        #expect(inPlace == y)
    }

    /// Adam over 37 parameters (vector loop and tail), with coupled (L2) and decoupled (AdamW) decay, against
    /// Keras's formula in Double.
    @Test(arguments: KernelDispatch.supported, [false, true]) func adamOverManyParameters(_ level: KernelDispatch.Level, decoupled: Bool) {
        let n = 37, steps = 3
        let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-7, 0.05)
        let params = ParameterStore()
        params.declare("w", shape: [n], initializer: .zeros)
        var rng = RandomGenerator(seed: 1)
        params.allocate(rng: &rng)
        let start = randomValues(n, seed: 21, -2, 2)
        for i in 0..<n { params.values.pointer[i] = start[i] }
        var w = start.map(Double.init), m = [Double](repeating: 0, count: n), v = m
        let adam = Adam(parameterCount: n, learningRate: Float(lr), epsilon: Float(eps), weightDecay: Float(wd), decoupled: decoupled)
        adam.kernels = level
        for step in 1...steps {
            let g = randomValues(n, seed: UInt64(30 + step), -1, 1)
            for i in 0..<n { params.gradients.pointer[i] = g[i] }
            adam.step(params, gradientScale: 0.5)
            let lrT = lr * (1 - pow(b2, Double(step))).squareRoot() / (1 - pow(b1, Double(step)))
            for i in 0..<n {
                let grad = 0.5 * Double(g[i]) + (decoupled ? 0 : wd * w[i])
                m[i] = b1 * m[i] + (1 - b1) * grad
                v[i] = b2 * v[i] + (1 - b2) * grad * grad
                w[i] -= lrT * m[i] / (v[i].squareRoot() + eps) + (decoupled ? lr * wd * w[i] : 0)
            }
        }
        for i in 0..<n { #expect(abs(Double(params.values.pointer[i]) - w[i]) < 2e-6) }
    }

    /// Every build against every other on the same inputs, kernel by kernel: the fused builds (AVX2, AVX-512) do the
    /// same operations lane for lane, 8 or 16 lanes at a time, and must give the same bits; the baseline build rounds
    /// each multiply-add twice and may differ from them by a few units in the last place.
    @Test func buildsAgreeWithEachOther() throws {
        try #require(KernelDispatch.supported.count > 1, "this CPU runs the baseline build only")
        let n = 4133   // a 16-lane loop, an 8-lane remainder and a scalar tail
        var z = randomValues(n, seed: 61, -30, 30)
        z[0] = 0; z[1] = 88; z[2] = -88; z[3] = -0.0
        let t = randomValues(n, seed: 62, 0, 1), g = randomValues(n, seed: 63, -1, 1)
        func outputs(_ level: KernelDispatch.Level) -> [[Float]] {
            var p = [Float](repeating: .nan, count: n), l = p, e = p, a = p, q = p
            var w = randomValues(n, seed: 64, -2, 2), m = randomValues(n, seed: 65, -0.1, 0.1), v = randomValues(n, seed: 66, 0, 0.01)
            var sum = 0.0
            z.withUnsafeBufferPointer { zp in t.withUnsafeBufferPointer { tp in
                let (zb, tb) = (zp.baseAddress!, tp.baseAddress!)
                p.withUnsafeMutableBufferPointer { pp in l.withUnsafeMutableBufferPointer { lp in
                    KernelDispatch.bceLogitsTerms(n, logits: zb, targets: tb, probabilities: pp.baseAddress!, terms: lp.baseAddress!, kernels: level)
                } }
                q.withUnsafeMutableBufferPointer {
                    sum = KernelDispatch.bceLogitsSum(n, logits: zb, targets: tb, probabilities: $0.baseAddress!, kernels: level)
                }
                e.withUnsafeMutableBufferPointer { KernelDispatch.elu(n, zb, $0.baseAddress!, alpha: 0.7, kernels: level) }
                a.withUnsafeMutableBufferPointer {
                    KernelDispatch.affineELU(n, zb, $0.baseAddress!, mean: 0.3, scale: 0.2, shift: -0.4, alpha: 0.7, kernels: level)
                }
            } }
            g.withUnsafeBufferPointer { gp in w.withUnsafeMutableBufferPointer { wp in
                m.withUnsafeMutableBufferPointer { mp in v.withUnsafeMutableBufferPointer { vp in
                    KernelDispatch.adam(n, weights: wp.baseAddress!, gradients: gp.baseAddress!, m: mp.baseAddress!, v: vp.baseAddress!,
                                        gradientScale: 0.5, beta1: 0.9, beta2: 0.999, epsilon: 1e-7, correctedRate: 0.003,
                                        coupledDecay: 0.01, decoupledDecay: 0.0002, kernels: level)
                } }
            } }
            return [p, l, q, [Float(sum)], e, a, w, m, v]
        }
        let baseline = outputs(.baseline)
        var fused: [[Float]]?
        for level in KernelDispatch.supported.dropFirst() {
            let out = outputs(level)
            if let first = fused { #expect(out == first, "\(level.rawValue) against the first fused build") } else { fused = out }
            for (k, (mine, reference)) in zip(out, baseline).enumerated() {
                let worst = zip(mine, reference).map { abs(Double($0) - Double($1)) / max(1e-3, abs(Double($1))) }.max() ?? 0
                #expect(worst < 4e-6, "\(level.rawValue) against baseline, output \(k)")
            }
        }
    }

    /// Starling's convolution kernels (AVX2 and AVX-512 builds only) give the same bits in both: the same operations on
    /// 8-lane vectors. Their values are checked against oneDNN and direct loops in BlockedLayoutTests, in the build the
    /// process runs; this carries that check over to the other build.
    /// An AVX2-only CPU runs one fused build, so there is no second to compare with: the test is skipped there (and
    /// says so), not passed.
    @Test(.enabled(if: KernelDispatch.supported.filter { $0 != .baseline }.count > 1, "this CPU runs one fused build at most"))
    func convolutionKernelsAgreeAcrossFusedBuilds() throws {
        let fused = KernelDispatch.supported.filter { $0 != .baseline }
        func outputs(_ level: KernelDispatch.Level) -> [[Float]] {
            // Conv1's 5-wide weight gradient: 2 images of 3 x 7 x 13 (NCHW), dy in two blocks of 8 channels.
            let (images, channels, height, width) = (2, 3, 7, 13)
            let x = randomValues(images * channels * height * width, seed: 70), dy = randomValues(images * 2 * height * width * 8, seed: 71)
            var dw = [Float](repeating: 0, count: 16 * channels * 25), bias = [Float](repeating: 0, count: 16)
            var padded = [Float](repeating: 0, count: width + 12)
            x.withUnsafeBufferPointer { xp in dy.withUnsafeBufferPointer { dp in
                dw.withUnsafeMutableBufferPointer { wp in bias.withUnsafeMutableBufferPointer { bp in padded.withUnsafeMutableBufferPointer { pp in
                    KernelDispatch.fiveWideWeightGradient(images: images, channels: channels, height: height, width: width, kernelH: 5,
                                                          padTop: 2, padLeft: 2, outHeight: height, outWidth: width, outBlocks: 2,
                                                          x: xp.baseAddress!, dy: dp.baseAddress!, dw: wp.baseAddress!,
                                                          biasGradient: bp.baseAddress!, blockPairs: 0..<1, padded: pp.baseAddress!,
                                                          kernels: level)
                } } }
            } }
            // A 3x3 weight gradient's rows: one input block of 5 x 11, dy in three blocks.
            let (h3, w3) = (5, 11)
            let input = randomValues(h3 * w3 * 8, seed: 72), gradient = randomValues(3 * h3 * w3 * 8, seed: 73)
            var partial = [SIMD8<Float>](repeating: .zero, count: BlockedWeightGradient3x3.sumCount(outBlockCount: 3))
            input.withUnsafeBufferPointer { ip in gradient.withUnsafeBufferPointer { gp in partial.withUnsafeMutableBufferPointer { pp in
                for y in 0..<h3 {
                    KernelDispatch.blockedWeightGradient3x3Row(y, height: h3, width: w3, input: ip.baseAddress!, outputGradient: gp.baseAddress!,
                                                               outBlockCount: 3, partial: pp.baseAddress!, withBias: true, kernels: level)
                }
            } } }
            // The direct forward pass: a blocked input of 8 channels, 4 x 14, 3x3 "same", into one pair of output blocks.
            let (hf, wf, k) = (4, 14, 3)
            let (paddedWidth, paddedHeight) = (wf + k - 1, hf + k - 1)
            var image = [Float](repeating: 0, count: paddedWidth * paddedHeight * 8)
            let values = randomValues(hf * wf * 8, seed: 74)
            for row in 0..<hf { for i in 0..<(wf * 8) { image[((row + 1) * paddedWidth + 1) * 8 + i] = values[row * wf * 8 + i] } }
            let w = randomValues(16 * 8 * k * k, seed: 75), b = randomValues(16, seed: 76)
            var packed = [Float](repeating: 0, count: w.count)
            w.withUnsafeBufferPointer { wp in
                packed.withUnsafeMutableBufferPointer { DirectForward.pack(wp.baseAddress!, outChannels: 16, channels: 8, taps: k * k, into: $0.baseAddress!) }
            }
            let steps = DirectForward.stepOffsets(channels: 8, kernel: k, paddedWidth: paddedWidth, paddedPlane: paddedWidth * paddedHeight * 8,
                                                  blocked: true)
            var out = [Float](repeating: .nan, count: 2 * hf * wf * 8)
            var moments = [SIMD8<Double>](repeating: .zero, count: 4)
            image.withUnsafeBufferPointer { ip in steps.withUnsafeBufferPointer { sp in packed.withUnsafeBufferPointer { wp in
                b.withUnsafeBufferPointer { bp in out.withUnsafeMutableBufferPointer { op in moments.withUnsafeMutableBufferPointer { mp in
                    for row in 0..<hf {
                        KernelDispatch.directForwardRow(row, width: wf, rowFloats: paddedWidth * 8, blocked: true, padded: ip.baseAddress!,
                                                        steps: sp.baseAddress!, stepCount: sp.count, weights: wp.baseAddress!,
                                                        bias: bp.baseAddress!, out0: op.baseAddress! + row * wf * 8,
                                                        out1: op.baseAddress! + (hf + row) * wf * 8, moments: mp.baseAddress!, kernels: level)
                    }
                } } }
            } } }
            return [dw, bias, partial.flatMap { v in (0..<8).map { v[$0] } }, out, moments.flatMap { m in (0..<8).map { Float(m[$0]) } }]
        }
        let first = outputs(fused[0])
        #expect(!first[3].contains { $0.isNaN })   // every output pixel written
        for level in fused.dropFirst() { #expect(outputs(level) == first, "\(level.rawValue) against \(fused[0].rawValue)") }
    }

    /// The blocked layout's loops (no multiply-add to fuse in them) give the same bits in every build, at both block
    /// widths; and a 16-channel block gives what two 8-channel blocks give, lane for lane (the sums in the same order).
    @Test(arguments: [8, 16]) func blockedLoopsAgreeAcrossBuilds(width: Int) throws {
        try #require(KernelDispatch.supported.count > 1, "this CPU runs the baseline build only")
        let pixels = 29
        let a = randomValues(2 * width * pixels, seed: 40, -3, 3), b = randomValues(2 * width * pixels, seed: 41, -3, 3)
        let v = { (seed: UInt64) in randomValues(width, seed: seed) }
        func results(_ level: KernelDispatch.Level) -> [[Float]] {
            var sums = [Double](repeating: 0, count: 6 * width)
            var dx = b, dz = a, pooled = [Float](repeating: 0, count: width * pixels / 2), routed = [Float](repeating: 1, count: 2 * width * pixels)
            a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in sums.withUnsafeMutableBufferPointer { s in
                let (x, y, sp) = (ap.baseAddress!, bp.baseAddress!, s.baseAddress!)
                KernelDispatch.blockedSumAndDot(width: width, pixels, x, y, shift: v(42), sums: sp, products: sp + width, kernels: level)
                dx.withUnsafeMutableBufferPointer {
                    KernelDispatch.blockedInputGradient(width: width, pixels, dy: x, x: y, into: $0.baseAddress!, mean: v(43), scale: v(44),
                                                        slope: v(45), offset: v(46), overwrite: false, kernels: level)
                }
                pooled.withUnsafeMutableBufferPointer {
                    KernelDispatch.maxPoolRow(width: width, pixels / 2, top: x, bottom: x + width * pixels, into: $0.baseAddress!, kernels: level)
                }
                pooled.withUnsafeBufferPointer { pp in routed.withUnsafeMutableBufferPointer { r in
                    KernelDispatch.maxPoolRowGradient(width: width, pixels / 2, top: x, bottom: x + width * pixels, y: pp.baseAddress!, dy: y,
                                                      topGradient: r.baseAddress!, bottomGradient: r.baseAddress! + width * pixels,
                                                      overwrite: false, kernels: level)
                } }
            } } }
            // The pooled batch norm + activation's backward loops, from the forward's pooled output and window indices (the
            // forward in the baseline build: its ELU's exp rounds differently with fused multiply-adds).
            var pooledDx = b
            for (k, activation) in [PooledActivation.elu(alpha: 0.6), .leakyReLU(slope: 0.1)].enumerated() {
                var pooledY = [Float](repeating: 0, count: width * pixels / 2), windows = [UInt8](repeating: 0, count: width * pixels / 8)
                a.withUnsafeBufferPointer { ap in sums.withUnsafeMutableBufferPointer { s in
                    let (x, sp) = (ap.baseAddress!, s.baseAddress! + 2 * width)
                    pooledY.withUnsafeMutableBufferPointer { yp in windows.withUnsafeMutableBytes { wp in
                        KernelDispatch.pooledForwardRow(width: width, pixels / 2, top: x, bottom: x + width * pixels, mean: v(47), scale: v(48),
                                                        shift: v(49), activation: activation, into: yp.baseAddress!, windows: wp.baseAddress!,
                                                        kernels: .baseline)
                    } }
                    pooledY.withUnsafeBufferPointer { yp in windows.withUnsafeBytes { wp in b.withUnsafeBufferPointer { bp in
                        KernelDispatch.pooledGradientSums(width: width, pixels / 2, top: x, bottom: x + width * pixels, y: yp.baseAddress!,
                                                          dy: bp.baseAddress!, windows: wp.baseAddress!, mean: v(47), activation: activation,
                                                          sums: sp + 2 * k * width, products: sp + (2 * k + 1) * width, kernels: level)
                        pooledDx.withUnsafeMutableBufferPointer {
                            KernelDispatch.pooledInputGradientRow(width: width, pixels / 2, top: x, bottom: x + width * pixels, y: yp.baseAddress!,
                                                                  dy: bp.baseAddress!, windows: wp.baseAddress!, topGradient: $0.baseAddress!,
                                                                  bottomGradient: $0.baseAddress! + width * pixels, mean: v(47), scale: v(48),
                                                                  slope: v(45), offset: v(46), activation: activation, overwrite: false,
                                                                  kernels: level)
                        }
                    } } }
                } }
            }
            return [sums.map { Float($0) }, dx, dz, pooled, routed, pooledDx]
        }
        let baseline = results(.baseline)
        for level in KernelDispatch.supported.dropFirst() { #expect(results(level) == baseline, "\(level.rawValue)") }
    }

    /// Each blocked loop on 16-channel blocks against the same loop on the two 8-channel blocks holding the same
    /// channels (lanes 0-7 and 8-15 of each pixel), in every build: the same bits, the sums included (each lane's sum
    /// runs over the pixels in the same order at either width).
    @Test(arguments: KernelDispatch.supported) func sixteenChannelBlocksMatchTwoBlocksOfEight(level: KernelDispatch.Level) {
        let pixels = 24   // a plane; the pooling reads it as two rows of 12 pixels
        let a = randomValues(16 * pixels, seed: 60, -3, 3), b = randomValues(16 * pixels, seed: 61, -3, 3)
        let constants = (62...65).map { randomValues(16, seed: UInt64($0), -1, 2) }
        /// [count, 16] as two [count, 8] planes: lanes 0-7 of every pixel, then lanes 8-15.
        func split(_ x: [Float], _ count: Int) -> [Float] {
            var planes: [Float] = []
            for h in 0..<2 { for p in 0..<count { let at = 16 * p + 8 * h; planes += x[at..<(at + 8)] } }
            return planes
        }
        func run(width: Int, _ a: [Float], _ b: [Float]) -> [[Float]] {
            var y = [Float](repeating: 0, count: 16 * pixels), leaky = y, dx = b, routed = y, pooledDx = b
            var maxima = [Float](repeating: 0, count: 4 * pixels), pooled = maxima, sums = [Double](repeating: 0, count: 64)
            var windows = [UInt8](repeating: 0, count: pixels)   // 2 bits for each of the 4 x pixels pooled values
            for h in 0..<(16 / width) {
                let (at, k, o) = (h * width * pixels, h * width, h * width * pixels / 4)
                let (mean, scale, shift, offset) = (Array(constants[0][k...]), Array(constants[1][k...]), Array(constants[2][k...]),
                                                    Array(constants[3][k...]))
                a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in
                    let (x, g) = (ap.baseAddress! + at, bp.baseAddress! + at)
                    let (top, bottom) = (x, x + width * pixels / 2)
                    y.withUnsafeMutableBufferPointer {
                        KernelDispatch.affineELUBlocked(width: width, pixels, x, $0.baseAddress! + at, mean: mean, scale: scale, shift: shift,
                                                        alpha: 0.8, kernels: level)
                    }
                    leaky.withUnsafeMutableBufferPointer {
                        KernelDispatch.affineLeakyReLUBlocked(width: width, pixels, x, $0.baseAddress! + at, mean: mean, scale: scale,
                                                              shift: shift, slope: 0.1, kernels: level)
                    }
                    dx.withUnsafeMutableBufferPointer {
                        KernelDispatch.blockedInputGradient(width: width, pixels, dy: g, x: x, into: $0.baseAddress! + at, mean: mean,
                                                            scale: scale, slope: shift, offset: offset, overwrite: false, kernels: level)
                    }
                    maxima.withUnsafeMutableBufferPointer {
                        KernelDispatch.maxPoolRow(width: width, pixels / 4, top: top, bottom: bottom, into: $0.baseAddress! + o, kernels: level)
                    }
                    pooled.withUnsafeMutableBufferPointer { pp in windows.withUnsafeMutableBytes { wp in
                        KernelDispatch.pooledForwardRow(width: width, pixels / 4, top: top, bottom: bottom, mean: mean, scale: scale,
                                                        shift: shift, activation: .elu(alpha: 0.8), into: pp.baseAddress! + o,
                                                        windows: wp.baseAddress! + o / 4, kernels: level)
                    } }
                    maxima.withUnsafeBufferPointer { yp in routed.withUnsafeMutableBufferPointer { r in
                        KernelDispatch.maxPoolRowGradient(width: width, pixels / 4, top: top, bottom: bottom, y: yp.baseAddress! + o, dy: g,
                                                          topGradient: r.baseAddress! + at, bottomGradient: r.baseAddress! + at + width * pixels / 2,
                                                          overwrite: true, kernels: level)
                    } }
                    pooled.withUnsafeBufferPointer { pp in windows.withUnsafeBytes { wp in sums.withUnsafeMutableBufferPointer { s in
                        KernelDispatch.blockedSumAndDot(width: width, pixels, x, g, shift: mean, sums: s.baseAddress! + k,
                                                        products: s.baseAddress! + 16 + k, kernels: level)
                        KernelDispatch.pooledGradientSums(width: width, pixels / 4, top: top, bottom: bottom, y: pp.baseAddress! + o, dy: g,
                                                          windows: wp.baseAddress! + o / 4, mean: mean, activation: .elu(alpha: 0.8),
                                                          sums: s.baseAddress! + 32 + k, products: s.baseAddress! + 48 + k, kernels: level)
                        pooledDx.withUnsafeMutableBufferPointer {
                            KernelDispatch.pooledInputGradientRow(width: width, pixels / 4, top: top, bottom: bottom, y: pp.baseAddress! + o,
                                                                  dy: g, windows: wp.baseAddress! + o / 4, topGradient: $0.baseAddress! + at,
                                                                  bottomGradient: $0.baseAddress! + at + width * pixels / 2, mean: mean,
                                                                  scale: scale, slope: shift, offset: offset, activation: .elu(alpha: 0.8),
                                                                  overwrite: false, kernels: level)
                        }
                    } } }
                } }
            }
            return [y, leaky, dx, routed, pooledDx, maxima, pooled, windowIndices(windows, count: 4 * pixels), sums.map { Float($0) }]
        }
        let wide = run(width: 16, a, b), narrow = run(width: 8, split(a, pixels), split(b, pixels))
        let names = ["ELU", "leaky ReLU", "input gradient", "pooling gradient", "pooled ELU gradient", "maxima", "pooled ELU", "window indices"]
        for (k, name) in names.enumerated() {
            #expect(split(wide[k], k < 5 ? pixels : pixels / 4) == narrow[k], "\(name)")
        }
        #expect(wide[8] == narrow[8], "sums")
        #expect(!wide[6].contains { $0 == 0 } && !wide[3].allSatisfy { $0 == 0 }, "every loop wrote its output")
    }

    /// The pooled batch norm + activation's forward row in each build against a Double reference: the window's maximum
    /// of scale (x - mean) + shift through the activation, and the index of the first maximum in row-major order.
    @Test(arguments: KernelDispatch.supported, [8, 16]) func pooledForwardRow(level: KernelDispatch.Level, block: Int) {
        let width = 13
        let x = randomValues(4 * block * width, seed: 50, -3, 3).enumerated().map { $0.offset % 5 == 0 ? 0.5 : $0.element }   // some ties
        let (mean, scale, shift) = (randomValues(block, seed: 51), randomValues(block, seed: 52, -2, 2), randomValues(block, seed: 53))
        for activation in [PooledActivation.elu(alpha: 0.7), .leakyReLU(slope: 0.1)] {
            var y = [Float](repeating: 0, count: block * width), windows = [UInt8](repeating: 0, count: block * width / 4)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in windows.withUnsafeMutableBytes { wp in
                KernelDispatch.pooledForwardRow(width: block, width, top: xp.baseAddress!, bottom: xp.baseAddress! + 2 * block * width, mean: mean,
                                                scale: scale, shift: shift, activation: activation, into: yp.baseAddress!,
                                                windows: wp.baseAddress!, kernels: level)
            } } }
            let indices = windowIndices(windows, count: block * width)
            for j in 0..<width {
                for l in 0..<block {
                    let (row, pixel) = (2 * block * width, 2 * block * j)
                    let window = [pixel + l, pixel + block + l, row + pixel + l, row + pixel + block + l].map { x[$0] }
                    let z = window.map { Float(scale[l]) * ($0 - mean[l]) + shift[l] }
                    let first = z.firstIndex(of: z.max()!)!
                    let top = Double(z[first])
                    let expected = switch activation {
                    case .elu(let alpha): top > 0 ? top : Double(alpha) * (Foundation.exp(top) - 1)
                    case .leakyReLU(let slope): top > 0 ? top : Double(slope) * top
                    }
                    #expect(abs(Double(y[block * j + l]) - expected) <= 1e-6 * max(1, abs(expected)), "\(activation) pixel \(j) lane \(l)")
                    #expect(indices[block * j + l] == Float(first), "\(activation) pixel \(j) lane \(l)")
                }
            }
        }
    }

    /// A dataset's bytes as floats: every byte value, runs of every length up to two 16-lane vectors and a tail, each
    /// value v * (1 / 255) exactly as the scalar multiply gives it, in every build.
    @Test(arguments: KernelDispatch.supported) func pixelBytesAsFloats(_ level: KernelDispatch.Level) {
        let bytes = (0..<(256 + 47)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) } + (0...255).map { UInt8($0) }
        let scale: Float = 1 / 255
        for n in [0, 1, 7, 15, 16, 17, 31, 33, bytes.count] {
            var out = [Float](repeating: .nan, count: n + 1)
            bytes.withUnsafeBufferPointer { b in out.withUnsafeMutableBufferPointer { KernelDispatch.scaledFloats(n, b.baseAddress!, $0.baseAddress!, scale: scale, kernels: level) } }
            #expect(out.prefix(n).map(\.bitPattern) == bytes.prefix(n).map { (Float($0) * scale).bitPattern }, "\(level.rawValue), \(n) bytes")
            #expect(out[n].isNaN, "\(level.rawValue) wrote past \(n) bytes")
        }
    }

    /// The resident split's gather: rows in any order (repeats, the first and the last, more rows than it prefetches
    /// ahead and fewer) land in order, each row's values those of `scaledFloats`.
    @Test(arguments: KernelDispatch.supported) func pixelRowsGather(_ level: KernelDispatch.Level) {
        let (rowBytes, rowCount) = (37, 50)
        let source = (0..<(rowBytes * rowCount)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 / 7) }
        let scale: Float = 1 / 255
        for rows in [[Int](), [3], [49, 0, 7], [5, 5, 6, 48, 2, 9, 0, 49, 13, 13, 30]] {
            var out = [Float](repeating: .nan, count: rows.count * rowBytes)
            source.withUnsafeBufferPointer { s in rows.withUnsafeBufferPointer { r in out.withUnsafeMutableBufferPointer {
                PixelGather.rows(r, of: s.baseAddress!, rowBytes: rowBytes, scale: scale, into: $0.baseAddress!, kernels: level)
            } } }
            let expected = rows.flatMap { source[($0 * rowBytes)..<(($0 + 1) * rowBytes)].map { (Float($0) * scale).bitPattern } }
            #expect(out.map(\.bitPattern) == expected, "\(level.rawValue), rows \(rows)")
        }
    }

    /// BCE's gradient written over the sigmoid: g (p - t), a subtraction and a multiply each rounded once, the same bits
    /// in every build, in place.
    @Test(arguments: KernelDispatch.supported) func bceGradientOverTheSigmoid(_ level: KernelDispatch.Level) {
        let n = 4133
        let p0 = randomValues(n, seed: 70, 0, 1), t = randomValues(n, seed: 71, 0, 1), g: Float = 1 / 200_704
        var p = p0
        t.withUnsafeBufferPointer { tp in p.withUnsafeMutableBufferPointer {
            KernelDispatch.bceLogitsGradient(n, probabilities: $0.baseAddress!, targets: tp.baseAddress!, scale: g, kernels: level)
        } }
        #expect(p.map(\.bitPattern) == (0..<n).map { (g * (p0[$0] - t[$0])).bitPattern }, "\(level.rawValue)")
    }

    /// The 2-bit window index of each of `count` pooled values: the one at offset o in bits 2 (o % 4) of byte o / 4.
    func windowIndices(_ bytes: [UInt8], count: Int) -> [Float] {
        (0..<count).map { Float((bytes[$0 / 4] >> (2 * UInt8($0 % 4))) & 3) }
    }
}
