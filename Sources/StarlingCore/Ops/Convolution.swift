/// 2-D convolution over NCHW images, forward and backward, on sgemm.
///
/// The kernel is lowered to matrix products in one of three ways, chosen by `ConvGeometry`:
/// - im2col (the general case): for one image and one group, the patch matrix col[Cin/groups * KH * KW, Hout * Wout]
///   holds every receptive field as a column, so that y = W * col, dW += dy * col^T, and dcol = W^T * dy, which
///   col2im adds back into dx. It is built for a band of output rows at a time, never for the whole batch, so
///   the scratch of one call stays under `scratchBudget` floats whatever the image size.
/// - shifted products (stride 1 with at least `shiftedMinChannels` input channels per group, see below): no
///   patch matrix, only one zero-padded copy of the current image group; 15-20% faster than im2col at 32-64 channels.
/// - pointwise (1x1, stride 1, no padding): the input planes are the patch matrix as they stand.
/// Each call allocates its scratch once and reuses it for every image, group and band.
/// All three are the fallback: every kernel first tries oneDNN (DNNLConvolution.swift), which is faster where it runs.

/// How a sliding-window op (convolution, pooling) treats the image border.
public enum Padding: Sendable, Equatable {
    /// No padding: only windows that fit inside the image (Keras `valid`).
    case valid
    /// Keras/TensorFlow `same`: output length ceil(n / stride), with total padding
    /// max((out - 1) * stride + kernel - n, 0) split so the odd pixel goes to the bottom/right.
    case same
    /// Fixed amounts of zero (or, for max pooling, -infinity) padding on each side.
    case explicit(top: Int, bottom: Int, left: Int, right: Int)

    /// Output length and leading padding of a window of (dilated) length `kernel` sliding along an axis of
    /// length `size`.
    public func window(size n: Int, kernel k: Int, stride s: Int, vertical: Bool) -> (output: Int, before: Int) {
        precondition(k > 0 && s > 0, "kernel \(k) and stride \(s) must be positive")
        switch self {
        case .valid:
            precondition(n >= k, "valid padding: kernel \(k) larger than input \(n)")
            return ((n - k) / s + 1, 0)
        case .same:
            let out = (n + s - 1) / s
            return (out, Swift.max((out - 1) * s + k - n, 0) / 2)
        case .explicit(let top, let bottom, let left, let right):
            let (before, after) = vertical ? (top, bottom) : (left, right)
            precondition(before >= 0 && after >= 0, "negative padding \(self)")
            precondition(n + before + after >= k, "kernel \(k) larger than padded input \(n + before + after)")
            return ((n + before + after - k) / s + 1, before)
        }
    }
}

/// Shapes of one convolution and the kernels on them: y = conv(x, W) and its two gradients. Shared with `conv2dTransposed`, which is
/// the adjoint of the convolution whose input has the transposed op's output shape.
struct ConvGeometry {
    let batch: Int
    let inChannels: Int, outChannels: Int, groups: Int
    let height: Int, width: Int
    let kernelH: Int, kernelW: Int
    let strideH: Int, strideW: Int
    let dilationH: Int, dilationW: Int
    let padTop: Int, padLeft: Int
    let outHeight: Int, outWidth: Int

