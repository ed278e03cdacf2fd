import Foundation
import Testing
@testable import StarlingCore

/// Direct convolution in Double: y[n, co, oh, ow] = b[co] + sum over the input channels ci of co's group and the
/// taps (ki, kj) of x[n, ci, oh * sh - top + ki * dh, ow * sw - left + kj * dw] * w[co, ci - first ci of the group, ki, kj],
/// with zeros outside the image.
func referenceConv2d(_ x: Tensor, _ w: Tensor, _ b: Tensor?, stride: (Int, Int), top: Int, left: Int,
                     outH: Int, outW: Int, dilation: (Int, Int) = (1, 1), groups: Int = 1) -> [Float] {
    let (batch, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let (cout, cinG, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3])
    let coutG = cout / groups
    let xv = x.toArray(), wv = w.toArray(), bv = b?.toArray()
    var y = [Float]()
    for n in 0..<batch { for co in 0..<cout { for oh in 0..<outH { for ow in 0..<outW {
        var s = Double(bv?[co] ?? 0)
        let g = co / coutG
        for c in 0..<cinG { for ki in 0..<kh { for kj in 0..<kw {
            let ih = oh * stride.0 - top + ki * dilation.0, iw = ow * stride.1 - left + kj * dilation.1
            if ih < 0 || ih >= h || iw < 0 || iw >= wd { continue }
            let ci = g * cinG + c
            s += Double(xv[((n * cin + ci) * h + ih) * wd + iw]) * Double(wv[((co * cinG + c) * kh + ki) * kw + kj])
        } } }
        y.append(Float(s))
    } } } }
    return y
}

/// One convolution configuration with its output size and leading padding worked out by hand.
struct ConvCase: CustomStringConvertible {
    var batch = 2, cin = 3, cout = 4, h = 7, w = 5, kh = 3, kw = 3
    var stride = (1, 1), padding = Padding.same, dilation = (1, 1), groups = 1
    var outH: Int, outW: Int, top: Int, left: Int

    var description: String { "\(cin)->\(cout) \(h)x\(w) k\(kh)x\(kw) s\(stride) \(padding) d\(dilation) g\(groups)" }

    func tensors(seed: UInt64) -> (Tensor, Tensor, Tensor) {
        (randomVariable([batch, cin, h, w], seed: seed), randomVariable([cout, cin / groups, kh, kw], seed: seed + 1),
         randomVariable([cout], seed: seed + 2))
    }
    func apply(_ x: Tensor, _ w: Tensor, _ b: Tensor?) -> Tensor {
        x.conv2d(w, bias: b, stride: stride, padding: padding, dilation: dilation, groups: groups)
    }
}

let convCases: [ConvCase] = [
    // same, stride 1: output = input, one pixel of padding on each side.
    ConvCase(outH: 7, outW: 5, top: 1, left: 1),
    // same, stride 2, 3x2 kernel: H 7 -> 4 with total pad 3*2+3-7 = 2 (top 1); W 6 -> 3 with total pad 2*2+2-6 = 0.
    ConvCase(cout: 2, w: 6, kw: 2, stride: (2, 2), outH: 4, outW: 3, top: 1, left: 0),
    // same, stride 2, 2x4 kernel: H 8 -> 4, pad 3*2+2-8 = 0; W 9 -> 5, pad 4*2+4-9 = 3 (left 1, right 2).
    ConvCase(cin: 2, cout: 3, h: 8, w: 9, kh: 2, kw: 4, stride: (2, 2), outH: 4, outW: 5, top: 0, left: 1),
    // valid, stride 2: (9-3)/2+1 = 4, (8-3)/2+1 = 3.
    ConvCase(cout: 2, h: 9, w: 8, stride: (2, 2), padding: .valid, outH: 4, outW: 3, top: 0, left: 0),
    // explicit, strides (1, 2): (5+2+0-2)/1+1 = 6, (4+1+3-3)/2+1 = 3.
    ConvCase(batch: 1, cin: 2, cout: 3, h: 5, w: 4, kh: 2, kw: 3, stride: (1, 2),
             padding: .explicit(top: 2, bottom: 0, left: 1, right: 3), outH: 6, outW: 3, top: 2, left: 1),
    // groups 2: channels 0-1 feed outputs 0-2, channels 2-3 feed outputs 3-5.
    ConvCase(cin: 4, cout: 6, h: 6, w: 5, groups: 2, outH: 6, outW: 5, top: 1, left: 1),
    // dilation (2, 1): the window spans 5 rows, so same padding adds 2 rows on top.
    ConvCase(batch: 1, cin: 2, cout: 2, h: 7, w: 6, dilation: (2, 1), outH: 7, outW: 6, top: 2, left: 1),
    // 1x1 at stride 1 takes the pointwise path without im2col.
    ConvCase(cin: 3, cout: 4, h: 4, w: 5, kh: 1, kw: 1, padding: .valid, outH: 4, outW: 5, top: 0, left: 0),
    // 1x1 at stride 2 with groups goes through im2col.
    ConvCase(cin: 4, cout: 2, h: 5, w: 5, kh: 1, kw: 1, stride: (2, 2), padding: .valid, groups: 2, outH: 3, outW: 3, top: 0, left: 0),
    // 16 channels, 5 images: SSD7's kind of layer; oneDNN takes it in chunks of two images and a tail of one.
    ConvCase(batch: 5, cin: 16, cout: 8, h: 6, w: 9, kh: 5, kw: 5, outH: 6, outW: 9, top: 2, left: 2),
]

