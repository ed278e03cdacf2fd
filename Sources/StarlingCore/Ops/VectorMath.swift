#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Vectorised exp and log for the hot elementwise loops (sigmoid, softplus, softmax, cross-entropies).
/// libm's scalar expf/logf cost ~5-10 ns an element and would dominate a training step next to sgemm.
/// Polynomials after Cephes (S. Moshier): relative error ~1e-7 over the ranges used, checked against libm
/// in the tests.
public enum VectorMath {
    public typealias V = SIMD8<Float>

    @inline(__always) public static func load(_ p: UnsafePointer<Float>) -> V {
        UnsafeRawPointer(p).loadUnaligned(as: V.self)
    }
    @inline(__always) public static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
    }

    @inline(__always) static func bits(_ v: V) -> SIMD8<UInt32> { unsafeBitCast(v, to: SIMD8<UInt32>.self) }
    @inline(__always) static func floats(_ v: SIMD8<UInt32>) -> V { unsafeBitCast(v, to: V.self) }

    @inline(__always) public static func abs(_ v: V) -> V {
        floats(bits(v) & 0x7FFF_FFFF)
    }

    /// e^x for x <= 88 (inputs below -87.3 give ~1e-38 instead of 0 or a denormal).
    @inline(__always) public static func exp(_ xIn: V) -> V {
        var x = xIn.clamped(lowerBound: V(repeating: -87.3), upperBound: V(repeating: 88.0))
        let fx = (x * 1.44269504088896341).rounded(.toNearestOrEven)
        x = x - fx * 0.693359375
        x = x + fx * 2.12194440e-4
        let z = x * x
        var y = V(repeating: 1.9875691500e-4)
        y = y * x + 1.3981999507e-3
        y = y * x + 8.3334519073e-3
        y = y * x + 4.1665795894e-2
        y = y * x + 1.6666665459e-1
        y = y * x + 5.0000001201e-1
        y = y * z + x + 1
        let n = SIMD8<Int32>(fx) &+ 127
        let scale = floats(SIMD8<UInt32>(truncatingIfNeeded: n) &<< 23)
        return y * scale
    }

    /// ln(x) for normal positive x.
    @inline(__always) public static func log(_ xIn: V) -> V {
        let bits = bits(xIn)
        var e = V(SIMD8<Int32>(truncatingIfNeeded: bits &>> 23) &- 127)
        var m = floats((bits & 0x007F_FFFF) | 0x3F80_0000)   // mantissa in [1, 2)
        let big = m .> 1.41421356237
        m.replace(with: m * 0.5, where: big)
        e.replace(with: e + 1, where: big)
        let x = m - 1
        let z = x * x
        var y = V(repeating: 7.0376836292e-2)
        y = y * x - 1.1514610310e-1
        y = y * x + 1.1676998740e-1
        y = y * x - 1.2420140846e-1
        y = y * x + 1.4249322787e-1
        y = y * x - 1.6668057665e-1
        y = y * x + 2.0000714765e-1
        y = y * x - 2.4999993993e-1
        y = y * x + 3.3333331174e-1
        y = y * x * z
        y = y - 0.5 * z
        return x + y + e * 0.693147180559945
    }

    /// Applies `vector` to full 8-lane blocks and `scalar` to the tail of n elements.
    @inline(__always)
    public static func map(_ n: Int, _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
                           vector: (V) -> V, scalar: (Float) -> Float) {
        var i = 0
        while i + 8 <= n { store(vector(load(x + i)), out + i); i += 8 }
        while i < n { out[i] = scalar(x[i]); i += 1 }
    }

    /// Scalar versions with the same polynomials, for loop tails.
    @inline(__always) public static func exp(_ x: Float) -> Float { exp(V(repeating: x))[0] }
    @inline(__always) public static func log(_ x: Float) -> Float { log(V(repeating: x))[0] }

    /// Sum of n floats with 8 lanes of partial sums (more accurate and faster than a serial sum).
    @inline(__always) public static func sum(_ n: Int, _ x: UnsafePointer<Float>) -> Float {
        var acc = V(repeating: 0)
        var i = 0
        while i + 8 <= n { acc += load(x + i); i += 8 }
        var s = acc.sum()
        while i < n { s += x[i]; i += 1 }
        return s
    }
}