    /// Upper bound, in floats, on the patch matrix held at once (8 MB by default: a band stays in the
    /// last-level cache between im2col and the sgemm that reads it). Tests lower it to exercise banding.
    var scratchBudget = 1 << 21
    /// Stride-1 kernels with at least this many input channels per group use shifted products instead of
    /// im2col (below it the products' inner dimension, the channel count, is too small for sgemm to run well).
    var shiftedMinChannels = 16
    /// Upper bound, in floats, on the band of output rows that the shifted products accumulate into; small
    /// enough to stay in L2 across the KH * KW passes over it.
    var shiftedBandBudget = 1 << 17
    /// Whether the kernels may run on oneDNN (DNNLConvolution.swift) before falling back to the sgemm lowerings
    /// below. Tests turn it off to check one against the other.
    var useDNNL = true
    /// Whether oneDNN may run Winograd's algorithm here (`ConvolutionAlgorithm.swift`): nil follows STARLING_WINOGRAD.
    /// Tests set it to run both algorithms in one process.
    var winograd: WinogradSetting? = nil
    /// Floats of blocked copies one oneDNN call may hold (32 MB): the batch goes through in chunks of images whose
    /// input and output fit, at least one image at a time. Tests lower it to exercise the chunking.
    var dnnlChunkBudget = 1 << 23
    /// Bytes one oneDNN call of a pass on Winograd may take from the scratch arena, copies and scratchpad
    /// (`dnnlChunk(_:layouts:)`; STARLING_WINOGRAD_CALL_MB). Tests lower it to exercise the chunking.
    var winogradCallBudget = WinogradCallBudget.current
    /// The most threads a plan may run Winograd in slices of its output channels on (`DNNLConvPlans.algorithms`): one,
    /// by measurement. Tests raise it to slice whatever the thread count.
    var winogradSlicingThreads = 1

    var inPlane: Int { height * width }
    var outPlane: Int { outHeight * outWidth }
    var inPerGroup: Int { inChannels / groups }
    var outPerGroup: Int { outChannels / groups }
    /// Rows of the patch matrix, the inner dimension of the forward product.
    var patch: Int { inPerGroup * kernelH * kernelW }

    /// A 1x1 kernel at stride 1 without padding: the input planes already are the patch matrix.
    var isPointwise: Bool {
        kernelH == 1 && kernelW == 1 && strideH == 1 && strideW == 1 && padTop == 0 && padLeft == 0
            && outHeight == height && outWidth == width
    }

    /// Whether the stride-1 path without im2col is taken (see the extension below).
    var usesShiftedProducts: Bool {
        strideH == 1 && strideW == 1 && !isPointwise && inPerGroup >= shiftedMinChannels
    }

    /// Output rows per band, so that a band's patch matrix fits the scratch budget (at least one row).
    var rowsPerBand: Int {
        isPointwise ? outHeight : Swift.max(1, Swift.min(outHeight, scratchBudget / Swift.max(1, patch * outWidth)))
    }

    /// Calls `body(n, group, firstRow, rows, scratch)` for every band of output rows of every image and group.
    /// `scratch` holds `patch * rows * outWidth` floats, or is nil for pointwise kernels, which need none.
    private func forEachBand(_ body: (Int, Int, Int, Int, UnsafeMutablePointer<Float>?) -> Void) {
        let band = rowsPerBand
        let scratch: UnsafeMutablePointer<Float>? = isPointwise ? nil : .allocate(capacity: patch * band * outWidth)
        defer { scratch?.deallocate() }
        for n in 0..<batch {
            for g in 0..<groups {
                var row = 0
                while row < outHeight {
                    let rows = Swift.min(band, outHeight - row)
                    body(n, g, row, rows, scratch)
                    row += rows
                }
            }
        }
    }

    /// First channel plane of group `g` of image `n` in the input and output tensors.
    func inputBase(_ n: Int, _ g: Int) -> Int { (n * inChannels + g * inPerGroup) * inPlane }
    func outputBase(_ n: Int, _ g: Int) -> Int { (n * outChannels + g * outPerGroup) * outPlane }

    /// y = W * im2col(x) (+ bias) + beta * y, for every image and group. W is [outChannels, patch]; a bias needs beta 0.
    func convolve(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, bias: UnsafePointer<Float>? = nil,
                  output y: UnsafeMutablePointer<Float>, beta: Float) {
        precondition(bias == nil || beta == 0, "a bias is the starting value: beta must be 0")
        if dnnlConvolve(input: x, weight: w, bias: bias, output: y, beta: beta) { return }
        var beta = beta
        if let bias {
            broadcastChannels(bias, into: y, batch: batch, channels: outChannels, plane: outPlane)
            beta = 1
        }
        if usesShiftedProducts { return shiftedConvolve(input: x, weight: w, output: y, beta: beta) }
        forEachBand { n, g, row, rows, scratch in
            let xg = x + inputBase(n, g)
            let cols = rows * outWidth
            var b = xg + row * width, ldb = inPlane
            if let scratch { im2col(xg, firstRow: row, rows: rows, into: scratch); b = UnsafePointer(scratch); ldb = cols }
            BLAS.sgemm(transA: false, transB: false, m: outPerGroup, n: cols, k: patch,
                       a: w + g * outPerGroup * patch, lda: patch, b: b, ldb: ldb,
                       beta: beta, c: y + outputBase(n, g) + row * outWidth, ldc: outPlane)
        }
    }

