/// A stride-1 convolution from a blocked input (blocks of B = 8 or 16 channels) to a planar output of very few channels:
/// the autoencoders' last layer (16 or 32 channels -> the one-channel image, 3x3 on 28x28). oneDNN 2.6 computes such an
/// output in blocks of its own width, so on AVX-512 it runs 16 output channels for one (forward, input gradient and weight
/// gradient each ~16x the arithmetic needed; `ONEDNN_VERBOSE`: 12-16 ms a pass at batch 128 on one thread, half of
/// conv-ae's step). Here a pixel's B input channels are one vector and every tap is one multiply-add of it, so each pass
/// costs what the layer's arithmetic costs.
///
/// Weights are packed [O, C/B, KH, KW, B] (`pack`); x is one image's blocked input [C/B, H, W, B], y and dy one image's
/// planar output [O, OH, OW]. Output pixel (oy, ox) reads input pixel (oy + kh - padTop, ox + kw - padLeft) through
/// tap (kh, kw); taps outside the input read zero.
public struct NarrowConvolutionShape: Sendable {
    public let blocks: Int, height: Int, width: Int
    public let outChannels: Int, outHeight: Int, outWidth: Int
    public let kernelH: Int, kernelW: Int, padTop: Int, padLeft: Int

    @inlinable
    public init(blocks: Int, height: Int, width: Int, outChannels: Int, outHeight: Int, outWidth: Int, kernelH: Int, kernelW: Int,
                padTop: Int, padLeft: Int) {
        (self.blocks, self.height, self.width) = (blocks, height, width)
        (self.outChannels, self.outHeight, self.outWidth) = (outChannels, outHeight, outWidth)
        (self.kernelH, self.kernelW, self.padTop, self.padLeft) = (kernelH, kernelW, padTop, padLeft)
    }

    /// Whether the forward pass reads a zero-bordered copy of the input: not where every tap of every output pixel lands
    /// inside the input (no padding and the output exactly the taps' reach: a 1x1 kernel, a valid convolution), since the
    /// input is then its own padded map.
    @inlinable
    public var forwardNeedsBorder: Bool {
        padTop != 0 || padLeft != 0 || outHeight + kernelH - 1 != height || outWidth + kernelW - 1 != width
    }

    /// Floats of scratch `NarrowOutputConvolution.forward` takes: the input padded to the taps' reach, or none.
    @inlinable
    public func forwardScratch(block: Int) -> Int {
        forwardNeedsBorder ? blocks * (outHeight + kernelH - 1) * (outWidth + kernelW - 1) * block : 0
    }

    /// The output columns tap column kw reaches inside the input: ox with 0 <= ox + kw - padLeft < width.
    @inlinable @inline(__always)
    public func columns(_ kw: Int) -> Range<Int> {
        let lo = max(0, padLeft - kw), hi = min(outWidth, width + padLeft - kw)
        return lo..<max(lo, hi)
    }
}

public enum NarrowOutputConvolution {
    /// [O, C, KH, KW] (PyTorch's kernel layout) -> [O, C/B, KH, KW, B].
    @inlinable
    public static func pack(_ w: UnsafePointer<Float>, _ s: NarrowConvolutionShape, block: Int, into packed: UnsafeMutablePointer<Float>) {
        let taps = s.kernelH * s.kernelW, channels = s.blocks * block
        for o in 0..<s.outChannels {
            for c in 0..<channels {
                let (b, l) = c.quotientAndRemainder(dividingBy: block)
                for t in 0..<taps { packed[((o * s.blocks + b) * taps + t) * block + l] = w[(o * channels + c) * taps + t] }
            }
        }
    }