@Suite struct ConvolutionTests {
    @Test func handComputedDifferenceKernel() {
        // y[i, j] = x[i, j] - x[i+1, j+1] + 0.5 = -4 + 0.5 on the 3x3 ramp 1...9.
        let x = Tensor(shape: [1, 1, 3, 3], values: (1...9).map(Float.init))
        let w = Tensor(shape: [1, 1, 2, 2], values: [1, 0, 0, -1])
        let y = x.conv2d(w, bias: Tensor(shape: [1], values: [0.5]))
        #expect(y.shape == [1, 1, 2, 2])
        #expect(y.toArray() == [-3.5, -3.5, -3.5, -3.5])
    }

    @Test(arguments: convCases.indices)
    func forwardMatchesDirectLoops(_ index: Int) {
        let c = convCases[index]
        let (x, w, b) = c.tensors(seed: UInt64(10 * index))
        let y = c.apply(x, w, b)
        #expect(y.shape == [c.batch, c.cout, c.outH, c.outW], "\(c)")
        expectClose(y.toArray(), referenceConv2d(x, w, b, stride: c.stride, top: c.top, left: c.left,
                                                 outH: c.outH, outW: c.outW, dilation: c.dilation, groups: c.groups))
        expectClose(c.apply(x, w, nil).toArray(), referenceConv2d(x, w, nil, stride: c.stride, top: c.top, left: c.left,
                                                                  outH: c.outH, outW: c.outW, dilation: c.dilation, groups: c.groups))
    }

    @Test(arguments: convCases.indices)
    func gradientsOfInputWeightAndBias(_ index: Int) {
        let c = convCases[index]
        let (x, w, b) = c.tensors(seed: UInt64(10 * index + 100))
        // The op is linear in each input, so a wide step has no truncation error and less rounding noise.
        checkGradients([x, w, b], eps: 0.1) { c.apply($0[0], $0[1], $0[2]) }
    }

    /// The three kernels of one geometry: output, weight gradient and input gradient for a given dy.
    static func runKernels(_ g: ConvGeometry, _ x: Tensor, _ w: Tensor, dy: [Float]) -> (y: [Float], dw: [Float], dx: [Float]) {
        let y = FloatStorage(count: dy.count), dw = FloatStorage(count: w.count), dx = FloatStorage(count: x.count)
        g.convolve(input: x.data, weight: w.data, output: y.pointer, beta: 0)
        dy.withUnsafeBufferPointer { d in
            g.accumulateWeightGradient(input: x.data, outputGrad: d.baseAddress!, into: dw.pointer)
            g.accumulateInputGradient(outputGrad: d.baseAddress!, weight: w.data, into: dx.pointer)
        }
        return (y.toArray(), dw.toArray(), dx.toArray())
    }

