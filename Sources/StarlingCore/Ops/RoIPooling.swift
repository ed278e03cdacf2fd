/// Region-of-interest pooling over NCHW feature maps, forward and backward: RoI max pooling (Fast R-CNN, R. Girshick,
/// ICCV 2015) and RoIAlign (Mask R-CNN, K. He et al., ICCV 2017).
///
/// Both take `rois` [R, 5], one row a region: the index of its image in the batch, then x1, y1, x2, y2 in image
/// coordinates, which `spatialScale` (1 / the feature map's stride) maps onto the feature grid. Both return
/// [R, C, outputHeight, outputWidth]; the gradient flows to the features only (regions are constants, as in
/// Fast R-CNN, where proposals come from outside the network).
///
/// The semantics are torchvision's `roi_pool` and `roi_align` (and Caffe's roi_pooling_layer), and ONNX's
/// MaxRoiPool and RoiAlign (avg): the tests compare with torchvision's values and with onnxruntime.

extension Tensor {
    /// The region rows checked against the features: [R, 5] with batch indices in range.
    private func regionRows(_ rois: Tensor, op: String) -> (count: Int, rows: UnsafeMutablePointer<Float>) {
        precondition(rank == 4, "\(op) expects NCHW features, got \(shape)")
        precondition(rois.rank == 2 && rois.shape[1] == 5, "\(op) expects rois [R, 5] (batch index, x1, y1, x2, y2), got \(rois.shape)")
        let r = rois.shape[0], d = rois.data
        for k in 0..<r {
            for v in 1..<5 {
                precondition(abs(d[k * 5 + v]) < 1e8, "\(op): region \(k) has coordinate \(d[k * 5 + v])")
            }
            let b = d[k * 5]
            precondition(b >= 0 && b < Float(shape[0]) && b == b.rounded(.towardZero),
                         "\(op): region \(k) names image \(b) of a batch of \(shape[0])")
        }
        return (r, d)
    }

    /// RoI max pooling, as Fast R-CNN quantises it: the region's corners are rounded to the nearest feature cell
    /// (x1 s, y1 s, x2 s, y2 s, halves away from zero), the region spans the cells from the first corner to the second
    /// inclusive (at least one cell), and bin (i, j) of an h x w grid covers rows floor(i H / h) ..< ceil((i + 1) H / h)
    /// of it (H its height in cells), and likewise columns, clipped to the map. Each output is the maximum of its bin
    /// (the first one in row-major order on ties), 0 for a bin that lies outside the map; backward routes the gradient
    /// to that maximum alone.
    public func roiMaxPool(rois: Tensor, outputHeight oh: Int, outputWidth ow: Int, spatialScale: Float) -> Tensor {
        precondition(oh > 0 && ow > 0, "roiMaxPool: output size \(oh)x\(ow)")
        let (r, rd) = regionRows(rois, op: "roiMaxPool")
        let x = self
        let (c, h, w) = (shape[1], shape[2], shape[3])
        let binCount = oh * ow
        // The argmax of every output as an offset into its input plane, -1 for an empty bin.
        var argmax = [Int32](repeating: -1, count: r * c * binCount)
        precondition(h * w <= Int(Int32.max), "roiMaxPool: plane of \(h)x\(w) cells too large for indices")
        let values = FloatStorage(count: r * c * binCount)
        // The bins' spans along one axis of the map, for a region from `start` to `end` (cells, inclusive).
        func spans(start: Int, end: Int, bins: Int, size: Int) -> [(Int, Int)] {
            let extent = Swift.max(end - start + 1, 1)
            let binSize = Float(extent) / Float(bins)
            return (0..<bins).map { i in
                let lo = Int((Float(i) * binSize).rounded(.down)) + start
                let hi = Int((Float(i + 1) * binSize).rounded(.up)) + start
                return (Swift.min(Swift.max(lo, 0), size), Swift.min(Swift.max(hi, 0), size))
            }
        }
        let xd = x.data, y = values.pointer
        argmax.withUnsafeMutableBufferPointer { am in
            guard let ap = am.baseAddress else { return }   // no regions
            // Regions write disjoint outputs: shared out over the threads (`Parallel`).
            Parallel.forEachChunk(of: r, work: r * c * binCount * 8) { range in
                for k in range {
                    let row = rd + k * 5
                    let image = Int(row[0])
                    let x1 = Int((row[1] * spatialScale).rounded()), y1 = Int((row[2] * spatialScale).rounded())
                    let x2 = Int((row[3] * spatialScale).rounded()), y2 = Int((row[4] * spatialScale).rounded())
                    let rows = spans(start: y1, end: y2, bins: oh, size: h)
                    let cols = spans(start: x1, end: x2, bins: ow, size: w)
                    for ch in 0..<c {
                        let plane = xd + (image * c + ch) * h * w
                        let out = k * c * binCount + ch * binCount
                        for i in 0..<oh {
                            let (r0, r1) = rows[i]
                            for j in 0..<ow {
                                let (c0, c1) = cols[j]
                                guard r0 < r1 && c0 < c1 else { continue }   // empty: 0, no argmax
                                var best = -Float.greatestFiniteMagnitude, at = -1
                                for yy in r0..<r1 {
                                    let line = plane + yy * w
                                    for xx in c0..<c1 where line[xx] > best {
                                        best = line[xx]
                                        at = yy * w + xx
                                    }
                                }
                                y[out + i * ow + j] = best
                                ap[out + i * ow + j] = Int32(at)
                            }
                        }
                    }
                }
            }
        }
        let images = rd
        let imageOf = (0..<r).map { Int(images[$0 * 5]) }
        return Tensor.result(shape: [r, c, oh, ow], storage: values, inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            argmax.withUnsafeBufferPointer { am in
                guard let ap = am.baseAddress else { return }
                for k in 0..<r {
                    for ch in 0..<c {
                        let plane = dx + (imageOf[k] * c + ch) * h * w
                        let base = (k * c + ch) * binCount
                        for o in 0..<binCount where ap[base + o] >= 0 { plane[Int(ap[base + o])] += dy[base + o] }
                    }
                }
            }
        }
    }

