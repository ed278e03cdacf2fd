/// Loops over the blocked layout ([N, C/B, H, W, B], oneDNN's nChw8c for B = 8, nChw16c for B = 16): the plane of one
/// sample and one block of B channels is `pixels` vectors of B floats, lane l holding channel B b + l, so that every
/// per-channel constant is one vector and every pixel one load. Each loop is written once over the pixel vector
/// (`BlockVector`: SIMD8 or SIMD16) and has a form that takes the width at run time, with the per-channel constants as
/// pointers to the block's first channel, which is what the entry points of every build call.
public enum BlockedKernels {
    /// y = ELU(scale (x - mean) + shift) over a plane, each lane as `ActivationKernels.affineELU` computes it.
    @inlinable @inline(__always)
    public static func affineELU<M: MultiplyAdd, V: BlockVector>(_ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                                                 mean: V, scale: V, shift: V, alpha: Float, _ m: M.Type) {
        let zero = V(repeating: 0), a = V(repeating: alpha), one = V(repeating: 1)
        for p in 0..<pixels {
            let v = scale * (V.load(x + V.scalarCount &* p) - mean) + shift
            let positive = V.greater(v, zero)
            let negative = a * (VectorMath.exp(V.select(v, zero, where: positive), m) - one)
            V.select(negative, v, where: positive).store(y + V.scalarCount &* p)
        }
    }

    /// y = leaky ReLU(scale (x - mean) + shift) over a plane, for 0 <= slope <= 1 (`Tensor.leakyRelu`'s expression; 1 is
    /// plain batch norm, 0 ReLU).
    @inlinable @inline(__always)
    public static func affineLeakyReLU<V: BlockVector>(_ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                                       mean: V, scale: V, shift: V, slope: Float) {
        let zero = V(repeating: 0), s = V(repeating: slope)
        for p in 0..<pixels {
            let v = scale * (V.load(x + V.scalarCount &* p) - mean) + shift
            V.select(s * v, v, where: V.greater(v, zero)).store(y + V.scalarCount &* p)
        }
    }

    /// (sum a, sum a (b - shift)) per lane over a plane, in Double.
    @inlinable @inline(__always)
    public static func sumAndDot<V: BlockVector>(_ pixels: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, shift: V)
        -> (V.Sums, V.Sums) {
        var plain = V.Sums(repeating: 0), product = V.Sums(repeating: 0)
        for p in 0..<pixels {
            let av = V.widened(V.load(a + V.scalarCount &* p))
            plain += av
            product += av * V.widened(V.load(b + V.scalarCount &* p) - shift)
        }
        return (plain, product)
    }

    /// dx = scale dy + slope (x - mean) + offset over a plane, added to dx unless `overwrite`.
    @inlinable @inline(__always)
    public static func inputGradient<V: BlockVector>(_ pixels: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                                     into dx: UnsafeMutablePointer<Float>, mean: V, scale: V, slope: V, offset: V,
                                                     overwrite: Bool) {
        if overwrite {
            for p in 0..<pixels {
                let o = V.scalarCount &* p
                (scale * V.load(dy + o) + slope * (V.load(x + o) - mean) + offset).store(dx + o)
            }
        } else {
            for p in 0..<pixels {
                let o = V.scalarCount &* p
                (V.load(dx + o) + (scale * V.load(dy + o) + slope * (V.load(x + o) - mean) + offset)).store(dx + o)
            }
        }
    }

    /// One output row of 2x2/2 max-pooling: `width` output pixels from two input rows.
    @inlinable @inline(__always)
    public static func maxPoolRow<V: BlockVector>(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                                  into y: UnsafeMutablePointer<Float>, _: V.Type) {
        let b = V.scalarCount
        for j in 0..<width {
            let o = 2 &* b &* j
            V.maximum(V.maximum(V.load(top + o), V.load(top + (o &+ b))), V.maximum(V.load(bottom + o), V.load(bottom + (o &+ b))))
                .store(y + b &* j)
        }
    }