    /// dW += dy * im2col(x)^T, summed over the batch.
    func accumulateWeightGradient(input x: UnsafePointer<Float>, outputGrad dy: UnsafePointer<Float>,
                                  into dw: UnsafeMutablePointer<Float>) {
        if dnnlAccumulateWeightGradient(input: x, outputGrad: dy, into: dw) { return }
        if usesShiftedProducts { return shiftedWeightGradient(input: x, outputGrad: dy, into: dw) }
        forEachBand { n, g, row, rows, scratch in
            let xg = x + inputBase(n, g)
            let cols = rows * outWidth
            var b = xg + row * width, ldb = inPlane
            if let scratch { im2col(xg, firstRow: row, rows: rows, into: scratch); b = UnsafePointer(scratch); ldb = cols }
            BLAS.sgemm(transA: false, transB: true, m: outPerGroup, n: patch, k: cols,
                       a: dy + outputBase(n, g) + row * outWidth, lda: outPlane, b: b, ldb: ldb,
                       beta: 1, c: dw + g * outPerGroup * patch, ldc: patch)
        }
    }

    /// dx += col2im(W^T * dy).
    func accumulateInputGradient(outputGrad dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
                                 into dx: UnsafeMutablePointer<Float>) {
        // Not on oneDNN where dx has a single channel (a transposed convolution's 1-channel output, conv-vae's last
        // layer): oneDNN 2.6 computes it in 16-channel blocks, 15 of them padding, 17 ms for 128 images of 28 x 28
        // from 32 channels (~3 GFLOP/s of useful work, ONEDNN_VERBOSE on the Zen 4), where the product below does the
        // one channel's work alone (BENCHMARKS.md, "conv-vae's last transposed convolution").
        if inChannels > 1 && dnnlAccumulateInputGradient(outputGrad: dy, weight: w, into: dx) { return }
        if usesShiftedProducts { return shiftedInputGradient(outputGrad: dy, weight: w, into: dx) }
        forEachBand { n, g, row, rows, scratch in
            let dxg = dx + inputBase(n, g)
            let cols = rows * outWidth
            let a = w + g * outPerGroup * patch, b = dy + outputBase(n, g) + row * outWidth
            if let scratch {
                BLAS.sgemm(transA: true, transB: false, m: patch, n: cols, k: outPerGroup, a: a, lda: patch,
                           b: b, ldb: outPlane, beta: 0, c: scratch, ldc: cols)
                col2im(scratch, firstRow: row, rows: rows, into: dxg)
            } else {
                BLAS.sgemm(transA: true, transB: false, m: patch, n: cols, k: outPerGroup, a: a, lda: patch,
                           b: b, ldb: outPlane, beta: 1, c: dxg + row * width, ldc: inPlane)
            }
        }
    }

    /// The output columns [lo, hi) whose input column ow * stride + offset lies inside [0, limit).
    @inline(__always)
    private static func validRange(offset: Int, stride s: Int, limit: Int, count: Int) -> (Int, Int) {
        let lo = offset >= 0 ? 0 : (-offset + s - 1) / s
        let last = limit - 1 - offset
        let hi = last < 0 ? 0 : Swift.min(count, last / s + 1)
        return (Swift.min(lo, hi), hi)
    }