    /// im2col in whole images or in bands of rows, the shifted products for stride 1 in whole images or in
    /// bands, and oneDNN in whole batches or two images at a time must all give the direct loops' output and the same gradients.
    @Test(arguments: convCases.indices)
    func allKernelPathsAgree(_ index: Int) {
        let c = convCases[index]
        let (x, w, _) = c.tensors(seed: UInt64(10 * index + 200))
        let base = ConvGeometry(input: x.shape, weight: w.shape, stride: c.stride, padding: c.padding,
                                dilation: c.dilation, groups: c.groups)
        var im2col = base, im2colBands = base, shifted = base, shiftedBands = base, dnnlChunks = base
        im2col.useDNNL = false; im2colBands.useDNNL = false; shifted.useDNNL = false; shiftedBands.useDNNL = false
        dnnlChunks.dnnlChunkBudget = 2 * (c.cin * c.h * c.w + c.cout * c.outH * c.outW)   // two images per oneDNN call
        im2col.shiftedMinChannels = .max
        im2colBands.shiftedMinChannels = .max
        im2colBands.scratchBudget = base.patch * c.outW * 2          // two output rows per band
        shifted.shiftedMinChannels = 1
        shiftedBands.shiftedMinChannels = 1
        shiftedBands.shiftedBandBudget = (c.cout / c.groups) * shifted.paddedWidth * 2
        #expect(im2colBands.isPointwise || im2colBands.rowsPerBand == min(2, c.outH))
        #expect(shifted.usesShiftedProducts == (c.stride == (1, 1) && !base.isPointwise))
        #expect(!im2col.usesShiftedProducts)
        let dy = randomValues(c.batch * c.cout * c.outH * c.outW, seed: 8)
        let reference = referenceConv2d(x, w, nil, stride: c.stride, top: c.top, left: c.left, outH: c.outH, outW: c.outW,
                                        dilation: c.dilation, groups: c.groups)
        let first = Self.runKernels(im2col, x, w, dy: dy)
        expectClose(first.y, reference)
        // oneDNN (whole batch, and two images per call) against the sgemm lowerings.
        #expect(DNNLConvPlans.plan(base, images: base.batch, variant: .backward) != nil, "oneDNN has no plan for case \(index)")
        #expect(dnnlChunks.dnnlChunk == min(2, c.batch))
        for g in [im2colBands, shifted, shiftedBands, base, dnnlChunks] {
            let other = Self.runKernels(g, x, w, dy: dy)
            expectClose(other.y, reference)
            expectClose(other.dw, first.dw)
            expectClose(other.dx, first.dx)
        }
    }

    /// Inference convolutions in oneDNN's layout (`DNNLActivation.conv2d`), plain and with each activation fused in as
    /// a post-op, against the direct loops followed by that activation, back in NCHW.
    @Test(arguments: convCases.indices.filter { convCases[$0].groups == 1 && convCases[$0].dilation == (1, 1) })
    func blockedInferenceConvolutionMatchesLoops(_ index: Int) throws {
        let c = convCases[index]
        let (x, w, b) = c.tensors(seed: UInt64(10 * index + 300))
        let plain = referenceConv2d(x, w, b, stride: c.stride, top: c.top, left: c.left, outH: c.outH, outW: c.outW)
        let activations: [(FusedActivation, (Float) -> Float)] = [
            (.identity, { $0 }), (.elu(alpha: 0.7), { $0 > 0 ? $0 : 0.7 * (exp($0) - 1) }), (.leakyRelu(slope: 0), { max($0, 0) }),
            (.leakyRelu(slope: 0.1), { $0 > 0 ? $0 : 0.1 * $0 }), (.logistic, { 1 / (1 + exp(-$0)) }),
        ]
        for (activation, reference) in activations {
            let y = try #require(DNNLActivation(x).conv2d(w, bias: b, stride: c.stride, padding: c.padding, activation: activation))
            #expect(y.shape == [c.batch, c.cout, c.outH, c.outW])
            expectClose(y.tensor().toArray(), plain.map(reference))
        }
    }

