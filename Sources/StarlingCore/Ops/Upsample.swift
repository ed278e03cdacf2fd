/// Upsampling and resizing of NCHW images, forward and backward.

/// Bilinear sampling positions along one axis: output index o reads input[i0[o]] * (1 - t[o]) + input[i1[o]] * t[o].
struct LinearAxis {
    let i0: [Int]
    let i1: [Int]
    let t: [Float]

    /// With `alignCorners` the first and last pixel centres of input and output coincide; otherwise pixel
    /// centres sit at half-integers and the output grid is scaled about them (PyTorch's align_corners=false,
    /// TensorFlow 2's half_pixel_centers), with source positions before the first centre clamped to it.
    init(input n: Int, output m: Int, alignCorners: Bool) {
        var i0 = [Int](repeating: 0, count: m), i1 = i0, t = [Float](repeating: 0, count: m)
        let scale = alignCorners ? (m > 1 ? Double(n - 1) / Double(m - 1) : 0) : Double(n) / Double(m)
        for o in 0..<m {
            let src = alignCorners ? Double(o) * scale : Swift.max((Double(o) + 0.5) * scale - 0.5, 0)
            let lo = Swift.min(Int(src), n - 1)
            i0[o] = lo
            i1[o] = Swift.min(lo + 1, n - 1)
            t[o] = Float(src - Double(lo))
        }
        self.i0 = i0; self.i1 = i1; self.t = t
    }
}

extension Tensor {
    /// Repeats every pixel scale.0 times vertically and scale.1 times horizontally (Keras UpSampling2D).
    public func upsampleNearest(scale: (Int, Int)) -> Tensor {
        precondition(rank == 4, "upsampleNearest expects NCHW input, got \(shape)")
        precondition(scale.0 > 0 && scale.1 > 0, "upsampling scale \(scale) must be positive")
        let x = self
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let (sh, sw) = scale
        let (oh, ow) = (h * sh, w * sw)
        // Every output pixel is a copy of one input pixel, written below.
        let out = Tensor.result(shape: [shape[0], shape[1], oh, ow], storage: FloatStorage(uninitializedCount: planes * oh * ow), inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for p in 0..<planes {
                for r in 0..<h {
                    let dxr = dx + (p * h + r) * w
                    for k in 0..<sh {
                        let dyr = dy + (p * oh + r * sh + k) * ow
                        for c in 0..<w {
                            let block = dyr + c * sw
                            var s: Float = 0
                            for q in 0..<sw { s += block[q] }
                            dxr[c] += s
                        }
                    }
                }
            }
        }
        let xd = x.data, y = out.data
        for p in 0..<planes {
            for r in 0..<h {
                let xr = xd + (p * h + r) * w
                let first = y + (p * oh + r * sh) * ow
                for c in 0..<w {
                    let block = first + c * sw
                    for q in 0..<sw { block[q] = xr[c] }
                }
                for k in 1..<sh { (first + k * ow).update(from: first, count: ow) }
            }
        }
        return out
    }

