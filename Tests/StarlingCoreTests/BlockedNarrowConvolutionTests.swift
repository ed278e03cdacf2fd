import Foundation
import Testing
import CDNNL
@testable import StarlingCore

/// The narrow-output path of `conv2dBlocked` (a blocked input, a planar output of at most four channels:
/// `NarrowOutputConvolution`) against a direct convolution written out in Double here, at every kernel build this CPU
/// runs and both block widths, and against finite differences.
@Suite struct BlockedNarrowConvolutionTests {
    /// (input channels, output channels, kernel, padding, height, width): the autoencoders' last layers (16 and 32 -> 1,
    /// 3x3 same), a valid one, a 5x5 and a 1x1, at odd sizes.
    static let cases: [(Int, Int, Int, Padding, Int, Int)] = [(16, 1, 3, .same, 7, 9), (32, 1, 3, .same, 6, 5), (16, 3, 3, .valid, 7, 6),
                                                            (32, 2, 5, .same, 5, 7), (16, 4, 1, .same, 3, 4)]

    /// y, dx, dw and db of the convolution in Double, from NCHW x and w, for the output gradient dy.
    private func reference(x: [Float], w: [Float], bias: [Float], dy: [Float], n: Int, cin: Int, cout: Int, k: Int, pad: Int,
                           h: Int, wd: Int, oh: Int, ow: Int) -> (y: [Float], dx: [Float], dw: [Float], db: [Float]) {
        var y = [Double](repeating: 0, count: n * cout * oh * ow), dx = [Double](repeating: 0, count: x.count)
        var dw = [Double](repeating: 0, count: w.count), db = [Double](repeating: 0, count: cout)
        for i in 0..<n { for o in 0..<cout { for oy in 0..<oh { for ox in 0..<ow {
            let yi = ((i * cout + o) * oh + oy) * ow + ox
            var s = Double(bias[o])
            let g = Double(dy[yi])
            db[o] += g
            for c in 0..<cin { for kh in 0..<k { for kw in 0..<k {
                let (iy, ix) = (oy + kh - pad, ox + kw - pad)
                guard iy >= 0, iy < h, ix >= 0, ix < wd else { continue }
                let (xi, wi) = (((i * cin + c) * h + iy) * wd + ix, ((o * cin + c) * k + kh) * k + kw)
                s += Double(x[xi]) * Double(w[wi])
                dx[xi] += g * Double(w[wi])
                dw[wi] += g * Double(x[xi])
            } } }
            y[yi] = s
        } } } }
        return (y.map(Float.init), dx.map(Float.init), dw.map(Float.init), db.map(Float.init))
    }

    @Test(arguments: [8, 16]) func matchesDirectConvolution(width: Int) throws {
        for (cin, cout, k, padding, h, wd) in Self.cases {
            let n = 3, pad = padding == .same ? k / 2 : 0
            let (oh, ow) = (h + 2 * pad - k + 1, wd + 2 * pad - k + 1)
            let x = randomVariable([n, cin, h, wd], seed: 51), w = randomVariable([cout, cin, k, k], seed: 52), b = randomVariable([cout], seed: 53)
            let dy = randomValues(n * cout * oh * ow, seed: 54, -1, 1)
            let expected = reference(x: x.toArray(), w: w.toArray(), bias: b.toArray(), dy: dy, n: n, cin: cin, cout: cout, k: k, pad: pad,
                                     h: h, wd: wd, oh: oh, ow: ow)
            try #require(Tensor.canConvolveBlocked(input: x.shape, weight: w.shape, padding: padding, blockedInput: true, blockedOutput: false,
                                                   width: width))
            // Through the op, at this process's kernel build (x's gradient through the reblocking).
            let y = x.blocked(width: width).conv2dBlocked(w, bias: b, padding: padding, blockedOutput: false, width: width)
            #expect(y.shape == [n, cout, oh, ow])
            y.backward(seed: dy)
            expectClose(y.toArray(), expected.y, tolerance: 1e-5)
            expectClose(x.gradArray ?? [], expected.dx, tolerance: 1e-5)
            expectClose(w.gradArray ?? [], expected.dw, tolerance: 1e-5)
            expectClose(b.gradArray ?? [], expected.db, tolerance: 1e-5)