    /// 16 input channels at stride 1 take the shifted products through the public op.
    @Test func shiftedPathGradients() {
        let x = randomVariable([2, 16, 5, 4], seed: 1), w = randomVariable([3, 16, 3, 2], seed: 2, -0.3, 0.3)
        let b = randomVariable([3], seed: 3)
        let geometry = ConvGeometry(input: x.shape, weight: w.shape, stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
        #expect(geometry.usesShiftedProducts)
        expectClose(x.conv2d(w, bias: b, padding: .same).toArray(),
                    referenceConv2d(x, w, b, stride: (1, 1), top: 1, left: 0, outH: 5, outW: 4))
        checkGradients([x, w, b], eps: 0.1) { $0[0].conv2d($0[1], bias: $0[2], padding: .same) }
    }

    @Test func gradientsAccumulateOverTwoUses() {
        let (x, w, b) = convCases[1].tensors(seed: 3)
        let y = convCases[1].apply(x, w, b)
        (y + y).sum().backward()   // two uses of y: each backward closure must add, not overwrite
        let twice = (x.gradArray!, w.gradArray!, b.gradArray!)
        x.clearGrad(); w.clearGrad(); b.clearGrad()
        convCases[1].apply(x, w, b).sum().backward()
        expectClose(twice.0, x.gradArray!.map { 2 * $0 })
        expectClose(twice.1, w.gradArray!.map { 2 * $0 })
        expectClose(twice.2, b.gradArray!.map { 2 * $0 })
    }

    @Test func benchmarkRunsOnATinyProblem() {
        let r = ConvBenchmark.run(batch: 1, channels: 4, size: 8, iterations: 1, sgemmSize: 64)
        #expect(r.convGFLOPS > 0 && r.sgemmGFLOPS > 0 && r.threadCount >= 1)
    }
}

/// Transposed convolution as a plain scatter in Double: every input pixel (n, ci, ih, iw) adds
/// x * w[ci, co - first co of the group, ki, kj] onto output pixel (ih * sh - top + ki * dh, iw * sw - left + kj * dw).
func referenceConv2dTransposed(_ x: Tensor, _ w: Tensor, _ b: Tensor?, stride: (Int, Int), top: Int, left: Int,
                               outH: Int, outW: Int, dilation: (Int, Int) = (1, 1), groups: Int = 1) -> [Float] {
    let (batch, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let (coutG, kh, kw) = (w.shape[1], w.shape[2], w.shape[3])
    let cout = coutG * groups, cinG = cin / groups
    let xv = x.toArray(), wv = w.toArray(), bv = b?.toArray()
    var y = [Double](repeating: 0, count: batch * cout * outH * outW)
    for n in 0..<batch { for co in 0..<cout { for i in 0..<(outH * outW) {
        y[(n * cout + co) * outH * outW + i] = Double(bv?[co] ?? 0)
    } } }
    for n in 0..<batch { for ci in 0..<cin { for ih in 0..<h { for iw in 0..<wd {
        let v = Double(xv[((n * cin + ci) * h + ih) * wd + iw])
        for c in 0..<coutG { for ki in 0..<kh { for kj in 0..<kw {
            let oh = ih * stride.0 - top + ki * dilation.0, ow = iw * stride.1 - left + kj * dilation.1
            if oh < 0 || oh >= outH || ow < 0 || ow >= outW { continue }
            let co = (ci / cinG) * coutG + c
            y[((n * cout + co) * outH + oh) * outW + ow] += v * Double(wv[((ci * coutG + c) * kh + ki) * kw + kj])
        } } }
    } } } }
    return y.map { Float($0) }
}

/// A transposed-convolution configuration; output size and cropping (the padding of the matching conv) by hand.
struct TransposedCase: CustomStringConvertible {
    var batch = 2, cin = 3, coutPerGroup = 2, h = 3, w = 4, kh = 3, kw = 3
    var stride = (2, 2), padding = Padding.same, dilation = (1, 1), groups = 1
    var outH: Int, outW: Int, top: Int, left: Int

    var description: String { "\(cin)->\(coutPerGroup * groups) \(h)x\(w) k\(kh)x\(kw) s\(stride) \(padding) d\(dilation) g\(groups)" }

    func tensors(seed: UInt64) -> (Tensor, Tensor, Tensor) {
        (randomVariable([batch, cin, h, w], seed: seed), randomVariable([cin, coutPerGroup, kh, kw], seed: seed + 1),
         randomVariable([coutPerGroup * groups], seed: seed + 2))
    }
    func apply(_ x: Tensor, _ w: Tensor, _ b: Tensor?) -> Tensor {
        x.conv2dTransposed(w, bias: b, stride: stride, padding: padding, dilation: dilation, groups: groups)
    }
}

let transposedCases: [TransposedCase] = [
    // same: output = input * stride; total crop max(k - s, 0) = 1, the odd one at the bottom/right.
    TransposedCase(outH: 6, outW: 8, top: 0, left: 0),
    // same, 4x4 kernel at stride 2: crop 2, one on each side.
    TransposedCase(batch: 1, cin: 2, coutPerGroup: 3, h: 3, w: 3, kh: 4, kw: 4, outH: 6, outW: 6, top: 1, left: 1),
    // valid: (in - 1) * s + k = 7 and 5.
    TransposedCase(w: 2, padding: .valid, outH: 7, outW: 5, top: 0, left: 0),
    // valid with a kernel smaller than the stride (Keras): in * s = 6 and 8, the gaps hold only the bias.
    TransposedCase(kh: 1, kw: 1, padding: .valid, outH: 6, outW: 8, top: 0, left: 0),
    // explicit, strides (2, 1), 3x2 kernel: (3-1)*2+3-1-0 = 6 rows, (4-1)*1+2-0-1 = 4 columns.
    TransposedCase(kw: 2, stride: (2, 1), padding: .explicit(top: 1, bottom: 0, left: 0, right: 1),
                   outH: 6, outW: 4, top: 1, left: 0),
    // groups 2: input channels 0-1 feed outputs 0-1, channels 2-3 feed outputs 2-3.
    TransposedCase(cin: 4, h: 3, w: 3, kh: 2, kw: 2, groups: 2, outH: 6, outW: 6, top: 0, left: 0),
    // stride 1, same: a plain "full correlation" cropped back to the input size.
    TransposedCase(h: 4, w: 5, stride: (1, 1), outH: 4, outW: 5, top: 1, left: 1),
    // dilation (2, 1), stride 1, same: the window spans 5 rows, so 4 rows are cropped (2 on top) and 2 columns.
    TransposedCase(batch: 1, cin: 2, h: 4, w: 3, stride: (1, 1), dilation: (2, 1), outH: 4, outW: 3, top: 2, left: 1),
    // 16 outputs at stride 1: the forward pass takes conv2d's shifted products (crop 2 rows, 1 column).
    TransposedCase(batch: 1, cin: 2, coutPerGroup: 16, h: 3, w: 4, kh: 3, kw: 2, stride: (1, 1), outH: 3, outW: 4, top: 1, left: 0),
    // 32 channels to 1 at stride 1, same (conv-vae's last layer): one output channel, which skips oneDNN's blocks.
    TransposedCase(batch: 2, cin: 32, coutPerGroup: 1, h: 5, w: 6, stride: (1, 1), outH: 5, outW: 6, top: 1, left: 1),
]

@Suite struct TransposedConvolutionTests {
    @Test func handComputedStamps() {
        // Stride 2 with a 2x2 kernel places one scaled copy of the kernel per input pixel, without overlap.
        let x = Tensor(shape: [1, 1, 2, 2], values: [1, 2, 3, 4])
        let w = Tensor(shape: [1, 1, 2, 2], values: [1, 10, 100, 1000])
        let y = x.conv2dTransposed(w, stride: (2, 2), padding: .valid)
        #expect(y.shape == [1, 1, 4, 4])
        #expect(y.toArray() == [1, 10, 2, 20,
                                100, 1000, 200, 2000,
                                3, 30, 4, 40,
                                300, 3000, 400, 4000])
    }