    /// Bilinear resize to height x width (Keras's Resizing/UpSampling2D(interpolation: "bilinear") in TF 2,
    /// PyTorch's interpolate(mode: "bilinear")); see `LinearAxis` for the sampling grid.
    public func resizeBilinear(height: Int, width: Int, alignCorners: Bool = false) -> Tensor {
        precondition(rank == 4, "resizeBilinear expects NCHW input, got \(shape)")
        precondition(height > 0 && width > 0, "resize target \(height)x\(width) must be positive")
        let x = self
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let rows = LinearAxis(input: h, output: height, alignCorners: alignCorners)
        let cols = LinearAxis(input: w, output: width, alignCorners: alignCorners)
        let out = Tensor.result(shape: [shape[0], shape[1], height, width], inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for p in 0..<planes {
                let dxp = dx + p * h * w
                for i in 0..<height {
                    let top = dxp + rows.i0[i] * w, bottom = dxp + rows.i1[i] * w
                    let ty = rows.t[i]
                    let dyr = dy + (p * height + i) * width
                    for j in 0..<width {
                        let (c0, c1, tx) = (cols.i0[j], cols.i1[j], cols.t[j])
                        let g = dyr[j]
                        top[c0] += g * (1 - ty) * (1 - tx)
                        top[c1] += g * (1 - ty) * tx
                        bottom[c0] += g * ty * (1 - tx)
                        bottom[c1] += g * ty * tx
                    }
                }
            }
        }
        let xd = x.data, y = out.data
        for p in 0..<planes {
            let xp = xd + p * h * w
            for i in 0..<height {
                let top = xp + rows.i0[i] * w, bottom = xp + rows.i1[i] * w
                let ty = rows.t[i]
                let yr = y + (p * height + i) * width
                for j in 0..<width {
                    let (c0, c1, tx) = (cols.i0[j], cols.i1[j], cols.t[j])
                    let upper = top[c0] + (top[c1] - top[c0]) * tx
                    let lower = bottom[c0] + (bottom[c1] - bottom[c0]) * tx
                    yr[j] = upper + (lower - upper) * ty
                }
            }
        }
        return out
    }
}

extension Tensor {
    /// NCHW images framed by `top`, `left`, `bottom` and `right` rows and columns of `value` (ONNX's constant Pad,
    /// PyTorch's F.pad): what letterboxing puts around a resized image. The gradient of the frame is dropped.
    public func padded(top: Int, left: Int, bottom: Int, right: Int, value: Float) -> Tensor {
        precondition(rank == 4, "padded expects NCHW input, got \(shape)")
        precondition(top >= 0 && left >= 0 && bottom >= 0 && right >= 0, "padding \(top), \(left), \(bottom), \(right) must not be negative")
        let x = self
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let (oh, ow) = (h + top + bottom, w + left + right)
        let out = Tensor.result(shape: [shape[0], shape[1], oh, ow], storage: FloatStorage(uninitializedCount: planes * oh * ow), inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for p in 0..<planes {
                for r in 0..<h {
                    let source = dy + (p * oh + r + top) * ow + left, target = dx + (p * h + r) * w
                    for c in 0..<w { target[c] += source[c] }
                }
            }
        }
        let y = out.data, xp = x.data
        for p in 0..<planes {
            let plane = y + p * oh * ow
            plane.update(repeating: value, count: oh * ow)
            for r in 0..<h { (plane + (r + top) * ow + left).update(from: xp + (p * h + r) * w, count: w) }
        }
        return out
    }
}

extension Tensor {
    /// The `height` x `width` window of NCHW images whose top-left pixel is (`top`, `left`): U-Net's valid-padding skip
    /// features, centre-cropped to the expanding path's smaller map before they are concatenated (ONNX's Slice on the
    /// two spatial axes). The adjoint of `padded`: backward adds the window's gradient back at its place.
    public func cropped(top: Int, left: Int, height: Int, width: Int) -> Tensor {
        precondition(rank == 4, "cropped expects NCHW input, got \(shape)")
        let (h, w) = (shape[2], shape[3])
        precondition(top >= 0 && left >= 0 && height > 0 && width > 0 && top + height <= h && left + width <= w,
                     "crop of \(height)x\(width) at (\(top), \(left)) outside \(h)x\(w)")
        let x = self, planes = shape[0] * shape[1]
        let out = Tensor.result(shape: [shape[0], shape[1], height, width], storage: FloatStorage(uninitializedCount: planes * height * width),
                                inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for p in 0..<planes {
                for r in 0..<height {
                    let source = dy + (p * height + r) * width, target = dx + (p * h + r + top) * w + left
                    for c in 0..<width { target[c] += source[c] }
                }
            }
        }
        let y = out.data, xp = x.data
        for p in 0..<planes {
            for r in 0..<height { (y + (p * height + r) * width).update(from: xp + (p * h + r + top) * w + left, count: width) }
        }
        return out
    }
}