    /// RoIAlign (average): bin (i, j) of an h x w grid over the region is the mean of bilinear samples of the map on a
    /// regular g_h x g_w grid inside the bin (sample centres at (k + 1/2) / g of the bin), with no rounding anywhere.
    ///
    /// The region's corners are x1 s - o ... (o = 1/2 when `aligned`, torchvision's aligned=True and ONNX's
    /// half_pixel: pixel centres sit at half-integer coordinates; o = 0 otherwise, when a region narrower than one cell
    /// is widened to one, Mask R-CNN's original and ONNX's output_half_pixel). `samplingRatio` > 0 fixes g_h = g_w =
    /// that; 0 takes g = ceil(region side / bins) per region. A sample within one cell outside the map is clamped to
    /// its border (from -1 to 0, and to the last row or column beyond it); one further out counts as 0.
    public func roiAlign(rois: Tensor, outputHeight oh: Int, outputWidth ow: Int, spatialScale: Float,
                         samplingRatio: Int, aligned: Bool) -> Tensor {
        precondition(oh > 0 && ow > 0 && samplingRatio >= 0, "roiAlign: output size \(oh)x\(ow), sampling ratio \(samplingRatio)")
        let (r, rd) = regionRows(rois, op: "roiAlign")
        let x = self
        let (c, h, w) = (shape[1], shape[2], shape[3])
        let binCount = oh * ow
        // Each region's samples along its two axes (separable: a sample's weights are products of a row weight and a
        // column weight), kept for backward.
        let samples = (0..<r).map { k in
            RoIAlignSamples(row: rd + k * 5, outputHeight: oh, outputWidth: ow, spatialScale: spatialScale,
                            samplingRatio: samplingRatio, aligned: aligned, height: h, width: w)
        }
        let values = FloatStorage(count: r * c * binCount)
        let xd = x.data, y = values.pointer
        Parallel.forEachChunk(of: r * c, work: r * c * binCount * 16) { range in
            for plane in range {
                let (k, ch) = (plane / c, plane % c)
                let s = samples[k]
                let input = xd + (s.image * c + ch) * h * w
                let out = y + plane * binCount
                s.forEachTap { bin, offset, weight in out[bin] += weight * input[offset] }
            }
        }
        return Tensor.result(shape: [r, c, oh, ow], storage: values, inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for plane in 0..<(r * c) {
                let (k, ch) = (plane / c, plane % c)
                let s = samples[k]
                let input = dx + (s.image * c + ch) * h * w
                let g = dy + plane * binCount
                s.forEachTap { bin, offset, weight in input[offset] += weight * g[bin] }
            }
        }
    }
}

/// One region's bilinear samples for RoIAlign, axis by axis: for every bin row and sample row, the two map rows it
/// reads and their weights (0 for a sample outside the map), and likewise for columns. The 1 / count of the mean is
/// folded into the row weights.
struct RoIAlignSamples {
    let image: Int
    let outputHeight: Int
    let outputWidth: Int
    let gridHeight: Int
    let gridWidth: Int
    /// [outputHeight * gridHeight] each: the lower and upper cell and their weights.
    let rowLow: [Int], rowHigh: [Int], rowLowWeight: [Float], rowHighWeight: [Float]
    let colLow: [Int], colHigh: [Int], colLowWeight: [Float], colHighWeight: [Float]
    let width: Int

