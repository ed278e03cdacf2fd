/// Pooling over NCHW images, forward and backward. Padded pixels never take part: max pooling pads with
/// -infinity and average pooling divides by the number of real pixels in the window, as Keras/TensorFlow do.

/// The input span [lo, hi) of every output position along one axis, with padding already clipped away.
struct PoolAxis {
    let lo: [Int]
    let hi: [Int]
    var count: Int { lo.count }

    init(size n: Int, kernel k: Int, stride s: Int, padding: Padding, vertical: Bool) {
        let (out, before) = padding.window(size: n, kernel: k, stride: s, vertical: vertical)
        lo = (0..<out).map { Swift.max($0 * s - before, 0) }
        hi = (0..<out).map { Swift.min($0 * s - before + k, n) }
        for o in 0..<out {
            precondition(lo[o] < hi[o], "pooling window \(o) lies entirely in the padding \(padding)")
        }
    }
}

extension Tensor {
    private func poolAxes(kernel: (Int, Int), stride: (Int, Int)?, padding: Padding) -> (PoolAxis, PoolAxis) {
        precondition(rank == 4, "pooling expects NCHW input, got \(shape)")
        let s = stride ?? kernel
        return (PoolAxis(size: shape[2], kernel: kernel.0, stride: s.0, padding: padding, vertical: true),
                PoolAxis(size: shape[3], kernel: kernel.1, stride: s.1, padding: padding, vertical: false))
    }

    /// Max over each window (Keras MaxPooling2D: the stride defaults to the kernel). The position of each
    /// maximum (the first one on ties) is remembered, and backward routes the gradient to it alone.
    public func maxPool2d(kernel: (Int, Int), stride: (Int, Int)? = nil, padding: Padding = .valid) -> Tensor {
        let x = self
        let (rows, cols) = poolAxes(kernel: kernel, stride: stride, padding: padding)
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let (oh, ow) = (rows.count, cols.count)
        // Argmax as an offset within the input plane; Int32 halves the memory kept alive until backward.
        precondition(h * w <= Int(Int32.max), "plane of \(h)x\(w) pixels too large for max-pool indices")
        // Kept in a FloatStorage block (as Int32 bits) so that the allocator reuses it step after step; not made at
        // all when no gradient will flow (inference), where the window maxima alone are computed.
        // Both blocks are written in full below (every output cell has a window).
        let needsIndices = GradMode.isEnabled && x.requiresGrad
        let indexBlock = needsIndices ? FloatStorage(uninitializedCount: planes * oh * ow) : FloatStorage(uninitializedCount: 1)
        let ip = UnsafeMutableRawPointer(indexBlock.pointer).assumingMemoryBound(to: Int32.self)
        let values = FloatStorage(uninitializedCount: planes * oh * ow)
        let xd = x.data, y = values.pointer
        let step = stride ?? kernel
        let rowsRegular = (0..<oh).allSatisfy { (i: Int) -> Bool in rows.lo[i] == 2 * i && rows.hi[i] == 2 * i + 2 }
        let colsRegular = (0..<ow).allSatisfy { (j: Int) -> Bool in cols.lo[j] == 2 * j && cols.hi[j] == 2 * j + 2 }
        let twoByTwo: Bool = kernel.0 == 2 && kernel.1 == 2 && step.0 == 2 && step.1 == 2 && rowsRegular && colsRegular
        // Planes are independent: with more than one thread (`BLAS.setThreadCount`) they are shared out.
        Parallel.forEachChunk(of: planes, work: planes * h * w) { range in
            // The common 2x2/2 window inside the image (SSD, U-Net, the autoencoders): four loads, no index arrays.
            if twoByTwo && !needsIndices {
                for p in range {
                    let xp = xd + p &* h &* w
                    for i in 0..<oh {
                        let r0 = xp + 2 &* i &* w, r1 = r0 + w
                        let yrow = y + (p &* oh &+ i) &* ow
                        // Eight windows at a time: 16 floats of each row, split into even and odd columns.
                        var j = 0
                        while j &+ 8 <= ow {
                            let a = UnsafeRawPointer(r0 + 2 &* j).loadUnaligned(as: SIMD16<Float>.self)
                            let b = UnsafeRawPointer(r1 + 2 &* j).loadUnaligned(as: SIMD16<Float>.self)
                            // Masked selects: `pointwiseMax` compiled to an unspecialised call per vector.
                            @inline(__always) func maximum(_ x: SIMD8<Float>, _ y: SIMD8<Float>) -> SIMD8<Float> {
                                x.replacing(with: y, where: y .> x)
                            }
                            let m = maximum(maximum(a.evenHalf, a.oddHalf), maximum(b.evenHalf, b.oddHalf))
                            UnsafeMutableRawPointer(yrow + j).storeBytes(of: m, as: SIMD8<Float>.self)
                            j &+= 8
                        }
                        while j < ow {
                            let c = 2 &* j
                            yrow[j] = Swift.max(Swift.max(r0[c], r0[c &+ 1]), Swift.max(r1[c], r1[c &+ 1]))
                            j &+= 1
                        }
                    }
                }
            } else if twoByTwo {
                for p in range {
                    let xp = xd + p &* h &* w
                    for i in 0..<oh {
                        let r0 = xp + 2 &* i &* w, r1 = r0 + w
                        let base = 2 &* i &* w
                        let yrow = y + (p &* oh &+ i) &* ow, irow = ip + (p &* oh &+ i) &* ow
                        for j in 0..<ow {
                            let c = 2 &* j
                            // First maximum in row-major order wins ties, as the general loop.
                            var best = r0[c], at = base &+ c
                            if r0[c &+ 1] > best { best = r0[c &+ 1]; at = base &+ c &+ 1 }
                            if r1[c] > best { best = r1[c]; at = base &+ w &+ c }
                            if r1[c &+ 1] > best { best = r1[c &+ 1]; at = base &+ w &+ c &+ 1 }
                            yrow[j] = best
                            irow[j] = Int32(truncatingIfNeeded: at)
                        }
                    }
                }
            } else {
                for p in range {
                    let xp = xd + p * h * w
                    for i in 0..<oh {
                        let yrow = y + (p * oh + i) * ow, irow = ip + (p * oh + i) * ow
                        for j in 0..<ow {
                            var best = -Float.infinity, at = rows.lo[i] * w + cols.lo[j]
                            for r in rows.lo[i]..<rows.hi[i] {
                                let xr = xp + r * w
                                for c in cols.lo[j]..<cols.hi[j] where xr[c] > best {
                                    best = xr[c]
                                    at = r * w + c
                                }
                            }
                            yrow[j] = best
                            if needsIndices { irow[j] = Int32(at) }
                        }
                    }
                }
            }
        }
        let out = Tensor.result(shape: [shape[0], shape[1], oh, ow], storage: values, inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            let ip0 = UnsafeMutableRawPointer(indexBlock.pointer).assumingMemoryBound(to: Int32.self)
            Parallel.forEachChunk(of: planes, work: planes * oh * ow) { range in
                for p in range {
                    let dxp = dx + p * h * w, dyp = dy + p * oh * ow, ip = ip0 + p * oh * ow
                    for o in 0..<(oh * ow) { dxp[Int(ip[o])] += dyp[o] }
                }
            }
        }
        return out
    }