    /// Patch matrix of output rows [firstRow, firstRow + rows) of one group: row (c, ki, kj), column
    /// (oh - firstRow) * outWidth + ow holds x[c, oh * sh - padTop + ki * dh, ow * sw - padLeft + kj * dw],
    /// or 0 in the padding.
    private func im2col(_ x: UnsafePointer<Float>, firstRow: Int, rows: Int, into col: UnsafeMutablePointer<Float>) {
        let cols = rows * outWidth
        let (ow, sw, sh) = (outWidth, strideW, strideH)
        var r = 0
        for c in 0..<inPerGroup {
            let plane = x + c * inPlane
            for ki in 0..<kernelH {
                for kj in 0..<kernelW {
                    let offset = kj * dilationW - padLeft
                    let (lo, hi) = Self.validRange(offset: offset, stride: sw, limit: width, count: ow)
                    let dstRow = col + r * cols
                    for i in 0..<rows {
                        let d = dstRow + i * ow
                        let ih = (firstRow + i) * sh - padTop + ki * dilationH
                        if ih < 0 || ih >= height || lo == hi {
                            d.update(repeating: 0, count: ow)
                            continue
                        }
                        let s = plane + ih * width + lo * sw + offset
                        for o in 0..<lo { d[o] = 0 }
                        let dv = d + lo
                        if sw == 1 {
                            for o in 0..<(hi - lo) { dv[o] = s[o] }
                        } else {
                            for o in 0..<(hi - lo) { dv[o] = s[o &* sw] }
                        }
                        for o in hi..<ow { d[o] = 0 }
                    }
                    r += 1
                }
            }
        }
    }

    /// The adjoint of `im2col`: adds every patch-matrix entry back onto the input pixel it was read from.
    private func col2im(_ col: UnsafePointer<Float>, firstRow: Int, rows: Int, into x: UnsafeMutablePointer<Float>) {
        let cols = rows * outWidth
        let (ow, sw, sh) = (outWidth, strideW, strideH)
        var r = 0
        for c in 0..<inPerGroup {
            let plane = x + c * inPlane
            for ki in 0..<kernelH {
                for kj in 0..<kernelW {
                    let offset = kj * dilationW - padLeft
                    let (lo, hi) = Self.validRange(offset: offset, stride: sw, limit: width, count: ow)
                    let srcRow = col + r * cols
                    r += 1
                    if lo == hi { continue }
                    for i in 0..<rows {
                        let ih = (firstRow + i) * sh - padTop + ki * dilationH
                        if ih < 0 || ih >= height { continue }
                        let s = srcRow + i * ow + lo
                        let d = plane + ih * width + lo * sw + offset
                        if sw == 1 {
                            for o in 0..<(hi - lo) { d[o] += s[o] }
                        } else {
                            for o in 0..<(hi - lo) { d[o &* sw] += s[o] }
                        }
                    }
                }
            }
        }
    }
}

extension ConvGeometry {
    /// The geometry of conv2d on an NCHW input with a [Cout, Cin / groups, KH, KW] weight.
    init(input: [Int], weight: [Int], stride: (Int, Int), padding: Padding, dilation: (Int, Int), groups: Int) {
        precondition(input.count == 4 && weight.count == 4, "conv2d expects NCHW input and a 4-D weight, got \(input) and \(weight)")
        let (n, cin, h, w) = (input[0], input[1], input[2], input[3])
        let (cout, kh, kw) = (weight[0], weight[2], weight[3])
        precondition(groups > 0 && cin % groups == 0 && cout % groups == 0, "groups \(groups) must divide channels \(cin) -> \(cout)")
        precondition(weight[1] == cin / groups, "weight \(weight) for \(cin) input channels in \(groups) groups")
        precondition(dilation.0 > 0 && dilation.1 > 0, "dilation \(dilation) must be positive")
        let rows = padding.window(size: h, kernel: (kh - 1) * dilation.0 + 1, stride: stride.0, vertical: true)
        let cols = padding.window(size: w, kernel: (kw - 1) * dilation.1 + 1, stride: stride.1, vertical: false)
        self.init(batch: n, inChannels: cin, outChannels: cout, groups: groups, height: h, width: w,
                  kernelH: kh, kernelW: kw, strideH: stride.0, strideW: stride.1,
                  dilationH: dilation.0, dilationW: dilation.1, padTop: rows.before, padLeft: cols.before,
                  outHeight: rows.output, outWidth: cols.output)
    }
}

