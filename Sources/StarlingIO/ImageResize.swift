/// Resampling of 8-bit HWC images.
public enum ImageResize {
    /// Bilinear resize with pixel centres aligned: output pixel x samples the source at
    /// `(x + 0.5) * width / outWidth - 0.5` (OpenCV's INTER_LINEAR mapping), clamped to the edge pixels. This is the
    /// mapping under which a box corner at continuous coordinate u moves to `u * outWidth / width`, so boxes scale
    /// with the same factor as the image.
    ///
    /// Two taps per axis: shrinking by more than 2x skips source pixels (aliasing), as OpenCV's bilinear does.
    public static func bilinear(_ source: UnsafeBufferPointer<UInt8>, width: Int, height: Int, channels: Int,
                                into target: UnsafeMutableBufferPointer<UInt8>, width outWidth: Int, height outHeight: Int) {
        precondition(width > 0 && height > 0 && outWidth > 0 && outHeight > 0 && channels > 0, "empty image")
        precondition(source.count == width * height * channels && target.count == outWidth * outHeight * channels,
                     "buffer sizes do not match the image sizes")
        guard let src = source.baseAddress, let dst = target.baseAddress else { return }
        if width == outWidth && height == outHeight {
            dst.update(from: src, count: source.count)
            return
        }
        // Per output column: the two source columns (as element offsets) and the weight of the second.
        let xs = taps(outWidth, from: width)
        let ys = taps(outHeight, from: height)
        let rowLength = outWidth * channels
        var x0 = [Int](repeating: 0, count: outWidth), x1 = x0
        var fx = [Float](repeating: 0, count: outWidth)
        for x in 0..<outWidth { x0[x] = xs[x].0 * channels; x1[x] = xs[x].1 * channels; fx[x] = xs[x].2 }
        // The two horizontally resampled source rows the current output row blends, kept while they stay the same
        // (when the output is taller than the source, consecutive output rows share them).
        let rows = UnsafeMutablePointer<Float>.allocate(capacity: 2 * rowLength)
        defer { rows.deallocate() }
        var upper = rows, lower = rows + rowLength
        var upperRow = -1, lowerRow = -1
        x0.withUnsafeBufferPointer { x0 in x1.withUnsafeBufferPointer { x1 in fx.withUnsafeBufferPointer { fx in
            func resampleRow(_ y: Int, into row: UnsafeMutablePointer<Float>) {
                let line = src + y &* width &* channels
                for x in 0..<outWidth {
                    let a = line + x0[x], b = line + x1[x], w = fx[x]
                    let out = row + x &* channels
                    for c in 0..<channels {
                        let va = Float(a[c])
                        out[c] = va + w * (Float(b[c]) - va)
                    }
                }
            }
            for y in 0..<outHeight {
                let (y0, y1, wy) = ys[y]
                if y0 == lowerRow && y0 != upperRow {  // moving down: the old lower row becomes the upper one
                    swap(&upper, &lower)
                    swap(&upperRow, &lowerRow)
                }
                if y0 != upperRow { resampleRow(y0, into: upper); upperRow = y0 }
                if y1 != lowerRow { resampleRow(y1, into: lower); lowerRow = y1 }
                let u = upper, l = lower
                let out = dst + y &* rowLength
                for i in 0..<rowLength {
                    let v = u[i] + wy * (l[i] - u[i])
                    out[i] = UInt8(min(v + 0.5, 255))
                }
            }
        }}}
    }

    /// Array form of `bilinear(_:width:height:channels:into:width:height:)`.
    public static func bilinear(_ pixels: [UInt8], width: Int, height: Int, channels: Int,
                                toWidth outWidth: Int, toHeight outHeight: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: outWidth * outHeight * channels)
        pixels.withUnsafeBufferPointer { source in
            out.withUnsafeMutableBufferPointer { target in
                bilinear(source, width: width, height: height, channels: channels, into: target, width: outWidth, height: outHeight)
            }
        }
        return out
    }

    /// For each of `count` output positions along an axis of `size` source pixels: the two source indices and
    /// the weight of the second.
    static func taps(_ count: Int, from size: Int) -> [(Int, Int, Float)] {
        let scale = Double(size) / Double(count)
        return (0..<count).map { i in
            let s = max(0, (Double(i) + 0.5) * scale - 0.5)
            let i0 = min(Int(s), size - 1)
            let i1 = min(i0 + 1, size - 1)
            return (i0, i1, i0 == i1 ? 0 : Float(s - Double(i0)))
        }
    }
}
