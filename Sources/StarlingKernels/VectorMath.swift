/// Fast exp and log for the hot elementwise loops (sigmoid, softplus, softmax, cross-entropies).
///
/// libm's expf/logf are opaque calls that stop LLVM from vectorising a loop. These are branch-free polynomials
/// (after Cephes, S. Moshier; relative error ~1e-7 over the ranges used, checked against libm in the tests)
/// written with plain Float arithmetic, selects and bit casts, so that a loop calling them - with no reduction
/// inside it - auto-vectorises. Rounding and int<->float conversion go through the 1.5 * 2^23 "magic number":
/// adding it leaves round(t) in the low mantissa bits. Swift's SIMD types were tried first: their generic
/// lane conversions compiled to scalar code and ran 4x slower.
///
/// Each function is generic over how a multiply-add is computed (`MultiplyAdd`): the default, separate rounding,
/// is what baseline x86-64 has; `StarlingKernelsAVX2` instantiates the same code with fused multiply-adds.
public enum VectorMath {
    // A computed constant, not a stored `static let`: a stored one is a lazily initialised global that other modules
    // reach through an accessor call, and where that call sat in a branch of a loop (ELU's negative side) LLVM could not
    // hoist it, and the loop stayed scalar (elu and affineELU ran one element at a time in the AVX2 build).
    @inlinable @inline(__always) static var magic: Float { 12_582_912 }

    /// e^x for x <= 88 (inputs below -87.3 give ~1e-38 instead of 0 or a denormal).
    @inlinable @inline(__always) public static func exp(_ x: Float) -> Float { exp(x, SeparateMultiplyAdd.self) }

    @inlinable @inline(__always)
    public static func exp<M: MultiplyAdd>(_ xIn: Float, _: M.Type) -> Float {
        var x = xIn < -87.3 ? -87.3 : xIn
        x = x > 88 ? 88 : x
        let shifted = M.multiplyAdd(x, 1.44269504088896341, magic)
        let fx = shifted - magic                                  // round(x / ln 2)
        x = M.multiplyAdd(-fx, 0.693359375, x)
        x = M.multiplyAdd(fx, 2.12194440e-4, x)
        let z = x * x
        var y: Float = 1.9875691500e-4
        y = M.multiplyAdd(y, x, 1.3981999507e-3)
        y = M.multiplyAdd(y, x, 8.3334519073e-3)
        y = M.multiplyAdd(y, x, 4.1665795894e-2)
        y = M.multiplyAdd(y, x, 1.6666665459e-1)
        y = M.multiplyAdd(y, x, 5.0000001201e-1)
        y = M.multiplyAdd(y, z, x) + 1
        let n = shifted.bitPattern &- magic.bitPattern            // round(x / ln 2) as a two's-complement integer
        return y * Float(bitPattern: (n &+ 127) &<< 23)
    }

    /// e^x on a pixel of the blocked layout (8 or 16 lanes): the same operations as the scalar `exp`, so each lane
    /// gives the scalar result bit for bit.
    @inlinable @inline(__always)
    public static func exp<M: MultiplyAdd, V: BlockVector>(_ xIn: V, _: M.Type) -> V {
        let low = V(repeating: -87.3), high = V(repeating: 88)
        var x = V.select(xIn, low, where: V.greater(low, xIn))
        x = V.select(x, high, where: V.greater(x, high))
        let shifted = M.multiplyAdd(x, V(repeating: 1.44269504088896341), V(repeating: magic))
        let fx = shifted - V(repeating: magic)
        x = M.multiplyAdd(-fx, V(repeating: 0.693359375), x)
        x = M.multiplyAdd(fx, V(repeating: 2.12194440e-4), x)
        let z = x * x
        var y = V(repeating: 1.9875691500e-4)
        y = M.multiplyAdd(y, x, V(repeating: 1.3981999507e-3))
        y = M.multiplyAdd(y, x, V(repeating: 8.3334519073e-3))
        y = M.multiplyAdd(y, x, V(repeating: 4.1665795894e-2))
        y = M.multiplyAdd(y, x, V(repeating: 1.6666665459e-1))
        y = M.multiplyAdd(y, x, V(repeating: 5.0000001201e-1))
        y = M.multiplyAdd(y, z, x) + V(repeating: 1)
        return y * V.powerOfTwo(fromShifted: shifted, magic: magic)
    }