// MARK: - Stride 1 without im2col

/// With stride 1 the patch matrix need not be built: pad each image once into planes of width
/// Wp = outWidth + (KW - 1) * dw, and the input pixels under tap (ki, kj) for all outputs, read row by row in
/// that padded layout, are the padded planes shifted by ki * dh * Wp + kj * dw. So the convolution is a sum of
/// KH * KW products of [Cout, Cin] tap matrices with shifted views of the padded input, each computing
/// Wp - outWidth junk columns per output row that are dropped (and, on the way back, zeros that add nothing).
/// This costs one padding copy instead of an im2col KH * KW times the input's size.
extension ConvGeometry {
    var paddedWidth: Int { outWidth + (kernelW - 1) * dilationW }
    /// One spare zero row keeps the junk columns of the last output row, under the last tap, inside the plane.
    var paddedHeight: Int { outHeight + (kernelH - 1) * dilationH + 1 }
    var taps: Int { kernelH * kernelW }
    var tapSize: Int { outPerGroup * inPerGroup }
    func tapOffset(_ t: Int) -> Int { (t / kernelW) * dilationH * paddedWidth + (t % kernelW) * dilationW }
    var shiftedBandRows: Int {
        Swift.max(1, Swift.min(outHeight, shiftedBandBudget / Swift.max(1, outPerGroup * paddedWidth)))
    }

    /// Scratch of one shifted call: a padded image group, a band of rows, the weight in tap-major order.
    private struct ShiftedScratch {
        let padded: UnsafeMutablePointer<Float>, band: UnsafeMutablePointer<Float>, taps: UnsafeMutablePointer<Float>
        init(_ g: ConvGeometry) {
            padded = .allocate(capacity: g.inPerGroup * g.paddedHeight * g.paddedWidth)
            band = .allocate(capacity: g.outPerGroup * g.shiftedBandRows * g.paddedWidth)
            taps = .allocate(capacity: g.outChannels * g.patch)
        }
        func deallocate() { padded.deallocate(); band.deallocate(); taps.deallocate() }
    }

    /// For every image and group: `start(n, group)`, then `band(n, group, firstRow, rows)` for each band of
    /// output rows, then `finish(n, group)`.
    private func forEachShiftedBand(start: (Int, Int) -> Void, finish: (Int, Int) -> Void = { _, _ in },
                                    band body: (Int, Int, Int, Int) -> Void) {
        let bandRows = shiftedBandRows
        for n in 0..<batch {
            for g in 0..<groups {
                start(n, g)
                var row = 0
                while row < outHeight {
                    let rows = Swift.min(bandRows, outHeight - row)
                    body(n, g, row, rows)
                    row += rows
                }
                finish(n, g)
            }
        }
    }

    /// [Cout, Cin/groups, KH, KW] -> [groups, taps, Cout/groups, Cin/groups], or back (adding) with `inverse`.
    private func reorderTaps(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, inverse: Bool) {
        for co in 0..<outChannels {
            let (g, local) = (co / outPerGroup, co % outPerGroup)
            for c in 0..<inPerGroup {
                for t in 0..<taps {
                    let original = (co * inPerGroup + c) * taps + t
                    let tapMajor = ((g * taps + t) * outPerGroup + local) * inPerGroup + c
                    if inverse { dst[original] += src[tapMajor] } else { dst[tapMajor] = src[original] }
                }
            }
        }
    }

    /// The group's input planes with padTop zero rows above, padLeft zero columns to the left, zeros after.
    private func pad(_ x: UnsafePointer<Float>, into p: UnsafeMutablePointer<Float>) {
        let (wp, plane) = (paddedWidth, paddedHeight * paddedWidth)
        p.update(repeating: 0, count: inPerGroup * plane)
        for c in 0..<inPerGroup {
            for ih in 0..<height {
                let src = x + c * inPlane + ih * width, dst = p + c * plane + (ih + padTop) * wp + padLeft
                for o in 0..<width { dst[o] = src[o] }
            }
        }
    }

