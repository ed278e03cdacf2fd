/// Convolution passes that Starling computes itself where oneDNN 2.6's AVX2 kernels run well below the machine's
/// multiply-add rate (~105 GFLOP/s a core here, which most of oneDNN's forward and input-gradient kernels reach): the
/// weight gradients of conv1's 5-wide kernel on 3 input channels (~40 GFLOP/s in oneDNN) and of the 3x3 layers in the
/// blocked layout (~70-79), and the forward pass of conv1 and of layers with 48 output channels (~81-85). Each keeps
/// 10-12 independent vector sums in registers over a row of pixels, so that multiply-adds, not loads or their latency,
/// bound the loop; the weight gradients sum in Double beyond a row (conv1's) or an image (the 3x3 layers').

/// The weight gradient of a stride-1 convolution with a 5-wide kernel, few input channels in NCHW and the output
/// gradient in the blocked layout: SSD7's conv1 (3 -> 32 channels, 5x5), where oneDNN 2.6's AVX2 kernel runs at ~40
/// GFLOP/s against ~80 for its 3x3 layers. Each output pixel is an 8-channel vector of dy; a row of them against
/// the five taps of an input row is 10 multiply-adds into 10 vectors held in registers (two blocks of 8 output
/// channels x 5 taps), the whole row at a time, so that the loop is bound by multiply-adds, not loads.
public enum FiveWideWeightGradient {
    /// dw[o][c][kh][5] += sum over images and output pixels of dy[n][o][y][x] x[n][c][y + kh - padTop][x + kw - padLeft]
    /// for the output-channel blocks in `blockPairs` (pairs of blocks of 8), and the bias gradient (the sums of dy) into
    /// `biasGradient` when given, from each row of dy while it is in cache. `padded` is scratch of (width + 4 + 8) floats.
    @inlinable @inline(__always)
    public static func accumulate<M: MultiplyAdd>(images: Int, channels: Int, height: Int, width: Int, kernelH: Int,
                                                  padTop: Int, padLeft: Int, outHeight: Int, outWidth: Int, outBlocks: Int,
                                                  x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dw: UnsafeMutablePointer<Float>,
                                                  biasGradient: UnsafeMutablePointer<Float>?,
                                                  blockPairs: Range<Int>, padded: UnsafeMutablePointer<Float>, _: M.Type) {
        typealias V = SIMD8<Float>
        let taps = 5
        // Sums per (pair, c, kh): 10 vectors, [block 0 taps 0-4, block 1 taps 0-4], in Double: a row's 10 vectors
        // start from zero and are added here, so that millions of terms do not pile up in Float.
        let sums = UnsafeMutablePointer<SIMD8<Double>>.allocate(capacity: blockPairs.count * channels * kernelH * 10)
        sums.initialize(repeating: SIMD8<Double>(repeating: 0), count: blockPairs.count * channels * kernelH * 10)
        let biasSums = UnsafeMutablePointer<SIMD8<Double>>.allocate(capacity: 2 * blockPairs.count)
        biasSums.initialize(repeating: SIMD8<Double>(repeating: 0), count: 2 * blockPairs.count)
        defer { sums.deallocate(); biasSums.deallocate() }
        let paddedWidth = width + taps - 1 + 8
        // Rows outermost, channels inside: the five rows of dy an input row meets stay in cache for every channel
        // (channels outermost read all of dy from memory once per channel: 3 x 295 MB a step for conv1).
        for n in 0..<images {
            for iy in 0..<height {
                for c in 0..<channels {
                    // The input row with padLeft zeros in front and zeros after: every tap reads inside it.
                    padded.initialize(repeating: 0, count: paddedWidth)
                    (padded + padLeft).update(from: x + ((n * channels + c) * height + iy) * width, count: width)
                    for kh in 0..<kernelH {
                        let y = iy - kh + padTop   // the output row this input row meets through tap row kh
                        guard y >= 0 && y < outHeight else { continue }
                        for (p, pair) in blockPairs.enumerated() {
                            let dy0 = dy + ((n * outBlocks + 2 * pair) * outHeight + y) * outWidth * 8
                            let dy1 = dy0 + outHeight * outWidth * 8
                            let s = sums + ((p * channels + c) * kernelH + kh) * 10
                            let zero = V(repeating: 0)
                            var (a0, a1, a2, a3, a4) = (zero, zero, zero, zero, zero)
                            var (b0, b1, b2, b3, b4) = (zero, zero, zero, zero, zero)
                            for ox in 0..<outWidth {
                                let d0 = SIMD8<Float>.load(dy0 + 8 &* ox), d1 = SIMD8<Float>.load(dy1 + 8 &* ox)
                                let r = padded + ox
                                let t0 = V(repeating: r[0]), t1 = V(repeating: r[1]), t2 = V(repeating: r[2])
                                let t3 = V(repeating: r[3]), t4 = V(repeating: r[4])
                                a0 = M.multiplyAdd(d0, t0, a0); a1 = M.multiplyAdd(d0, t1, a1); a2 = M.multiplyAdd(d0, t2, a2)
                                a3 = M.multiplyAdd(d0, t3, a3); a4 = M.multiplyAdd(d0, t4, a4)
                                b0 = M.multiplyAdd(d1, t0, b0); b1 = M.multiplyAdd(d1, t1, b1); b2 = M.multiplyAdd(d1, t2, b2)
                                b3 = M.multiplyAdd(d1, t3, b3); b4 = M.multiplyAdd(d1, t4, b4)
                            }
                            s[0] += SIMD8<Double>(a0); s[1] += SIMD8<Double>(a1); s[2] += SIMD8<Double>(a2)
                            s[3] += SIMD8<Double>(a3); s[4] += SIMD8<Double>(a4); s[5] += SIMD8<Double>(b0)
                            s[6] += SIMD8<Double>(b1); s[7] += SIMD8<Double>(b2); s[8] += SIMD8<Double>(b3)
                            s[9] += SIMD8<Double>(b4)
                            // Each row of dy once: the input row level with it (every output row has one).
                            if biasGradient != nil && c == 0 && kh == padTop {
                                var (u, v) = (zero, zero)
                                for ox in 0..<outWidth { u += SIMD8<Float>.load(dy0 + 8 &* ox); v += SIMD8<Float>.load(dy1 + 8 &* ox) }
                                biasSums[2 * p] += SIMD8<Double>(u)
                                biasSums[2 * p + 1] += SIMD8<Double>(v)
                            }
                        }
                    }
                }
            }
        }
        for (p, pair) in blockPairs.enumerated() {
            if let bias = biasGradient {
                for half in 0..<2 { for l in 0..<8 { bias[(2 * pair + half) * 8 + l] += Float(biasSums[2 * p + half][l]) } }
            }
            for c in 0..<channels {
                for kh in 0..<kernelH {
                    let s = sums + ((p * channels + c) * kernelH + kh) * 10
                    for half in 0..<2 {
                        for kw in 0..<taps {
                            let v = s[half * 5 + kw]
                            for l in 0..<8 {
                                let o = (2 * pair + half) * 8 + l
                                dw[((o * channels + c) * kernelH + kh) * taps + kw] += Float(v[l])
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The weight gradient of a stride-1 3x3 convolution with one pixel of zero padding ("same"), its input and output
/// gradient both in the blocked layout: dw[o][c][kh][kw] += sum over images and pixels of dy[n][o][y][x] x[n][c][y + kh
/// - 1][x + kw - 1]. For a group of three output-channel blocks and four lanes (input channels) of one input block, 12
/// vectors of 8 output channels accumulate along a row: three loads of dy and four broadcasts of x feed 12
/// multiply-adds, and 12 independent sums hide the multiply-add latency (5 cycles, 2 a cycle). Groups of two blocks
/// (8 sums) take what is left of an output-channel count that is not a multiple of 24. The caller walks images and
/// rows outermost and the (input block, output group) pairs innermost, so that a row of dy and three rows of x are
/// read from memory once and then from cache by every pair.
public enum BlockedWeightGradient3x3 {
    /// Vectors one (input block, output group) pair sums into: 9 taps x 2 lane groups x 4 lanes x (2 or 3) blocks, then
    /// one per block for the bias gradient.
    public static func sumCount(outBlockCount: Int) -> Int { 9 * 2 * 4 * outBlockCount + outBlockCount }

    /// Adds output row `y`'s terms to `partial` ([tap][lane group][lane][block]): `input` is the input block's plane of
    /// one image, `outputGradient` the first block's plane of dy, the next blocks `plane` floats on. The registers start
    /// from `partial` and are stored back, so that a row costs 12 loads and stores beyond its multiply-adds (adding
    /// each row into Double sums instead made SSD7's 60-pixel rows 20 % slower); the caller moves `partial` into
    /// Double sums once per image. With `withBias`, row y of dy is also summed into the bias vectors after the taps.
    @inlinable @inline(__always)
    public static func accumulateRow<M: MultiplyAdd>(_ y: Int, height: Int, width: Int, input: UnsafePointer<Float>,
                                                     outputGradient: UnsafePointer<Float>, outBlockCount: Int,
                                                     partial: UnsafeMutablePointer<SIMD8<Float>>, withBias: Bool, _: M.Type) {
        typealias V = SIMD8<Float>
        let perTap = 2 * 4 * outBlockCount
        let row = width * 8, plane = height * row
        let d0 = outputGradient + y * row, d1 = d0 + plane, d2 = d1 + plane
        if withBias {
            let b = partial + 9 * perTap
            var (u0, u1, u2) = (b[0], b[1], outBlockCount == 3 ? b[2] : V(repeating: 0))
            for p in 0..<width {
                u0 += SIMD8<Float>.load(d0 + 8 &* p); u1 += SIMD8<Float>.load(d1 + 8 &* p)
                if outBlockCount == 3 { u2 += SIMD8<Float>.load(d2 + 8 &* p) }
            }
            b[0] = u0; b[1] = u1
            if outBlockCount == 3 { b[2] = u2 }
        }
        for kh in 0..<3 {
            let iy = y + kh - 1
            guard iy >= 0 && iy < height else { continue }
            for kw in 0..<3 {
                // Output pixels whose tap kw falls inside the row; `shifted` is the input pixel of output pixel 0.
                let first = kw == 0 ? 1 : 0, last = kw == 2 ? width - 1 : width
                let shifted = input + iy * row + (kw - 1) * 8
                for laneGroup in 0..<2 {
                    let s = partial + (kh * 3 + kw) * perTap + laneGroup * 4 * outBlockCount
                    let lanes = shifted + 4 * laneGroup
                    if outBlockCount == 3 {
                        var (a0, b0, c0, a1, b1, c1) = (s[0], s[1], s[2], s[3], s[4], s[5])
                        var (a2, b2, c2, a3, b3, c3) = (s[6], s[7], s[8], s[9], s[10], s[11])
                        for p in first..<last {
                            let o = 8 &* p
                            let g0 = SIMD8<Float>.load(d0 + o), g1 = SIMD8<Float>.load(d1 + o), g2 = SIMD8<Float>.load(d2 + o)
                            let i = lanes + o
                            let t0 = V(repeating: i[0]), t1 = V(repeating: i[1]), t2 = V(repeating: i[2]), t3 = V(repeating: i[3])
                            a0 = M.multiplyAdd(g0, t0, a0); b0 = M.multiplyAdd(g1, t0, b0); c0 = M.multiplyAdd(g2, t0, c0)
                            a1 = M.multiplyAdd(g0, t1, a1); b1 = M.multiplyAdd(g1, t1, b1); c1 = M.multiplyAdd(g2, t1, c1)
                            a2 = M.multiplyAdd(g0, t2, a2); b2 = M.multiplyAdd(g1, t2, b2); c2 = M.multiplyAdd(g2, t2, c2)
                            a3 = M.multiplyAdd(g0, t3, a3); b3 = M.multiplyAdd(g1, t3, b3); c3 = M.multiplyAdd(g2, t3, c3)
                        }
                        (s[0], s[1], s[2], s[3], s[4], s[5]) = (a0, b0, c0, a1, b1, c1)
                        (s[6], s[7], s[8], s[9], s[10], s[11]) = (a2, b2, c2, a3, b3, c3)
                    } else {
                        var (a0, b0, a1, b1, a2, b2, a3, b3) = (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
                        for p in first..<last {
                            let o = 8 &* p
                            let g0 = SIMD8<Float>.load(d0 + o), g1 = SIMD8<Float>.load(d1 + o)
                            let i = lanes + o
                            let t0 = V(repeating: i[0]), t1 = V(repeating: i[1]), t2 = V(repeating: i[2]), t3 = V(repeating: i[3])
                            a0 = M.multiplyAdd(g0, t0, a0); b0 = M.multiplyAdd(g1, t0, b0)
                            a1 = M.multiplyAdd(g0, t1, a1); b1 = M.multiplyAdd(g1, t1, b1)
                            a2 = M.multiplyAdd(g0, t2, a2); b2 = M.multiplyAdd(g1, t2, b2)
                            a3 = M.multiplyAdd(g0, t3, a3); b3 = M.multiplyAdd(g1, t3, b3)
                        }
                        (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]) = (a0, b0, a1, b1, a2, b2, a3, b3)
                    }
                }
            }
        }
    }

    /// sums += partial, partial = 0, over `count` vectors.
    @inlinable
    public static func flush(_ partial: UnsafeMutablePointer<SIMD8<Float>>, into sums: UnsafeMutablePointer<SIMD8<Double>>, count: Int) {
        for k in 0..<count {
            sums[k] += SIMD8<Double>(partial[k])
            partial[k] = SIMD8<Float>(repeating: 0)
        }
    }

    /// Adds one pair's sums into dw ([O, C, 3, 3], C = `channels`), and its bias sums into `biasGradient` when given.
    @inlinable
    public static func addSums(_ sums: UnsafePointer<SIMD8<Double>>, into dw: UnsafeMutablePointer<Float>, channels: Int,
                               inBlock: Int, firstOutBlock: Int, outBlockCount: Int, biasGradient: UnsafeMutablePointer<Float>?) {
        let perTap = 2 * 4 * outBlockCount
        if let bias = biasGradient {
            for j in 0..<outBlockCount { for l in 0..<8 { bias[(firstOutBlock + j) * 8 + l] += Float(sums[9 * perTap + j][l]) } }
        }
        for tap in 0..<9 {
            for lane in 0..<8 {
                let c = inBlock * 8 + lane
                for j in 0..<outBlockCount {
                    let v = sums[tap * perTap + lane * outBlockCount + j]
                    for l in 0..<8 { dw[(((firstOutBlock + j) * 8 + l) * channels + c) * 9 + tap] += Float(v[l]) }
                }
            }
        }
    }
}

/// The forward pass of a stride-1 K x K convolution with "same" zero padding into the blocked layout, from an NCHW input
/// of a few channels (SSD7's conv1: 3 -> 32 channels, 5x5, at 300 x 480, where oneDNN 2.6 runs at ~81 GFLOP/s) or a
/// blocked one. Six output pixels x two output blocks make 12 register sums; each (input channel, tap) step loads two
/// weight vectors and broadcasts six inputs for 12 multiply-adds. The steps are one loop with a run-time trip count
/// over a table of input offsets: with the taps as nested constant loops LLVM unrolled them and reused broadcasts
/// across taps, which needed more than 16 registers (the spilled loop ran at ~82 GFLOP/s).
public enum DirectForward {
    /// Weights [O, C, K, K] repacked as [O / 16][C][K * K][16]: one pair of output blocks' 16 channels per step, contiguous.
    @inlinable
    public static func pack(_ w: UnsafePointer<Float>, outChannels: Int, channels: Int, taps: Int, into packed: UnsafeMutablePointer<Float>) {
        for o in 0..<outChannels {
            for c in 0..<channels {
                for tap in 0..<taps { packed[((o / 16 * channels + c) * taps + tap) * 16 + o % 16] = w[(o * channels + c) * taps + tap] }
            }
        }
    }

    /// Where each (channel, tap) step reads, in floats from an output pixel's top-left input in the padded copy:
    /// planar, channel c's plane at c `paddedPlane`; blocked, channel c is lane c % 8 of block c / 8's plane.
    @inlinable
    public static func stepOffsets(channels: Int, kernel: Int, paddedWidth: Int, paddedPlane: Int, blocked: Bool) -> [Int] {
        let taps = kernel * kernel
        return (0..<channels * taps).map { s in
            let (c, tap) = s.quotientAndRemainder(dividingBy: taps)
            let (kh, kw) = tap.quotientAndRemainder(dividingBy: kernel)
            return blocked ? (c / 8) * paddedPlane + (kh * paddedWidth + kw) * 8 + c % 8 : c * paddedPlane + kh * paddedWidth + kw
        }
    }

    /// Output row `y` of one image for one pair of output blocks: `padded` holds the image's input with zero borders
    /// (rows `rowFloats` apart, pixels `pixelStride` floats apart: 1 planar, 8 blocked), `steps` its `stepOffsets`,
    /// `weights` the pair's packed weights, `bias` its 16 biases; the row goes to `out0` (first block) and `out1` (second).
    /// With `moments`, the outputs' sums and sums of squares are added to it as they are stored ([sum, sum] of the two
    /// blocks, then [sum of squares, sum of squares]), in Float over a six-pixel tile and in Double beyond: the
    /// statistics a training-mode batch norm reads next, without another pass over the output.
    @inlinable @inline(__always)
    public static func row<M: MultiplyAdd>(_ y: Int, width: Int, rowFloats: Int, pixelStride: Int, padded: UnsafePointer<Float>,
                                           steps: UnsafePointer<Int>, stepCount: Int, weights: UnsafePointer<Float>,
                                           bias: UnsafePointer<Float>, out0: UnsafeMutablePointer<Float>,
                                           out1: UnsafeMutablePointer<Float>, moments: UnsafeMutablePointer<SIMD8<Double>>?, _: M.Type) {
        typealias V = SIMD8<Float>
        let bias0 = SIMD8<Float>.load(bias), bias1 = SIMD8<Float>.load(bias + 8)
        let top = padded + y * rowFloats
        var x = 0
        while x + 6 <= width {
            var (a0, a1, a2, a3, a4, a5) = (bias0, bias0, bias0, bias0, bias0, bias0)
            var (b0, b1, b2, b3, b4, b5) = (bias1, bias1, bias1, bias1, bias1, bias1)
            let r = top + x * pixelStride
            for s in 0..<stepCount {
                let w0 = SIMD8<Float>.load(weights + 16 &* s), w1 = SIMD8<Float>.load(weights + (16 &* s &+ 8))
                let i = r + steps[s]
                var t = V(repeating: i[0])
                a0 = M.multiplyAdd(w0, t, a0); b0 = M.multiplyAdd(w1, t, b0)
                t = V(repeating: i[pixelStride])
                a1 = M.multiplyAdd(w0, t, a1); b1 = M.multiplyAdd(w1, t, b1)
                t = V(repeating: i[2 * pixelStride])
                a2 = M.multiplyAdd(w0, t, a2); b2 = M.multiplyAdd(w1, t, b2)
                t = V(repeating: i[3 * pixelStride])
                a3 = M.multiplyAdd(w0, t, a3); b3 = M.multiplyAdd(w1, t, b3)
                t = V(repeating: i[4 * pixelStride])
                a4 = M.multiplyAdd(w0, t, a4); b4 = M.multiplyAdd(w1, t, b4)
                t = V(repeating: i[5 * pixelStride])
                a5 = M.multiplyAdd(w0, t, a5); b5 = M.multiplyAdd(w1, t, b5)
            }
            let o = 8 &* x
            a0.store(out0 + o); a1.store(out0 + (o &+ 8)); a2.store(out0 + (o &+ 16))
            a3.store(out0 + (o &+ 24)); a4.store(out0 + (o &+ 32)); a5.store(out0 + (o &+ 40))
            b0.store(out1 + o); b1.store(out1 + (o &+ 8)); b2.store(out1 + (o &+ 16))
            b3.store(out1 + (o &+ 24)); b4.store(out1 + (o &+ 32)); b5.store(out1 + (o &+ 40))
            if let m = moments {
                m[0] += SIMD8<Double>(((a0 + a1) + (a2 + a3)) + (a4 + a5))
                m[1] += SIMD8<Double>(((b0 + b1) + (b2 + b3)) + (b4 + b5))
                m[2] += SIMD8<Double>(M.multiplyAdd(a5, a5, M.multiplyAdd(a4, a4, M.multiplyAdd(a3, a3, M.multiplyAdd(a2, a2, M.multiplyAdd(a1, a1, a0 * a0))))))
                m[3] += SIMD8<Double>(M.multiplyAdd(b5, b5, M.multiplyAdd(b4, b4, M.multiplyAdd(b3, b3, M.multiplyAdd(b2, b2, M.multiplyAdd(b1, b1, b0 * b0))))))
            }
            x += 6
        }
        while x < width {
            var a = bias0, b = bias1
            let r = top + x * pixelStride
            for s in 0..<stepCount {
                let t = V(repeating: r[steps[s]])
                a = M.multiplyAdd(SIMD8<Float>.load(weights + 16 &* s), t, a)
                b = M.multiplyAdd(SIMD8<Float>.load(weights + (16 &* s &+ 8)), t, b)
            }
            a.store(out0 + 8 &* x); b.store(out1 + 8 &* x)
            if let m = moments {
                m[0] += SIMD8<Double>(a); m[1] += SIMD8<Double>(b)
                m[2] += SIMD8<Double>(a * a); m[3] += SIMD8<Double>(b * b)
            }
            x += 1
        }
    }
}
