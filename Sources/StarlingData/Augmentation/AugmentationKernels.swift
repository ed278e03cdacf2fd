



/// The pixel loops of `DetectionAugmentation`, on uint8 RGB images stored row-major HWC. Each works on raw
/// pointers with the index arithmetic hoisted out of the inner loop.
enum AugmentationKernels {
    // MARK: - Tone (per-value maps)

    /// Replaces every byte v by `table[v]` (brightness and contrast are maps of each channel value alone, so a
    /// composed chain of them is one 256-entry table).
    static func applyTable(_ table: [UInt8], to pixels: UnsafeMutableBufferPointer<UInt8>) {
        precondition(table.count == 256)
        guard let p = pixels.baseAddress else { return }
        table.withUnsafeBufferPointer { t in
            let t = t.baseAddress!
            for i in 0..<pixels.count { p[i] = t[Int(p[i])] }
        }
    }

    // MARK: - Colour (HSV)

    /// Scales the HSV saturation by `saturation` (clipped at full saturation) and rotates the hue by
    /// `hueDegrees`, keeping the value (max channel) — OpenCV's HSV model, which ssd_keras uses, computed in
    /// float without OpenCV's 8-bit quantisation of H, S and V in between.
    ///
    /// In RGB terms, with v = max, m = min and chroma c = v - m: S = c / v; the new chroma is c' = min(c * s, v).
    /// Without a hue change every channel keeps its place between m and v: x' = v - (v - x) * c' / c, a
    /// branch-free loop. With one, the hue sector h in [0, 6) is computed from the largest channel, shifted, and
    /// the channels rebuilt as x_n = v - c' * clamp(min(k, 4 - k), 0, 1) with k = (n + h') mod 6, n = 5, 3, 1 for
    /// r, g, b.
    static func adjustSaturationAndHue(_ pixels: UnsafeMutableBufferPointer<UInt8>, saturation s: Float, hueDegrees: Float) {
        guard let p = pixels.baseAddress else { return }
        let count = pixels.count / 3
        if hueDegrees == 0 {
            for i in 0..<count {
                let q = p + i &* 3
                let r = Float(q[0]), g = Float(q[1]), b = Float(q[2])
                let v = max(r, max(g, b)), m = min(r, min(g, b))
                let c = v - m
                let k = c > 0 ? min(c * s, v) / c : 0
                q[0] = roundToByte(v - (v - r) * k)
                q[1] = roundToByte(v - (v - g) * k)
                q[2] = roundToByte(v - (v - b) * k)
            }
            return
        }
        let shift = hueDegrees / 60
        for i in 0..<count {
            let q = p + i &* 3
            let r = Float(q[0]), g = Float(q[1]), b = Float(q[2])
            let v = max(r, max(g, b)), m = min(r, min(g, b))
            let c = v - m
            // Gray (c = 0) has no hue: with chroma 0 every channel comes back as v. Selects, not branches, so the
            // loop can vectorise.
            let inverse = c > 0 ? 1 / c : 0
            var h = v == r ? (g - b) * inverse : (v == g ? 2 + (b - r) * inverse : 4 + (r - g) * inverse)
            h += shift
            h -= 6 * (h * (1 / 6)).rounded(.down)
            let chroma = min(c * s, v)
            var kr = h + 5, kg = h + 3, kb = h + 1
            kr = kr >= 6 ? kr - 6 : kr; kg = kg >= 6 ? kg - 6 : kg; kb = kb >= 6 ? kb - 6 : kb
            q[0] = roundToByte(max(v - chroma * min(max(min(kr, 4 - kr), 0), 1), 0))
            q[1] = roundToByte(max(v - chroma * min(max(min(kg, 4 - kg), 0), 1), 0))
            q[2] = roundToByte(max(v - chroma * min(max(min(kb, 4 - kb), 0), 1), 0))
        }
    }

    /// Rounds v in [0, 255] to the nearest byte (ties to even) with the 1.5 * 2^23 trick (see `VectorMath`):
    /// Swift's checked Float -> UInt8 conversion costs a range test per value and blocks vectorisation.
    @inline(__always) static func roundToByte(_ v: Float) -> UInt8 {
        UInt8(truncatingIfNeeded: (v + 12_582_912).bitPattern)
    }

    // MARK: - Geometry

    /// Mirrors each row in place.
    static func flipHorizontally(_ pixels: UnsafeMutableBufferPointer<UInt8>, height: Int, width: Int) {
        guard let p = pixels.baseAddress else { return }
        for y in 0..<height {
            let row = p + y &* width &* 3
            var a = 0, b = width - 1
            while a < b {
                let pa = row + a &* 3, pb = row + b &* 3
                let (r, g, bl) = (pa[0], pa[1], pa[2])
                pa[0] = pb[0]; pa[1] = pb[1]; pa[2] = pb[2]
                pb[0] = r; pb[1] = g; pb[2] = bl
                a &+= 1; b &-= 1
            }
        }
    }