    /// One image's output: y = bias + the convolution. `scratch` holds `forwardScratch(block:)` floats: the image copied
    /// with zero borders, so that each output pixel sums its taps in registers, four pixels at a time, without bounds
    /// checks (summing into memory made the loop wait on its stores). Where no tap reaches outside the input
    /// (`forwardNeedsBorder` false) the image is read in place and `scratch` is not touched.
    @inlinable @inline(__always)
    public static func forward<V: BlockVector, M: MultiplyAdd>(_ s: NarrowConvolutionShape, x: UnsafePointer<Float>,
                                                                weights: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                                                                y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                                                                _: V.Type, _: M.Type) {
        let b = V.scalarCount, taps = s.kernelH * s.kernelW
        let (ph, pw) = (s.outHeight + s.kernelH - 1, s.outWidth + s.kernelW - 1)
        let padded: UnsafePointer<Float>
        if s.forwardNeedsBorder {
            scratch.initialize(repeating: 0, count: s.blocks * ph * pw * b)
            // Input row iy lands on padded row iy + padTop, column ix on ix + padLeft (those inside the padded map).
            let columns = max(0, -s.padLeft)..<min(s.width, pw - s.padLeft)
            for cb in 0..<s.blocks {
                for iy in max(0, -s.padTop)..<min(s.height, ph - s.padTop) where !columns.isEmpty {
                    (scratch + ((cb * ph + iy + s.padTop) * pw + columns.lowerBound + s.padLeft) * b)
                        .update(from: x + ((cb * s.height + iy) * s.width + columns.lowerBound) * b, count: columns.count * b)
                }
            }
            padded = UnsafePointer(scratch)
        } else {
            padded = x
        }
        for o in 0..<s.outChannels {
            for oy in 0..<s.outHeight {
                let out = y + (o * s.outHeight + oy) * s.outWidth
                var ox = 0
                while ox < s.outWidth {
                    let tile = min(4, s.outWidth - ox)
                    var (a0, a1, a2, a3) = (V(repeating: 0), V(repeating: 0), V(repeating: 0), V(repeating: 0))
                    for cb in 0..<s.blocks {
                        for kh in 0..<s.kernelH {
                            let row = padded + ((cb * ph + oy + kh) * pw + ox) * b
                            let w = weights + ((o * s.blocks + cb) * taps + kh * s.kernelW) * b
                            for kw in 0..<s.kernelW {
                                let wv = V.load(w + kw &* b), p = row + kw &* b
                                a0 = M.multiplyAdd(V.load(p), wv, a0)
                                if tile == 4 {
                                    a1 = M.multiplyAdd(V.load(p + b), wv, a1)
                                    a2 = M.multiplyAdd(V.load(p + 2 &* b), wv, a2)
                                    a3 = M.multiplyAdd(V.load(p + 3 &* b), wv, a3)
                                }
                            }
                        }
                    }
                    out[ox] = bias[o] + laneSum(a0)
                    if tile == 4 {
                        out[ox + 1] = bias[o] + laneSum(a1)
                        out[ox + 2] = bias[o] + laneSum(a2)
                        out[ox + 3] = bias[o] + laneSum(a3)
                        ox += 4
                    } else {
                        ox += 1
                    }
                }
            }
        }
    }

    /// The sum of a pixel's lanes as a tree of halves (SIMD's generic `sum()` compiled to a chain of 16 dependent adds).
    @inlinable @inline(__always)
    static func laneSum<V: BlockVector>(_ v: V) -> Float {
        let eight: SIMD8<Float> = V.scalarCount == 16 ? { let w = unsafeBitCast(v, to: SIMD16<Float>.self); return w.lowHalf + w.highHalf }()
            : unsafeBitCast(v, to: SIMD8<Float>.self)
        let four = eight.lowHalf + eight.highHalf, two = four.lowHalf + four.highHalf
        return two[0] + two[1]
    }

    /// One image's input gradient, written (`overwrite`) or added into dx [C/B, H, W, B]. `scratch` holds width vectors.
    @inlinable @inline(__always)
    public static func inputGradient<V: BlockVector, M: MultiplyAdd>(_ s: NarrowConvolutionShape, dy: UnsafePointer<Float>,
                                                                      weights: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                                                      overwrite: Bool, scratch: UnsafeMutablePointer<Float>,
                                                                      _: V.Type, _: M.Type) {
        let b = V.scalarCount, plane = s.height * s.width * b, taps = s.kernelH * s.kernelW
        for cb in 0..<s.blocks {
            for iy in 0..<s.height {
                for ix in 0..<s.width { V(repeating: 0).store(scratch + ix &* b) }
                for o in 0..<s.outChannels {
                    for kh in 0..<s.kernelH {
                        let oy = iy - kh + s.padTop
                        guard oy >= 0 && oy < s.outHeight else { continue }
                        let gradientRow = dy + (o * s.outHeight + oy) * s.outWidth
                        for kw in 0..<s.kernelW {
                            let w = V.load(weights + ((o * s.blocks + cb) * taps + kh * s.kernelW + kw) * b)
                            // Input column ix = ox + kw - padLeft for the output columns this tap reaches.
                            let shifted = scratch + (kw - s.padLeft) * b
                            for ox in s.columns(kw) {
                                let acc = shifted + ox &* b
                                M.multiplyAdd(V(repeating: gradientRow[ox]), w, V.load(acc)).store(acc)
                            }
                        }
                    }
                }
                let row = dx + cb * plane + iy * s.width * b
                if overwrite {
                    row.update(from: scratch, count: s.width * b)
                } else {
                    for ix in 0..<s.width { (V.load(row + ix &* b) + V.load(scratch + ix &* b)).store(row + ix &* b) }
                }
            }
        }
    }

