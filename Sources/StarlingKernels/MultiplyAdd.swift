/// How a kernel computes a * b + c. Kernels are written once, generic over this, and instantiated twice:
/// with `SeparateMultiplyAdd` in the modules built for baseline x86-64 (SSE2, no FMA instruction: a fused
/// multiply-add there would be a call to libm's fmaf per element), and with `FusedMultiplyAdd` in
/// `StarlingKernelsAVX2`, which is compiled for AVX2 and FMA and run only on CPUs that have them (`KernelDispatch`).
public protocol MultiplyAdd {
    static func multiplyAdd(_ a: Float, _ b: Float, _ c: Float) -> Float
    static func multiplyAdd(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>) -> SIMD8<Float>
    /// On a pixel of the blocked layout, at either width.
    static func multiplyAdd<V: BlockVector>(_ a: V, _ b: V, _ c: V) -> V
}

/// a * b rounded, then + c rounded: what Swift computes for `a * b + c`.
public enum SeparateMultiplyAdd: MultiplyAdd {
    @inlinable @inline(__always)
    public static func multiplyAdd(_ a: Float, _ b: Float, _ c: Float) -> Float { a * b + c }

    @inlinable @inline(__always)
    public static func multiplyAdd(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>) -> SIMD8<Float> { a * b + c }

    @inlinable @inline(__always)
    public static func multiplyAdd<V: BlockVector>(_ a: V, _ b: V, _ c: V) -> V { a * b + c }
}

/// a * b + c rounded once (llvm.fma: one vfmadd instruction where the target has FMA).
public enum FusedMultiplyAdd: MultiplyAdd {
    @inlinable @inline(__always)
    public static func multiplyAdd(_ a: Float, _ b: Float, _ c: Float) -> Float { c.addingProduct(a, b) }

    @inlinable @inline(__always)
    public static func multiplyAdd(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>) -> SIMD8<Float> { c.addingProduct(a, b) }

    @inlinable @inline(__always)
    public static func multiplyAdd<V: BlockVector>(_ a: V, _ b: V, _ c: V) -> V { V.fusedMultiplyAdd(a, b, c) }
}