    /// The gradient of one output row of 2x2/2 max-pooling: dy goes to the first input of each window, in row-major
    /// order, that equals the window's output (the argmax `maxPool2d` records), lane by lane. Added into dx, or
    /// written (zeros elsewhere in the window) with `overwrite`.
    @inlinable @inline(__always)
    public static func maxPoolRowGradient<V: BlockVector>(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                                          y: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                                          topGradient: UnsafeMutablePointer<Float>,
                                                          bottomGradient: UnsafeMutablePointer<Float>, overwrite: Bool, _: V.Type) {
        let zero = V(repeating: 0), b = V.scalarCount
        for j in 0..<width {
            let o = 2 &* b &* j
            let out = V.load(y + b &* j), g = V.load(dy + b &* j)
            let first = V.equal(V.load(top + o), out)
            let second = V.lanes(V.equal(V.load(top + (o &+ b)), out), without: first)
            let third = V.lanes(V.equal(V.load(bottom + o), out), without: V.union(first, second))
            let fourth = V.lanes(V.equal(V.load(bottom + (o &+ b)), out), without: V.union(V.union(first, second), third))
            @inline(__always) func put(_ taken: V.Lanes, _ target: UnsafeMutablePointer<Float>) {
                let part = V.select(zero, g, where: taken)
                (overwrite ? part : V.load(target) + part).store(target)
            }
            put(first, topGradient + o); put(second, topGradient + (o &+ b))
            put(third, bottomGradient + o); put(fourth, bottomGradient + (o &+ b))
        }
    }
}

/// The loops above at a width chosen at run time (8 or 16), per-channel constants read from the block's first channel.
extension BlockedKernels {
    @inlinable @inline(__always)
    public static func affineELU<M: MultiplyAdd>(width: Int, _ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                                 mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>,
                                                 alpha: Float, _ m: M.Type) {
        if width == 16 {
            affineELU(pixels, x, y, mean: SIMD16.load(mean), scale: SIMD16.load(scale), shift: SIMD16.load(shift), alpha: alpha, m)
        } else {
            affineELU(pixels, x, y, mean: SIMD8.load(mean), scale: SIMD8.load(scale), shift: SIMD8.load(shift), alpha: alpha, m)
        }
    }

    @inlinable @inline(__always)
    public static func affineLeakyReLU(width: Int, _ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                       mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, slope: Float) {
        if width == 16 {
            affineLeakyReLU(pixels, x, y, mean: SIMD16.load(mean), scale: SIMD16.load(scale), shift: SIMD16.load(shift), slope: slope)
        } else {
            affineLeakyReLU(pixels, x, y, mean: SIMD8.load(mean), scale: SIMD8.load(scale), shift: SIMD8.load(shift), slope: slope)
        }
    }

    /// sums[l] += sum a, products[l] += sum a (b - shift) for the block's `width` lanes; shift nil is zero.
    @inlinable @inline(__always)
    public static func sumAndDot(width: Int, _ pixels: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                                 shift: UnsafePointer<Float>?, sums: UnsafeMutablePointer<Double>, products: UnsafeMutablePointer<Double>) {
        if width == 16 {
            let (s, p) = sumAndDot(pixels, a, b, shift: shift.map { SIMD16.load($0) } ?? SIMD16(repeating: 0))
            for l in 0..<16 { sums[l] += s[l]; products[l] += p[l] }
        } else {
            let (s, p) = sumAndDot(pixels, a, b, shift: shift.map { SIMD8.load($0) } ?? SIMD8(repeating: 0))
            for l in 0..<8 { sums[l] += s[l]; products[l] += p[l] }
        }
    }

