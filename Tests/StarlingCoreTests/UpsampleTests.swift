import Testing
import CDNNL
@testable import StarlingCore

@Suite struct UpsampleTests {
    @Test func nearestHandComputed() {
        let x = Tensor(shape: [1, 1, 2, 2], values: [1, 2, 3, 4])
        let y = x.upsampleNearest(scale: (2, 3))
        #expect(y.shape == [1, 1, 4, 6])
        #expect(y.toArray() == [1, 1, 1, 2, 2, 2,
                                1, 1, 1, 2, 2, 2,
                                3, 3, 3, 4, 4, 4,
                                3, 3, 3, 4, 4, 4])
    }

    @Test func nearestGradientSumsEachBlock() {
        let x = Tensor.variable(shape: [1, 1, 1, 2], values: [0, 0])
        x.upsampleNearest(scale: (2, 2)).backward(seed: [1, 2, 3, 4,
                                                         5, 6, 7, 8])
        #expect(x.gradArray == [1 + 2 + 5 + 6, 3 + 4 + 7 + 8])
        checkGradients([randomVariable([2, 3, 3, 2], seed: 1)]) { $0[0].upsampleNearest(scale: (3, 2)) }
    }

    /// Inference in oneDNN's layouts (`DNNLActivation.upsampleNearest`: nChw8c, nChw16c, NHWC) against the NCHW op, bit
    /// for bit, for channel counts that fill their last block or leave it padded; NCHW activations are left to the caller.
    @Test(arguments: ["nChw8c", "nChw16c", "NHWC"]) func nearestInOneDNNLayoutsMatchesPlanar(layout: String) throws {
        guard DNNLActivation.isAvailable else { return }
        let tag = ["nChw8c": dnnl_aBcd8b, "nChw16c": dnnl_aBcd16b, "NHWC": dnnl_acdb][layout]!
        for (channels, scale) in [(8, (2, 2)), (16, (2, 2)), (32, (3, 2)), (24, (2, 1)), (3, (2, 2))] {
            let x = Tensor(shape: [2, channels, 3, 5], values: randomValues(2 * channels * 15, seed: UInt64(channels)))
            let a = DNNLActivation(x).laidOut(as: DNNL.descriptor(x.shape, tag))
            let y = try #require(a.upsampleNearest(scale: scale))
            #expect(DNNL.equal(y.md, DNNL.descriptor(y.shape, tag)), "the output keeps the input's layout")
            #expect(y.tensor().toArray() == x.upsampleNearest(scale: scale).toArray(), "\(layout), \(channels) channels, scale \(scale)")
        }
        #expect(DNNLActivation(Tensor(zeros: [1, 16, 2, 2])).upsampleNearest(scale: (2, 2)) == nil)
    }

    @Test func bilinearHalfPixelHandComputed() {
        // 2 -> 4 samples at source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last centre).
        let x = Tensor(shape: [1, 1, 2, 2], values: [0, 4,
                                                     8, 12])
        let y = x.resizeBilinear(height: 4, width: 4)
        #expect(y.toArray() == [0, 1, 3, 4,
                                2, 3, 5, 6,
                                6, 7, 9, 10,
                                8, 9, 11, 12])
    }

    @Test func bilinearAlignCornersHandComputed() {
        let x = Tensor(shape: [1, 1, 1, 2], values: [0, 4])
        #expect(x.resizeBilinear(height: 1, width: 3, alignCorners: true).toArray() == [0, 2, 4])
        // A single output pixel reads the first input pixel.
        #expect(x.resizeBilinear(height: 1, width: 1, alignCorners: true).toArray() == [0])
    }

    /// Bilinear interpolation reproduces an affine image exactly wherever it does not clamp at the border.
    @Test func bilinearReproducesAffineImages() {
        func ramp(_ h: Int, _ w: Int) -> Tensor {
            Tensor(shape: [2, 1, h, w], values: (0..<2).flatMap { n in
                (0..<(h * w)).map { Float(n) + 2 * Float($0 / w) + 3 * Float($0 % w) } })
        }
        func expected(_ h: Int, _ w: Int, row: (Int) -> Double, col: (Int) -> Double) -> [Float] {
            (0..<2).flatMap { n in (0..<(h * w)).map { Float(Double(n) + 2 * row($0 / w) + 3 * col($0 % w)) } }
        }
        // Align corners, upsampling 4x5 -> 7x9: source position o * (in - 1) / (out - 1).
        expectClose(ramp(4, 5).resizeBilinear(height: 7, width: 9, alignCorners: true).toArray(),
                    expected(7, 9, row: { Double($0) * 3 / 6 }, col: { Double($0) * 4 / 8 }))
        // Half-pixel, downsampling 8x9 -> 3x3: source position (o + 0.5) * in / out - 0.5, never clamped here.
        expectClose(ramp(8, 9).resizeBilinear(height: 3, width: 3).toArray(),
                    expected(3, 3, row: { (Double($0) + 0.5) * 8 / 3 - 0.5 }, col: { (Double($0) + 0.5) * 3 - 0.5 }))
    }

    @Test func bilinearGradients() {
        checkGradients([randomVariable([2, 2, 3, 4], seed: 2)]) { $0[0].resizeBilinear(height: 7, width: 5) }
        checkGradients([randomVariable([1, 2, 5, 6], seed: 3)]) { $0[0].resizeBilinear(height: 3, width: 4) }
        checkGradients([randomVariable([1, 2, 3, 4], seed: 4)]) { $0[0].resizeBilinear(height: 5, width: 9, alignCorners: true) }
    }

    /// A 2 x 3 plane framed by one row above, two below and one column each side, by hand; the frame's gradient is
    /// dropped and the interior's passed through (finite differences).
    @Test func paddingByHandAndGradient() {
        let x = Tensor.variable(shape: [1, 1, 2, 3], values: [1, 2, 3, 4, 5, 6])
        let y = x.padded(top: 1, left: 1, bottom: 2, right: 1, value: 9)
        #expect(y.shape == [1, 1, 5, 5])
        #expect(y.toArray() == [9, 9, 9, 9, 9,
                                9, 1, 2, 3, 9,
                                9, 4, 5, 6, 9,
                                9, 9, 9, 9, 9,
                                9, 9, 9, 9, 9])
        checkGradients([randomVariable([2, 3, 3, 2], seed: 4)]) { $0[0].padded(top: 2, left: 0, bottom: 1, right: 3, value: -1) }
    }

    /// U-Net's skip crop: a 2 x 2 window at (1, 2) of a 4 x 5 plane by hand; its gradient lands back in the window
    /// and nowhere else (finite differences); cropping what `padded` framed gives the input back.
    @Test func croppingByHandAndGradient() {
        let x = Tensor.variable(shape: [1, 1, 4, 5], values: (0..<20).map(Float.init))
        let y = x.cropped(top: 1, left: 2, height: 2, width: 2)
        #expect(y.shape == [1, 1, 2, 2])
        #expect(y.toArray() == [7, 8, 12, 13])
        checkGradients([randomVariable([2, 3, 5, 4], seed: 5)]) { $0[0].cropped(top: 1, left: 0, height: 3, width: 3) }
        let z = randomVariable([2, 2, 3, 4], seed: 6)
        #expect(z.padded(top: 2, left: 1, bottom: 0, right: 3, value: 7).cropped(top: 2, left: 1, height: 3, width: 4).toArray() == z.toArray())
    }
}