    /// ln(x) for normal positive x.
    @inlinable @inline(__always) public static func log(_ x: Float) -> Float { log(x, SeparateMultiplyAdd.self) }

    @inlinable @inline(__always)
    public static func log<M: MultiplyAdd>(_ xIn: Float, _: M.Type) -> Float {
        let raw = xIn.bitPattern
        // The biased exponent as a float, exactly: put it in the mantissa of 2^23 and subtract 2^23.
        var e = Float(bitPattern: (raw &>> 23) | 0x4B00_0000) - (8_388_608 + 127)
        var m = Float(bitPattern: (raw & 0x007F_FFFF) | 0x3F80_0000)   // mantissa in [1, 2)
        let big = m > 1.41421356237
        m = big ? m * 0.5 : m
        e = big ? e + 1 : e
        let x = m - 1
        let z = x * x
        var y: Float = 7.0376836292e-2
        y = M.multiplyAdd(y, x, -1.1514610310e-1)
        y = M.multiplyAdd(y, x, 1.1676998740e-1)
        y = M.multiplyAdd(y, x, -1.2420140846e-1)
        y = M.multiplyAdd(y, x, 1.4249322787e-1)
        y = M.multiplyAdd(y, x, -1.6668057665e-1)
        y = M.multiplyAdd(y, x, 2.0000714765e-1)
        y = M.multiplyAdd(y, x, -2.4999993993e-1)
        y = M.multiplyAdd(y, x, 3.3333331174e-1)
        y = y * x * z
        y = M.multiplyAdd(-0.5, z, y)
        return M.multiplyAdd(e, 0.693147180559945, x + y)
    }

    /// ln(x) on eight lanes: the same operations as the scalar `log`, lane for lane.
    @inlinable @inline(__always)
    public static func log<M: MultiplyAdd>(_ xIn: SIMD8<Float>, _: M.Type) -> SIMD8<Float> {
        typealias V = SIMD8<Float>
        let raw = unsafeBitCast(xIn, to: SIMD8<UInt32>.self)
        var e = unsafeBitCast((raw &>> 23) | 0x4B00_0000, to: V.self) - (8_388_608 + 127)
        var m = unsafeBitCast((raw & 0x007F_FFFF) | 0x3F80_0000, to: V.self)
        let big = m .> 1.41421356237
        m = m.replacing(with: m * 0.5, where: big)
        e = e.replacing(with: e + 1, where: big)
        let x = m - 1
        let z = x * x
        var y = V(repeating: 7.0376836292e-2)
        y = M.multiplyAdd(y, x, V(repeating: -1.1514610310e-1))
        y = M.multiplyAdd(y, x, V(repeating: 1.1676998740e-1))
        y = M.multiplyAdd(y, x, V(repeating: -1.2420140846e-1))
        y = M.multiplyAdd(y, x, V(repeating: 1.4249322787e-1))
        y = M.multiplyAdd(y, x, V(repeating: -1.6668057665e-1))
        y = M.multiplyAdd(y, x, V(repeating: 2.0000714765e-1))
        y = M.multiplyAdd(y, x, V(repeating: -2.4999993993e-1))
        y = M.multiplyAdd(y, x, V(repeating: 3.3333331174e-1))
        y = y * x * z
        y = M.multiplyAdd(V(repeating: -0.5), z, y)
        return M.multiplyAdd(e, V(repeating: 0.693147180559945), x + y)
    }

    /// 1 / (1 + e^-x) from e^-|x|, so it never overflows.
    @inlinable @inline(__always) public static func sigmoid(_ x: Float) -> Float { sigmoid(x, SeparateMultiplyAdd.self) }

    @inlinable @inline(__always)
    public static func sigmoid<M: MultiplyAdd>(_ x: Float, _ m: M.Type) -> Float {
        let e = exp(-abs(x), m)
        let r = 1 / (1 + e)
        return x < 0 ? e * r : r
    }

    /// Sum of n floats with 8 lanes of partial sums: vectorised, and more accurate than a serial sum.
    @inlinable @inline(__always) public static func sum(_ n: Int, _ x: UnsafePointer<Float>) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        while i &+ 8 <= n { acc += UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self); i &+= 8 }
        var s = acc.sum()
        while i < n { s += x[i]; i &+= 1 }
        return s
    }
}
