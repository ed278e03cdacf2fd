/// Loops over the 8-channel blocked layout ([N, C/8, H, W, 8], oneDNN's nChw8c): the plane of one sample and one
/// block of 8 channels is `pixels` vectors of 8 floats, lane l holding channel 8 b + l, so that every per-channel
/// constant is one vector and every pixel one load.
public enum BlockedKernels {
    public typealias Vector = SIMD8<Float>

    @inlinable @inline(__always)
    public static func load(_ p: UnsafePointer<Float>) -> Vector { UnsafeRawPointer(p).loadUnaligned(as: Vector.self) }

    @inlinable @inline(__always)
    public static func store(_ v: Vector, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vector.self) }

    /// y = ELU(scale (x - mean) + shift) over a plane, each lane as `ActivationKernels.affineELU` computes it.
    @inlinable @inline(__always)
    public static func affineELU<M: MultiplyAdd>(_ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                                 mean: Vector, scale: Vector, shift: Vector, alpha: Float, _ m: M.Type) {
        let zero = Vector(repeating: 0), a = Vector(repeating: alpha)
        for p in 0..<pixels {
            let v = scale * (load(x + 8 &* p) - mean) + shift
            let negative = a * (VectorMath.exp(v.replacing(with: zero, where: v .> zero), m) - 1)
            store(negative.replacing(with: v, where: v .> zero), y + 8 &* p)
        }
    }

    /// y = leaky ReLU(scale (x - mean) + shift) over a plane, for 0 < slope < 1 (`Tensor.leakyRelu`'s expression).
    @inlinable @inline(__always)
    public static func affineLeakyReLU(_ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                       mean: Vector, scale: Vector, shift: Vector, slope: Float) {
        let zero = Vector(repeating: 0), s = Vector(repeating: slope)
        for p in 0..<pixels {
            let v = scale * (load(x + 8 &* p) - mean) + shift
            store(v.replacing(with: s * v, where: v .<= zero), y + 8 &* p)
        }
    }

    /// (sum a, sum a (b - shift)) per lane over a plane, in Double.
    @inlinable @inline(__always)
    public static func sumAndDot(_ pixels: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, shift: Vector)
        -> (SIMD8<Double>, SIMD8<Double>) {
        var plain = SIMD8<Double>(repeating: 0), product = SIMD8<Double>(repeating: 0)
        for p in 0..<pixels {
            let av = SIMD8<Double>(load(a + 8 &* p))
            plain += av
            product += av * SIMD8<Double>(load(b + 8 &* p) - shift)
        }
        return (plain, product)
    }

    /// dx = scale dy + slope (x - mean) + offset over a plane, added to dx unless `overwrite`.
    @inlinable @inline(__always)
    public static func inputGradient(_ pixels: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>,
                                     mean: Vector, scale: Vector, slope: Vector, offset: Vector, overwrite: Bool) {
        if overwrite {
            for p in 0..<pixels {
                let o = 8 &* p
                store(scale * load(dy + o) + slope * (load(x + o) - mean) + offset, dx + o)
            }
        } else {
            for p in 0..<pixels {
                let o = 8 &* p
                store(load(dx + o) + (scale * load(dy + o) + slope * (load(x + o) - mean) + offset), dx + o)
            }
        }
    }

    /// One output row of 2x2/2 max-pooling: `width` output pixels from two input rows.
    @inlinable @inline(__always)
    public static func maxPoolRow(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        @inline(__always) func maximum(_ a: Vector, _ b: Vector) -> Vector { a.replacing(with: b, where: b .> a) }
        for j in 0..<width {
            let o = 16 &* j
            store(maximum(maximum(load(top + o), load(top + (o &+ 8))), maximum(load(bottom + o), load(bottom + (o &+ 8)))), y + 8 &* j)
        }
    }

    /// The gradient of one output row of 2x2/2 max-pooling: dy goes to the first input of each window, in row-major
    /// order, that equals the window's output (the argmax `maxPool2d` records), lane by lane. Added into dx, or
    /// written (zeros elsewhere in the window) with `overwrite`.
    @inlinable @inline(__always)
    public static func maxPoolRowGradient(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                          y: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                          topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>,
                                          overwrite: Bool) {
        let zero = Vector(repeating: 0)
        for j in 0..<width {
            let o = 16 &* j
            let out = load(y + 8 &* j), g = load(dy + 8 &* j)
            let inputs = (load(top + o), load(top + (o &+ 8)), load(bottom + o), load(bottom + (o &+ 8)))
            let first = inputs.0 .== out
            let second = inputs.1 .== out .& .!first
            let third = inputs.2 .== out .& .!(first .| second)
            let fourth = inputs.3 .== out .& .!(first .| second .| third)
            let targets = (topGradient + o, topGradient + (o &+ 8), bottomGradient + o, bottomGradient + (o &+ 8))
            let parts = (zero.replacing(with: g, where: first), zero.replacing(with: g, where: second),
                         zero.replacing(with: g, where: third), zero.replacing(with: g, where: fourth))
            if overwrite {
                store(parts.0, targets.0); store(parts.1, targets.1); store(parts.2, targets.2); store(parts.3, targets.3)
            } else {
                store(load(targets.0) + parts.0, targets.0); store(load(targets.1) + parts.1, targets.1)
                store(load(targets.2) + parts.2, targets.2); store(load(targets.3) + parts.3, targets.3)
            }
        }
    }
}