    init(row: UnsafeMutablePointer<Float>, outputHeight: Int, outputWidth: Int, spatialScale: Float, samplingRatio: Int,
         aligned: Bool, height: Int, width: Int) {
        image = Int(row[0])
        self.outputHeight = outputHeight
        self.outputWidth = outputWidth
        self.width = width
        let offset: Float = aligned ? 0.5 : 0
        let x1 = row[1] * spatialScale - offset, y1 = row[2] * spatialScale - offset
        var regionWidth = row[3] * spatialScale - offset - x1, regionHeight = row[4] * spatialScale - offset - y1
        if !aligned {
            regionWidth = Swift.max(regionWidth, 1)
            regionHeight = Swift.max(regionHeight, 1)
        }
        let binHeight = regionHeight / Float(outputHeight), binWidth = regionWidth / Float(outputWidth)
        gridHeight = samplingRatio > 0 ? samplingRatio : Swift.max(Int((regionHeight / Float(outputHeight)).rounded(.up)), 0)
        gridWidth = samplingRatio > 0 ? samplingRatio : Swift.max(Int((regionWidth / Float(outputWidth)).rounded(.up)), 0)
        let count = Float(Swift.max(gridHeight * gridWidth, 1))
        /// The taps of one axis: sample k of bin i at start + i bin + (k + 1/2) bin / grid.
        func axis(start: Float, bin: Float, bins: Int, grid: Int, size: Int, scale: Float)
            -> ([Int], [Int], [Float], [Float]) {
            var lo = [Int](), hi = [Int](), wl = [Float](), wh = [Float]()
            for i in 0..<bins {
                for k in 0..<grid {
                    var v = start + Float(i) * bin + (Float(k) + 0.5) * bin / Float(grid)
                    if v < -1 || v > Float(size) {   // outside the map by more than a cell: no contribution
                        lo.append(0); hi.append(0); wl.append(0); wh.append(0)
                        continue
                    }
                    v = Swift.max(v, 0)
                    var low = Int(v), high = low + 1
                    if low >= size - 1 {
                        low = size - 1
                        high = size - 1
                        v = Float(low)
                    }
                    let l = v - Float(low)
                    lo.append(low); hi.append(high); wl.append((1 - l) * scale); wh.append(l * scale)
                }
            }
            return (lo, hi, wl, wh)
        }
        (rowLow, rowHigh, rowLowWeight, rowHighWeight) = axis(start: y1, bin: binHeight, bins: outputHeight, grid: gridHeight,
                                                              size: height, scale: 1 / count)
        (colLow, colHigh, colLowWeight, colHighWeight) = axis(start: x1, bin: binWidth, bins: outputWidth, grid: gridWidth,
                                                              size: width, scale: 1)
    }

    /// Calls body(bin, offset in the plane, weight) for the four taps of every sample, bin by bin.
    @inline(__always)
    func forEachTap(_ body: (Int, Int, Float) -> Void) {
        rowLow.withUnsafeBufferPointer { rl in rowHigh.withUnsafeBufferPointer { rh in
        rowLowWeight.withUnsafeBufferPointer { rwl in rowHighWeight.withUnsafeBufferPointer { rwh in
        colLow.withUnsafeBufferPointer { cl in colHigh.withUnsafeBufferPointer { chi in
        colLowWeight.withUnsafeBufferPointer { cwl in colHighWeight.withUnsafeBufferPointer { cwh in
            for i in 0..<outputHeight {
                for a in (i * gridHeight)..<((i + 1) * gridHeight) {
                    let (y0, y1, wy0, wy1) = (rl[a] * width, rh[a] * width, rwl[a], rwh[a])
                    for j in 0..<outputWidth {
                        let bin = i * outputWidth + j
                        for b in (j * gridWidth)..<((j + 1) * gridWidth) {
                            let (x0, x1, wx0, wx1) = (cl[b], chi[b], cwl[b], cwh[b])
                            body(bin, y0 + x0, wy0 * wx0)
                            body(bin, y0 + x1, wy0 * wx1)
                            body(bin, y1 + x0, wy1 * wx0)
                            body(bin, y1 + x1, wy1 * wx1)
                        }
                    }
                }
            }
        } } } } } } } }
    }
}
