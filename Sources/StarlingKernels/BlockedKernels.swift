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