    @Test(arguments: transposedCases.indices)
    func forwardMatchesScatterLoops(_ index: Int) {
        let c = transposedCases[index]
        let (x, w, b) = c.tensors(seed: UInt64(10 * index))
        let y = c.apply(x, w, b)
        #expect(y.shape == [c.batch, c.coutPerGroup * c.groups, c.outH, c.outW], "\(c)")
        expectClose(y.toArray(), referenceConv2dTransposed(x, w, b, stride: c.stride, top: c.top, left: c.left,
                                                           outH: c.outH, outW: c.outW, dilation: c.dilation, groups: c.groups))
    }

    /// <conv2d(u), v> == <u, conv2dTransposed(v)> with the same weights, stride, padding and groups.
    @Test(arguments: transposedCases.indices)
    func isTheAdjointOfConv2d(_ index: Int) {
        let c = transposedCases[index]
        let (v, w, _) = c.tensors(seed: UInt64(10 * index + 50))
        let tv = c.apply(v, w, nil)
        let u = Tensor(shape: tv.shape, values: randomValues(tv.count, seed: 77))
        let cu = u.conv2d(w, stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.groups)
        #expect(cu.shape == v.shape, "\(c)")
        func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) } }
        let lhs = dot(cu.toArray(), v.toArray()), rhs = dot(u.toArray(), tv.toArray())
        #expect(abs(lhs - rhs) <= 1e-4 * max(1, abs(lhs)), "\(c): \(lhs) vs \(rhs)")
    }

    @Test(arguments: transposedCases.indices)
    func gradientsOfInputWeightAndBias(_ index: Int) {
        let c = transposedCases[index]
        let (x, w, b) = c.tensors(seed: UInt64(10 * index + 100))
        checkGradients([x, w, b], eps: 0.1) { c.apply($0[0], $0[1], $0[2]) }
    }
}