/// Batch norm + ELU + 2x2/2 max-pooling pooled before the ELU. ELU and z = scale (x - mean) + shift are monotonic in
/// z, so the maximum of ELU(z) over a window is ELU(max z) (to the last place of `VectorMath.exp`, which is not
/// exactly monotonic): the exp runs on a quarter of the pixels and the full-size ELU output is never stored. What the
/// backward needs instead is x at each window's maximum (a quarter of x), from which it finds the window's maximum again.
public enum PooledELUKernels {
    public typealias Vector = SIMD8<Float>

    /// ELU'(z) read from y = ELU(z): 1 where y > 0, y + alpha elsewhere (as `Tensor.elu`'s backward).
    @inlinable @inline(__always)
    public static func eluDerivative(_ y: Vector, alpha: Float) -> Vector {
        (y + Vector(repeating: alpha)).replacing(with: Vector(repeating: 1), where: y .> Vector(repeating: 0))
    }

    /// One pooled row: y = ELU(max over the window of z) and, in `argmaxInput`, x at the window's first maximum of z in
    /// row-major order (the input `maxPool2d` records as the argmax).
    @inlinable @inline(__always)
    public static func forwardRow<M: MultiplyAdd>(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                                  mean: Vector, scale: Vector, shift: Vector, alpha: Float,
                                                  into y: UnsafeMutablePointer<Float>, argmaxInput xm: UnsafeMutablePointer<Float>,
                                                  _ m: M.Type) {
        for j in 0..<width {
            let o = 16 &* j
            let x0 = BlockedKernels.load(top + o), x1 = BlockedKernels.load(top + (o &+ 8))
            let x2 = BlockedKernels.load(bottom + o), x3 = BlockedKernels.load(bottom + (o &+ 8))
            let z0 = scale * (x0 - mean) + shift, z1 = scale * (x1 - mean) + shift
            let z2 = scale * (x2 - mean) + shift, z3 = scale * (x3 - mean) + shift
            let right = z1 .> z0, lowerRight = z3 .> z2
            let zTop = z0.replacing(with: z1, where: right), xTop = x0.replacing(with: x1, where: right)
            let zBottom = z2.replacing(with: z3, where: lowerRight), xBottom = x2.replacing(with: x3, where: lowerRight)
            let lower = zBottom .> zTop
            // ELU, written out: as a call (even marked inline-always) it stayed out of line, one call per pixel.
            let z = zTop.replacing(with: zBottom, where: lower), zero = Vector(repeating: 0)
            let negative = Vector(repeating: alpha) * (VectorMath.exp(z.replacing(with: zero, where: z .> zero), m) - 1)
            BlockedKernels.store(negative.replacing(with: z, where: z .> zero), y + 8 &* j)
            BlockedKernels.store(xTop.replacing(with: xBottom, where: lower), xm + 8 &* j)
        }
    }

    /// (sum dz, sum dz (x - mean)) per lane over `pixels` pooled vectors, dz = dy ELU'(y) at each window's maximum
    /// (zero elsewhere, so the rest of the window adds nothing), in Double.
    @inlinable @inline(__always)
    public static func gradientSums(_ pixels: Int, y: UnsafePointer<Float>, dy: UnsafePointer<Float>, argmaxInput xm: UnsafePointer<Float>,
                                    mean: Vector, alpha: Float) -> (SIMD8<Double>, SIMD8<Double>) {
        var plain = SIMD8<Double>(repeating: 0), product = SIMD8<Double>(repeating: 0)
        for p in 0..<pixels {
            let o = 8 &* p
            let dz = SIMD8<Double>(BlockedKernels.load(dy + o) * eluDerivative(BlockedKernels.load(y + o), alpha: alpha))
            plain += dz
            product += dz * SIMD8<Double>(BlockedKernels.load(xm + o) - mean)
        }
        return (plain, product)
    }

    /// dx = scale dz + slope (x - mean) + offset over the two input rows of one pooled row, dz = dy ELU'(y) at the
    /// first input of each window equal to `argmaxInput` and zero elsewhere; added to dx unless `overwrite`. The first
    /// x equal to x at the first maximum of z is that input: an earlier equal x would have had the same z.
    @inlinable @inline(__always)
    public static func inputGradientRow(_ width: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                                        y: UnsafePointer<Float>, dy: UnsafePointer<Float>, argmaxInput xm: UnsafePointer<Float>,
                                        topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>,
                                        mean: Vector, scale: Vector, slope: Vector, offset: Vector, alpha: Float, overwrite: Bool) {
        let zero = Vector(repeating: 0)
        for j in 0..<width {
            let o = 16 &* j, q = 8 &* j
            let g = BlockedKernels.load(dy + q) * eluDerivative(BlockedKernels.load(y + q), alpha: alpha)
            let at = BlockedKernels.load(xm + q)
            let x = (BlockedKernels.load(top + o), BlockedKernels.load(top + (o &+ 8)),
                     BlockedKernels.load(bottom + o), BlockedKernels.load(bottom + (o &+ 8)))
            let first = x.0 .== at
            let second = x.1 .== at .& .!first
            let third = x.2 .== at .& .!(first .| second)
            let fourth = x.3 .== at .& .!(first .| second .| third)
            @inline(__always) func gradient(_ xv: Vector, _ taken: SIMDMask<SIMD8<Int32>>, _ target: UnsafeMutablePointer<Float>) {
                let dx = scale * zero.replacing(with: g, where: taken) + slope * (xv - mean) + offset
                BlockedKernels.store(overwrite ? dx : BlockedKernels.load(target) + dx, target)
            }
            gradient(x.0, first, topGradient + o); gradient(x.1, second, topGradient + (o &+ 8))
            gradient(x.2, third, bottomGradient + o); gradient(x.3, fourth, bottomGradient + (o &+ 8))
        }
    }
}