    @inlinable @inline(__always)
    public static func inputGradient(width: Int, _ pixels: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                     into dx: UnsafeMutablePointer<Float>, mean: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                                     slope: UnsafePointer<Float>, offset: UnsafePointer<Float>, overwrite: Bool) {
        if width == 16 {
            inputGradient(pixels, dy: dy, x: x, into: dx, mean: SIMD16.load(mean), scale: SIMD16.load(scale), slope: SIMD16.load(slope),
                          offset: SIMD16.load(offset), overwrite: overwrite)
        } else {
            inputGradient(pixels, dy: dy, x: x, into: dx, mean: SIMD8.load(mean), scale: SIMD8.load(scale), slope: SIMD8.load(slope),
                          offset: SIMD8.load(offset), overwrite: overwrite)
        }
    }

    @inlinable @inline(__always)
    public static func maxPoolRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                  into y: UnsafeMutablePointer<Float>) {
        if width == 16 { maxPoolRow(pixels, top: top, bottom: bottom, into: y, SIMD16<Float>.self) }
        else { maxPoolRow(pixels, top: top, bottom: bottom, into: y, SIMD8<Float>.self) }
    }

    @inlinable @inline(__always)
    public static func maxPoolRowGradient(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                          y: UnsafePointer<Float>, dy: UnsafePointer<Float>, topGradient: UnsafeMutablePointer<Float>,
                                          bottomGradient: UnsafeMutablePointer<Float>, overwrite: Bool) {
        if width == 16 {
            maxPoolRowGradient(pixels, top: top, bottom: bottom, y: y, dy: dy, topGradient: topGradient, bottomGradient: bottomGradient,
                               overwrite: overwrite, SIMD16<Float>.self)
        } else {
            maxPoolRowGradient(pixels, top: top, bottom: bottom, y: y, dy: dy, topGradient: topGradient, bottomGradient: bottomGradient,
                               overwrite: overwrite, SIMD8<Float>.self)
        }
    }
}

/// An activation that batch norm + 2x2/2 max-pooling applies after pooling (`PooledActivationKernels`): monotonic
/// non-decreasing in its input, so that the maximum of f(z) over a window is f(max z), and with a derivative that its
/// output determines.
public enum PooledActivation: Sendable, Equatable {
    /// alpha (e^z - 1) for z <= 0, alpha > 0.
    case elu(alpha: Float)
    /// slope z for z <= 0, 0 <= slope < 1 (0: ReLU).
    case leakyReLU(slope: Float)
}

/// Batch norm + activation + 2x2/2 max-pooling, pooled before the activation. The activation (`PooledActivation`) and
/// z = scale (x - mean) + shift are monotonic in z, so the maximum of f(z) over a window is f(max z) (for the ELU to
/// the last place of `VectorMath.exp`, which is not exactly monotonic; for the leaky ReLU exactly, a rounded product by
/// a positive constant being non-decreasing): the activation runs on a quarter of the pixels and the full-size
/// activated output is never stored. What backward needs instead is which input of each window was the maximum: a
/// 2-bit index a channel (0 top left, 1 top right, 2 bottom left, 3 bottom right), a pixel's `B` indices packed into
/// B / 4 bytes (lane 0 in the lowest bits), 1/16 of the pooled output's size. The index of the pooled float at offset
/// o is then at byte offset o / 4.
public enum PooledActivationKernels {
    /// f'(z) read from y = f(z): 1 where y > 0; y + alpha (ELU) or the slope (leaky ReLU) elsewhere.
    @inlinable @inline(__always)
    public static func derivative<V: BlockVector>(_ y: V, _ activation: PooledActivation) -> V {
        let below: V = switch activation {
        case .elu(let alpha): y + V(repeating: alpha)
        case .leakyReLU(let slope): V(repeating: slope)
        }
        return V.select(below, V(repeating: 1), where: V.greater(y, V(repeating: 0)))
    }