    /// Output rows [firstRow, + rows) of the group's channels of dy, laid out with the padded width and
    /// zeros in the junk columns.
    private func stage(_ dy: UnsafePointer<Float>, firstRow: Int, rows: Int, into band: UnsafeMutablePointer<Float>) {
        let (wp, ow) = (paddedWidth, outWidth)
        for co in 0..<outPerGroup {
            for i in 0..<rows {
                let src = dy + co * outPlane + (firstRow + i) * ow, dst = band + (co * rows + i) * wp
                for o in 0..<ow { dst[o] = src[o] }
                for o in ow..<wp { dst[o] = 0 }
            }
        }
    }

    fileprivate func shiftedConvolve(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
                                     output y: UnsafeMutablePointer<Float>, beta: Float) {
        let s = ShiftedScratch(self)
        defer { s.deallocate() }
        reorderTaps(w, s.taps, inverse: false)
        let (wp, ow, plane) = (paddedWidth, outWidth, paddedHeight * paddedWidth)
        forEachShiftedBand(start: { n, g in pad(x + inputBase(n, g), into: s.padded) }) { n, g, row, rows in
            let cols = rows * wp
            for t in 0..<taps {
                BLAS.sgemm(transA: false, transB: false, m: outPerGroup, n: cols, k: inPerGroup,
                           a: s.taps + (g * taps + t) * tapSize, lda: inPerGroup,
                           b: s.padded + row * wp + tapOffset(t), ldb: plane, beta: t == 0 ? 0 : 1, c: s.band, ldc: cols)
            }
            let yg = y + outputBase(n, g) + row * ow
            for co in 0..<outPerGroup {
                for i in 0..<rows {
                    let src = s.band + (co * rows + i) * wp, dst = yg + co * outPlane + i * ow
                    if beta == 0 {
                        for o in 0..<ow { dst[o] = src[o] }
                    } else {
                        for o in 0..<ow { dst[o] = src[o] + beta * dst[o] }
                    }
                }
            }
        }
    }

    fileprivate func shiftedWeightGradient(input x: UnsafePointer<Float>, outputGrad dy: UnsafePointer<Float>,
                                           into dw: UnsafeMutablePointer<Float>) {
        let s = ShiftedScratch(self)
        defer { s.deallocate() }
        s.taps.update(repeating: 0, count: outChannels * patch)
        let (wp, plane) = (paddedWidth, paddedHeight * paddedWidth)
        forEachShiftedBand(start: { n, g in pad(x + inputBase(n, g), into: s.padded) }) { n, g, row, rows in
            let cols = rows * wp
            stage(dy + outputBase(n, g), firstRow: row, rows: rows, into: s.band)
            for t in 0..<taps {
                BLAS.sgemm(transA: false, transB: true, m: outPerGroup, n: inPerGroup, k: cols,
                           a: s.band, lda: cols, b: s.padded + row * wp + tapOffset(t), ldb: plane,
                           beta: 1, c: s.taps + (g * taps + t) * tapSize, ldc: inPerGroup)
            }
        }
        reorderTaps(s.taps, dw, inverse: true)
    }

    fileprivate func shiftedInputGradient(outputGrad dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
                                          into dx: UnsafeMutablePointer<Float>) {
        let s = ShiftedScratch(self)
        defer { s.deallocate() }
        reorderTaps(w, s.taps, inverse: false)
        let (wp, plane) = (paddedWidth, paddedHeight * paddedWidth)
        // s.padded accumulates the gradient of the padded image group; its interior is then added to dx.
        forEachShiftedBand(start: { _, _ in s.padded.update(repeating: 0, count: inPerGroup * plane) }, finish: { n, g in
            let dxg = dx + inputBase(n, g)
            for c in 0..<inPerGroup {
                for ih in 0..<height {
                    let src = s.padded + c * plane + (ih + padTop) * wp + padLeft, dst = dxg + c * inPlane + ih * width
                    for o in 0..<width { dst[o] += src[o] }
                }
            }
        }) { n, g, row, rows in
            let cols = rows * wp
            stage(dy + outputBase(n, g), firstRow: row, rows: rows, into: s.band)
            for t in 0..<taps {
                BLAS.sgemm(transA: true, transB: false, m: inPerGroup, n: cols, k: outPerGroup,
                           a: s.taps + (g * taps + t) * tapSize, lda: inPerGroup, b: s.band, ldb: cols,
                           beta: 1, c: s.padded + row * wp + tapOffset(t), ldc: plane)
            }
        }
    }
}