            // The kernels of every build, on the blocked input directly; the gradients added onto ones.
            let g = ConvGeometry(input: x.shape, weight: w.shape, stride: (1, 1), padding: padding, dilation: (1, 1), groups: 1)
            let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: false, sourceWidth: width, destinationWidth: 8)
            try #require(NarrowOutput.enabled == false || g.narrowOutputShape(layouts) != nil)
            guard NarrowOutput.enabled else { continue }
            let blockedX = GradMode.disabled { x.blocked(width: width) }
            for level in KernelDispatch.supported {
                var out = [Float](repeating: .nan, count: n * cout * oh * ow)
                var dx = [Float](repeating: .nan, count: x.count)
                var (dw, db) = ([Float](repeating: 1, count: w.count), [Float](repeating: 1, count: cout))
                let ran = out.withUnsafeMutableBufferPointer { o in
                    g.narrowOutputForward(input: blockedX.data, weight: w.data, bias: b.data, output: o.baseAddress!, layouts: layouts, kernels: level)
                }
                #expect(ran)
                dy.withUnsafeBufferPointer { d in
                    dx.withUnsafeMutableBufferPointer { dxp in
                        dw.withUnsafeMutableBufferPointer { dwp in
                            db.withUnsafeMutableBufferPointer { dbp in
                                _ = g.narrowOutputBackward(input: blockedX.data, weight: w.data, outputGrad: d.baseAddress!,
                                                           weightGradient: dwp.baseAddress!, biasGradient: dbp.baseAddress!,
                                                           inputGradient: (dxp.baseAddress!, true), layouts: layouts, kernels: level)
                            }
                        }
                    }
                }
                let planarDX = GradMode.disabled { Tensor(shape: blockedX.shape, values: dx).unblocked().toArray() }
                expectClose(out, expected.y, tolerance: 1e-5)
                expectClose(planarDX, expected.dx, tolerance: 1e-5)
                expectClose(dw, expected.dw.map { $0 + 1 }, tolerance: 1e-5)
                expectClose(db, expected.db.map { $0 + 1 }, tolerance: 1e-5)
                // Added, not written: a second pass doubles the input gradient.
                dy.withUnsafeBufferPointer { d in
                    dx.withUnsafeMutableBufferPointer { dxp in
                        _ = g.narrowOutputBackward(input: blockedX.data, weight: w.data, outputGrad: d.baseAddress!, weightGradient: nil,
                                                   biasGradient: nil, inputGradient: (dxp.baseAddress!, false), layouts: layouts, kernels: level)
                    }
                }
                let doubled = GradMode.disabled { Tensor(shape: blockedX.shape, values: dx).unblocked().toArray() }
                expectClose(doubled, expected.dx.map { 2 * $0 }, tolerance: 1e-5)
            }
        }
    }

    /// Inference from oneDNN's layouts (`DNNLActivation.conv2d`: nChw8c, nChw16c, and NHWC, which its brgconv kernels
    /// choose on AVX-512) runs the same kernels: against the loops in Double, each fused activation applied after, the
    /// output planar.
    @Test(arguments: ["nChw8c", "nChw16c", "NHWC"]) func inferenceFromOneDNNLayouts(layout: String) throws {
        guard DNNLActivation.isAvailable else { return }
        let tag = ["nChw8c": dnnl_aBcd8b, "nChw16c": dnnl_aBcd16b, "NHWC": dnnl_acdb][layout]!
        let activations: [(FusedActivation, (Float) -> Float)] = [
            (.identity, { $0 }), (.leakyRelu(slope: 0), { max($0, 0) }), (.elu(alpha: 0.5), { $0 > 0 ? $0 : 0.5 * (exp($0) - 1) }),
            (.logistic, { 1 / (1 + exp(-$0)) }),
        ]
        for (cin, cout, k, padding, h, wd) in Self.cases {
            let n = 2, pad = padding == .same ? k / 2 : 0
            let (oh, ow) = (h + 2 * pad - k + 1, wd + 2 * pad - k + 1)
            let x = Tensor(shape: [n, cin, h, wd], values: randomValues(n * cin * h * wd, seed: 71))
            let w = Tensor(shape: [cout, cin, k, k], values: randomValues(cout * cin * k * k, seed: 72))
            let b = Tensor(shape: [cout], values: randomValues(cout, seed: 73))
            let expected = reference(x: x.toArray(), w: w.toArray(), bias: b.toArray(), dy: [Float](repeating: 0, count: n * cout * oh * ow),
                                     n: n, cin: cin, cout: cout, k: k, pad: pad, h: h, wd: wd, oh: oh, ow: ow).y
            let source = DNNLActivation(x).laidOut(as: DNNL.descriptor(x.shape, tag))
            #expect(try #require(source.channelBlocks()).1 == (layout == "nChw8c" ? 8 : 16))
            for (activation, f) in activations {
                let y = try #require(source.conv2d(w, bias: b, padding: padding, activation: activation))
                #expect(y.shape == [n, cout, oh, ow])
                // oneDNN would have written its own blocked or NHWC layout; the narrow kernels write NCHW.
                if NarrowOutput.enabled { #expect(DNNL.equal(y.md, DNNL.descriptor(y.shape, dnnl_nchw))) }
                expectClose(y.tensor().toArray(), expected.map(f), tolerance: 1e-5)
            }
        }
        // Channels that do not fill their blocks stay with oneDNN.
        let padded = DNNLActivation(Tensor(zeros: [1, 24, 4, 4])).laidOut(as: DNNL.descriptor([1, 24, 4, 4], dnnl_aBcd16b))
        #expect(padded.channelBlocks() == nil)
    }

    /// A 1x1 kernel and a valid convolution read the input in place; padding needs the bordered copy.
    @Test func borderOnlyWherePaddingIsRead() {
        for (cin, cout, k, padding, h, wd) in Self.cases {
            let g = ConvGeometry(input: [1, cin, h, wd], weight: [cout, cin, k, k], stride: (1, 1), padding: padding, dilation: (1, 1), groups: 1)
            let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: false, sourceWidth: 16, destinationWidth: 8)
            guard let s = g.narrowOutputShape(layouts) else { continue }
            #expect(s.forwardNeedsBorder == (k > 1 && padding == .same))
            #expect((s.forwardScratch(block: 16) == 0) == !s.forwardNeedsBorder)
        }
    }

    @Test(arguments: [8, 16]) func finiteDifferences(width: Int) {
        let w = randomVariable([1, 2 * width, 3, 3], seed: 61), b = randomVariable([1], seed: 62)
        checkGradients([randomVariable([2, 2, 4, 5, width], seed: 63), w, b]) {
            $0[0].conv2dBlocked($0[1], bias: $0[2], stride: (1, 1), padding: .same, blockedOutput: false)
        }
    }

    /// Five output channels or a stride of 2 stay with oneDNN.
    @Test func appliesOnlyToNarrowStrideOneOutputs() {
        let layouts = DNNLConvPlan.Layouts(sourceBlocked: true, destinationBlocked: false, sourceWidth: 16, destinationWidth: 8)
        let narrow = ConvGeometry(input: [2, 16, 28, 28], weight: [1, 16, 3, 3], stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
        let wide = ConvGeometry(input: [2, 16, 28, 28], weight: [5, 16, 3, 3], stride: (1, 1), padding: .same, dilation: (1, 1), groups: 1)
        let strided = ConvGeometry(input: [2, 16, 28, 28], weight: [1, 16, 3, 3], stride: (2, 2), padding: .same, dilation: (1, 1), groups: 1)
        #expect((narrow.narrowOutputShape(layouts) != nil) == NarrowOutput.enabled)
        #expect(wide.narrowOutputShape(layouts) == nil)
        #expect(strided.narrowOutputShape(layouts) == nil)
        #expect(narrow.narrowOutputShape(DNNLConvPlan.Layouts(sourceBlocked: false, destinationBlocked: false)) == nil)
    }
}