    /// Mean over each window, counting only real pixels (Keras AveragePooling2D; with `.same` the border
    /// windows are averaged over fewer pixels).
    public func avgPool2d(kernel: (Int, Int), stride: (Int, Int)? = nil, padding: Padding = .valid) -> Tensor {
        let x = self
        let (rows, cols) = poolAxes(kernel: kernel, stride: stride, padding: padding)
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let (oh, ow) = (rows.count, cols.count)
        func scale(_ i: Int, _ j: Int) -> Float { 1 / Float((rows.hi[i] - rows.lo[i]) * (cols.hi[j] - cols.lo[j])) }
        let out = Tensor.result(shape: [shape[0], shape[1], oh, ow], inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for p in 0..<planes {
                let dxp = dx + p * h * w
                for i in 0..<oh {
                    let dyrow = dy + (p * oh + i) * ow
                    for j in 0..<ow {
                        let g = dyrow[j] * scale(i, j)
                        for r in rows.lo[i]..<rows.hi[i] {
                            let dxr = dxp + r * w
                            for c in cols.lo[j]..<cols.hi[j] { dxr[c] += g }
                        }
                    }
                }
            }
        }
        let xd = x.data, y = out.data
        for p in 0..<planes {
            let xp = xd + p * h * w
            for i in 0..<oh {
                let yrow = y + (p * oh + i) * ow
                for j in 0..<ow {
                    var s: Float = 0
                    for r in rows.lo[i]..<rows.hi[i] {
                        let xr = xp + r * w
                        for c in cols.lo[j]..<cols.hi[j] { s += xr[c] }
                    }
                    yrow[j] = s * scale(i, j)
                }
            }
        }
        return out
    }

    /// Mean of each channel plane: [N, C, H, W] -> [N, C].
    public func globalAveragePool() -> Tensor {
        precondition(rank == 4, "globalAveragePool expects NCHW input, got \(shape)")
        let x = self
        let (planes, size) = (shape[0] * shape[1], shape[2] * shape[3])
        let inv = 1 / Float(size)
        let out = Tensor.result(shape: [shape[0], shape[1]], inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for p in 0..<planes {
                let g = dy[p] * inv, dxp = dx + p * size
                for i in 0..<size { dxp[i] += g }
            }
        }
        let xd = x.data, y = out.data
        for p in 0..<planes { y[p] = VectorMath.sum(size, xd + p * size) * inv }
        return out
    }
}