    /// The window index of each lane, packed as above.
    @inlinable @inline(__always)
    static func storeIndices<V: BlockVector>(lower: V.Lanes, topRight: V.Lanes, bottomRight: V.Lanes, at windows: UnsafeMutableRawPointer,
                                             pixel j: Int, _: V.Type) {
        let packed = V.packedWindowIndices(lower: lower, topRight: topRight, bottomRight: bottomRight)
        if V.scalarCount == 16 {
            windows.storeBytes(of: packed, toByteOffset: 4 &* j, as: UInt32.self)
        } else {
            windows.storeBytes(of: UInt16(truncatingIfNeeded: packed), toByteOffset: 2 &* j, as: UInt16.self)
        }
    }

    /// The lanes whose window maximum was input 0, 1, 2 and 3, from the packed indices.
    @inlinable @inline(__always)
    static func loadIndices<V: BlockVector>(_ windows: UnsafeRawPointer, pixel j: Int, _: V.Type) -> (V.Lanes, V.Lanes, V.Lanes, V.Lanes) {
        let packed = V.scalarCount == 16 ? windows.loadUnaligned(fromByteOffset: 4 &* j, as: UInt32.self)
                                         : UInt32(windows.loadUnaligned(fromByteOffset: 2 &* j, as: UInt16.self))
        return V.windowLanes(packed)
    }

    /// One pooled row: y = f(max over the window of z) and the window index of the first maximum of z in row-major
    /// order (the input `maxPool2d` records as the argmax).
    @inlinable @inline(__always)
    public static func forwardRow<M: MultiplyAdd, V: BlockVector>(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                                                  mean: V, scale: V, shift: V, activation: PooledActivation,
                                                                  into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer?,
                                                                  _ m: M.Type) {
        let b = V.scalarCount, zero = V(repeating: 0), one = V(repeating: 1)
        let (isELU, parameter): (Bool, Float) = switch activation {
        case .elu(let alpha): (true, alpha)
        case .leakyReLU(let slope): (false, slope)
        }
        let a = V(repeating: parameter)
        for j in 0..<width {
            let o = 2 &* b &* j
            let z0 = scale * (V.load(top + o) - mean) + shift, z1 = scale * (V.load(top + (o &+ b)) - mean) + shift
            let z2 = scale * (V.load(bottom + o) - mean) + shift, z3 = scale * (V.load(bottom + (o &+ b)) - mean) + shift
            let right = V.greater(z1, z0), lowerRight = V.greater(z3, z2)
            let zTop = V.select(z0, z1, where: right), zBottom = V.select(z2, z3, where: lowerRight)
            let lower = V.greater(zBottom, zTop)
            let z = V.select(zTop, zBottom, where: lower)
            let positive = V.greater(z, zero)
            // The ELU written out: as a call (even marked inline-always) it stayed out of line, one call per pixel.
            let below = isELU ? a * (VectorMath.exp(V.select(z, zero, where: positive), m) - one) : a * z
            V.select(below, z, where: positive).store(y + b &* j)
            if let windows { storeIndices(lower: lower, topRight: right, bottomRight: lowerRight, at: windows, pixel: j, V.self) }
        }
    }

    /// (sum dz, sum dz (x - mean)) per lane over one pooled row, dz = dy f'(y) at each window's maximum (zero
    /// elsewhere, so the rest of the window adds nothing), in Double; x at the maximum read from the two input rows.
    @inlinable @inline(__always)
    public static func gradientSums<V: BlockVector>(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                                    y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                                                    mean: V, activation: PooledActivation) -> (V.Sums, V.Sums) {
        let b = V.scalarCount
        var plain = V.Sums(repeating: 0), product = V.Sums(repeating: 0)
        for j in 0..<width {
            let o = 2 &* b &* j, q = b &* j
            let (_, second, third, fourth) = loadIndices(windows, pixel: j, V.self)
            var x = V.select(V.load(top + o), V.load(top + (o &+ b)), where: second)
            x = V.select(x, V.load(bottom + o), where: third)
            x = V.select(x, V.load(bottom + (o &+ b)), where: fourth)
            let dz = V.widened(V.load(dy + q) * derivative(V.load(y + q), activation))
            plain += dz
            product += dz * V.widened(x - mean)
        }
        return (plain, product)
    }