    /// One image's weight gradient, written into `partial` in the packed layout [O, C/B, KH, KW, B] (Float sums over
    /// one image; the caller adds images in Double).
    @inlinable @inline(__always)
    public static func weightGradient<V: BlockVector, M: MultiplyAdd>(_ s: NarrowConvolutionShape, x: UnsafePointer<Float>,
                                                                       dy: UnsafePointer<Float>, partial: UnsafeMutablePointer<Float>,
                                                                       _: V.Type, _: M.Type) {
        let b = V.scalarCount, plane = s.height * s.width * b, taps = s.kernelH * s.kernelW
        for o in 0..<s.outChannels {
            for cb in 0..<s.blocks {
                for kh in 0..<s.kernelH {
                    for kw in 0..<s.kernelW {
                        // Four independent sums, so that multiply-adds overlap instead of waiting on one another.
                        var (s0, s1, s2, s3) = (V(repeating: 0), V(repeating: 0), V(repeating: 0), V(repeating: 0))
                        let columns = s.columns(kw)
                        for oy in 0..<s.outHeight {
                            let iy = oy + kh - s.padTop
                            guard iy >= 0 && iy < s.height else { continue }
                            let gradientRow = dy + (o * s.outHeight + oy) * s.outWidth
                            let shifted = x + cb * plane + iy * s.width * b + (kw - s.padLeft) * b
                            var ox = columns.lowerBound
                            while ox + 3 < columns.upperBound {
                                s0 = M.multiplyAdd(V(repeating: gradientRow[ox]), V.load(shifted + ox &* b), s0)
                                s1 = M.multiplyAdd(V(repeating: gradientRow[ox + 1]), V.load(shifted + (ox + 1) &* b), s1)
                                s2 = M.multiplyAdd(V(repeating: gradientRow[ox + 2]), V.load(shifted + (ox + 2) &* b), s2)
                                s3 = M.multiplyAdd(V(repeating: gradientRow[ox + 3]), V.load(shifted + (ox + 3) &* b), s3)
                                ox += 4
                            }
                            while ox < columns.upperBound {
                                s0 = M.multiplyAdd(V(repeating: gradientRow[ox]), V.load(shifted + ox &* b), s0)
                                ox += 1
                            }
                        }
                        ((s0 + s1) + (s2 + s3)).store(partial + ((o * s.blocks + cb) * taps + kh * s.kernelW + kw) * b)
                    }
                }
            }
        }
    }

    /// The three passes at a block width given at run time (8 or 16), for the modules' entry points.
    @inlinable @inline(__always)
    public static func forward<M: MultiplyAdd>(block: Int, _ s: NarrowConvolutionShape, x: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                                               bias: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                               scratch: UnsafeMutablePointer<Float>, _ m: M.Type) {
        if block == 16 { forward(s, x: x, weights: weights, bias: bias, y: y, scratch: scratch, SIMD16<Float>.self, m) }
        else { forward(s, x: x, weights: weights, bias: bias, y: y, scratch: scratch, SIMD8<Float>.self, m) }
    }

    @inlinable @inline(__always)
    public static func inputGradient<M: MultiplyAdd>(block: Int, _ s: NarrowConvolutionShape, dy: UnsafePointer<Float>,
                                                     weights: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, overwrite: Bool,
                                                     scratch: UnsafeMutablePointer<Float>, _ m: M.Type) {
        if block == 16 { inputGradient(s, dy: dy, weights: weights, dx: dx, overwrite: overwrite, scratch: scratch, SIMD16<Float>.self, m) }
        else { inputGradient(s, dy: dy, weights: weights, dx: dx, overwrite: overwrite, scratch: scratch, SIMD8<Float>.self, m) }
    }

    @inlinable @inline(__always)
    public static func weightGradient<M: MultiplyAdd>(block: Int, _ s: NarrowConvolutionShape, x: UnsafePointer<Float>,
                                                      dy: UnsafePointer<Float>, partial: UnsafeMutablePointer<Float>, _ m: M.Type) {
        if block == 16 { weightGradient(s, x: x, dy: dy, partial: partial, SIMD16<Float>.self, m) }
        else { weightGradient(s, x: x, dy: dy, partial: partial, SIMD8<Float>.self, m) }
    }
}

/// `NarrowOutputConvolution`'s passes as entry points of a module built for an instruction set above baseline (a protocol
/// of its own beside `FusedKernelSet`, which `KernelDispatch.narrowKernels` picks by level).
public protocol NarrowConvolutionKernelSet {
    static func narrowForward(block: Int, _ s: NarrowConvolutionShape, x: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                              bias: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>)
    static func narrowInputGradient(block: Int, _ s: NarrowConvolutionShape, dy: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                                    dx: UnsafeMutablePointer<Float>, overwrite: Bool, scratch: UnsafeMutablePointer<Float>)
    static func narrowWeightGradient(block: Int, _ s: NarrowConvolutionShape, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                     partial: UnsafeMutablePointer<Float>)
}