/// y[n, c, :] = values[c]: the bias as the starting value of an accumulating sgemm.
func broadcastChannels(_ values: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, batch: Int, channels: Int, plane: Int) {
    for n in 0..<batch {
        for c in 0..<channels {
            (y + (n * channels + c) * plane).update(repeating: values[c], count: plane)
        }
    }
}

/// out[c] += sum over n and the plane of dy[n, c, :], the gradient of a per-channel bias.
func accumulateChannelSums(_ dy: UnsafePointer<Float>, batch: Int, channels: Int, plane: Int, into out: UnsafeMutablePointer<Float>) {
    for n in 0..<batch {
        for c in 0..<channels {
            out[c] += VectorMath.sum(plane, dy + (n * channels + c) * plane)
        }
    }
}

extension Tensor {
    /// The shape `conv2d` gives for an NCHW input of `input` and a kernel of `weight`.
    public static func conv2dShape(input: [Int], weight: [Int], stride: (Int, Int) = (1, 1), padding: Padding = .valid,
                                   dilation: (Int, Int) = (1, 1), groups: Int = 1) -> [Int] {
        let g = ConvGeometry(input: input, weight: weight, stride: stride, padding: padding, dilation: dilation, groups: groups)
        return [g.batch, g.outChannels, g.outHeight, g.outWidth]
    }

    /// Cross-correlation (what deep-learning libraries call convolution) of NCHW images.
    ///
    /// - Parameters:
    ///   - weight: [Cout, Cin / groups, KH, KW], PyTorch's layout.
    ///   - bias: [Cout], added to every pixel of its channel.
    ///   - stride: (vertical, horizontal) step of the window.
    ///   - padding: `.valid`, Keras's `.same`, or explicit amounts.
    ///   - dilation: spacing between kernel taps; the window spans (k - 1) * d + 1 pixels.
    ///   - groups: input and output channels split into this many independent convolutions.
    /// - Returns: [N, Cout, Hout, Wout].
    public func conv2d(_ weight: Tensor, bias: Tensor? = nil, stride: (Int, Int) = (1, 1), padding: Padding = .valid,
                       dilation: (Int, Int) = (1, 1), groups: Int = 1) -> Tensor {
        let x = self
        let geometry = ConvGeometry(input: x.shape, weight: weight.shape, stride: stride, padding: padding,
                                    dilation: dilation, groups: groups)
        let (n, cout) = (x.shape[0], weight.shape[0])
        if let bias { precondition(bias.shape == [cout], "bias \(bias.shape) for \(cout) output channels") }
        var inputs = [x, weight]
        if let bias { inputs.append(bias) }
        if GradMode.isEnabled && (x.requiresGrad || weight.requiresGrad) { geometry.prepareDNNLBackward() }
        // `convolve` overwrites every output (with the bias as its starting value).
        let outCount = n * cout * geometry.outHeight * geometry.outWidth
        let storage = FloatStorage(uninitializedCount: outCount)
        let out = Tensor.result(shape: [n, cout, geometry.outHeight, geometry.outWidth], storage: storage, inputs: inputs) { out in
            let dy = UnsafePointer(out.grad)
            if let bias, bias.requiresGrad {
                accumulateChannelSums(dy, batch: n, channels: cout, plane: geometry.outPlane, into: bias.grad)
            }
            if weight.requiresGrad { geometry.accumulateWeightGradient(input: x.data, outputGrad: dy, into: weight.grad) }
            if x.requiresGrad { geometry.accumulateInputGradient(outputGrad: dy, weight: weight.data, into: x.grad) }
        }
        geometry.convolve(input: x.data, weight: weight.data, bias: bias.map { UnsafePointer($0.data) }, output: out.data, beta: 0)
        return out
    }
}