    /// dx = scale dz + slope (x - mean) + offset over the two input rows of one pooled row, dz = dy f'(y) at each
    /// window's maximum and zero elsewhere; added to dx unless `overwrite`. Each window's four inputs are read before
    /// their gradients are stored, so dx may be x's own memory.
    @inlinable @inline(__always)
    public static func inputGradientRow<V: BlockVector>(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                                        y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                                                        topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>,
                                                        mean: V, scale: V, slope: V, offset: V, activation: PooledActivation,
                                                        overwrite: Bool) {
        let zero = V(repeating: 0), b = V.scalarCount
        for j in 0..<width {
            let o = 2 &* b &* j, q = b &* j
            let g = V.load(dy + q) * derivative(V.load(y + q), activation)
            let (first, second, third, fourth) = loadIndices(windows, pixel: j, V.self)
            let x = (V.load(top + o), V.load(top + (o &+ b)), V.load(bottom + o), V.load(bottom + (o &+ b)))
            @inline(__always) func gradient(_ xv: V, _ taken: V.Lanes, _ target: UnsafeMutablePointer<Float>) {
                let dx = scale * V.select(zero, g, where: taken) + slope * (xv - mean) + offset
                (overwrite ? dx : V.load(target) + dx).store(target)
            }
            gradient(x.0, first, topGradient + o); gradient(x.1, second, topGradient + (o &+ b))
            gradient(x.2, third, bottomGradient + o); gradient(x.3, fourth, bottomGradient + (o &+ b))
        }
    }
}

/// The loops above at a width chosen at run time (8 or 16), per-channel constants read from the block's first channel.
extension PooledActivationKernels {
    @inlinable @inline(__always)
    public static func forwardRow<M: MultiplyAdd>(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                                  mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>,
                                                  activation: PooledActivation, into y: UnsafeMutablePointer<Float>,
                                                  windows: UnsafeMutableRawPointer?, _ m: M.Type) {
        if width == 16 {
            forwardRow(pixels, top: top, bottom: bottom, mean: SIMD16.load(mean), scale: SIMD16.load(scale), shift: SIMD16.load(shift),
                       activation: activation, into: y, windows: windows, m)
        } else {
            forwardRow(pixels, top: top, bottom: bottom, mean: SIMD8.load(mean), scale: SIMD8.load(scale), shift: SIMD8.load(shift),
                       activation: activation, into: y, windows: windows, m)
        }
    }

    /// sums[l] += sum dz, products[l] += sum dz (x - mean) for the block's `width` lanes.
    @inlinable @inline(__always)
    public static func gradientSums(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                    y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                                    mean: UnsafePointer<Float>, activation: PooledActivation,
                                    sums: UnsafeMutablePointer<Double>, products: UnsafeMutablePointer<Double>) {
        if width == 16 {
            let (s, p) = gradientSums(pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows, mean: SIMD16.load(mean),
                                      activation: activation)
            for l in 0..<16 { sums[l] += s[l]; products[l] += p[l] }
        } else {
            let (s, p) = gradientSums(pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows, mean: SIMD8.load(mean),
                                      activation: activation)
            for l in 0..<8 { sums[l] += s[l]; products[l] += p[l] }
        }
    }

    @inlinable @inline(__always)
    public static func inputGradientRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                        y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                                        topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>,
                                        mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, slope: UnsafePointer<Float>,
                                        offset: UnsafePointer<Float>, activation: PooledActivation, overwrite: Bool) {
        if width == 16 {
            inputGradientRow(pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows, topGradient: topGradient,
                             bottomGradient: bottomGradient, mean: SIMD16.load(mean), scale: SIMD16.load(scale), slope: SIMD16.load(slope),
                             offset: SIMD16.load(offset), activation: activation, overwrite: overwrite)
        } else {
            inputGradientRow(pixels, top: top, bottom: bottom, y: y, dy: dy, windows: windows, topGradient: topGradient,
                             bottomGradient: bottomGradient, mean: SIMD8.load(mean), scale: SIMD8.load(scale), slope: SIMD8.load(slope),
                             offset: SIMD8.load(offset), activation: activation, overwrite: overwrite)
        }
    }
}