    /// `target` = `source` moved `dx` pixels right and `dy` down (integers), uncovered pixels `background`.
    static func translate(_ source: UnsafeBufferPointer<UInt8>, into target: UnsafeMutableBufferPointer<UInt8>,
                          height: Int, width: Int, dx: Int, dy: Int, background: (UInt8, UInt8, UInt8)) {
        guard let src = source.baseAddress, let dst = target.baseAddress else { return }
        fill(target, background)
        let x0 = max(0, dx), x1 = min(width, width + dx)  // target columns that receive source pixels
        guard x0 < x1 else { return }
        for y in max(0, dy)..<min(height, height + dy) {
            let from = src + ((y - dy) &* width &+ (x0 - dx)) &* 3
            (dst + (y &* width &+ x0) &* 3).update(from: from, count: (x1 - x0) &* 3)
        }
    }

    /// Zooms about the image centre by `factor` (> 1 in, < 1 out): the continuous point u of the target shows the
    /// source at c + (u - c) / factor, c the centre; bilinear, with `background` outside the source.
    static func zoom(_ source: UnsafeBufferPointer<UInt8>, into target: UnsafeMutableBufferPointer<UInt8>,
                     height: Int, width: Int, factor: Float, background: (UInt8, UInt8, UInt8)) {
        guard let src = source.baseAddress, let dst = target.baseAddress else { return }
        // The source framed by one background pixel on every side: taps that fall outside land on the frame,
        // which blends the edge into the background the way a constant border does, with no bounds tests inside
        // the loop.
        let pw = width + 2, ph = height + 2
        let padded = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: pw * ph * 3)
        defer { padded.deallocate() }
        fill(padded, background)
        let pad = padded.baseAddress!
        for y in 0..<height {
            (pad + ((y + 1) &* pw &+ 1) &* 3).update(from: src + y &* width &* 3, count: width &* 3)
        }
        // Separable: blend the two source rows of each target row into a float row (a contiguous, vectorised
        // loop), then pick and blend two columns of it per target pixel.
        let xs = zoomTaps(width, factor: factor), ys = zoomTaps(height, factor: factor)
        let rowLength = pw * 3
        let row = UnsafeMutablePointer<Float>.allocate(capacity: rowLength)
        defer { row.deallocate() }
        let x0 = UnsafeMutablePointer<Int>.allocate(capacity: width), wx = UnsafeMutablePointer<Float>.allocate(capacity: width)
        defer { x0.deallocate(); wx.deallocate() }
        for x in 0..<width { x0[x] = xs[x].0 &* 3; wx[x] = xs[x].1 }
        for y in 0..<height {
            let (y0, wy) = ys[y]
            let top = pad + y0 &* rowLength, bottom = top + rowLength
            for i in 0..<rowLength {
                let a = Float(top[i])
                row[i] = a + wy * (Float(bottom[i]) - a)
            }
            let out = dst + y &* width &* 3
            for x in 0..<width {
                let a = row + x0[x], w = wx[x], o = out + x &* 3
                o[0] = roundToByte(a[0] + w * (a[3] - a[0]))
                o[1] = roundToByte(a[1] + w * (a[4] - a[1]))
                o[2] = roundToByte(a[2] + w * (a[5] - a[2]))
            }
        }
    }

    /// Per target position along an axis of `size` pixels: the first of the two padded-source taps and the weight
    /// of the second.
    private static func zoomTaps(_ size: Int, factor: Float) -> [(Int, Float)] {
        let centre = Float(size) / 2
        return (0..<size).map { u in
            let s = (Float(u) + 0.5 - centre) / factor + centre - 0.5  // source pixel coordinate (pixel centres at integers)
            let padded = min(max(s + 1, 0), Float(size + 1))
            let i0 = min(Int(padded), size)
            return (i0, padded - Float(i0))
        }
    }

    static func fill(_ pixels: UnsafeMutableBufferPointer<UInt8>, _ colour: (UInt8, UInt8, UInt8)) {
        guard let p = pixels.baseAddress else { return }
        if colour.0 == colour.1 && colour.1 == colour.2 {
            p.update(repeating: colour.0, count: pixels.count)
            return
        }
        for i in 0..<(pixels.count / 3) {
            let q = p + i &* 3
            q[0] = colour.0; q[1] = colour.1; q[2] = colour.2
        }
    }
}
