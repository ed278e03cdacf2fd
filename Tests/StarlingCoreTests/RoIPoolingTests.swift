import Testing
@testable import StarlingCore

@Suite struct RoIPoolingTests {
    /// One image, one channel, 4 x 4, value 4 y + x at row y, column x.
    private static let ramp = Tensor(shape: [1, 1, 4, 4], values: (0..<16).map(Float.init))

    private func rois(_ rows: [[Float]]) -> Tensor { Tensor(shape: [rows.count, 5], values: rows.flatMap { $0 }) }

    // MARK: RoI max pooling

    /// Worked by hand from Fast R-CNN's quantisation (Caffe's roi_pooling_layer, torchvision's roi_pool).
    @Test func maxPoolHandComputed() {
        // The whole map in 2 x 2 bins of 2 x 2 cells.
        #expect(Self.ramp.roiMaxPool(rois: rois([[0, 0, 0, 3, 3]]), outputHeight: 2, outputWidth: 2, spatialScale: 1).toArray()
                == [5, 7, 13, 15])
        // Scale 1/2: (1, 1, 5, 3) -> (0.5, 0.5, 2.5, 1.5), rounded half away from zero to cells (1, 1, 3, 2): 3 columns,
        // 2 rows; column bins of 1.5 cells: floor(0) ..< ceil(1.5) = 1..<3 and floor(1.5) ..< ceil(3) = 2..<4.
        #expect(Self.ramp.roiMaxPool(rois: rois([[0, 1, 1, 5, 3]]), outputHeight: 2, outputWidth: 2, spatialScale: 0.5).toArray()
                == [6, 7, 10, 11])
        // Three bins over two cells (bins of 2/3): rows 0..<1, 0..<2, 1..<2 overlap.
        #expect(Self.ramp.roiMaxPool(rois: rois([[0, 0, 0, 1, 1]]), outputHeight: 3, outputWidth: 3, spatialScale: 1).toArray()
                == [0, 1, 1, 4, 5, 5, 4, 5, 5])
        // A region wholly outside the map: every bin empty, 0.
        #expect(Self.ramp.roiMaxPool(rois: rois([[0, 10, 10, 12, 12]]), outputHeight: 2, outputWidth: 2, spatialScale: 1).toArray()
                == [0, 0, 0, 0])
        // An inverted region spans one column (its first corner's) and both rows; the second image is picked by index.
        let two = Tensor(shape: [2, 2, 2, 2], values: (0..<16).map { Float($0) * 10 })
        let y = two.roiMaxPool(rois: rois([[1, 1, 0, 0, 1], [0, 0, 0, 1, 1]]), outputHeight: 1, outputWidth: 1, spatialScale: 1)
        #expect(y.shape == [2, 2, 1, 1])
        #expect(y.toArray() == [110, 150, 30, 70])
    }

    @Test func maxPoolGradientGoesToTheMaximum() {
        let x = Tensor.variable(shape: [1, 1, 4, 4], values: (0..<16).map(Float.init))
        let y = x.roiMaxPool(rois: rois([[0, 0, 0, 1, 1], [0, 10, 10, 12, 12]]), outputHeight: 3, outputWidth: 3, spatialScale: 1)
        y.backward(seed: (1...18).map(Float.init))
        // Maxima [0, 1, 1, 4, 5, 5, 4, 5, 5] with seeds 1...9; the empty region's 9 bins route nothing.
        var expected = [Float](repeating: 0, count: 16)
        expected[0] = 1; expected[1] = 2 + 3; expected[4] = 4 + 7; expected[5] = 5 + 6 + 8 + 9
        #expect(x.gradArray == expected)
    }

    /// Values a permutation spaced 0.1 apart, so that no argmax moves under the finite differences' 1e-2 steps.
    @Test func maxPoolGradientsMatchFiniteDifferences() {
        let n = 2 * 3 * 7 * 6
        var order = Array(0..<n)
        var rng = RandomGenerator(seed: 5)
        for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let x = Tensor.variable(shape: [2, 3, 7, 6], values: order.map { Float($0) * 0.1 })
        let r = rois([[1, 0, 0, 11, 13], [0, 3.4, 2.2, 9.9, 7.1], [1, 5, 5, 5, 5], [0, -4, -2, 30, 30]])
        checkGradients([x]) { $0[0].roiMaxPool(rois: r, outputHeight: 3, outputWidth: 2, spatialScale: 0.5) }
    }

    // MARK: RoIAlign

    /// On the ramp, bilinear interpolation is exact: a bin is 4 (mean sample row) + (mean sample column).
    @Test func alignHandComputed() {
        func align(_ row: [Float], _ size: Int, scale: Float = 1, ratio: Int, aligned: Bool) -> [Float] {
            Self.ramp.roiAlign(rois: rois([row]), outputHeight: size, outputWidth: size, spatialScale: scale,
                               samplingRatio: ratio, aligned: aligned).toArray()
        }
        // Region 0...2, bins of 1, samples at 0.25, 0.75 | 1.25, 1.75: means 0.5 and 1.5.
        #expect(align([0, 0, 0, 2, 2], 2, ratio: 2, aligned: false) == [2.5, 3.5, 6.5, 7.5])
        // The same in image coordinates twice as large.
        #expect(align([0, 0, 0, 4, 4], 2, scale: 0.5, ratio: 2, aligned: false) == [2.5, 3.5, 6.5, 7.5])
        // Aligned: shifted by half a cell, samples at -0.25 (clamped to 0), 0.25 | 0.75, 1.25: means 0.125 and 1.
        #expect(align([0, 0, 0, 2, 2], 2, ratio: 2, aligned: true) == [0.625, 1.5, 4.125, 5])
        // Adaptive sampling: ceil(3 / 1) = 3 samples a side at 0.5, 1.5, 2.5.
        #expect(align([0, 0, 0, 3, 3], 1, ratio: 0, aligned: false) == [7.5])
        // At the border: samples at 3.5 read the last row/column (15), those at 4.5 lie outside and count 0.
        #expect(align([0, 3, 3, 5, 5], 1, ratio: 2, aligned: false) == [3.75])
        // Not aligned, a region narrower than a cell is widened to one: 2.2 ... 3.2, one sample at 2.7.
        expectClose(align([0, 2.2, 1, 2.3, 1.05], 1, ratio: 1, aligned: false), [4 * 1.5 + 2.7], tolerance: 1e-6)
    }

    /// torchvision's own RoIAlign on four configurations (Fixtures/roi_align_torchvision.py): values and gradients.
    @Test func alignMatchesTorchvision() {
        for c in RoIAlignFixtures.cases {
            let x = Tensor.variable(shape: RoIAlignFixtures.featureShape, values: RoIAlignFixtures.features)
            let y = x.roiAlign(rois: Tensor(shape: [c.rois.count / 5, 5], values: c.rois), outputHeight: c.outputHeight,
                               outputWidth: c.outputWidth, spatialScale: c.spatialScale, samplingRatio: c.samplingRatio,
                               aligned: c.aligned)
            #expect(y.shape == [c.rois.count / 5, 2, c.outputHeight, c.outputWidth], "\(c.name)")
            expectClose(y.toArray(), c.output, tolerance: 1e-5)
            y.backward(seed: (0..<y.count).map(RoIAlignFixtures.weight))
            expectClose(x.gradArray ?? [], c.featureGradient, tolerance: 1e-5)
        }
    }

    /// An image without regions (Fast R-CNN's, when no proposal overlaps a box enough): [0, C, h, w], and backward
    /// leaves the features' gradient zero.
    @Test func noRegions() {
        let x = Tensor.variable(shape: [1, 2, 4, 4], values: (0..<32).map(Float.init))
        let none = Tensor(zeros: [0, 5])
        let pooled = x.roiMaxPool(rois: none, outputHeight: 2, outputWidth: 2, spatialScale: 1)
        let aligned = x.roiAlign(rois: none, outputHeight: 2, outputWidth: 2, spatialScale: 1, samplingRatio: 2, aligned: true)
        #expect(pooled.shape == [0, 2, 2, 2] && aligned.shape == [0, 2, 2, 2])
        (pooled.sum() + aligned.sum()).backward()
        #expect(x.gradArray == [Float](repeating: 0, count: 32))
    }

    /// Regions are shared over the threads (`BLAS.setThreadCount`); each writes its own outputs, so one and two threads
    /// give the same values and gradients bit for bit (40 regions of a 16-channel map: enough work to split).
    @Test func threadCountDoesNotChangeAnyBit() {
        var rng = RandomGenerator(seed: 12)
        let values = (0..<(2 * 16 * 20 * 24)).map { _ in rng.uniform(-1, 1) }
        let r = rois((0..<40).map { k in
            let x0 = rng.uniform(-4, 40), y0 = rng.uniform(-4, 30)
            return [Float(k % 2), x0, y0, x0 + rng.uniform(1, 30), y0 + rng.uniform(1, 25)]
        })
        func run() -> [[Float]] {
            let x = Tensor.variable(shape: [2, 16, 20, 24], values: values)
            let pooled = x.roiMaxPool(rois: r, outputHeight: 7, outputWidth: 7, spatialScale: 0.5)
            let aligned = x.roiAlign(rois: r, outputHeight: 7, outputWidth: 7, spatialScale: 0.5, samplingRatio: 0, aligned: true)
            (pooled.sum() + aligned.sum()).backward()
            return [pooled.toArray(), aligned.toArray(), x.gradArray ?? []]
        }
        let one = BLAS.withThreadCount(1, run)
        #expect(BLAS.withThreadCount(2, run) == one)
    }

    @Test func alignGradientsMatchFiniteDifferences() {
        let r = rois([[1, 0.3, 0.7, 9.1, 12.2], [0, -1.5, 2, 4, 3.3], [1, 8, 8, 30, 30]])
        for (ratio, aligned) in [(2, false), (0, true), (1, true)] {
            checkGradients([randomVariable([2, 3, 7, 6], seed: 8)]) {
                $0[0].roiAlign(rois: r, outputHeight: 2, outputWidth: 3, spatialScale: 0.5, samplingRatio: ratio, aligned: aligned)
            }
        }
    }
}