/// 2x2/2 max-pooling of values a ReLU wrote (a convolution + ReLU that feeds nothing but the pooling: VGG's conv1_2 and
/// conv2_2 in SSD300), keeping each window's 2-bit index (`PooledActivationKernels`' packing) instead of the full-size
/// input: the gradient of the convolution's output is then dy at each window's maximum where the pooled value is
/// positive (where the ReLU passed it) and zero everywhere else, which the pooled values and the indices determine.
public enum RectifiedPoolingKernels {
    /// One pooled row: y = the window's maximum and the index of its first maximum in row-major order (the input
    /// `maxPool2d` records as the argmax, and `BlockedKernels.maxPoolRowGradient` gives the gradient to).
    @inlinable @inline(__always)
    public static func forwardRow<V: BlockVector>(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                                  into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer, _: V.Type) {
        let b = V.scalarCount
        for j in 0..<width {
            let o = 2 &* b &* j
            let z0 = V.load(top + o), z1 = V.load(top + (o &+ b)), z2 = V.load(bottom + o), z3 = V.load(bottom + (o &+ b))
            let right = V.greater(z1, z0), lowerRight = V.greater(z3, z2)
            let zTop = V.select(z0, z1, where: right), zBottom = V.select(z2, z3, where: lowerRight)
            let lower = V.greater(zBottom, zTop)
            V.select(zTop, zBottom, where: lower).store(y + b &* j)
            PooledActivationKernels.storeIndices(lower: lower, topRight: right, bottomRight: lowerRight, at: windows, pixel: j, V.self)
        }
    }

    /// The convolution's output gradient under one pooled row, written whole: dy at each window's maximum where the
    /// pooled value is positive, zero elsewhere (the ReLU's mask at the maximum is the pooled value's sign; the other
    /// three inputs of a window get nothing from the pooling).
    @inlinable @inline(__always)
    public static func gradientRow<V: BlockVector>(_ width: Int, y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                                                   topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>,
                                                   _: V.Type) {
        let zero = V(repeating: 0), b = V.scalarCount
        for j in 0..<width {
            let o = 2 &* b &* j, q = b &* j
            let g = V.select(zero, V.load(dy + q), where: V.greater(V.load(y + q), zero))
            let (first, second, third, fourth) = PooledActivationKernels.loadIndices(windows, pixel: j, V.self)
            V.select(zero, g, where: first).store(topGradient + o); V.select(zero, g, where: second).store(topGradient + (o &+ b))
            V.select(zero, g, where: third).store(bottomGradient + o); V.select(zero, g, where: fourth).store(bottomGradient + (o &+ b))
        }
    }

    /// The loops above at a width chosen at run time (8 or 16).
    @inlinable @inline(__always)
    public static func forwardRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                  into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer) {
        if width == 16 { forwardRow(pixels, top: top, bottom: bottom, into: y, windows: windows, SIMD16<Float>.self) }
        else { forwardRow(pixels, top: top, bottom: bottom, into: y, windows: windows, SIMD8<Float>.self) }
    }

    @inlinable @inline(__always)
    public static func gradientRow(width: Int, _ pixels: Int, y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                                   topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>) {
        if width == 16 {
            gradientRow(pixels, y: y, dy: dy, windows: windows, topGradient: topGradient, bottomGradient: bottomGradient, SIMD16<Float>.self)
        } else {
            gradientRow(pixels, y: y, dy: dy, windows: windows, topGradient: topGradient, bottomGradient: bottomGradient, SIMD8<Float>.self)
        }
    }
}
